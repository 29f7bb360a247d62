"""Owner feedback: per-device outcome maps built from a committed batch (pure)."""

from __future__ import annotations

import json

from devices.protocol.model import Media, Reading
from ingest.core import rules
from ingest.core.feedback import batch_feedback, packet_flags, stored_keys
from ingest.model import AcceptedPacket

A, B = b"\xaa" * 32, b"\xbb" * 32


def test_outcomes_per_device_and_seq() -> None:
    fb = batch_feedback(
        packets=[(A, 1), (A, 2), (A, 3), (B, 7)],
        rejected=[(A, 4, "bad_signature"), (B, None, "malformed"), (None, None, "malformed")],
        duplicates=[(A, 2)],
        replays=[(A, 3)],
    )
    assert set(fb) == {A, B}  # a rejection without a device id has nobody to tell
    assert json.loads(fb[A].encode()) == {
        "accepted": 1,
        "flagged": 0,
        "seq": {"1": "accepted", "2": "duplicate", "3": "replay", "4": "bad_signature"},
    }
    assert json.loads(fb[B].encode()) == {
        "accepted": 1,
        "flagged": 0,
        "seq": {"7": "accepted"},
        "unsequenced": ["malformed"],
    }


def test_a_seq_twice_in_one_batch_reads_accepted_if_one_copy_was_stored() -> None:
    fb = batch_feedback([(A, 1), (A, 1)], [(A, 1, "bad_signature")], duplicates=[(A, 1)], replays=[])
    assert fb[A].seq == {1: "accepted"}
    fb = batch_feedback([(A, 1), (A, 1)], [], duplicates=[(A, 1), (A, 1)], replays=[])
    assert fb[A].seq == {1: "duplicate"}


def test_stored_keys_counts_repeats() -> None:
    assert stored_keys([(A, 1), (A, 1), (A, 2), (B, 1)], duplicates=[(A, 1), (A, 2)], replays=[(B, 1)]) == [
        (A, 1)
    ]


def test_a_stored_packet_with_flagged_readings_is_reported_flagged_with_the_flag_names() -> None:
    flags = {(A, 1): rules.FLAG_BAD_VALUES | rules.FLAG_VALUE_JUMP, (A, 2): 0, (A, 3): rules.FLAG_FLATLINE}
    fb = batch_feedback([(A, 1), (A, 2), (A, 3)], [], duplicates=[(A, 3)], replays=[], flags=flags)
    assert json.loads(fb[A].encode()) == {
        "accepted": 2,
        "flagged": 1,
        "seq": {"1": "flagged", "2": "accepted", "3": "duplicate"},  # a duplicate stored nothing now
        "flags": {"1": ["bad_values", "value_jump"]},
    }


def _packet(seq: int, flags: tuple[int, ...], media: tuple[bytes | None, ...]) -> AcceptedPacket:
    readings = tuple(
        Reading(1_000 + i, 1.0, 2.0, {}, media=None if m is None else Media(m, "x"))
        for i, m in enumerate(media)
    )
    return AcceptedPacket(A, seq, "dashcam", b"d", 0, readings, (0,) * len(readings), flags)


def test_packet_flags_or_the_readings_and_add_the_stores_media_verdict() -> None:
    h1, h2 = b"\x01" * 32, b"\x02" * 32
    packets = [
        _packet(1, (0, rules.FLAG_IMPLAUSIBLE_MOTION), (h1, None)),
        _packet(2, (0, 0), (h2, None)),
        _packet(3, (0,), (None,)),
    ]
    assert packet_flags(packets, reused_media=[h2]) == {
        (A, 1): rules.FLAG_IMPLAUSIBLE_MOTION,
        (A, 2): rules.FLAG_MEDIA_REUSE,
        (A, 3): 0,
    }


def test_epoch_closed_is_the_outcome_of_a_packet_the_store_refused_for_its_closed_epoch() -> None:
    fb = batch_feedback(
        [(A, 1), (A, 2), (A, 2), (B, 3)],
        [],
        duplicates=[(B, 3)],
        replays=[],
        epoch_closed=[(A, 2), (A, 2)],
    )
    assert json.loads(fb[A].encode()) == {
        "accepted": 1,
        "flagged": 0,
        "seq": {"1": "accepted", "2": "epoch_closed"},
    }
    assert fb[B].seq == {3: "duplicate"}
    assert stored_keys([(A, 1), (A, 2)], [], [], epoch_closed=[(A, 2)]) == [(A, 1)]
