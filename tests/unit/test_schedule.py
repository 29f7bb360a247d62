"""The epoch scheduler's decision (`ingest.core.schedule.next_step`), table-tested."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.core.schedule import (
    IDLE_POLL_MS,
    MAX_WAIT_MS,
    Close,
    Publish,
    Wait,
    epoch_bounds,
    epoch_of,
    next_step,
)

G = 1_000_000  # genesis
L = 10_000  # epoch length
GR = 500  # grace


def end(n: int) -> int:
    return G + n * L


@pytest.mark.parametrize(
    ("last", "unpublished", "earliest", "now", "expected"),
    [
        # Fresh database, nothing stored: poll (every 5 s, or the epoch length if shorter).
        (None, None, None, G, Wait(5_000)),
        (None, None, None, end(100), Wait(5_000)),
        # Fresh database: the epoch of the earliest reading, once its end + grace has passed.
        (None, None, G + 5, end(1) + GR - 1, Wait(1)),
        (None, None, G + 5, end(1) + GR, Close(1)),
        (None, None, G + 5, end(1), Wait(GR)),
        # ...started long after genesis: not the epoch containing now, the earliest reading's.
        (None, None, G + 3 * L + 1, end(50), Close(4)),
        (None, None, end(3), end(50), Close(4)),  # an epoch's end belongs to the next epoch
        (None, None, end(3) - 1, end(50), Close(3)),
        # A reading before genesis can pay nobody: epoch 1 is the first.
        (None, None, G - 1, end(1) + GR, Close(1)),
        (None, None, 0, G, Wait(L + GR)),
        # A restart after epoch 3 was published or settled: epoch 4 once due.
        (3, None, None, end(4) + GR, Close(4)),
        (3, None, G, end(4) + GR, Close(4)),
        (3, None, None, end(4) + GR - 20, Wait(20)),
        # Downtime spanning epochs 4..9: still epoch 4 first (every epoch in order, empty ones too).
        (3, None, None, end(9) + GR + 1, Close(4)),
        # The earliest reading does not matter once an epoch is stored.
        (3, None, end(7), end(9) + GR, Close(4)),
        # Closed but not on chain (a crash, a failed publish): finish it first, whatever the time.
        (3, 3, None, end(3), Publish(3)),
        (3, 3, None, end(9) + GR, Publish(3)),
        (3, 1, None, end(9) + GR, Publish(1)),  # the lowest first (only a close by hand leaves two)
        # Nothing due yet: wait exactly until the next epoch's end + grace.
        (None, None, G, G, Wait(L + GR)),
        (3, None, None, end(3), Wait(L + GR)),
    ],
)
def test_next_step(
    last: int | None, unpublished: int | None, earliest: int | None, now: int, expected: object
) -> None:
    assert next_step(last, unpublished, earliest, now, G, L, GR) == expected


def test_waits_are_capped_and_idle_poll_follows_short_epochs() -> None:
    day = 86_400_000
    assert next_step(3, None, None, G, G, day, 5_000) == Wait(MAX_WAIT_MS)
    assert next_step(None, None, G, G, G, day, 5_000) == Wait(MAX_WAIT_MS)
    assert next_step(None, None, None, G, G, 2_000, 500) == Wait(2_000)  # short epochs: poll faster
    assert next_step(None, None, None, G, G, day, 0, idle_poll_ms=250) == Wait(250)
    assert next_step(1, None, None, G, G, day, 0, max_wait_ms=7) == Wait(7)
    # A published epoch waiting for its confirmations: look again within the idle poll.
    assert next_step(3, None, None, G, G, day, 5_000, settling=True) == Wait(IDLE_POLL_MS)
    assert next_step(3, None, None, G + 4 * day + 5_000, G, day, 5_000, settling=True) == Close(4)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        next_step(None, None, None, G, G, 0, GR)
    with pytest.raises(ValueError):
        next_step(None, None, None, G, G, L, -1)


@given(
    last=st.one_of(st.none(), st.integers(1, 10_000)),
    closed=st.booleans(),
    earliest=st.one_of(st.none(), st.integers(0, end(10_000))),
    now=st.integers(0, end(20_000)),
    length=st.integers(1, 10**9),
    grace=st.integers(0, 10**7),
)
def test_never_closes_early_and_never_skips(
    last: int | None, closed: bool, earliest: int | None, now: int, length: int, grace: int
) -> None:
    unpublished = last if last and closed else None
    step = next_step(last, unpublished, earliest, now, G, length, grace)
    if isinstance(step, Close):
        assert now >= epoch_bounds(step.epoch, G, length)[1] + grace  # only once end + grace passed
        if last is not None:
            assert step.epoch == last + 1  # the next one, never a later one
        else:
            assert earliest is not None and step.epoch == max(1, epoch_of(earliest, G, length))
    elif isinstance(step, Publish):
        assert step.epoch == unpublished is not None
    else:
        assert 1 <= step.ms <= MAX_WAIT_MS
        if last is not None or earliest is not None:
            nxt = last + 1 if last is not None else max(1, epoch_of(earliest or 0, G, length))
            assert now + step.ms <= epoch_bounds(nxt, G, length)[1] + grace  # never oversleeps the due time
