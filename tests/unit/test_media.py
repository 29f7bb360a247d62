"""The batch's side of media reuse (the store decides against every hash ever stored)."""

from __future__ import annotations

from ingest.core.media import MediaUse, first_uses

A, B, C = (bytes([i]) * 32 for i in (1, 2, 3))


def use(sha: bytes, device: bytes, seq: int, idx: int = 0) -> MediaUse:
    return MediaUse(sha, device, 1_000 + seq, seq, idx)


def test_first_use_of_each_hash_in_order() -> None:
    uses = [use(b"h1", A, 1), use(b"h2", A, 1, 1), use(b"h1", A, 2), use(b"h3", B, 5)]
    firsts, reused = first_uses(uses)
    assert firsts == [uses[0], uses[1], uses[3]]
    assert reused == set()  # a device sending its own frame again is not reuse


def test_a_hash_from_two_devices_is_reused_and_keeps_its_first_use() -> None:
    uses = [use(b"h1", A, 1), use(b"h2", B, 1), use(b"h1", B, 2), use(b"h1", C, 3), use(b"h2", B, 4)]
    firsts, reused = first_uses(uses)
    assert firsts == [uses[0], uses[1]]
    assert reused == {b"h1"}


def test_nothing_in_nothing_out() -> None:
    assert first_uses([]) == ([], set())
