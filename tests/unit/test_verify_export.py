"""devices/verify_export.py: every row of an export checked against its signed envelope and a registry
lookup (in memory here; tests/integration/test_provenance.py reads anvil's registry through
`depin verify-export`). One table: each tampering, and the reason it is named by."""

from __future__ import annotations

import base64
import csv
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devices.keys import new_identity
from devices.protocol.model import DeviceRecord, Media, Reading
from devices.sdk import build_message
from devices.verify_export import Failure, Row, device_ids, read_rows, verify_rows

OWNER = "0x4D41e538832E12538616605D02f8a448CB18A25e"
GOOD = new_identity()
OTHER = new_identity()  # never registered
REVOKED = new_identity()
READINGS = (
    Reading(1_767_225_600_000, 52.52, 13.405, {"temperature_c": 9.5, "humidity_pct": 71}, acc=3.4, alt=34.2),
    Reading(
        1_767_225_601_000,
        52.5201,
        13.405,
        {"temperature_c": 9.6, "humidity_pct": 71},
        media=Media(b"\x01" * 32, "s3://bucket/a.jpg"),
    ),
)
REGISTRY = {
    GOOD.device_id: DeviceRecord(GOOD.device_id, GOOD.pubkey, OWNER, 2, 0, True),
    REVOKED.device_id: DeviceRecord(REVOKED.device_id, REVOKED.pubkey, OWNER, 2, 0, False),
}


def _f32(x: float | None) -> float | None:
    return None if x is None else float(struct.unpack("<f", struct.pack("<f", x))[0])


def export_rows(identity: Any = GOOD, seq: int = 7, message: bytes | None = None) -> list[dict[str, Any]]:
    """The rows an export would hold for one packet: the reading shape of /v1/readings + `envelope`."""
    message = message if message is not None else build_message(identity, seq, "weather", READINGS)
    return [
        {
            "ts": r.ts_ms,
            "device_id": identity.device_id.hex(),
            "seq": seq,
            "idx": i,
            "lat": r.lat,
            "lon": r.lon,
            "acc": _f32(r.acc),  # `real` columns: what PostgreSQL gives back
            "alt": _f32(r.alt),
            "cell": "872830828ffffff",
            "kind": "weather",
            "vals": r.vals,
            "media": None if r.media is None else {"sha256": r.media.sha256.hex(), "uri": r.media.uri},
            "flags": [],
            "envelope": base64.b64encode(message).decode(),
        }
        for i, r in enumerate(READINGS)
    ]


def _verify(rows: list[dict[str, Any]]) -> Any:
    return verify_rows([Row(i + 1, r) for i, r in enumerate(rows)], REGISTRY.get)


def test_a_good_export_verifies() -> None:
    s = _verify(export_rows() + export_rows(seq=8))
    assert (s.rows, s.packets, s.verified, dict(s.failures), s.ok) == (4, 2, 4, {}, True)


def _set(name: str, value: Any, row: int = 0) -> Callable[[list[dict[str, Any]]], None]:
    def edit(rows: list[dict[str, Any]]) -> None:
        rows[row][name] = value

    return edit


def _flip_signature(rows: list[dict[str, Any]]) -> None:
    raw = bytearray(base64.b64decode(rows[0]["envelope"]))
    raw[-1] ^= 1  # the signature is the message's last bstr
    for r in rows:
        r["envelope"] = base64.b64encode(bytes(raw)).decode()


def _vals(rows: list[dict[str, Any]]) -> None:
    rows[0]["vals"] = {**rows[0]["vals"], "temperature_c": 19.5}


