"""`depin device …`: a device's identity (`new`), its registration and changes on chain, and the
registry read back (`show`, `list`). Batch registration is in batch.py."""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from devices.cli import batch
from devices.cli.common import (
    Chain,
    chain_command,
    chain_options,
    device_or_fail,
    fetch_hw_classes,
    open_chain,
    tx_line,
)
from devices.errors import ChainError, InputError
from devices.inputs import (
    check_cell_for_class,
    format_cell,
    is_mobile,
    parse_address,
    parse_cell,
    parse_device_id,
    parse_hw_class,
    parse_pubkey,
)
from devices.keys import load_identity, new_identity, save_identity
from devices.protocol.model import DeviceRecord
from devices.protocol.registry_fold import HwClassInfo, apply_events, apply_hw_class_events
from devices.settings import ChainSettings

# --------------------------------------------------------------------------------------------- commands


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dv = sub.add_parser("device", help="device identities and the on-chain registry")
    dsub = dv.add_subparsers(dest="device_command", required=True)
    chain = [chain_options()]

    new = dsub.add_parser("new", help="make a key pair and device id (credential file, mode 0600)")
    new.add_argument("--out", type=Path, required=True, help="credential file to write (never overwritten)")
    new.add_argument("--id", help="device id (64 hex digits) assigned by the manufacturer (default: random)")
    new.add_argument("--show-secret", action="store_true", help="also print the private seed")
    new.set_defaults(func=lambda a: device_new(a.out, a.show_secret, a.id))

    reg = dsub.add_parser("register", parents=chain, help="register one device (operator)")
    reg.add_argument("--cred", type=Path, help="the device's credential file (from `depin device new`)")
    reg.add_argument("--id", help="device id, 64 hex digits (instead of --cred)")
    reg.add_argument("--pubkey", help="Ed25519 public key, 64 hex digits (with --id)")
    reg.add_argument("--owner", required=True, help="owner address")
    reg.add_argument("--class", dest="hw_class", required=True, help="hardware class: name or id")
    reg.add_argument("--cell", help="asserted H3 cell of a stationary device (e.g. 8728308280fffff)")
    reg.set_defaults(func=chain_command(_register))

    batch.add_command(dsub, chain)

    rev = dsub.add_parser("revoke", parents=chain, help="revoke a device for good (operator)")
    rot = dsub.add_parser("rotate-key", parents=chain, help="set a new device key (operator or owner)")
    rot.add_argument("--pubkey", help="new Ed25519 public key, 64 hex digits")
    rot.add_argument("--cred", type=Path, help="credential file holding the new key (same device id)")
    tr = dsub.add_parser("transfer", parents=chain, help="hand a device to a new owner (owner)")
    tr.add_argument("--to", required=True, help="new owner address")
    loc = dsub.add_parser("set-location", parents=chain, help="set a stationary device's cell (operator)")
    loc.add_argument("--cell", required=True, help="H3 cell index")
    show = dsub.add_parser("show", parents=chain, help="a device's record on chain")
    for p in (rev, rot, tr, loc, show):
        p.add_argument("device_id", help="device id, 64 hex digits")
    rev.set_defaults(func=chain_command(lambda a, s: device_revoke(s, parse_device_id(a.device_id))))
    rot.set_defaults(func=chain_command(_rotate_key))
    tr.set_defaults(func=chain_command(lambda a, s: device_transfer(s, parse_device_id(a.device_id), a.to)))
    loc.set_defaults(
        func=chain_command(lambda a, s: device_set_location(s, parse_device_id(a.device_id), a.cell))
    )
    show.set_defaults(func=chain_command(lambda a, s: device_show(s, parse_device_id(a.device_id))))

    ls = dsub.add_parser("list", parents=chain, help="devices from the registry's events")
    ls.add_argument("--owner", help="only this owner's devices")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=chain_command(lambda a, s: device_list(s, a.owner, a.json)))


def _register(args: argparse.Namespace, settings: ChainSettings) -> Awaitable[int]:
    dev, pubkey = identity_args(args.cred, args.id, args.pubkey)
    return device_register(settings, dev, pubkey, args.owner, args.hw_class, args.cell)


def _rotate_key(args: argparse.Namespace, settings: ChainSettings) -> Awaitable[int]:
    device_id = parse_device_id(args.device_id)
    if args.cred is not None:
        if args.pubkey:
            raise InputError("give either --pubkey or --cred, not both")
        new_dev, new_key = identity_args(args.cred, None, None)
        if new_dev != device_id:
            raise InputError(f"{args.cred} is for device {new_dev.hex()}, not {device_id.hex()}")
    elif args.pubkey:
        new_key = parse_pubkey(args.pubkey)
    else:
        raise InputError("give the new key: --pubkey HEX or --cred FILE")
    return device_rotate_key(settings, device_id, new_key)


