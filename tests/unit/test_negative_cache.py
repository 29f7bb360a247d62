"""NegativeCache (TTL, size bound) and ReadBudget (token bucket for on-demand reads)."""

from __future__ import annotations

import pytest

from ingest.core.negative_cache import NegativeCache, ReadBudget


def ids(n: int) -> list[bytes]:
    return [i.to_bytes(32, "big") for i in range(n)]


def test_entry_lives_for_ttl_then_expires() -> None:
    cache = NegativeCache(ttl_s=10.0, max_size=100)
    cache.add(b"a", now=100.0)
    assert cache.contains(b"a", 100.0)
    assert cache.contains(b"a", 109.9)
    assert not cache.contains(b"a", 110.0)
    assert len(cache) == 0  # an expired hit is dropped, not kept around


def test_unknown_key_is_not_contained() -> None:
    assert not NegativeCache(1.0, 10).contains(b"x", 0.0)


def test_re_adding_refreshes_the_expiry() -> None:
    cache = NegativeCache(ttl_s=10.0, max_size=100)
    cache.add(b"a", 0.0)
    cache.add(b"a", 8.0)
    assert cache.contains(b"a", 17.0)
    assert len(cache) == 1


def test_size_bound_evicts_oldest_first() -> None:
    cache = NegativeCache(ttl_s=1000.0, max_size=3)
    keys = ids(5)
    for i, k in enumerate(keys):
        cache.add(k, float(i))
    assert len(cache) == 3
    assert [cache.contains(k, 5.0) for k in keys] == [False, False, True, True, True]


def test_refreshed_key_is_evicted_last() -> None:
    cache = NegativeCache(ttl_s=1000.0, max_size=2)
    a, b, c = ids(3)
    cache.add(a, 0.0)
    cache.add(b, 1.0)
    cache.add(a, 2.0)  # a is now the newest
    cache.add(c, 3.0)
    assert cache.contains(a, 4.0) and cache.contains(c, 4.0) and not cache.contains(b, 4.0)


def test_expired_entries_are_dropped_on_add_without_a_lookup() -> None:
    cache = NegativeCache(ttl_s=5.0, max_size=10_000)
    for k in ids(1000):
        cache.add(k, 0.0)
    cache.add(b"late", 6.0)
    assert len(cache) == 1


def test_flood_memory_is_bounded() -> None:
    cache = NegativeCache(ttl_s=60.0, max_size=500)
    for i, k in enumerate(ids(10_000)):
        cache.add(k, i * 0.001)
    assert len(cache) == 500


def test_discard() -> None:
    cache = NegativeCache(10.0, 10)
    cache.add(b"a", 0.0)
    cache.discard(b"a")
    cache.discard(b"never")
    assert not cache.contains(b"a", 1.0)


@pytest.mark.parametrize(("ttl", "size"), [(0.0, 10), (-1.0, 10), (1.0, 0)])
def test_rejects_nonsense_settings(ttl: float, size: int) -> None:
    with pytest.raises(ValueError):
        NegativeCache(ttl, size)


def test_budget_grants_burst_then_refills_at_rate() -> None:
    budget = ReadBudget(per_s=10.0, burst=50)
    assert budget.take(10_000, 0.0) == 50
    assert budget.take(10_000, 0.0) == 0
    assert budget.take(10_000, 1.0) == 10
    assert budget.take(3, 100.0) == 3  # refill is capped at the burst …
    assert budget.take(10_000, 100.0) == 47  # … so a long quiet spell buys no more than `burst`


def test_budget_bound_holds_for_many_small_calls() -> None:
    budget = ReadBudget(per_s=20.0, burst=50)
    granted = sum(budget.take(7, i * 0.01) for i in range(1000))  # 10 s of 100 calls/s
    assert granted <= 50 + 20 * 10


def test_budget_ignores_a_clock_going_backwards() -> None:
    budget = ReadBudget(per_s=10.0, burst=5)
    assert budget.take(5, 100.0) == 5
    assert budget.take(5, 50.0) == 0
    assert budget.take(5, 100.5) == 5


def test_budget_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        ReadBudget(0.0, 5)
    with pytest.raises(ValueError):
        ReadBudget(1.0, 0)
