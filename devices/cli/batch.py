"""`depin device register-batch`: a fleet from a CSV file, judged whole before anything is sent
(devices/inputs.py), ids already on chain skipped, the rest in pipelined `registerBatch` chunks with a
progress bar, and a re-run that finishes what a failure left."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import aiohttp
from web3.exceptions import Web3Exception
from web3.logs import DISCARD
from web3.types import TxReceipt

from devices.chain.artifacts import OPERATOR_ROLE
from devices.chain.registry import DeviceInput
from devices.cli.common import (
    Chain,
    chain_command,
    explain,
    fetch_hw_classes,
    missing_role,
    open_chain,
    tx_line,
)
from devices.errors import ChainError, DepinError, InputError
from devices.inputs import FleetRow, parse_fleet_csv
from devices.protocol.model import DeviceRecord
from devices.settings import ChainSettings

PRECHECK_CONCURRENCY = 16  # parallel getDevice reads before a batch
SKIPS_SHOWN = 5  # already-registered ids named one per line before the summary
MAX_CHUNK_SIZE = 300  # registerBatch items per tx: ~22 M gas, under a 30 M block


def add_command(
    dsub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]
) -> None:
    batch = dsub.add_parser(
        "register-batch", parents=parents, help="register a fleet from a CSV file (operator)"
    )
    batch.add_argument("csv", type=Path, help="CSV: device_id,pubkey,owner,hw_class,asserted_cell")
    batch.add_argument("--chunk-size", type=int, default=100, help="devices per transaction (default 100)")
    batch.set_defaults(func=chain_command(lambda a, s: device_register_batch(s, a.csv, a.chunk_size)))


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
    receipts: list[TxReceipt] = field(default_factory=list)


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
        raise InputError(f"--chunk-size must be 1..{MAX_CHUNK_SIZE}")
    try:
        text = await asyncio.to_thread(csv_path.read_text)
    except OSError as exc:
        raise InputError(f"cannot read {csv_path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"{csv_path} is not UTF-8 text") from None
    async with open_chain(settings, signing=True) as chain:
        try:
            rows = parse_fleet_csv(text, await fetch_hw_classes(chain))
        except InputError as exc:
            raise InputError(f"{csv_path}: {exc}; nothing was sent") from None
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
    outcome = BatchOutcome()
    if not todo:
        return outcome
    chunks = [todo[i : i + chunk_size] for i in range(0, len(todo), chunk_size)]
    bar = ProgressBar(len(chunks), len(todo))
    hashes: list[tuple[bytes, int]] = []
    failure: DepinError | None = None
    contract = chain.registry.contract
    try:
        for chunk in chunks:
            fn = contract.functions.registerBatch([d.as_tuple() for d in chunk])
            try:
                hashes.append((await chain.signer.submit(fn), len(chunk)))
            except (ChainError, Web3Exception, aiohttp.ClientError, ConnectionError) as exc:
                failure = explain(chain.settings, exc)
                break
            bar.update(sent=len(hashes))
        for n, (tx_hash, size) in enumerate(hashes, start=1):
            try:
                receipt = await chain.signer.wait(tx_hash, label="registerBatch")
            except (ChainError, Web3Exception, aiohttp.ClientError, ConnectionError) as exc:
                failure = failure or explain(chain.settings, exc)
                continue
            added = len(contract.events.DeviceRegistered().process_receipt(receipt, errors=DISCARD))
            outcome.registered += added
            outcome.skipped += size - added  # registered by someone else since the precheck
            outcome.receipts.append(receipt)
            bar.update(confirmed=n, devices=size)
    finally:
        bar.close()
    if failure is not None and not hashes:
        raise failure
    if failure is not None:
        raise ChainError(
            f"{failure} — after {outcome.registered} of {len(todo)} new devices were registered; "
            "re-run the same command to finish (registered ids are skipped)"
        )
    return outcome


def _print_batch_summary(outcome: BatchOutcome, total: int) -> None:
    receipts = outcome.receipts
    for r in receipts:
        print(tx_line(r))
    revoked = f", {outcome.revoked_skipped} of them revoked" if outcome.revoked_skipped else ""
    print(
        f"{total} devices in file: {outcome.registered} registered, {outcome.skipped} skipped "
        f"(already on chain{revoked}), 0 failed"
    )
    if receipts and outcome.registered:
        gas = sum(int(r["gasUsed"]) for r in receipts)
        print(f"gas {gas:,} in {len(receipts)} tx ({gas // outcome.registered:,} per new device)")


async def _require_role(chain: Chain, role: bytes) -> None:
    """Fail before a long job rather than at its first transaction (single calls fail fast anyway: gas
    estimation reverts with the same AccessControl error)."""
    has = await chain.registry.contract.functions.hasRole(role, chain.signer.address).call()
    if not has:
        raise ChainError(missing_role(chain.signer.address, role))
