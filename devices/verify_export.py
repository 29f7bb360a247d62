"""Check a data export without trusting the service that produced it (docs/PROVENANCE.md).

Each exported reading carries its packet's signed envelope: the COSE_Sign1 message exactly as the
device published it, base64 (RFC 4648, padded). For every row this decodes the envelope with the
project's codec, checks its Ed25519 signature against the device key held by the on-chain
DeviceRegistry (the caller supplies the lookup: `devices/cli/verify.py` reads the chain), and checks
that the row's fields equal what the device signed. No part of the service is needed.

File format (`read_rows`): NDJSON (one JSON object a line, the `/v1/readings` reading shape plus
`envelope`) or CSV with a header; the first non-blank character decides (`{` is NDJSON). Required per
row: `device_id` (hex), `seq`, `idx` (the reading's index in its packet), `envelope`. Compared when
present: `ts` (ms since 1970, or ISO 8601), `lat`, `lon`, `acc`, `alt`, `kind`, `vals` (an object; in
CSV its JSON text), `media` (an object `{sha256, uri}`) or `media_sha256`/`media_uri`. `acc` and `alt`
are stored as 32-bit floats, so they are compared at that precision; everything else exactly. Other
columns (`cell`, `flags`: the service's own judgement, not signed) are ignored.
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import math
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

from devices.protocol import codec
from devices.protocol.model import DeviceRecord, Reading, Rejection, SignedMessage

REQUIRED = ("device_id", "seq", "idx", "envelope")


class Failure(StrEnum):
    """Why a row does not verify, in the order the checks run."""

    BAD_ROW = "bad_row"  # a required field is missing or not readable
    MISSING_ENVELOPE = "missing_envelope"  # the row has no envelope (stored before envelopes were kept)
    MALFORMED_ENVELOPE = "malformed_envelope"  # not base64, or not a COSE_Sign1 message the codec accepts
    ID_MISMATCH = "id_mismatch"  # the row's device_id/seq are not the envelope's
    UNKNOWN_DEVICE = "unknown_device"  # the device id is not in the on-chain registry
    REVOKED_DEVICE = "revoked_device"  # the device is revoked on chain
    BAD_SIGNATURE = "bad_signature"  # the signature does not verify with the registry's key
    NO_SUCH_READING = "no_such_reading"  # idx is beyond the signed packet's readings
    VALUE_MISMATCH = "value_mismatch"  # a field differs from the signed reading


@dataclass(frozen=True, slots=True)
class Row:
    line: int  # 1-based line of the file (CSV: the header is line 1)
    fields: dict[str, Any]


@dataclass(slots=True)
class Summary:
    rows: int = 0
    packets: int = 0
    verified: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)  # the first failures, "line N: reason: detail"

    @property
    def ok(self) -> bool:
        return self.rows > 0 and not self.failures

    def lines(self) -> list[str]:
        by_reason = ", ".join(f"{r} {n}" for r, n in sorted(self.failures.items())) or "none"
        return [
            f"rows {self.rows} · packets {self.packets} · verified {self.verified}",
            f"failures: {by_reason}",
            *self.examples,
        ]


# --- reading the file ---------------------------------------------------------------------------------


def read_rows(path: Path) -> Iterator[Row]:
    """The export's rows, streamed (NDJSON or CSV, see the module doc). A line that is not a JSON object
    becomes a row with no fields (it then fails `bad_row`)."""
    with path.open(newline="", encoding="utf-8") as f:
        first, skipped = "", -1
        while not first:
            pos = f.tell()
            line = f.readline()
            if not line:
                return
            first, skipped = line.strip(), skipped + 1
        f.seek(pos)
        if first.startswith("{"):
            for n, line in enumerate(f, start=1 + skipped):
                if line.strip():
                    yield Row(n, _json_object(line))
        else:
            reader = csv.DictReader(f)
            for rec in reader:
                yield Row(reader.line_num + skipped, {k: v for k, v in rec.items() if k is not None})


def _json_object(line: str) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


# --- checking -----------------------------------------------------------------------------------------


class _Fail(Exception):
    def __init__(self, reason: Failure, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def device_ids(rows: Iterable[Row]) -> set[bytes]:
    """The device ids the rows name (to read their keys from the chain once each)."""
    out = set()
    for row in rows:
        try:
            out.add(_hex_id(row.fields.get("device_id")))
        except _Fail:
            continue
    return out


def verify_rows(
    rows: Iterable[Row], lookup: Callable[[bytes], DeviceRecord | None], *, max_examples: int = 10
) -> Summary:
    """Check every row (see the module doc); `lookup` gives the registry's record of a device id."""
    s = Summary()
    # Each packet's envelope is checked once: (its base64 text, the decoded message or why it failed).
    packets: dict[tuple[bytes, int], tuple[str, SignedMessage | _Fail]] = {}
    for row in rows:
        s.rows += 1
        try:
            device_id, seq, idx, envelope = _required(row.fields)
            key = (device_id, seq)
            if key not in packets:
                s.packets += 1
                try:
                    packets[key] = (envelope, _check_packet(device_id, seq, envelope, lookup))
                except _Fail as exc:
                    packets[key] = (envelope, exc)
            first, msg = packets[key]
            if isinstance(msg, _Fail):
                raise msg
            if envelope != first:
                raise _Fail(Failure.ID_MISMATCH, f"another envelope than an earlier row's for packet {seq}")
            if not 0 <= idx < len(msg.packet.readings):
                raise _Fail(Failure.NO_SUCH_READING, f"idx {idx}, packet has {len(msg.packet.readings)}")
            compare(msg.packet.readings[idx], msg.packet.kind, row.fields)
            s.verified += 1
        except _Fail as exc:
            s.failures[exc.reason] += 1
            if len(s.examples) < max_examples:
                s.examples.append(f"line {row.line}: {exc.reason}: {exc.detail}")
    return s


