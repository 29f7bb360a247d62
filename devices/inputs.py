"""Operator input checks, pure (no chain, no I/O): device ids, keys, addresses, H3 cells, hardware classes
and the fleet CSV of `depin device register-batch`.

Every check raises InputError with a message fit for one line on a terminal, so a fleet file is judged
whole, with line numbers, before a single transaction is sent.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass

import h3
from eth_utils import is_address, is_checksum_address, to_checksum_address

from devices.errors import InputError
from devices.protocol.registry_fold import HwClassInfo

FLEET_COLUMNS = ("device_id", "pubkey", "owner", "hw_class", "asserted_cell")
MAX_ERRORS_SHOWN = 3


@dataclass(frozen=True, slots=True)
class FleetRow:
    line: int  # 1-based line of the CSV file, for messages
    device_id: bytes
    pubkey: bytes
    owner: str  # checksummed
    hw_class: int
    asserted_cell: int  # 0 = mobile


def parse_hex32(text: str, what: str) -> bytes:
    """32 bytes from 64 hex digits (an optional 0x prefix is allowed)."""
    s = text.strip()
    s = s[2:] if s[:2].lower() == "0x" else s
    try:
        raw = bytes.fromhex(s)
    except ValueError:
        raise InputError(f"{what} {text!r} is not hex") from None
    if len(raw) != 32:
        raise InputError(f"{what} must be 32 bytes (64 hex digits), got {len(raw)}")
    return raw


def parse_device_id(text: str) -> bytes:
    return parse_hex32(text, "device id")


def parse_pubkey(text: str) -> bytes:
    raw = parse_hex32(text, "pubkey")
    if raw == bytes(32):
        raise InputError("pubkey is all zeros")
    return raw


def parse_address(text: str, what: str = "address") -> str:
    """A checksummed address. All-lowercase input is accepted; mixed case must carry a valid checksum
    (EIP-55), since a typo in a checksummed address is exactly what the checksum catches."""
    s = text.strip()
    if not is_address(s):
        raise InputError(f"{what} {text!r} is not an address (0x + 40 hex digits)")
    digits = s.removeprefix("0x").removeprefix("0X")
    # eth_utils.is_address accepts any case; mixed case is a checksum claim, so hold it to it.
    if digits != digits.lower() and digits != digits.upper() and not is_checksum_address(s):
        raise InputError(f"{what} {text!r} has a bad EIP-55 checksum (mistyped?)")
    checksummed = to_checksum_address(s)
    if checksummed == "0x" + "0" * 40:
        raise InputError(f"{what} is the zero address")
    return checksummed


def parse_cell(text: str) -> int:
    """An H3 cell given as its usual hex string (e.g. 8928308280fffff) → the uint64 the contract keeps."""
    s = text.strip().lower()
    s = s[2:] if s.startswith("0x") else s
    if not s or not h3.is_valid_cell(s):
        raise InputError(f"cell {text!r} is not a valid H3 cell index")
    return int(h3.str_to_int(s))


def format_cell(cell: int) -> str | None:
    return h3.int_to_str(cell) if cell else None


def parse_hw_class(text: str, classes: Mapping[int, HwClassInfo]) -> HwClassInfo:
    """A hardware class by name or numeric id, enabled on chain."""
    s = text.strip()
    if s.isdigit():
        info = classes.get(int(s))
    else:
        info = next((classes[i] for i in sorted(classes) if classes[i].name.lower() == s.lower()), None)
    if info is None:
        known = ", ".join(
            f"{c.name}={c.id}" for c in sorted(classes.values(), key=lambda c: c.id) if c.enabled
        )
        raise InputError(f"unknown hardware class {text!r} (enabled: {known or 'none'})")
    if not info.enabled:
        raise InputError(f"hardware class {info.name} ({info.id}) is disabled")
    return info


def is_mobile(info: HwClassInfo) -> bool:
    # The registry has no mobile flag: a speed limit means it moves (0 = stationary), as in hwclass.py.
    return info.max_speed_kmh > 0


def check_cell_for_class(info: HwClassInfo, cell: int) -> None:
    """A stationary device needs the cell it is installed in (its readings are judged against it), at
    exactly its class's resolution: a coarser cell would let it claim anywhere in a region (the service
    gives a cell of another resolution no trust, and the contract refuses it). A mobile one has none."""
    if is_mobile(info) and cell:
        raise InputError(f"{info.name} is a mobile class: leave the cell empty")
    if not is_mobile(info) and not cell:
        raise InputError(f"{info.name} is a stationary class: its asserted cell is required")
    if cell:
        res = h3.get_resolution(h3.int_to_str(cell))
        if res != info.h3_res:
            raise InputError(
                f"cell {h3.int_to_str(cell)} is resolution {res}, but {info.name} cells are resolution "
                f"{info.h3_res}: give the res-{info.h3_res} cell the device is installed in"
            )


def parse_fleet_csv(text: str, classes: Mapping[int, HwClassInfo]) -> list[FleetRow]:
    """The whole fleet file, or InputError naming the first bad lines. Blank lines are ignored; an id or
    a pubkey that repeats an earlier line is an error (two devices never share a key)."""
    rows = csv.reader(io.StringIO(text.removeprefix("\ufeff")))  # spreadsheets often save a BOM
    header: list[str] | None = None
    out: list[FleetRow] = []
    errors: list[str] = []
    seen_ids: dict[bytes, int] = {}
    seen_keys: dict[bytes, int] = {}
    start = 1  # physical line where the next row starts (a quoted field may span lines)
    for fields in rows:
        line, start = start, rows.line_num + 1
        if not any(f.strip() for f in fields):
            continue
        if header is None:
            header = [f.strip().lower() for f in fields]
            if sorted(header) != sorted(FLEET_COLUMNS):
                raise InputError(
                    f"line {line}: header must be {','.join(FLEET_COLUMNS)} (got {','.join(header)})"
                )
            continue
        try:
            if len(fields) != len(header):
                raise InputError(f"{len(fields)} fields, expected {len(header)}")
            rec = dict(zip(header, fields, strict=True))
            row = _fleet_row(line, rec, classes)
            if row.device_id in seen_ids:
                raise InputError(f"device id repeats line {seen_ids[row.device_id]}")
            if row.pubkey in seen_keys:
                raise InputError(f"pubkey repeats line {seen_keys[row.pubkey]}")
        except InputError as exc:
            errors.append(f"line {line}: {exc}")
            continue
        seen_ids[row.device_id] = seen_keys[row.pubkey] = line
        out.append(row)
    if errors:
        more = len(errors) - MAX_ERRORS_SHOWN
        shown = "; ".join(errors[:MAX_ERRORS_SHOWN])
        raise InputError(shown + (f"; and {more} more bad line(s)" if more > 0 else ""))
    if header is None:
        raise InputError(f"empty file: expected the header {','.join(FLEET_COLUMNS)}")
    if not out:
        raise InputError("no devices after the header")
    return out


def _fleet_row(line: int, rec: Mapping[str, str], classes: Mapping[int, HwClassInfo]) -> FleetRow:
    info = parse_hw_class(rec["hw_class"], classes)
    cell = parse_cell(rec["asserted_cell"]) if rec["asserted_cell"].strip() else 0
    check_cell_for_class(info, cell)
    return FleetRow(
        line=line,
        device_id=parse_device_id(rec["device_id"]),
        pubkey=parse_pubkey(rec["pubkey"]),
        owner=parse_address(rec["owner"], "owner"),
        hw_class=info.id,
        asserted_cell=cell,
    )
