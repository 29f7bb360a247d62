"""Operator and owner commands behind `depin contracts …`, `depin device …` and `depin hw …`.

Each command is a coroutine run by `run_command`, which turns every failure a user can cause — a wrong
key, a missing role, a node that is down, a stale deployment file, bad input — into one CliError line
(exit code 1 in `ingest.cli`), never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from eth_utils import keccak, to_checksum_address
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import Web3Exception, Web3RPCError
from web3.logs import DISCARD
from web3.types import TxReceipt

from devices.chain.artifacts import DEFAULT_ADMIN_ROLE, MINTER_ROLE, OPERATOR_ROLE, REWARDS_ROLE
from devices.chain.deployment import Deployment, deploy_contracts
from devices.chain.registry import DeviceInput, RegistryClient
from devices.chain.signer import Signer
from devices.errors import ChainError
from devices.fleet import (
    FleetRow,
    InputError,
    check_cell_for_class,
    format_cell,
    is_mobile,
    parse_address,
    parse_cell,
    parse_device_id,
    parse_fleet_csv,
    parse_hw_class,
    parse_pubkey,
)
from devices.keys import load_identity, new_identity, save_identity
from devices.protocol.model import DeviceRecord
from devices.protocol.registry_fold import HwClassInfo, apply_events
from devices.settings import ChainSettings, SettingsError

ROLE_NAMES = {
    OPERATOR_ROLE: "OPERATOR_ROLE",
    MINTER_ROLE: "MINTER_ROLE",
    REWARDS_ROLE: "REWARDS_ROLE",
    DEFAULT_ADMIN_ROLE: "DEFAULT_ADMIN_ROLE",
}
HW_CLASS_SET_TOPIC = "0x" + keccak(text="HwClassSet(uint16,string,uint32,uint8,bool)").hex()
LOG_RANGE = 5_000  # blocks per eth_getLogs (providers cap the range)
PRECHECK_CONCURRENCY = 16  # parallel getDevice reads before a batch
SKIPS_SHOWN = 5  # already-registered ids named one per line before the summary
MAX_CHUNK_SIZE = 300  # registerBatch items per tx: ~22 M gas, under a 30 M block


class CliError(ValueError):
    """A user-facing failure: the message is the whole story, printed on one line."""


# --------------------------------------------------------------------------------------------- plumbing


def run_command(settings: ChainSettings, command: Callable[[], Awaitable[int]]) -> int:
    """Run one command's coroutine; translate what the user can cause into CliError."""
    try:
        return asyncio.run(_guarded(settings, command))
    except (InputError, SettingsError) as exc:
        raise CliError(str(exc)) from None


async def _guarded(settings: ChainSettings, command: Callable[[], Awaitable[int]]) -> int:
    try:
        return await command()
    except ChainError as exc:
        raise CliError(explain_chain_error(exc)) from None
    except Web3RPCError as exc:
        raise CliError(explain_rpc_error(exc)) from None
    except BrokenPipeError:  # our stdout closed (`… | head`), not the node's connection
        raise
    except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
        raise CliError(
            f"the JSON-RPC node at {settings.rpc_url} failed: {exc or type(exc).__name__}"
        ) from None


