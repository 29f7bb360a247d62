"""`depin boost set`, `depin epoch verify`, `depin epoch explain`: the operator's cell boosts and
anyone's check of an epoch's rewards, on the service's database (DEPIN_DATABASE_URL; for the demo:
`. /var/tmp/depin/demo/current.env`). Boosts are signed with the operator key (DEPIN_OPERATOR_KEY_FILE
or --key-file), like the other operator commands; verify reads the epoch's root on chain
(DEPIN_CHAIN_RPC_URL, DEPIN_DEPLOYMENT_FILE) unless --no-chain."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar

from devices.errors import SettingsError

T = TypeVar("T")


class EpochMismatchError(SettingsError):
    pass


def _cell(raw: str) -> int:
    try:
        return int(raw, 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"an H3 cell in hex (e.g. 8928308280fffff), got {raw!r}") from None


def _factor(raw: str) -> int:
    """A multiplier such as 2 or 1.5, as basis points (exactly: more decimals than 4 are refused)."""
    try:
        bps = Decimal(raw) * 10_000
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"a multiplier such as 1.5, got {raw!r}") from None
    if bps != bps.to_integral_value() or bps < 0:
        raise argparse.ArgumentTypeError(f"a non-negative multiplier with at most 4 decimals, got {raw!r}")
    return int(bps)


def _device(raw: str) -> bytes:
    try:
        value = bytes.fromhex(raw.removeprefix("0x"))
    except ValueError:
        value = b""
    if len(value) != 32:
        raise argparse.ArgumentTypeError(f"a device id is 64 hex digits, got {raw!r}")
    return value


async def _with_store(body: Callable[[Any], Awaitable[T]], *, reads: bool = False) -> T:
    """`body` on the epoch store (or the read store: `reads`) on a short-lived pool."""
    from ingest.adapters.db import create_pool, migrate
    from ingest.adapters.store import EpochStore, ReadStore
    from ingest.settings import read_environment

    dsn = read_environment().database_url
    if not dsn:
        raise SettingsError(
            "DEPIN_DATABASE_URL is not set: epochs and boosts live in the service's database "
            "(for the demo: . /var/tmp/depin/demo/current.env)"
        )
    pool = await create_pool(dsn, min_size=1, max_size=2, application_name="depin-epoch")
    try:
        await migrate(pool)
        return await body(ReadStore(pool) if reads else EpochStore(pool))
    finally:
        await pool.close()


def _boost_set(args: argparse.Namespace) -> int:
    from devices.settings import ChainSettings
    from ingest.core import boosts as bst
    from ingest.settings import read_environment

    account = ChainSettings.resolve(key_file=args.key_file).account()
    unsigned = bst.Boost(args.cell, args.factor, args.from_epoch, args.to_epoch, time.time_ns() // 1_000_000)
    boost = bst.sign(unsigned, account.key)
    boost_id = asyncio.run(_with_store(lambda store: store.add_boost(boost)))
    print(
        f"boost {boost_id}: cell {hex(args.cell)} × {args.factor / 10_000:g} for epochs "
        f"{args.from_epoch}..{args.to_epoch}, signed by {boost.signer}"
    )
    signers = {a.strip().lower() for a in read_environment().boost_signers.split(",") if a.strip()}
    if boost.signer.lower() not in signers:
        print(f"note: {boost.signer} is not in DEPIN_BOOST_SIGNERS here; the epoch closer ignores its boosts")
    return 0


async def _root_on_chain(epoch: int) -> bytes:
    from devices.chain.distributor import DistributorClient
    from devices.cli.common import open_chain
    from devices.settings import ChainSettings

    async with open_chain(ChainSettings.resolve(), signing=False) as chain:
        return await DistributorClient(chain.w3, chain.deployment).root_of(epoch)


def _verify(args: argparse.Namespace) -> int:
    from ingest.scoring import verify_epoch

    async def run(store: Any) -> str | None:
        row = await store.get_epoch(args.epoch)
        manifest = await store.manifest(args.epoch)  # the whole document, assembled from its rows
        if row is None or manifest is None:
            raise LookupError(f"epoch {args.epoch} is not stored (not closed yet?)")
        if "0x" + row.root.hex() != manifest.get("root"):
            return f"stored root 0x{row.root.hex()} is not the manifest's {manifest.get('root')}"
        root = None if args.no_chain else await _root_on_chain(args.epoch)
        return await verify_epoch(store, args.epoch, manifest, root)

    problem = asyncio.run(_with_store(run))
    if problem is not None:
        raise EpochMismatchError(f"epoch {args.epoch} does not verify: {problem}")
    where = "" if args.no_chain else " and the root on chain"
    print(f"epoch {args.epoch} verified: the manifest, a recomputation from the stored data{where} agree")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from ingest.api.shapes import device_epoch_json

    cells = asyncio.run(_with_store(lambda store: store.device_epoch(args.epoch, args.device), reads=True))
    if not cells:
        raise LookupError(f"device {args.device.hex()} has no coverage stored in epoch {args.epoch}")
    doc = device_epoch_json(args.epoch, args.device, cells)
    if args.json:
        print(json.dumps(doc))
        return 0
    print(f"epoch {args.epoch}, device {doc['device_id']} (owner {doc['owner']}): {doc['amount']} in total")
    print(
        f"{'cell':<18}{'clean':>7}{'flag':>6}{'quality':>8}{'rank':>5}{'boost':>7}{'fresh':>7}{'demand':>7}"
        f"{'depth':>7}  amount"
    )
    for c in doc["cells"]:
        f = c.get("factors", {})
        print(
            f"{c['cell']:<18}{c['readings']:>7}{c['flagged']:>6}"
            f"{c['quality'] / 100:>7.2f}%{c['rank'] or '-':>5}"
            f"{_x(f.get('boost')):>7}{_x(f.get('freshness')):>7}{_x(f.get('demand')):>7}"
            f"{_x(c.get('depth')):>7}  {c['amount']}"
        )
    return 0


def _x(bps: int | None) -> str:
    return "-" if bps is None else f"{bps / 10_000:g}"


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = sub.add_parser("boost", help="operator boosts of a cell's reward weight (signed)")
    bsub = b.add_subparsers(dest="boost_command", required=True)
    s = bsub.add_parser("set", help="sign and store a boost of CELL by FACTOR for epochs FROM..TO")
    s.add_argument("cell", type=_cell, help="H3 cell, hex")
    s.add_argument("factor", type=_factor, help="multiplier, e.g. 2 or 1.5 (0..10)")
    s.add_argument("--from", dest="from_epoch", type=int, required=True, help="first epoch")
    s.add_argument("--to", dest="to_epoch", type=int, required=True, help="last epoch (inclusive)")
    s.add_argument("--key-file", type=Path, help="operator key file (default DEPIN_OPERATOR_KEY_FILE)")
    s.set_defaults(func=_boost_set)

    e = sub.add_parser("epoch", help="check an epoch's rewards: verify, explain")
    esub = e.add_subparsers(dest="epoch_command", required=True)
    v = esub.add_parser("verify", help="recompute epoch N, compare with its manifest and the root on chain")
    v.add_argument("epoch", type=int)
    v.add_argument("--no-chain", action="store_true", help="skip the on-chain root")
    v.set_defaults(func=_verify)
    x = esub.add_parser("explain", help="a device's cells in epoch N: factors, rank, quality, amount")
    x.add_argument("epoch", type=int)
    x.add_argument("--device", type=_device, required=True, help="device id, 64 hex digits")
    x.add_argument(
        "--json", action="store_true", help="as JSON (what GET /v1/epochs/{n}/devices/{id} serves)"
    )
    x.set_defaults(func=_explain)
