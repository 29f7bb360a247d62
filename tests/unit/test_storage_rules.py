"""What each copy of a packet becomes in the store (ingest/core/storage_rules.py): pure, table-tested.

The integration side (the same rules against real SQL, other workers and the seal lock) is
tests/integration/test_store.py.
"""

from __future__ import annotations

import pytest

from devices.protocol.model import Reading
from ingest.core.storage_rules import (
    INT64_MAX,
    MAX_TS_MS,
    SMALLINT_MAX,
    Outcome,
    packet_outcome,
    split_batch,
    unstorable,
)
from ingest.model import AcceptedPacket

A, B = b"\xaa" * 32, b"\xbb" * 32
MINE, OTHER = b"\x01" * 32, b"\x02" * 32
CELL = 0x8928308280FFFFF


def packet(
    device: bytes = A, seq: int = 1, digest: bytes = MINE, *, ts: tuple[int, ...] = (1_000,)
) -> AcceptedPacket:
    readings = tuple(Reading(ts_ms=t, lat=1.0, lon=2.0, vals={}) for t in ts)
    return AcceptedPacket(device, seq, "weather", digest, 5_000, readings, (CELL,) * len(ts), (0,) * len(ts))


@pytest.mark.parametrize(
    ("digest", "stored_digest", "inserted_here", "expected", "why"),
    [
        (MINE, MINE, True, Outcome.STORED, "this copy is the one the INSERT stored"),
        (MINE, MINE, False, Outcome.DUPLICATE, "the same payload was already stored (a redelivery)"),
        (MINE, OTHER, False, Outcome.REPLAY, "another payload is stored under the same (device, seq)"),
        (MINE, None, False, Outcome.EPOCH_CLOSED, "nothing stored: the seal refused the key"),
        (OTHER, MINE, False, Outcome.REPLAY, "a later copy in the batch with another payload"),
    ],
)
def test_packet_outcome(
    digest: bytes, stored_digest: bytes | None, inserted_here: bool, expected: Outcome, why: str
) -> None:
    assert packet_outcome(digest, stored_digest, inserted_here=inserted_here) is expected, why


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (packet(), None),
        (packet(seq=INT64_MAX), None),
        (packet(seq=INT64_MAX + 1), "seq 9223372036854775808 outside 0..2^63-1"),
        (packet(seq=-1), "seq -1 outside 0..2^63-1"),
        (packet(ts=(0, MAX_TS_MS)), None),
        (packet(ts=(1, MAX_TS_MS + 1)), f"timestamp {MAX_TS_MS + 1} ms cannot be stored"),
        (packet(ts=(-1,)), "timestamp -1 ms cannot be stored"),
        (
            packet(ts=tuple(range(SMALLINT_MAX + 1))),
            f"{SMALLINT_MAX + 1} readings do not fit a smallint index",
        ),
        (packet(ts=()), None),  # no readings: nothing to check but the seq
    ],
)
def test_unstorable(p: AcceptedPacket, expected: str | None) -> None:
    assert unstorable(p) == expected


def test_unstorable_cell() -> None:
    p = packet()
    bad = AcceptedPacket(p.device_id, p.seq, p.kind, p.payload_digest, 0, p.readings, (2**63,), p.flags)
    assert unstorable(bad) == f"cell {2**63} is not an H3 index"


@pytest.mark.parametrize(
    ("batch", "first", "repeats", "unstorable_seqs", "why"),
    [
        ([packet(A, 1), packet(B, 1)], [(A, 1), (B, 1)], 0, [], "distinct keys all go to the INSERT"),
        ([packet(A, 1), packet(A, 1, OTHER)], [(A, 1)], 1, [], "the first copy of a key wins"),
        (
            [packet(A, 1, ts=(-1,)), packet(A, 1)],
            [(A, 1)],
            0,
            [1],
            "an unstorable copy does not take the key",
        ),
        ([packet(A, 2), packet(A, 2, ts=(-1,))], [(A, 2)], 1, [], "a later copy is judged against the first"),
        ([], [], 0, [], "an empty batch"),
    ],
)
def test_split_batch(
    batch: list[AcceptedPacket],
    first: list[tuple[bytes, int]],
    repeats: int,
    unstorable_seqs: list[int],
    why: str,
) -> None:
    split = split_batch(batch)
    assert list(split.first) == first, why
    assert len(split.repeats) == repeats, why
    assert [p.seq for p, _ in split.unstorable] == unstorable_seqs, why
    if split.first:
        assert split.first[first[0]] is next(
            p for p in batch if (p.device_id, p.seq) == first[0] and not unstorable(p)
        )


def test_split_batch_refuses_a_caller_bug() -> None:
    p = packet()
    bad = AcceptedPacket(p.device_id, p.seq, p.kind, p.payload_digest, 0, p.readings, (), p.flags)
    with pytest.raises(ValueError, match="one cell per reading"):
        split_batch([bad])