def identity_args(cred: Path | None, id_hex: str | None, pubkey_hex: str | None) -> tuple[bytes, bytes]:
    """(device id, pubkey) from a credential file or from --id/--pubkey."""
    if cred is not None:
        if id_hex or pubkey_hex:
            raise InputError("give either --cred or --id with --pubkey, not both")
        identity = load_identity(cred)
        return identity.device_id, identity.pubkey
    if not (id_hex and pubkey_hex):
        raise InputError("give --cred FILE, or both --id HEX and --pubkey HEX")
    return parse_device_id(id_hex), parse_pubkey(pubkey_hex)


# --------------------------------------------------------------------------------------------- bodies


def device_new(out: Path, show_secret: bool, device_id_hex: str | None = None) -> int:
    if out.exists():
        raise InputError(f"{out} exists: refusing to overwrite a device's credentials")
    device_id = parse_device_id(device_id_hex) if device_id_hex else None
    identity = new_identity(device_id)
    save_identity(identity, out)
    print(f"device_id {identity.hex_id}")
    print(f"pubkey    {identity.pubkey.hex()}")
    print(f"credentials written to {out} (mode 0600)")
    if show_secret:
        print(f"seed      {bytes(identity.signing_key).hex()}")
    return 0


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
    print(tx_line(receipt))
    return 0


async def device_revoke(settings: ChainSettings, device_id: bytes) -> int:
    async with open_chain(settings, signing=True) as chain:
        receipt = await chain.registry.revoke(device_id)
    print(f"revoked {device_id.hex()}")
    print(tx_line(receipt))
    return 0


async def device_rotate_key(settings: ChainSettings, device_id: bytes, new_pubkey: bytes) -> int:
    async with open_chain(settings, signing=True) as chain:
        rec = await device_or_fail(chain, device_id)
        if rec.pubkey == new_pubkey:
            raise InputError(f"device {device_id.hex()} already has this pubkey")
        receipt = await chain.registry.rotate_key(device_id, new_pubkey)
    print(f"rotated {device_id.hex()}: pubkey {rec.pubkey.hex()} → {new_pubkey.hex()}")
    print(tx_line(receipt))
    return 0


async def device_transfer(settings: ChainSettings, device_id: bytes, to: str) -> int:
    new_owner = parse_address(to, "new owner")
    async with open_chain(settings, signing=True) as chain:
        rec = await device_or_fail(chain, device_id)
        receipt = await chain.registry.transfer(device_id, new_owner)
    print(f"transferred {device_id.hex()}: owner {rec.owner} → {new_owner}")
    print(tx_line(receipt))
    return 0


async def device_set_location(settings: ChainSettings, device_id: bytes, cell: str) -> int:
    cell_int = parse_cell(cell)
    async with open_chain(settings, signing=True) as chain:
        rec = await device_or_fail(chain, device_id)
        info = await chain.registry.get_hw_class(rec.hw_class)
        if info is None:
            raise ChainError(f"device {device_id.hex()} has hardware class {rec.hw_class}, which is unknown")
        if is_mobile(info):
            raise InputError(f"device {device_id.hex()} is a {info.name} (mobile): it has no asserted cell")
        check_cell_for_class(info, cell_int)
        receipt = await chain.registry.set_location(device_id, cell_int)
    print(f"set location of {device_id.hex()}: {format_cell(rec.asserted_cell)} → {format_cell(cell_int)}")
    print(tx_line(receipt))
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


async def _class_name(chain: Chain, class_id: int) -> str:
    info = await chain.registry.get_hw_class(class_id)
    return f"{info.name} ({class_id})" if info else f"unknown ({class_id})"


async def device_show(settings: ChainSettings, device_id: bytes) -> int:
    async with open_chain(settings, signing=False) as chain:
        rec = await device_or_fail(chain, device_id)
        name = await _class_name(chain, rec.hw_class)
    print(json.dumps(device_json(rec, name), indent=2))
    return 0


async def device_list(settings: ChainSettings, owner: str | None, as_json: bool) -> int:
    """Every device (of one owner) from the registry's event history, folded like the service's mirror
    (the class table from the same events)."""
    wanted = parse_address(owner, "owner") if owner else None
    async with open_chain(settings, signing=False) as chain:
        latest = await chain.w3.eth.block_number
        events = await chain.registry.fetch_events(chain.deployment.block, latest)
    mirror: dict[bytes, DeviceRecord] = {}
    apply_events(mirror, events)
    classes: dict[int, HwClassInfo] = {}
    apply_hw_class_events(classes, events)
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
