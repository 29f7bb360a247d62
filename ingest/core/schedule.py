"""Epoch numbering and the scheduler's decision. Pure.

Epoch n ≥ 1 covers [genesis + (n−1)·L, genesis + n·L) in reading time (ms).

`next_step` decides what the epoch scheduler does next from what is stored and the time; the loop
in `ingest/epochs.py` only carries the decision out, so the rule is table-tested here:

- an epoch closed but not yet on chain is finished first (`Publish`);
- on a fresh database (no epoch stored) the first epoch closed is the one holding the earliest
  stored reading (nothing before it can pay anyone; a reading before genesis counts as epoch 1);
  with no reading stored yet nothing closes and the scheduler polls again;
- after that every epoch in order, empty ones included, each once its end + grace has passed;
- while a published epoch waits to settle (`settling`), the scheduler looks again at least every
  `IDLE_POLL_MS` (settling itself is `Epochs.settle`, run at every turn).
"""

from __future__ import annotations

from dataclasses import dataclass

# Longest single sleep: the decision is re-taken at least this often (clock jumps, earlier readings
# arriving on a fresh database, a restart of another scheduler).
MAX_WAIT_MS = 60_000
# How often to look again while no reading is stored (capped by the epoch length for short epochs).
IDLE_POLL_MS = 5_000


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


@dataclass(frozen=True, slots=True)
class Close:
    """Seal, score and store epoch `epoch`, then publish it."""

    epoch: int


@dataclass(frozen=True, slots=True)
class Publish:
    """Epoch `epoch` is stored as closed but not on chain yet: publish (or settle) it."""

    epoch: int


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing is due: decide again after `ms` milliseconds (≥ 1)."""

    ms: int


Step = Close | Publish | Wait


def next_step(
    last_epoch: int | None,
    unpublished: int | None,
    earliest_reading_ms: int | None,
    now_ms: int,
    genesis_ms: int,
    length_ms: int,
    grace_ms: int,
    *,
    max_wait_ms: int = MAX_WAIT_MS,
    idle_poll_ms: int = IDLE_POLL_MS,
    settling: bool = False,
) -> Step:
    """What the scheduler does next.

    `last_epoch`: the highest stored epoch, None on a fresh database. `unpublished`: the lowest epoch
    stored as closed but neither published nor settled, None if there is none (the scheduler leaves at
    most the last one so; a close run by hand may leave others). `earliest_reading_ms`: the earliest
    stored reading's timestamp (only looked at when no epoch is stored), None if there is none.
    `settling`: a published epoch waits for its confirmations: a wait is capped at `idle_poll_ms`, so
    its receipt is looked at again soon.
    """
    if length_ms <= 0 or grace_ms < 0 or max_wait_ms < 1 or idle_poll_ms < 1:
        raise ValueError("length must be > 0, grace ≥ 0, waits ≥ 1 ms")
    if unpublished is not None:
        return Publish(unpublished)
    if last_epoch is not None:
        nxt = last_epoch + 1
    elif earliest_reading_ms is None:
        return Wait(min(idle_poll_ms, length_ms, max_wait_ms))
    else:
        nxt = max(1, epoch_of(earliest_reading_ms, genesis_ms, length_ms))
    _, end_ms = epoch_bounds(nxt, genesis_ms, length_ms)
    due_ms = end_ms + grace_ms
    if now_ms >= due_ms:
        return Close(nxt)
    return Wait(min(due_ms - now_ms, max_wait_ms, idle_poll_ms if settling else max_wait_ms))
