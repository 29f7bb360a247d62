"""Fold DeviceRegistry events into an in-memory mirror — PURE (no I/O, no web3).

`devices.chain.RegistryClient.fetch_events` produces `RegistryEvent`s in chain order; the service's
follower feeds them here. Replaying the full event history from the deployment block in order always
reproduces the contract's state, so a mirror can be rebuilt from scratch after a reorg.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ingest.model import DeviceRecord

DEVICE_REGISTERED = "DeviceRegistered"
DEVICE_REVOKED = "DeviceRevoked"
KEY_ROTATED = "KeyRotated"
LOCATION_SET = "LocationSet"
DEVICE_TRANSFERRED = "DeviceTransferred"
HW_CLASS_SET = "HwClassSet"
DEVICE_EVENT_KINDS = frozenset(
    {DEVICE_REGISTERED, DEVICE_REVOKED, KEY_ROTATED, LOCATION_SET, DEVICE_TRANSFERRED}
)


@dataclass(frozen=True, slots=True)
class RegistryEvent:
    """One decoded registry log. `fields` holds the event's arguments under their Solidity names
    (addresses checksummed, bytes32 as bytes); `device_id` is b"" for HwClassSet."""

    kind: str
    device_id: bytes
    block_number: int
    block_hash: bytes
    log_index: int
    tx_hash: bytes
    fields: Mapping[str, Any]

    @property
    def position(self) -> tuple[int, int]:
        return (self.block_number, self.log_index)


@dataclass(frozen=True, slots=True)
class HwClassInfo:
    id: int
    name: str
    max_speed_kmh: int
    h3_res: int
    enabled: bool


def apply_events(mirror: dict[bytes, DeviceRecord], events: Iterable[RegistryEvent]) -> set[bytes]:
    """Apply device events in order, updating `mirror` in place (a full copy per block would be wasteful
    for a large fleet). Returns the ids whose record changed, for the caller to persist.

    An event for an id the mirror never saw registered is ignored: it can only happen when the mirror did
    not start from the deployment block, and inventing a partial record would be worse than a miss.
    """
    changed: set[bytes] = set()
    for ev in events:
        if ev.kind not in DEVICE_EVENT_KINDS:
            continue
        f = ev.fields
        if ev.kind == DEVICE_REGISTERED:
            mirror[ev.device_id] = DeviceRecord(
                device_id=ev.device_id,
                pubkey=bytes(f["pubkey"]),
                owner=str(f["owner"]),
                hw_class=int(f["hwClass"]),
                asserted_cell=int(f["assertedCell"]),
                active=True,
                registered_block=ev.block_number,
            )
            changed.add(ev.device_id)
            continue
        rec = mirror.get(ev.device_id)
        if rec is None:
            continue
        if ev.kind == DEVICE_REVOKED:
            rec = dataclasses.replace(rec, active=False)
        elif ev.kind == KEY_ROTATED:
            rec = dataclasses.replace(rec, pubkey=bytes(f["newPubkey"]))
        elif ev.kind == LOCATION_SET:
            rec = dataclasses.replace(rec, asserted_cell=int(f["cell"]))
        elif ev.kind == DEVICE_TRANSFERRED:
            rec = dataclasses.replace(rec, owner=str(f["to"]))
        mirror[ev.device_id] = rec
        changed.add(ev.device_id)
    return changed


def apply_hw_class_events(classes: dict[int, HwClassInfo], events: Iterable[RegistryEvent]) -> set[int]:
    """Same as apply_events for the hardware-class table (seeded by HwClassSet events in the constructor)."""
    changed: set[int] = set()
    for ev in events:
        if ev.kind != HW_CLASS_SET:
            continue
        f = ev.fields
        info = HwClassInfo(
            id=int(f["id"]),
            name=str(f["name"]),
            max_speed_kmh=int(f["maxSpeedKmh"]),
            h3_res=int(f["h3Res"]),
            enabled=bool(f["enabled"]),
        )
        classes[info.id] = info
        changed.add(info.id)
    return changed
