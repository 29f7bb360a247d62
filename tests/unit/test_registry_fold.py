"""The pure registry fold: apply_events (ordering, idempotence, undo records), rollback, confirmed_height."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from devices.protocol.model import DeviceRecord
from devices.protocol.registry_fold import (
    DEVICE_REGISTERED,
    DEVICE_REVOKED,
    DEVICE_TRANSFERRED,
    HW_CLASS_SET,
    KEY_ROTATED,
    LOCATION_SET,
    ClassUndo,
    HwClassInfo,
    Position,
    RegistryEvent,
    Undo,
    apply_events,
    apply_hw_class_events,
    confirmed_height,
    rollback,
    rollback_hw_classes,
)

A, B = b"\xaa" * 32, b"\xbb" * 32
OWNER, OTHER = "0x" + "11" * 20, "0x" + "22" * 20


def ev(kind: str, device: bytes, block: int, index: int = 0, **fields: Any) -> RegistryEvent:
    return RegistryEvent(kind, device, block, bytes([block % 256]) * 32, index, b"\x00" * 32, fields)


def registered(device: bytes, block: int, index: int = 0, key: bytes = b"\x01" * 32) -> RegistryEvent:
    return ev(DEVICE_REGISTERED, device, block, index, pubkey=key, owner=OWNER, hwClass=1, assertedCell=0)


def test_registration_creates_an_active_record() -> None:
    mirror: dict[bytes, DeviceRecord] = {}
    assert apply_events(mirror, [registered(A, 5)]) == {A}
    assert mirror[A] == DeviceRecord(A, b"\x01" * 32, OWNER, 1, 0, active=True, registered_block=5)


def test_every_change_kind() -> None:
    mirror: dict[bytes, DeviceRecord] = {}
    apply_events(
        mirror,
        [
            registered(A, 1),
            ev(KEY_ROTATED, A, 2, newPubkey=b"\x02" * 32),
            ev(LOCATION_SET, A, 3, cell=0x8928308280FFFFF),
            ev(DEVICE_TRANSFERRED, A, 4, to=OTHER),
            ev(DEVICE_REVOKED, A, 5),
        ],
    )
    rec = mirror[A]
    assert (rec.pubkey, rec.asserted_cell, rec.owner, rec.active) == (
        b"\x02" * 32,
        0x8928308280FFFFF,
        OTHER,
        False,
    )
    assert rec.registered_block == 1


def test_events_are_applied_in_chain_order_whatever_the_input_order() -> None:
    mirror: dict[bytes, DeviceRecord] = {}
    events = [
        ev(KEY_ROTATED, A, 3, 1, newPubkey=b"\x03" * 32),
        ev(KEY_ROTATED, A, 3, 0, newPubkey=b"\x02" * 32),
    ]
    apply_events(mirror, [*events, registered(A, 1)])
    assert mirror[A].pubkey == b"\x03" * 32


def test_event_for_an_unregistered_id_is_ignored() -> None:
    mirror: dict[bytes, DeviceRecord] = {}
    assert apply_events(mirror, [ev(DEVICE_REVOKED, B, 2)]) == set()
    assert mirror == {}


def test_hw_class_events_are_not_device_events() -> None:
    mirror: dict[bytes, DeviceRecord] = {}
    assert apply_events(mirror, [ev(HW_CLASS_SET, b"", 1, id=1)]) == set()


def test_refolding_an_overlapping_range_changes_nothing() -> None:
    mirror: dict[bytes, DeviceRecord] = {}
    applied: dict[bytes, Position] = {}
    history = [registered(A, 1), ev(DEVICE_REVOKED, A, 2)]
    apply_events(mirror, history, applied)
    assert applied[A] == (2, 0)
    # The same range fetched again (or an older event) must not resurrect the revoked device.
    assert apply_events(mirror, [registered(A, 1)], applied) == set()
    assert mirror[A].active is False


def test_undo_records_the_state_before_the_range_first_write_wins() -> None:
    mirror: dict[bytes, DeviceRecord] = {}
    applied: dict[bytes, Position] = {}
    apply_events(mirror, [registered(A, 1)], applied)
    before = mirror[A]
    undo: Undo = {}
    apply_events(
        mirror,
        [ev(KEY_ROTATED, A, 2, newPubkey=b"\x02" * 32), ev(DEVICE_REVOKED, A, 3), registered(B, 3, 1)],
        applied,
        undo,
    )
    assert undo == {A: (before, (1, 0)), B: (None, None)}


def test_rollback_restores_exactly_the_prior_state() -> None:
    mirror: dict[bytes, DeviceRecord] = {}
    applied: dict[bytes, Position] = {}
    apply_events(mirror, [registered(A, 1)], applied)
    snapshot, applied_snapshot = copy.deepcopy(mirror), dict(applied)
    undo: Undo = {}
    apply_events(mirror, [ev(DEVICE_REVOKED, A, 2), registered(B, 2, 1)], applied, undo)
    assert rollback(mirror, applied, undo) == {A, B}
    assert mirror == snapshot and applied == applied_snapshot
    # After the rollback the same (or a different, canonical) range folds again normally.
    apply_events(mirror, [ev(DEVICE_REVOKED, A, 2)], applied)
    assert mirror[A].active is False


def test_rollback_of_several_ranges_newest_first() -> None:
    mirror: dict[bytes, DeviceRecord] = {}
    applied: dict[bytes, Position] = {}
    apply_events(mirror, [registered(A, 1)], applied)
    snapshot = copy.deepcopy(mirror)
    undos: list[Undo] = []
    for event in [ev(KEY_ROTATED, A, 2, newPubkey=b"\x02" * 32), ev(DEVICE_REVOKED, A, 3)]:
        undo: Undo = {}
        apply_events(mirror, [event], applied, undo)
        undos.append(undo)
    for undo in reversed(undos):
        rollback(mirror, applied, undo)
    assert mirror == snapshot and applied == {A: (1, 0)}


def test_full_replay_equals_incremental_fold() -> None:
    history = [
        registered(A, 1),
        registered(B, 1, 1),
        ev(KEY_ROTATED, A, 4, newPubkey=b"\x05" * 32),
        ev(DEVICE_TRANSFERRED, B, 6, to=OTHER),
        ev(DEVICE_REVOKED, B, 9),
    ]
    at_once: dict[bytes, DeviceRecord] = {}
    apply_events(at_once, history)
    in_ranges: dict[bytes, DeviceRecord] = {}
    applied: dict[bytes, Position] = {}
    for lo, hi in [(0, 3), (4, 6), (3, 9)]:  # overlapping ranges, as after a retry
        apply_events(in_ranges, [e for e in history if lo <= e.block_number <= hi], applied)
    assert in_ranges == at_once


@pytest.mark.parametrize(
    ("head", "confirmations", "expected"), [(100, 0, 100), (100, 12, 88), (5, 12, -1), (0, 0, 0), (-1, 0, -1)]
)
def test_confirmed_height(head: int, confirmations: int, expected: int) -> None:
    assert confirmed_height(head, confirmations) == expected


def test_hw_class_fold() -> None:
    classes: dict[int, Any] = {}
    changed = apply_hw_class_events(
        classes,
        [
            ev(HW_CLASS_SET, b"", 1, id=3, name="x", maxSpeedKmh=200, h3Res=9, enabled=True),
            ev(HW_CLASS_SET, b"", 2, id=3, name="x", maxSpeedKmh=200, h3Res=9, enabled=False),
            registered(A, 2, 1),
        ],
    )
    assert changed == {3} and classes[3].enabled is False


def cls(
    block: int, index: int = 0, *, id: int = 4, speed: int = 120, res: int = 10, on: bool = True
) -> RegistryEvent:
    return ev(HW_CLASS_SET, b"", block, index, id=id, name="drone", maxSpeedKmh=speed, h3Res=res, enabled=on)


def test_hw_class_fold_in_chain_order_skips_what_was_applied() -> None:
    classes: dict[int, HwClassInfo] = {}
    applied: dict[int, Position] = {}
    apply_hw_class_events(classes, [cls(3, speed=90), cls(2, speed=60)], applied)  # out of order
    assert classes[4] == HwClassInfo(4, "drone", 90, 10, True) and applied[4] == (3, 0)
    # An overlapping re-fetch, or an older event, never rolls a class back.
    assert apply_hw_class_events(classes, [cls(2, speed=60), cls(3, speed=90)], applied) == set()
    assert classes[4].max_speed_kmh == 90


def test_hw_class_undo_and_rollback_restore_the_prior_table() -> None:
    classes: dict[int, HwClassInfo] = {}
    applied: dict[int, Position] = {}
    apply_hw_class_events(classes, [cls(1, id=1, speed=200, res=9)], applied)
    before, before_applied = copy.deepcopy(classes), dict(applied)
    undo: ClassUndo = {}
    changed = apply_hw_class_events(
        classes, [cls(5, id=1, speed=150), cls(6, id=4), cls(7, id=4, on=False)], applied, undo
    )
    assert changed == {1, 4}
    assert undo == {1: (before[1], (1, 0)), 4: (None, None)}  # first write wins
    assert rollback_hw_classes(classes, applied, undo) == {1, 4}
    assert classes == before and applied == before_applied
