"""Loads the shared wire-format conformance vectors (../shared/vectors/wire-v1.json)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from devices.protocol.model import DeviceRecord

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = [
    ROOT.parent / "shared" / "vectors" / "wire-v1.json",
    ROOT / "tests" / "fixtures" / "wire-v1.json",
]


@cache
def load() -> dict[str, Any]:
    for path in CANDIDATES:
        if path.exists():
            return json.loads(path.read_text())
    raise FileNotFoundError(f"wire-v1.json not found in {[str(p) for p in CANDIDATES]}")


def registry(hw_classes: dict[str, int] | None = None) -> dict[bytes, DeviceRecord]:
    """The vectors' devices as registry records (kind taken from the device name)."""
    classes = hw_classes or {"dashcam": 1, "weather": 2, "air": 3}
    out = {}
    for name, dev in load()["devices"].items():
        did = bytes.fromhex(dev["device_id"])
        out[did] = DeviceRecord(
            did, bytes.fromhex(dev["pubkey"]), "0x" + "11" * 20, classes[name.split("-")[0]], 0, True
        )
    return out
