"""Owner feedback: per-device outcome maps built from a committed batch (pure)."""

from __future__ import annotations

import json

from ingest.core.feedback import batch_feedback, stored_keys

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
        "seq": {"1": "accepted", "2": "duplicate", "3": "replay", "4": "bad_signature"},
    }
    assert json.loads(fb[B].encode()) == {
        "accepted": 1,
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