def explain_chain_error(exc: ChainError) -> str:
    """The contract's custom error in words, with what to do about it."""
    name, args = exc.error_name, exc.error_args
    if name == "AccessControlUnauthorizedAccount" and len(args) == 2:
        return missing_role(str(args[0]), bytes(args[1]))
    if name == "NotDeviceOwner" and len(args) == 2:
        return f"{args[1]} is not the owner of device {bytes(args[0]).hex()}: sign with the owner's key"
    if name == "NotOwnerOrOperator" and len(args) == 2:
        return f"{args[1]} is neither the owner of device {bytes(args[0]).hex()} nor an operator"
    if name == "AlreadyRegistered" and args:
        return f"device {bytes(args[0]).hex()} is already registered"
    if name == "UnknownDevice" and args:
        return f"device {bytes(args[0]).hex()} is not registered"
    if name == "DeviceNotActive" and args:
        return f"device {bytes(args[0]).hex()} is revoked"
    if name == "UnknownHwClass" and args:
        return f"hardware class {args[0]} is unknown or disabled (see `depin hw list`)"
    if name == "MobileClassCell" and args:
        return f"hardware class {args[0]} is mobile: its devices have no asserted cell"
    if name == "InvalidCell" and len(args) == 2:
        cell = f"{int(args[0]):x}"
        return f"cell {cell} is not a valid resolution-{args[1]} H3 cell (the class's resolution)"
    if name == "InvalidH3Res" and args:
        return f"H3 resolution {args[0]} is out of range (0..15)"
    if name == "ZeroPubkey":
        return "the pubkey is all zeros"
    if name == "ZeroAddress":
        return "the zero address is not allowed here"
    return str(exc)


def missing_role(account: str, role: bytes) -> str:
    role_name = ROLE_NAMES.get(role, "0x" + role.hex())
    if role == OPERATOR_ROLE:
        return (
            f"{account} does not hold {role_name}: this needs an operator's key "
            "(--key-file or DEPIN_OPERATOR_KEY_FILE)"
        )
    return f"{account} does not hold {role_name}: sign with an account that does"


def explain_rpc_error(exc: Web3RPCError) -> str:
    msg = exc.message if isinstance(exc.message, str) else str(exc)
    if "insufficient funds" in msg.lower():
        return "the signing account has too little ETH to pay for gas"
    return f"the node refused the request: {msg}"


@dataclass
class Chain:
    """An open connection: the registry client (with a signer when the command sends transactions)."""

    w3: AsyncWeb3[Any]
    deployment: Deployment
    registry: RegistryClient
    settings: ChainSettings

    @property
    def signer(self) -> Signer:
        assert self.registry.signer is not None, "command opened the chain read-only"
        return self.registry.signer


