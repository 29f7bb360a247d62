"""Fold DeviceRegistry events into an in-memory mirror — PURE (no I/O, no web3).

`devices.chain.registry.RegistryClient.fetch_events` produces `RegistryEvent`s in chain order; the service's
follower feeds them here. Replaying the full event history from the deployment block in order always
reproduces the contract's state, so a mirror can be rebuilt from scratch after a reorg; a shallow reorg
is cheaper to take back with the per-range undo records `apply_events` can keep (`rollback`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from devices.protocol.model import DeviceRecord

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


Position = tuple[int, int]  # (block number, log index): an event's place in chain order
# The state an id had before a range was folded: its record (None = not registered) and its position.
Undo = dict[bytes, tuple[DeviceRecord | None, Position | None]]


def apply_events(
    mirror: dict[bytes, DeviceRecord],
    events: Iterable[RegistryEvent],
    applied: dict[bytes, Position] | None = None,
    undo: Undo | None = None,
) -> set[bytes]:
    """Apply device events in chain order, updating `mirror` in place (a full copy per block would be
    wasteful for a large fleet). Returns the ids whose record changed, for the caller to persist.

    Events are sorted by position first, and with `applied` (id → position of the last event folded
    into its record) an event at or before that position is skipped: re-fetching an overlapping range
    or feeding an older event never rolls a record back. With `undo`, the state each changed id had
    before this call is recorded there (first write wins), so `rollback` can take the range back out
    when a reorg orphans it.

    An event for an id the mirror never saw registered is ignored: it can only happen when the mirror did
    not start from the deployment block, and inventing a partial record would be worse than a miss.
    """
    changed: set[bytes] = set()
    for ev in sorted(events, key=lambda e: e.position):
        if ev.kind not in DEVICE_EVENT_KINDS:
            continue
        last = applied.get(ev.device_id) if applied is not None else None
        if last is not None and ev.position <= last:
            continue
        rec = mirror.get(ev.device_id)
        f = ev.fields
        if ev.kind == DEVICE_REGISTERED:
            new = DeviceRecord(
                device_id=ev.device_id,
                pubkey=bytes(f["pubkey"]),
                owner=str(f["owner"]),
                hw_class=int(f["hwClass"]),
                asserted_cell=int(f["assertedCell"]),
                active=True,
                registered_block=ev.block_number,
            )
        elif rec is None:
            continue
        elif ev.kind == DEVICE_REVOKED:
            new = dataclasses.replace(rec, active=False)
        elif ev.kind == KEY_ROTATED:
            new = dataclasses.replace(rec, pubkey=bytes(f["newPubkey"]))
        elif ev.kind == LOCATION_SET:
            new = dataclasses.replace(rec, asserted_cell=int(f["cell"]))
        else:  # DEVICE_TRANSFERRED
            new = dataclasses.replace(rec, owner=str(f["to"]))
        if undo is not None and ev.device_id not in undo:
            undo[ev.device_id] = (rec, last)
        mirror[ev.device_id] = new
        if applied is not None:
            applied[ev.device_id] = ev.position
        changed.add(ev.device_id)
    return changed


def rollback(mirror: dict[bytes, DeviceRecord], applied: dict[bytes, Position], undo: Undo) -> set[bytes]:
    """Restore the ids in `undo` to the state they had before its range was folded (a record that did
    not exist is removed). Undo newest range first when taking back several. Returns the ids touched."""
    for device_id, (rec, position) in undo.items():
        if rec is None:
            mirror.pop(device_id, None)
        else:
            mirror[device_id] = rec
        if position is None:
            applied.pop(device_id, None)
        else:
            applied[device_id] = position
    return set(undo)


def confirmed_height(head: int, confirmations: int) -> int:
    """The newest block the follower folds when trusting blocks `confirmations` deep (−1: none yet)."""
    return max(-1, head - confirmations)


# The state a hardware class had before a range was folded (None = not set), as Undo for devices.
ClassUndo = dict[int, tuple[HwClassInfo | None, Position | None]]


def hw_class_info(ev: RegistryEvent) -> HwClassInfo:
    f = ev.fields
    return HwClassInfo(
        id=int(f["id"]),
        name=str(f["name"]),
        max_speed_kmh=int(f["maxSpeedKmh"]),
        h3_res=int(f["h3Res"]),
        enabled=bool(f["enabled"]),
    )


def apply_hw_class_events(
    classes: dict[int, HwClassInfo],
    events: Iterable[RegistryEvent],
    applied: dict[int, Position] | None = None,
    undo: ClassUndo | None = None,
) -> set[int]:
    """apply_events for the hardware-class table (seeded by HwClassSet events in the constructor): each
    HwClassSet replaces the class whole. Same `applied` / `undo` contract as apply_events, so the
    follower takes a reorged class change back exactly like a device change. Returns the changed ids."""
    changed: set[int] = set()
    for ev in sorted(events, key=lambda e: e.position):
        if ev.kind != HW_CLASS_SET:
            continue
        info = hw_class_info(ev)
        last = applied.get(info.id) if applied is not None else None
        if last is not None and ev.position <= last:
            continue
        if undo is not None and info.id not in undo:
            undo[info.id] = (classes.get(info.id), last)
        classes[info.id] = info
        if applied is not None:
            applied[info.id] = ev.position
        changed.add(info.id)
    return changed


def rollback_hw_classes(
    classes: dict[int, HwClassInfo], applied: dict[int, Position], undo: ClassUndo
) -> set[int]:
    """rollback for the hardware-class table."""
    for class_id, (info, position) in undo.items():
        if info is None:
            classes.pop(class_id, None)
        else:
            classes[class_id] = info
        if position is None:
            applied.pop(class_id, None)
        else:
            applied[class_id] = position
    return set(undo)
