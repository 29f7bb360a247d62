"""The rejection budget (ingest/core/rejection_budget.py): signed rejections always get a row, unsigned
ones a per-topic and a per-worker token budget."""

from __future__ import annotations

import pytest

from devices.protocol.model import Reason
from ingest.core.rejection_budget import UNSIGNED, BudgetConfig, RejectionBudget, always_recorded
from ingest.model import RejectedMessage

T1, T2 = "depin/v1/" + "a1" * 32 + "/up", "depin/v1/" + "b2" * 32 + "/up"


@pytest.mark.parametrize(
    ("reason", "recorded_always"),
    [
        (Reason.TOO_LARGE, False),
        (Reason.MALFORMED, False),
        (Reason.KID_MISMATCH, False),
        (Reason.UNKNOWN_DEVICE, False),
        (Reason.REVOKED_DEVICE, False),
        (Reason.BAD_SIGNATURE, False),
        (Reason.RATE_LIMITED, True),
        (Reason.BAD_VALUES, True),
        (Reason.CLOCK_SKEW, True),
        (Reason.TOO_LATE, True),
        (Reason.REPLAY, True),
        (Reason.EPOCH_CLOSED, True),
    ],
)
def test_which_reasons_are_budgeted(reason: Reason, recorded_always: bool) -> None:
    assert always_recorded(reason) is recorded_always
    assert (reason in UNSIGNED) is not recorded_always


# Steps (reason, topic, now_ms) and the admissions expected: per topic 60/min (1/s), burst 3; total 5.
CFG = BudgetConfig(per_topic_per_min=60, per_topic_burst=3, total_per_min=5, max_topics=2)
G, S = Reason.BAD_SIGNATURE, Reason.RATE_LIMITED


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        # A topic's burst, then nothing until a token refills (1 a second).
        ([(G, T1, 0)] * 4 + [(G, T1, 999), (G, T1, 1000)], [1, 1, 1, 0, 0, 1]),
        # Signed rejections pass however empty the buckets are, and spend nothing.
        ([(G, T1, 0)] * 3 + [(S, T1, 0)] * 3 + [(G, T1, 0)], [1, 1, 1, 1, 1, 1, 0]),
        # Another topic has its own burst ...
        ([(G, T1, 0)] * 3 + [(G, T2, 0)] * 2, [1, 1, 1, 1, 1]),
        # ... but the worker's total (5) caps both together; a refusal by the total spends no topic token.
        ([(G, T1, 0)] * 3 + [(G, T2, 0)] * 3, [1, 1, 1, 1, 1, 0]),
        # The clock running backwards buys nothing.
        ([(G, T1, 5000)] * 3 + [(G, T1, 0), (G, T1, 4000)], [1, 1, 1, 0, 0]),
        # Refill is capped at the burst.
        ([(G, T1, 0), (G, T1, 600_000)] + [(G, T1, 600_000)] * 3, [1, 1, 1, 1, 0]),
    ],
)
def test_budget_table(steps: list[tuple[str, str, int]], expected: list[int]) -> None:
    budget = RejectionBudget(CFG)
    assert [int(budget.admit(*step)) for step in steps] == expected


def test_topics_are_lru_capped() -> None:
    budget = RejectionBudget(BudgetConfig(per_topic_burst=1, total_per_min=1000, max_topics=2))
    for i in range(1000):
        budget.admit(G, f"t{i}", 0)
    assert len(budget) == 2


def _rej(reason: Reason, topic: str, n: int) -> RejectedMessage:
    return RejectedMessage(n.to_bytes(32, "big"), None, n, reason, "", 0, topic)


def test_split_keeps_order_and_counts_the_rest() -> None:
    budget = RejectionBudget(BudgetConfig(per_topic_per_min=0, per_topic_burst=2))
    flood = [_rej(G, T1, i) for i in range(1000)] + [_rej(S, T1, 1000)]
    recorded, counted = budget.split(flood, 0)
    assert [r.seq for r in recorded] == [0, 1, 1000]
    assert len(counted) == 998 and all(r.reason == G for r in counted)
