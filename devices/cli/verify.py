"""`depin verify-export FILE`: a buyer's check of an export (devices/verify_export.py) against the device
keys of the on-chain DeviceRegistry, read-only (no signer key). Prints a summary; exit status 1 when
any row fails, so a script can refuse the data."""

from __future__ import annotations

import argparse
from pathlib import Path

from devices.cli.common import chain_options, open_chain, run_command
from devices.errors import InputError
from devices.protocol.model import DeviceRecord
from devices.settings import ChainSettings
from devices.verify_export import device_ids, read_rows, verify_rows


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "verify-export",
        parents=[chain_options(signer=False)],
        help="check every reading of an export against its signed envelope and the on-chain device keys",
    )
    p.add_argument(
        "file", type=Path, help="NDJSON or CSV export with an `envelope` column (docs/PROVENANCE.md)"
    )
    p.set_defaults(func=_handler)


def _handler(args: argparse.Namespace) -> int:
    settings = ChainSettings.resolve(rpc_url=args.rpc_url, deployment_file=args.deployment)
    path: Path = args.file
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        ids = device_ids(read_rows(path))  # first pass: which keys to read
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    return run_command(settings, lambda: verify_export(settings, path, ids))


async def verify_export(settings: ChainSettings, path: Path, ids: set[bytes]) -> int:
    """Read the keys of `ids` from the registry, then check every row of `path` (second pass)."""
    records: dict[bytes, DeviceRecord | None] = {}
    async with open_chain(settings, signing=False) as chain:
        for device_id in sorted(ids):
            records[device_id] = await chain.registry.get_device(device_id)
    summary = verify_rows(read_rows(path), records.get)
    print(f"{path}: " + ("verified" if summary.ok else "NOT verified"))
    for line in summary.lines():
        print(line)
    return 0 if summary.ok else 1