CASES: list[tuple[str, Callable[[list[dict[str, Any]]], None], Failure, str]] = [
    ("value", _vals, Failure.VALUE_MISMATCH, "vals.temperature_c 19.5"),
    (
        "extra value",
        _set("vals", {"temperature_c": 9.5, "humidity_pct": 71, "x": 1}),
        Failure.VALUE_MISMATCH,
        "names",
    ),
    ("lat", _set("lat", 52.53), Failure.VALUE_MISMATCH, "lat 52.53"),
    ("ts", _set("ts", 1_767_225_600_001), Failure.VALUE_MISMATCH, "ts "),
    ("acc", _set("acc", 3.5), Failure.VALUE_MISMATCH, "acc 3.5"),
    ("kind", _set("kind", "air"), Failure.VALUE_MISMATCH, "kind"),
    ("media", _set("media", None, row=1), Failure.VALUE_MISMATCH, "media"),
    (
        "media uri",
        _set("media", {"sha256": "01" * 32, "uri": "s3://x"}, row=1),
        Failure.VALUE_MISMATCH,
        "uri",
    ),
    ("signature", _flip_signature, Failure.BAD_SIGNATURE, "does not verify"),
    ("seq", _set("seq", 8), Failure.ID_MISMATCH, "envelope is"),
    ("idx", _set("idx", 2), Failure.NO_SUCH_READING, "idx 2"),
    ("no envelope", _set("envelope", None), Failure.MISSING_ENVELOPE, "no envelope"),
    ("not base64", _set("envelope", "%%%"), Failure.MALFORMED_ENVELOPE, "base64"),
    ("not cose", _set("envelope", base64.b64encode(b"\xa0").decode()), Failure.MALFORMED_ENVELOPE, ""),
    ("device id", _set("device_id", "zz"), Failure.BAD_ROW, "device_id"),
]


@pytest.mark.parametrize(("name", "edit", "reason", "detail"), CASES, ids=[c[0] for c in CASES])
def test_each_tampering_fails_with_its_reason(
    name: str, edit: Callable[[list[dict[str, Any]]], None], reason: Failure, detail: str
) -> None:
    rows = export_rows()
    edit(rows)
    s = _verify(rows)
    assert not s.ok
    assert s.failures[reason] >= 1, s.examples
    assert detail in s.examples[0], s.examples


@pytest.mark.parametrize(
    ("identity", "reason"), [(OTHER, Failure.UNKNOWN_DEVICE), (REVOKED, Failure.REVOKED_DEVICE)]
)
def test_devices_the_registry_does_not_vouch_for_fail(identity: Any, reason: Failure) -> None:
    s = _verify(export_rows(identity))
    assert dict(s.failures) == {reason: 2} and s.verified == 0


def test_a_second_envelope_for_one_packet_is_refused() -> None:
    rows = export_rows()
    other = export_rows(message=build_message(GOOD, 7, "weather", READINGS[:1]))  # same seq, re-signed
    s = _verify(rows + other[:1])
    assert dict(s.failures) == {Failure.ID_MISMATCH: 1} and s.verified == 2


def test_csv_and_ndjson_files(tmp_path: Path) -> None:
    rows = export_rows()
    nd = tmp_path / "export.ndjson"
    nd.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cols = [
        "device_id",
        "seq",
        "idx",
        "ts",
        "lat",
        "lon",
        "acc",
        "alt",
        "kind",
        "vals",
        "media_sha256",
        "media_uri",
        "envelope",
    ]
    path = tmp_path / "export.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            media = r["media"] or {}
            flat = {
                **r,
                "vals": json.dumps(r["vals"]),
                "media_sha256": media.get("sha256"),
                "media_uri": media.get("uri"),
            }
            w.writerow(["" if flat[c] is None else flat[c] for c in cols])
    for p in (nd, path):
        assert device_ids(read_rows(p)) == {GOOD.device_id}
        s = verify_rows(read_rows(p), REGISTRY.get)
        assert (s.rows, s.verified, s.ok) == (2, 2, True), s.examples
    # CSV line numbers count the header.
    path.write_text(path.read_text().replace('""temperature_c"": 9.5,', '""temperature_c"": 9.25,', 1))
    s = verify_rows(read_rows(path), REGISTRY.get)
    assert s.examples and s.examples[0].startswith("line 2: value_mismatch"), s.examples


def test_an_empty_file_is_not_verified(tmp_path: Path) -> None:
    p = tmp_path / "empty.ndjson"
    p.write_text("\n")
    assert not verify_rows(read_rows(p), REGISTRY.get).ok
