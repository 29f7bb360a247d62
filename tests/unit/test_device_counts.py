"""ingest/core/device_counts.py: what a batch adds to each device's per-epoch counts (table tests)."""

from __future__ import annotations

import pytest

from devices.protocol.model import Media, Reading
from ingest.core.device_counts import EpochCount, count_rejected, count_stored
from ingest.core.rules import FLAG_MEDIA_REUSE, FLAG_OFF_LOCATION
from ingest.model import AcceptedPacket

G, L = 1_000_000, 10_000  # genesis, epoch length: epoch 1 is [1_000_000, 1_010_000)
A, B = b"a" * 32, b"b" * 32
SHA = b"\x07" * 32


def pkt(
    device: bytes, ts: list[int], flags: list[int] | None = None, received: int = 5, media: int | None = None
) -> AcceptedPacket:
    readings = tuple(
        Reading(t, 0.0, 0.0, {}, media=Media(SHA, "u") if i == media else None) for i, t in enumerate(ts)
    )
    return AcceptedPacket(
        device, 1, "weather", b"d", received, readings, (0,) * len(ts), tuple(flags or [0] * len(ts))
    )


CASES = [
    (
        "one packet, one epoch",
        [pkt(A, [G + 1, G + 2], [0, FLAG_OFF_LOCATION])],
        set(),
        {(A, 1): EpochCount(1, 2, 1, 0, 5)},
    ),
    ("before genesis is epoch 0", [pkt(A, [G - 1])], set(), {(A, 0): EpochCount(1, 1, 0, 0, 5)}),
    (
        "a packet across two epochs: readings where they fall, the packet in its first",
        [pkt(A, [G + L - 1, G + L, G + L + 1], [4, 0, 0])],
        set(),
        {(A, 1): EpochCount(1, 1, 1, 0, 5), (A, 2): EpochCount(0, 2, 0, 0, None)},
    ),
    (
        "media reuse found by the store flags the reading",
        [pkt(A, [G, G + 1], media=1)],
        {SHA},
        {(A, 1): EpochCount(1, 2, 1, 0, 5)},
    ),
    ("media not reused", [pkt(A, [G, G + 1], media=1)], set(), {(A, 1): EpochCount(1, 2, 0, 0, 5)}),
    (
        "two devices, last seen is the newest receipt",
        [pkt(A, [G], received=9), pkt(A, [G + 5], received=7), pkt(B, [G])],
        set(),
        {(A, 1): EpochCount(2, 2, 0, 0, 9), (B, 1): EpochCount(1, 1, 0, 0, 5)},
    ),
    ("an empty packet counts nothing", [pkt(A, [])], set(), {}),
]


@pytest.mark.parametrize(("name", "packets", "reused", "want"), CASES, ids=[c[0] for c in CASES])
def test_count_stored(
    name: str, packets: list[AcceptedPacket], reused: set[bytes], want: dict[tuple[bytes, int], EpochCount]
) -> None:
    assert count_stored(packets, reused, G, L) == want


def test_media_reuse_flag_is_not_counted_twice() -> None:
    p = pkt(A, [G], [FLAG_MEDIA_REUSE], media=0)
    assert count_stored([p], {SHA}, G, L) == {(A, 1): EpochCount(1, 1, 1, 0, 5)}


def test_count_rejected_adds_to_the_same_counts() -> None:
    counts = count_stored([pkt(A, [G])], set(), G, L)
    out = count_rejected([(A, 1, 3), (None, 1, 5), (B, 2, 1)], counts)
    assert out is counts
    assert out == {(A, 1): EpochCount(1, 1, 0, 3, 5), (B, 2): EpochCount(rejected=1)}
