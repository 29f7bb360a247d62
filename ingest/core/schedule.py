"""Epoch numbering. Epoch n ≥ 1 covers [genesis + (n−1)·L, genesis + n·L) in reading time (ms). Pure."""

from __future__ import annotations


def epoch_bounds(epoch: int, genesis_ms: int, length_ms: int) -> tuple[int, int]:
    if epoch < 1:
        raise ValueError("epochs are numbered from 1")
    start = genesis_ms + (epoch - 1) * length_ms
    return start, start + length_ms


def epoch_of(ts_ms: int, genesis_ms: int, length_ms: int) -> int:
    """The epoch a timestamp falls in (0 = before genesis)."""
    if ts_ms < genesis_ms:
        return 0
    return (ts_ms - genesis_ms) // length_ms + 1