def load_deployment(path: Path) -> Deployment:
    try:
        return Deployment.load(path)
    except FileNotFoundError:
        raise CliError(
            f"deployment file {path} not found: pass --deployment FILE or set DEPIN_DEPLOYMENT_FILE "
            "(it is written by `depin contracts deploy`)"
        ) from None
    except OSError as exc:
        raise CliError(f"cannot read deployment file {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise CliError(f"{path} is not a deployment file ({type(exc).__name__}: {exc})") from None


@contextlib.asynccontextmanager
async def open_chain(settings: ChainSettings, *, signing: bool) -> AsyncIterator[Chain]:
    """Check everything cheap first (deployment file, key), then that the node answers, is the chain the
    deployment was made on, and has the registry's code: a stale file after a chain reset is common."""
    deployment = load_deployment(settings.deployment_file)
    account = settings.account() if signing else None
    url = settings.rpc_url
    try:
        w3 = AsyncWeb3(AsyncHTTPProvider(url, request_kwargs={"timeout": aiohttp.ClientTimeout(total=60)}))
    except Exception as exc:  # web3 rejects some malformed URLs at construction
        raise CliError(f"bad JSON-RPC URL {url!r}: {exc}") from None
    try:
        if not await w3.is_connected():
            raise CliError(f"no JSON-RPC node answers at {url} (set --rpc-url or DEPIN_CHAIN_RPC_URL)")
        chain_id = await w3.eth.chain_id
        if chain_id != deployment.chain_id:
            raise CliError(
                f"{settings.deployment_file} is for chain {deployment.chain_id} but {url} is chain {chain_id}"
            )
        if not await w3.eth.get_code(to_checksum_address(deployment.registry)):
            raise CliError(
                f"no DeviceRegistry at {deployment.registry} on {url}: "
                f"{settings.deployment_file} is stale (was the chain reset?)"
            )
        signer = Signer(w3, account) if account is not None else None
        yield Chain(w3, deployment, RegistryClient(w3, deployment, signer), settings)
    finally:
        await w3.provider.disconnect()


def _tx_line(receipt: TxReceipt) -> str:
    return (
        f"tx 0x{bytes(receipt['transactionHash']).hex()} block {receipt['blockNumber']} "
        f"gas {receipt['gasUsed']:,}"
    )


async def fetch_hw_classes(chain: Chain) -> dict[int, HwClassInfo]:
    """The hardware-class table from HwClassSet events (the registry cannot enumerate its classes)."""
    event = chain.registry.contract.events.HwClassSet()
    latest = await chain.w3.eth.block_number
    classes: dict[int, HwClassInfo] = {}
    for start in range(chain.deployment.block, latest + 1, LOG_RANGE):
        logs = await chain.w3.eth.get_logs(
            {
                "address": chain.registry.contract.address,
                "fromBlock": start,
                "toBlock": min(latest, start + LOG_RANGE - 1),
                "topics": [HW_CLASS_SET_TOPIC],
            }
        )
        for lg in sorted(logs, key=lambda lg: (lg["blockNumber"], lg["logIndex"])):
            a = event.process_log(lg)["args"]
            classes[int(a["id"])] = HwClassInfo(
                int(a["id"]), str(a["name"]), int(a["maxSpeedKmh"]), int(a["h3Res"]), bool(a["enabled"])
            )
    return classes


async def _require_role(chain: Chain, role: bytes) -> None:
    """Fail before a long job rather than at its first transaction (single calls fail fast anyway: gas
    estimation reverts with the same AccessControl error)."""
    has = await chain.registry.contract.functions.hasRole(role, chain.signer.address).call()
    if not has:
        raise CliError(missing_role(chain.signer.address, role))


async def _class_name(chain: Chain, class_id: int) -> str:
    info = await chain.registry.get_hw_class(class_id)
    return f"{info.name} ({class_id})" if info else f"unknown ({class_id})"


async def _device_or_fail(chain: Chain, device_id: bytes) -> DeviceRecord:
    rec = await chain.registry.get_device(device_id)
    if rec is None:
        raise CliError(f"device {device_id.hex()} is not registered")
    return rec


# --------------------------------------------------------------------------------------------- contracts


async def deploy(
    settings: ChainSettings, out: Path, rewards_account: str | None, *, force: bool = False
) -> int:
    # Checked before anything is sent: the file may be the only record of a live registry's address.
    if not force and await asyncio.to_thread(out.exists):
        raise CliError(
            f"{out} exists: refusing to overwrite a deployment file (its contracts' addresses would be "
            "lost); choose another --out, or pass --force to replace it"
        )
    account = settings.account()
    url = settings.rpc_url
    w3 = AsyncWeb3(AsyncHTTPProvider(url))
    try:
        if not await w3.is_connected():
            raise CliError(f"no JSON-RPC node answers at {url} (set --rpc-url or DEPIN_CHAIN_RPC_URL)")
        rewards = parse_address(rewards_account, "rewards account") if rewards_account else None
        deployment = await deploy_contracts(w3, Signer(w3, account), rewards_account=rewards)
    finally:
        await w3.provider.disconnect()
    deployment.save(out)
    print(f"deployed on chain {deployment.chain_id} at block {deployment.block}")
    print(f"  DeviceRegistry     {deployment.registry}")
    print(f"  RewardToken        {deployment.token}")
    print(f"  RewardDistributor  {deployment.distributor}")
    print(f"deployment written to {out}")
    return 0


# --------------------------------------------------------------------------------------------- devices


def device_new(out: Path, show_secret: bool, device_id_hex: str | None = None) -> int:
    if out.exists():
        raise CliError(f"{out} exists: refusing to overwrite a device's credentials")
    try:
        device_id = parse_device_id(device_id_hex) if device_id_hex else None
    except InputError as exc:
        raise CliError(str(exc)) from None
    identity = new_identity(device_id)
    save_identity(identity, out)
    print(f"device_id {identity.hex_id}")
    print(f"pubkey    {identity.pubkey.hex()}")
    print(f"credentials written to {out} (mode 0600)")
    if show_secret:
        print(f"seed      {bytes(identity.signing_key).hex()}")
    return 0


def identity_args(cred: Path | None, id_hex: str | None, pubkey_hex: str | None) -> tuple[bytes, bytes]:
    """(device id, pubkey) from a credential file or from --id/--pubkey."""
    if cred is not None:
        if id_hex or pubkey_hex:
            raise CliError("give either --cred or --id with --pubkey, not both")
        identity = load_identity(cred)
        return identity.device_id, identity.pubkey
    if not (id_hex and pubkey_hex):
        raise CliError("give --cred FILE, or both --id HEX and --pubkey HEX")
    return parse_device_id(id_hex), parse_pubkey(pubkey_hex)


async def device_register(
    settings: ChainSettings, device_id: bytes, pubkey: bytes, owner: str, hw_class: str, cell: str | None
) -> int:
    owner = parse_address(owner, "owner")
    cell_int = parse_cell(cell) if cell else 0
    async with open_chain(settings, signing=True) as chain:
        info = parse_hw_class(hw_class, await fetch_hw_classes(chain))
        check_cell_for_class(info, cell_int)
        receipt = await chain.registry.register(device_id, pubkey, owner, info.id, cell_int)
    where = f", cell {format_cell(cell_int)}" if cell_int else ""
    print(f"registered {device_id.hex()} ({info.name}, owner {owner}{where})")
    print(_tx_line(receipt))
    return 0


class ProgressBar:
    """Chunks sent and confirmed, on stderr: redrawn in place on a terminal, one line per step otherwise
    (a log file should not fill with carriage returns)."""

    def __init__(self, chunks: int, devices: int, stream: TextIO | None = None, width: int = 30) -> None:
        self.chunks, self.devices, self.width = chunks, devices, width
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.sent = self.confirmed = self.done_devices = 0

    def update(self, *, sent: int | None = None, confirmed: int | None = None, devices: int = 0) -> None:
        self.sent = self.sent if sent is None else sent
        self.confirmed = self.confirmed if confirmed is None else confirmed
        self.done_devices += devices
        self.stream.write(("\r" + self.render()) if self.tty else (self.render() + "\n"))
        self.stream.flush()

    def render(self) -> str:
        done = round(self.width * self.confirmed / max(self.chunks, 1))
        half = max(round(self.width * self.sent / max(self.chunks, 1)) - done, 0)
        bar = "#" * done + "-" * half + " " * (self.width - done - half)
        return (
            f"[{bar}] chunks sent {self.sent}/{self.chunks} · confirmed {self.confirmed}/{self.chunks}"
            f" · devices {self.done_devices}/{self.devices}"
        )

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


@dataclass
class BatchOutcome:
    registered: int = 0
    skipped: int = 0
    revoked_skipped: int = 0
    receipts: list[TxReceipt] | None = None


async def _precheck(chain: Chain, rows: Sequence[FleetRow]) -> dict[bytes, DeviceRecord]:
    """Which ids are already on chain: free reads save the gas of sending them (the contract would skip
    them too, so a race between this check and the tx is still safe)."""
    sem = asyncio.Semaphore(PRECHECK_CONCURRENCY)

    async def one(row: FleetRow) -> tuple[bytes, DeviceRecord | None]:
        async with sem:
            return row.device_id, await chain.registry.get_device(row.device_id)

    found = await asyncio.gather(*(one(r) for r in rows))
    return {i: rec for i, rec in found if rec is not None}


def _report_skipped(rows: Sequence[FleetRow], existing: dict[bytes, DeviceRecord]) -> None:
    """Name the first few ids that are already on chain (a re-run after a partial batch skips them all:
    one line each would bury the summary), and warn about every one whose record differs from its line,
    since the file's version of it will never be applied."""
    shown = 0
    for row in rows:
        rec = existing.get(row.device_id)
        if rec is None:
            continue
        if diff := _mismatch(row, rec):
            shown += 1
            print(
                f"warning: line {row.line}: {row.device_id.hex()} is already registered with a different "
                f"{diff}: skipped",
                file=sys.stderr,
            )
        elif shown < SKIPS_SHOWN:
            shown += 1
            state = "active" if rec.active else "revoked"
            print(f"skip line {row.line}: {row.device_id.hex()} already registered ({state})")
    if len(existing) > shown:
        print(f"skip … {len(existing) - shown} more already registered (not listed)")


def _mismatch(row: FleetRow, rec: DeviceRecord) -> str | None:
    diffs = [
        what
        for what, mine, theirs in (
            ("pubkey", row.pubkey, rec.pubkey),
            ("owner", row.owner, rec.owner),
            ("hw_class", row.hw_class, rec.hw_class),
        )
        if mine != theirs
    ]
    return ", ".join(diffs) if diffs else None


async def device_register_batch(settings: ChainSettings, csv_path: Path, chunk_size: int) -> int:
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise CliError(f"--chunk-size must be 1..{MAX_CHUNK_SIZE}")
    try:
        text = await asyncio.to_thread(csv_path.read_text)
    except OSError as exc:
        raise CliError(f"cannot read {csv_path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CliError(f"{csv_path} is not UTF-8 text") from None
    async with open_chain(settings, signing=True) as chain:
        try:
            rows = parse_fleet_csv(text, await fetch_hw_classes(chain))
        except InputError as exc:
            raise CliError(f"{csv_path}: {exc}; nothing was sent") from None
        await _require_role(chain, OPERATOR_ROLE)
        print(f"{csv_path}: {len(rows)} devices; checking which are already on chain", file=sys.stderr)
        existing = await _precheck(chain, rows)
        _report_skipped(rows, existing)
        todo = [
            DeviceInput(r.device_id, r.pubkey, r.owner, r.hw_class, r.asserted_cell)
            for r in rows
            if r.device_id not in existing
        ]
        outcome = await _send_batches(chain, todo, chunk_size)
    outcome.skipped += len(existing)
    outcome.revoked_skipped = sum(1 for rec in existing.values() if not rec.active)
    _print_batch_summary(outcome, len(rows))
    return 0


async def _send_batches(chain: Chain, todo: Sequence[DeviceInput], chunk_size: int) -> BatchOutcome:
    """All chunks are signed and sent before any is awaited (pipelined nonces: a fleet costs a few blocks,
    not a block per chunk). On a failure, what was sent is still awaited and reported, then the error."""
    outcome = BatchOutcome(receipts=[])
    if not todo:
        return outcome
    chunks = [todo[i : i + chunk_size] for i in range(0, len(todo), chunk_size)]
    bar = ProgressBar(len(chunks), len(todo))
    hashes: list[tuple[bytes, int]] = []
    failure: CliError | None = None
    contract = chain.registry.contract
    try:
        for chunk in chunks:
            fn = contract.functions.registerBatch([d.as_tuple() for d in chunk])
            try:
                hashes.append((await chain.signer.submit(fn), len(chunk)))
            except (ChainError, Web3Exception, aiohttp.ClientError, ConnectionError) as exc:
                failure = _as_cli_error(chain, exc)
                break
            bar.update(sent=len(hashes))
        for n, (tx_hash, size) in enumerate(hashes, start=1):
            try:
                receipt = await chain.signer.wait(tx_hash, label="registerBatch")
            except (ChainError, Web3Exception, aiohttp.ClientError, ConnectionError) as exc:
                failure = failure or _as_cli_error(chain, exc)
                continue
            added = len(contract.events.DeviceRegistered().process_receipt(receipt, errors=DISCARD))
            outcome.registered += added
            outcome.skipped += size - added  # registered by someone else since the precheck
            assert outcome.receipts is not None
            outcome.receipts.append(receipt)
            bar.update(confirmed=n, devices=size)
    finally:
        bar.close()
    if failure is not None and not hashes:
        raise failure
    if failure is not None:
        raise CliError(
            f"{failure} — after {outcome.registered} of {len(todo)} new devices were registered; "
            "re-run the same command to finish (registered ids are skipped)"
        )
    return outcome


def _as_cli_error(chain: Chain, exc: BaseException) -> CliError:
    if isinstance(exc, ChainError):
        return CliError(explain_chain_error(exc))
    if isinstance(exc, Web3RPCError):
        return CliError(explain_rpc_error(exc))
    if isinstance(exc, Web3Exception):
        return CliError(str(exc))
    return CliError(f"the JSON-RPC node at {chain.settings.rpc_url} failed: {exc or type(exc).__name__}")


def _print_batch_summary(outcome: BatchOutcome, total: int) -> None:
    receipts = outcome.receipts or []
    for r in receipts:
        print(_tx_line(r))
    revoked = f", {outcome.revoked_skipped} of them revoked" if outcome.revoked_skipped else ""
    print(
        f"{total} devices in file: {outcome.registered} registered, {outcome.skipped} skipped "
        f"(already on chain{revoked}), 0 failed"
    )
    if receipts and outcome.registered:
        gas = sum(int(r["gasUsed"]) for r in receipts)
        print(f"gas {gas:,} in {len(receipts)} tx ({gas // outcome.registered:,} per new device)")


async def device_revoke(settings: ChainSettings, device_id: bytes) -> int:
    async with open_chain(settings, signing=True) as chain:
        receipt = await chain.registry.revoke(device_id)
    print(f"revoked {device_id.hex()}")
    print(_tx_line(receipt))
    return 0


async def device_rotate_key(settings: ChainSettings, device_id: bytes, new_pubkey: bytes) -> int:
    async with open_chain(settings, signing=True) as chain:
        rec = await _device_or_fail(chain, device_id)
        if rec.pubkey == new_pubkey:
            raise CliError(f"device {device_id.hex()} already has this pubkey")
        receipt = await chain.registry.rotate_key(device_id, new_pubkey)
    print(f"rotated {device_id.hex()}: pubkey {rec.pubkey.hex()} → {new_pubkey.hex()}")
    print(_tx_line(receipt))
    return 0


async def device_transfer(settings: ChainSettings, device_id: bytes, to: str) -> int:
    new_owner = parse_address(to, "new owner")
    async with open_chain(settings, signing=True) as chain:
        rec = await _device_or_fail(chain, device_id)
        receipt = await chain.registry.transfer(device_id, new_owner)
    print(f"transferred {device_id.hex()}: owner {rec.owner} → {new_owner}")
    print(_tx_line(receipt))
    return 0


async def device_set_location(settings: ChainSettings, device_id: bytes, cell: str) -> int:
    cell_int = parse_cell(cell)
    async with open_chain(settings, signing=True) as chain:
        rec = await _device_or_fail(chain, device_id)
        info = await chain.registry.get_hw_class(rec.hw_class)
        if info is None:
            raise CliError(f"device {device_id.hex()} has hardware class {rec.hw_class}, which is unknown")
        if is_mobile(info):
            raise CliError(f"device {device_id.hex()} is a {info.name} (mobile): it has no asserted cell")
        check_cell_for_class(info, cell_int)
        receipt = await chain.registry.set_location(device_id, cell_int)
    print(f"set location of {device_id.hex()}: {format_cell(rec.asserted_cell)} → {format_cell(cell_int)}")
    print(_tx_line(receipt))
    return 0


def device_json(rec: DeviceRecord, class_name: str) -> dict[str, Any]:
    return {
        "device_id": rec.device_id.hex(),
        "status": "active" if rec.active else "revoked",
        "owner": rec.owner,
        "pubkey": rec.pubkey.hex(),
        "hw_class": class_name,
        "asserted_cell": format_cell(rec.asserted_cell),
        "registered_block": rec.registered_block,
    }


async def device_show(settings: ChainSettings, device_id: bytes) -> int:
    async with open_chain(settings, signing=False) as chain:
        rec = await _device_or_fail(chain, device_id)
        name = await _class_name(chain, rec.hw_class)
    print(json.dumps(device_json(rec, name), indent=2))
    return 0


async def device_list(settings: ChainSettings, owner: str | None, as_json: bool) -> int:
    """Every device (of one owner) from the registry's event history, folded like the service's mirror."""
    wanted = parse_address(owner, "owner") if owner else None
    async with open_chain(settings, signing=False) as chain:
        latest = await chain.w3.eth.block_number
        events = await chain.registry.fetch_events(chain.deployment.block, latest)
        classes = await fetch_hw_classes(chain)
    mirror: dict[bytes, DeviceRecord] = {}
    apply_events(mirror, events)
    recs = sorted(
        (r for r in mirror.values() if wanted is None or r.owner == wanted),
        key=lambda r: (r.registered_block, r.device_id),
    )

    def name(class_id: int) -> str:
        info = classes.get(class_id)
        return info.name if info else "unknown"

    if as_json:
        print(json.dumps([device_json(r, f"{name(r.hw_class)} ({r.hw_class})") for r in recs], indent=2))
        return 0
    for r in recs:
        status = "active " if r.active else "revoked"
        cell = format_cell(r.asserted_cell) or "-"
        print(f"{r.device_id.hex()}  {status}  {name(r.hw_class):<10} {cell:<16} {r.owner}")
    who = f" owned by {wanted}" if wanted else ""
    active = sum(r.active for r in recs)
    print(f"{len(recs)} device(s){who} ({active} active, {len(recs) - active} revoked) at block {latest}")
    return 0


# --------------------------------------------------------------------------------------------- hardware


async def hw_list(settings: ChainSettings) -> int:
    async with open_chain(settings, signing=False) as chain:
        classes = await fetch_hw_classes(chain)
    print(f"{'id':>5}  {'name':<12} {'max km/h':>8}  {'res':>3}  {'kind':<10} status")
    for c in sorted(classes.values(), key=lambda c: c.id):
        kind = "mobile" if is_mobile(c) else "stationary"
        status = "enabled" if c.enabled else "disabled"
        print(f"{c.id:>5}  {c.name:<12} {c.max_speed_kmh:>8}  {c.h3_res:>3}  {kind:<10} {status}")
    return 0


async def hw_set(
    settings: ChainSettings,
    class_id: int,
    name: str | None,
    max_speed: int | None,
    res: int | None,
    disable: bool,
) -> int:
    """Add or change a class. For an existing class, omitted fields keep their values; a new class needs
    them all. The class is enabled unless --disable is given."""
    if not 0 <= class_id <= 0xFFFF:
        raise CliError("hardware class id must be 0..65535")
    if max_speed is not None and not 0 <= max_speed <= 0xFFFFFFFF:
        raise CliError("--max-speed must be 0..4294967295 km/h (0 = stationary)")
    if res is not None and not 0 <= res <= 15:
        raise CliError("--res must be an H3 resolution 0..15")
    if name is not None and not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}", name):
        # devices send the name as their packets' `kind`, compared exactly: keep it plain
        raise CliError(f"--name {name!r}: use 1..32 of a-z, 0-9, '-', '_' (it is the packets' `kind`)")
    async with open_chain(settings, signing=True) as chain:
        current = await chain.registry.get_hw_class(class_id)
        if current is None:
            if name is None or max_speed is None or res is None:
                raise CliError(f"hardware class {class_id} is new: give --name, --max-speed and --res")
            current = HwClassInfo(class_id, name, max_speed, res, True)
        info = replace(
            current,
            name=current.name if name is None else name,
            max_speed_kmh=current.max_speed_kmh if max_speed is None else max_speed,
            h3_res=current.h3_res if res is None else res,
            enabled=not disable,
        )
        receipt = await chain.registry.set_hw_class(
            info.id, info.name, info.max_speed_kmh, info.h3_res, info.enabled
        )
    kind = "mobile" if is_mobile(info) else "stationary"
    state = "enabled" if info.enabled else "disabled"
    speed = f"max {info.max_speed_kmh} km/h"
    print(f"hardware class {info.id}: {info.name}, {kind}, {speed}, res {info.h3_res}, {state}")
    print(_tx_line(receipt))
    return 0