def _required(f: dict[str, Any]) -> tuple[bytes, int, int, str]:
    missing = [k for k in REQUIRED[:3] if f.get(k) in (None, "")]
    if missing:
        raise _Fail(Failure.BAD_ROW, f"no {', '.join(missing)}")
    if f.get("envelope") in (None, ""):
        raise _Fail(Failure.MISSING_ENVELOPE, "the row has no envelope")
    if not isinstance(f["envelope"], str):
        raise _Fail(Failure.MALFORMED_ENVELOPE, "envelope must be a base64 string")
    return _hex_id(f["device_id"]), _int(f["seq"], "seq"), _int(f["idx"], "idx"), f["envelope"]


def _hex_id(raw: Any) -> bytes:
    try:
        b = bytes.fromhex(str(raw).removeprefix("0x"))
    except ValueError:
        b = b""
    if len(b) != 32:
        raise _Fail(Failure.BAD_ROW, f"device_id {str(raw)[:70]!r} is not 64 hex digits")
    return b


def _int(raw: Any, name: str) -> int:
    if isinstance(raw, bool):
        raise _Fail(Failure.BAD_ROW, f"{name} is not an integer")
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise _Fail(Failure.BAD_ROW, f"{name} {str(raw)[:40]!r} is not an integer") from None


def _decode_b64(envelope: str) -> bytes:
    try:
        return base64.b64decode(envelope, validate=True)
    except (binascii.Error, ValueError):
        raise _Fail(Failure.MALFORMED_ENVELOPE, "envelope is not base64") from None


def _check_packet(
    device_id: bytes, seq: int, envelope: str, lookup: Callable[[bytes], DeviceRecord | None]
) -> SignedMessage:
    """The decoded envelope if it is the row's packet, its device is registered and active, and the
    registry's key verifies its signature."""
    decoded = codec.decode(_decode_b64(envelope))
    if isinstance(decoded, Rejection):
        raise _Fail(Failure.MALFORMED_ENVELOPE, decoded.detail)
    p = decoded.packet
    if decoded.kid != device_id or p.dev != device_id or p.seq != seq:
        raise _Fail(
            Failure.ID_MISMATCH,
            f"row is {device_id.hex()[:16]}…/{seq}, envelope is {decoded.kid.hex()[:16]}…/{p.seq} "
            f"(payload dev {p.dev.hex()[:16]}…)",
        )
    record = lookup(device_id)
    if record is None:
        raise _Fail(Failure.UNKNOWN_DEVICE, f"device {device_id.hex()} is not in the on-chain registry")
    if not record.active:
        raise _Fail(Failure.REVOKED_DEVICE, f"device {device_id.hex()} is revoked on chain")
    try:
        crypto_sign_open(decoded.signature + codec.signed_bytes(decoded), record.pubkey)
    except (BadSignatureError, ValueError):
        raise _Fail(
            Failure.BAD_SIGNATURE,
            f"packet {seq}: the signature does not verify with the registry's key of {device_id.hex()[:16]}…",
        ) from None
    return decoded


def compare(reading: Reading, kind: str, f: dict[str, Any]) -> None:
    """Raise value_mismatch on the first exported field that differs from the signed reading."""
    if "ts" in f and f["ts"] not in (None, "") and _ts_ms(f["ts"]) != reading.ts_ms:
        raise _Fail(Failure.VALUE_MISMATCH, f"ts {f['ts']} ≠ signed {reading.ts_ms}")
    if "kind" in f and f["kind"] not in (None, "") and f["kind"] != kind:
        raise _Fail(Failure.VALUE_MISMATCH, f"kind {f['kind']!r} ≠ signed {kind!r}")
    for name, signed, f32 in (
        ("lat", reading.lat, False),
        ("lon", reading.lon, False),
        ("acc", reading.acc, True),
        ("alt", reading.alt, True),
    ):
        if name in f and not _same_number(f[name], signed, f32=f32):
            raise _Fail(Failure.VALUE_MISMATCH, f"{name} {f[name]} ≠ signed {signed}")
    if "vals" in f:
        _compare_vals(f["vals"], reading.vals)
    media = f.get("media")
    sha = media.get("sha256") if isinstance(media, dict) else f.get("media_sha256")
    uri = media.get("uri") if isinstance(media, dict) else f.get("media_uri")
    if "media" in f or "media_sha256" in f:
        signed_sha = None if reading.media is None else reading.media.sha256.hex()
        if (sha or None) != signed_sha:
            raise _Fail(Failure.VALUE_MISMATCH, f"media sha256 {sha} ≠ signed {signed_sha}")
    if ("media" in f or "media_uri" in f) and (uri or None) != (
        None if reading.media is None else reading.media.uri
    ):
        raise _Fail(Failure.VALUE_MISMATCH, f"media uri {uri!r} differs from the signed one")


def _compare_vals(raw: Any, signed: dict[str, float | int]) -> None:
    vals = raw
    if isinstance(raw, str):
        try:
            vals = json.loads(raw)
        except ValueError:
            vals = None
    if not isinstance(vals, dict):
        raise _Fail(Failure.VALUE_MISMATCH, "vals is not an object")
    if set(vals) != set(signed):
        raise _Fail(Failure.VALUE_MISMATCH, f"vals names {sorted(vals)} ≠ signed {sorted(signed)}")
    for name, value in vals.items():
        if not _same_number(value, signed[name]):
            raise _Fail(Failure.VALUE_MISMATCH, f"vals.{name} {value} ≠ signed {signed[name]}")


def _same_number(exported: Any, signed: float | int | None, *, f32: bool = False) -> bool:
    if exported in (None, ""):
        return signed is None
    if signed is None or isinstance(exported, bool):
        return False
    try:
        value = float(exported)
    except (TypeError, ValueError):
        return False
    if not math.isfinite(value):
        return False
    if f32:
        return _as_f32(value) == _as_f32(float(signed))
    return value == float(signed)


def _as_f32(x: float) -> float:
    try:
        return float(struct.unpack("<f", struct.pack("<f", x))[0])
    except OverflowError:
        return math.inf


def _ts_ms(raw: Any) -> int | None:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    text = str(raw)
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        return None
    return round(dt.timestamp() * 1000)
