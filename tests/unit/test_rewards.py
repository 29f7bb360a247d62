"""Table and property tests for ingest.core.rewards (pure, no services)."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ingest.core.geo import BPS
from ingest.core.rewards import (
    CellFactors,
    DeviceAmount,
    EpochSplit,
    FixedEmission,
    HalvingEmission,
    RewardParams,
    cell_amounts,
    cumulative,
    emission_for_epoch,
    inputs_digest,
    largest_remainder,
    merge_coverage,
    merged_digest,
    rollup_owners,
    single_row_cell,
    split_epoch,
    split_merged,
)
from ingest.model import CoverageRow

CELL_A = 0x872830828FFFFFF
CELL_B = 0x872830829FFFFFF
CELL_C = 0x87283082AFFFFFF


def dev(n: int) -> bytes:
    return n.to_bytes(2, "big") * 16


def owner(n: int) -> str:
    return f"0x{n:040x}"


def row(
    d: int, o: int, cell: int = CELL_A, readings: int = 100, flagged: int = 0, block: int = 0, hw: int = 2
) -> CoverageRow:
    return CoverageRow(dev(d), owner(o), hw, cell, readings, flagged, block)


def amounts(split: EpochSplit) -> dict[tuple[int, bytes], int]:
    return {(a.cell, a.device_id): a.amount for a in split.device_amounts}


def earned(split: EpochSplit, d: int, cell: int = CELL_A) -> int:
    return amounts(split)[(cell, dev(d))]


def check_invariants(split: EpochSplit, params: RewardParams) -> None:
    assert all(a.amount >= 0 for a in split.device_amounts)
    assert sum(a.amount for a in split.device_amounts) == split.allocated
    assert sum(split.owner_amounts.values()) == split.allocated
    assert 0 <= split.allocated <= params.emission
    assert split.unissued == params.emission - split.allocated


# ---------------------------------------------------------------- emission schedules


@pytest.mark.parametrize(
    ("schedule", "epoch", "expected"),
    [
        (FixedEmission(1_000), 0, 1_000),
        (FixedEmission(1_000), 10_000, 1_000),
        (HalvingEmission(1_000, 10), 0, 1_000),
        (HalvingEmission(1_000, 10), 9, 1_000),
        (HalvingEmission(1_000, 10), 10, 500),
        (HalvingEmission(1_000, 10), 25, 250),
        (HalvingEmission(1_001, 1), 1, 500),  # integer halving floors
        (HalvingEmission(1_000, 1), 64, 0),  # runs out, never negative
    ],
)
def test_emission_schedule(schedule: FixedEmission | HalvingEmission, epoch: int, expected: int) -> None:
    assert emission_for_epoch(schedule, epoch) == expected


@pytest.mark.parametrize(
    ("schedule", "epoch"),
    [(FixedEmission(1), -1), (FixedEmission(-1), 0), (HalvingEmission(1, 0), 0), (HalvingEmission(-1, 1), 0)],
)
def test_emission_schedule_rejects_bad_input(schedule: FixedEmission | HalvingEmission, epoch: int) -> None:
    with pytest.raises(ValueError):
        emission_for_epoch(schedule, epoch)


@pytest.mark.parametrize(
    "kwargs",
    [{"emission": -1}, {"max_devices_per_cell": 0}, {"reading_cap": 0}, {"refill_epochs": 0}],
)
def test_params_validated(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RewardParams(**{"emission": 1, **kwargs})


# ---------------------------------------------------------------- largest remainder


@pytest.mark.parametrize(
    ("total", "weights", "expected"),
    [
        (10, [1, 1, 1], [4, 3, 3]),  # tie → lowest tie key (index) first
        (10, [1, 1, 1, 0], [4, 3, 3, 0]),  # zero weight never gets a leftover unit
        (7, [0, 5], [0, 7]),
        (100, [3, 1], [75, 25]),
        (1, [1, 1], [1, 0]),
        (0, [1, 2], [0, 0]),
    ],
)
def test_largest_remainder(total: int, weights: list[int], expected: list[int]) -> None:
    assert largest_remainder(total, weights, lambda i: i) == expected


def test_largest_remainder_tie_key_decides() -> None:
    assert largest_remainder(10, [1, 1, 1], lambda i: -i) == [3, 3, 4]


def test_largest_remainder_needs_a_positive_weight() -> None:
    with pytest.raises(ValueError):
        largest_remainder(10, [0, 0], lambda i: i)


# ---------------------------------------------------------------- split: cells


def test_nothing_covered_everything_unissued() -> None:
    split = split_epoch([], RewardParams(emission=1_000))
    assert split == EpochSplit([], {}, allocated=0, unissued=1_000, cells=0)


def test_single_device_takes_whole_emission() -> None:
    split = split_epoch([row(1, 1)], RewardParams(emission=1_000))
    assert split.allocated == 1_000 and split.unissued == 0 and split.cells == 1
    assert split.owner_amounts == {owner(1): 1_000}
    assert split.device_amounts == [DeviceAmount(dev(1), owner(1), CELL_A, 100, 1_000, 0, BPS, 1)]


def test_cells_split_by_weight() -> None:
    rows = [row(1, 1, CELL_A), row(2, 2, CELL_B, readings=5)]
    split = split_epoch(
        rows,
        RewardParams(emission=1_000),
        cell_factors={CELL_A: CellFactors(boost=30_000), CELL_B: CellFactors(boost=10_000)},
    )
    assert earned(split, 1, CELL_A) == 750
    assert earned(split, 2, CELL_B) == 250


def test_cell_tie_break_lower_cell_id_gets_the_odd_unit() -> None:
    rows = [row(2, 2, CELL_B), row(1, 1, CELL_A)]
    split = split_epoch(rows, RewardParams(emission=1_001))
    assert earned(split, 1, CELL_A) == 501
    assert earned(split, 2, CELL_B) == 500


def test_missing_cell_weight_defaults_to_base() -> None:
    rows = [row(1, 1, CELL_A), row(2, 2, CELL_B)]
    split = split_epoch(rows, RewardParams(emission=300), cell_factors={CELL_A: CellFactors(boost=2 * BPS)})
    assert (earned(split, 1, CELL_A), earned(split, 2, CELL_B)) == (200, 100)


def test_zero_weight_cell_earns_nothing() -> None:
    rows = [row(1, 1, CELL_A), row(2, 2, CELL_B)]
    split = split_epoch(rows, RewardParams(emission=1_000), cell_factors={CELL_A: CellFactors(boost=0)})
    assert (earned(split, 1, CELL_A), earned(split, 2, CELL_B)) == (0, 1_000)


def test_all_cells_zero_weight_everything_unissued() -> None:
    split = split_epoch(
        [row(1, 1)], RewardParams(emission=1_000), cell_factors={CELL_A: CellFactors(boost=0)}
    )
    assert (split.allocated, split.unissued, split.cells) == (0, 1_000, 1)


def test_cell_with_no_earner_leaves_its_share_unissued() -> None:
    # CELL_B is covered only by a device whose readings were all flagged: quality 0.
    rows = [row(1, 1, CELL_A), row(2, 2, CELL_B, readings=0, flagged=40)]
    split = split_epoch(rows, RewardParams(emission=1_000))
    assert earned(split, 1, CELL_A) == 500
    assert earned(split, 2, CELL_B) == 0
    assert (split.allocated, split.unissued, split.cells) == (500, 500, 2)


def test_negative_cell_weight_rejected() -> None:
    with pytest.raises(ValueError):
        split_epoch([row(1, 1)], RewardParams(emission=1), cell_factors={CELL_A: CellFactors(boost=-1)})


# ---------------------------------------------------------------- split: devices in a cell


def test_cap_k_top_by_quality_then_registration_age() -> None:
    # 12 devices, distinct owners: devices 1..10 clean, 11 slightly flagged, 12 clean but youngest.
    rows = [row(d, d, block=d) for d in range(1, 11)]
    rows.append(row(11, 11, readings=99, flagged=1, block=0))  # oldest, but lower quality
    rows.append(row(12, 12, block=99))  # same quality as 1..10, registered last
    params = RewardParams(emission=1_000, max_devices_per_cell=10)
    split = split_epoch(rows, params)
    assert [d for d in range(1, 13) if earned(split, d) > 0] == list(range(1, 11))
    assert all(earned(split, d) == 100 for d in range(1, 11))
    check_invariants(split, params)


def test_cap_k_smaller() -> None:
    rows = [row(d, d, block=d) for d in range(1, 6)]
    split = split_epoch(rows, RewardParams(emission=900, max_devices_per_cell=3))
    assert [earned(split, d) for d in range(1, 6)] == [300, 300, 300, 0, 0]


def test_one_per_owner_pools_the_owners_devices() -> None:
    rows = [
        row(1, 7, readings=60, flagged=10),  # owner 7: two devices, one slot with 90 clean of 100
        row(2, 7, readings=30, flagged=0),
        row(3, 8, readings=90, flagged=10),  # owner 8: the same counts on one device
    ]
    split = split_epoch(rows, RewardParams(emission=1_000))
    # equal slots, 500 each; owner 7's 500 goes to its devices ∝ clean readings (60:30)
    assert (earned(split, 1), earned(split, 2), earned(split, 3)) == (333, 167, 500)
    assert split.owner_amounts == {owner(7): 500, owner(8): 500}
    by_device = {a.device_id: a for a in split.device_amounts}
    assert by_device[dev(1)].quality == by_device[dev(2)].quality == 9_000


def test_slot_rank_uses_the_owners_oldest_registration() -> None:
    rows = [row(5, 7, block=20), row(4, 7, block=10), row(6, 8, block=15)]
    split = split_epoch(rows, RewardParams(emission=1_000, max_devices_per_cell=1))
    # owner 7's slot is registered at block 10 (its oldest device), before owner 8's 15
    assert (earned(split, 4), earned(split, 5), earned(split, 6)) == (500, 500, 0)


def test_one_per_owner_is_per_cell() -> None:
    rows = [row(1, 7, CELL_A), row(2, 7, CELL_B)]
    split = split_epoch(rows, RewardParams(emission=1_000))
    assert (earned(split, 1, CELL_A), earned(split, 2, CELL_B)) == (500, 500)


def test_one_per_owner_can_be_disabled() -> None:
    rows = [row(1, 7), row(2, 7)]
    split = split_epoch(rows, RewardParams(emission=1_000, one_per_owner_per_cell=False))
    assert (earned(split, 1), earned(split, 2)) == (500, 500)


def test_one_per_owner_applied_before_cap_k() -> None:
    # owner 1's three devices are one slot, so K=2 leaves room for owner 2; the slot weighs 300 readings
    rows = [row(1, 1, block=1), row(2, 1, block=2), row(3, 1, block=3), row(4, 2, block=9)]
    split = split_epoch(rows, RewardParams(emission=100, max_devices_per_cell=2))
    assert [earned(split, d) for d in (1, 2, 3, 4)] == [25, 25, 25, 25]


def test_flagged_share_lowers_quality_and_share() -> None:
    rows = [row(1, 1, readings=100), row(2, 2, readings=50, flagged=50)]
    split = split_epoch(rows, RewardParams(emission=1_000))
    # weights 10000×100 vs 5000×50 → 4:1
    assert (earned(split, 1), earned(split, 2)) == (800, 200)


def test_quality_is_per_cell() -> None:
    # device 2's flagged readings in CELL_B lower its quality there only (pooling per cell is what
    # makes moving flagged readings onto another device pointless)
    rows = [row(1, 1, CELL_A), row(2, 2, CELL_A), row(2, 2, CELL_B, readings=50, flagged=50)]
    split = split_epoch(rows, RewardParams(emission=1_000), cell_factors={CELL_B: CellFactors(boost=0)})
    assert (earned(split, 1, CELL_A), earned(split, 2, CELL_A)) == (500, 500)


def test_reading_cap() -> None:
    rows = [row(1, 1, readings=5_000), row(2, 2, readings=1_000), row(3, 3, readings=500)]
    split = split_epoch(rows, RewardParams(emission=1_000, reading_cap=1_000))
    assert [earned(split, d) for d in (1, 2, 3)] == [400, 400, 200]


def test_device_tie_break_goes_to_better_ranked() -> None:
    rows = [row(3, 3, block=5), row(1, 1, block=7), row(2, 2, block=5)]
    split = split_epoch(rows, RewardParams(emission=10))
    # equal weights, 10 over 3: the odd unit goes to rank 1 = oldest block, then lowest device_id
    assert [earned(split, d) for d in (1, 2, 3)] == [3, 4, 3]


def test_zero_quality_or_zero_readings_earn_nothing_and_take_no_slot() -> None:
    rows = [
        row(1, 1, readings=0, flagged=0, block=0),  # no readings at all
        row(2, 2, readings=0, flagged=10, block=0),  # everything flagged
        row(4, 4, readings=10, block=9),  # the only real earner, youngest
    ]
    params = RewardParams(emission=1_000, max_devices_per_cell=1)
    split = split_epoch(rows, params)
    assert [earned(split, d) for d in (1, 2, 4)] == [0, 0, 1_000]


def test_every_row_listed_even_when_unpaid() -> None:
    rows = [row(2, 1, CELL_B), row(1, 1, CELL_B), row(3, 3, CELL_A, readings=0)]
    split = split_epoch(rows, RewardParams(emission=100))
    assert [(a.cell, a.device_id) for a in split.device_amounts] == [
        (CELL_A, dev(3)),
        (CELL_B, dev(1)),
        (CELL_B, dev(2)),
    ]


def test_duplicate_rows_are_summed() -> None:
    merged = split_epoch([row(1, 1, readings=30), row(2, 2, readings=60)], RewardParams(emission=900))
    parts = split_epoch(
        [row(1, 1, readings=10), row(1, 1, readings=20), row(2, 2, readings=60)], RewardParams(emission=900)
    )
    assert merged == parts
    assert (earned(parts, 1), earned(parts, 2)) == (300, 600)


@pytest.mark.parametrize(
    "bad",
    [
        [row(1, 1), row(1, 2)],  # same device, two owners, same cell
        [row(1, 1, CELL_A), row(1, 2, CELL_B)],  # same device, two owners, different cells
        [row(1, 1, CELL_A, block=1), row(1, 1, CELL_B, block=2)],
        [row(1, 1, readings=-1)],
        [row(1, 0xABC), CoverageRow(dev(2), owner(0xABC).upper().replace("0X", "0x"), 2, CELL_B, 1, 0, 0)],
    ],
)
def test_inconsistent_rows_rejected(bad: list[CoverageRow]) -> None:
    with pytest.raises(ValueError):
        split_epoch(bad, RewardParams(emission=1))


def test_mixed_case_owner_cannot_dodge_one_per_owner() -> None:
    lower = "0x" + "ab" * 20
    mixed = "0x" + "Ab" * 20
    rows = [CoverageRow(dev(1), lower, 2, CELL_A, 10, 0, 0), CoverageRow(dev(2), mixed, 2, CELL_A, 10, 0, 0)]
    with pytest.raises(ValueError, match="two spellings"):
        split_epoch(rows, RewardParams(emission=1))


# ---------------------------------------------------------------- owners and cumulative totals


def test_rollup_owners_sums_and_drops_zero() -> None:
    das = [
        DeviceAmount(dev(1), owner(1), CELL_A, 1, 5),
        DeviceAmount(dev(2), owner(1), CELL_B, 1, 7),
        DeviceAmount(dev(3), owner(2), CELL_A, 1, 0),
    ]
    assert rollup_owners(das) == {owner(1): 12}


def test_cumulative_keeps_absent_owners() -> None:
    prev = {owner(1): 100, owner(2): 50}
    assert cumulative(prev, {owner(2): 5, owner(3): 7}) == {owner(1): 100, owner(2): 55, owner(3): 7}
    assert cumulative({}, {}) == {}
    assert list(cumulative({owner(9): 1}, {owner(1): 1})) == [owner(1), owner(9)]  # sorted


def test_cumulative_rejects_negative_and_two_spellings() -> None:
    with pytest.raises(ValueError):
        cumulative({owner(1): 1}, {owner(1): -1})
    with pytest.raises(ValueError, match="two spellings"):
        cumulative({"0x" + "ab" * 20: 1}, {"0x" + "AB" * 20: 1})


# ---------------------------------------------------------------- inputs digest


def test_inputs_digest_canonical() -> None:
    rows = [row(1, 1, CELL_A), row(2, 2, CELL_B, flagged=3), row(3, 3, CELL_A, block=4)]
    params = RewardParams(emission=1_000)
    d = inputs_digest(rows, params, None, 7)
    assert len(d) == 32
    assert inputs_digest(list(reversed(rows)), params, None, 7) == d
    # explicit defaults and factors for uncovered cells do not change what was computed
    assert inputs_digest(rows, params, {CELL_A: CellFactors(), CELL_C: CellFactors(demand=5)}, 7) == d
    # anything that changes the result, or the epoch, changes the digest
    assert inputs_digest(rows, params, None, 8) != d
    assert inputs_digest(rows, RewardParams(emission=1_001), None, 7) != d
    assert inputs_digest(rows, params, {CELL_A: CellFactors(boost=2 * BPS)}, 7) != d
    assert inputs_digest(rows, params, {CELL_A: CellFactors(freshness=1)}, 7) != d
    assert inputs_digest(rows, params, {CELL_A: CellFactors(demand=3 * BPS)}, 7) != d
    assert inputs_digest(rows[:2], params, None, 7) != d


# ---------------------------------------------------------------- properties

CELLS = [CELL_A, CELL_B, CELL_C, CELL_C + (1 << 40)]


@st.composite
def coverage(draw: st.DrawFn) -> list[CoverageRow]:
    """Consistent rows: each device has one owner and one registration, devices span cells."""
    n_devices = draw(st.integers(0, 14))
    devices = [
        (dev(i), owner(draw(st.integers(0, 5))), draw(st.integers(0, 4)), draw(st.sampled_from([1, 2, 3])))
        for i in range(n_devices)
    ]
    rows = []
    for device_id, own, block, hw in devices:
        for cell in draw(st.lists(st.sampled_from(CELLS), min_size=1, max_size=3, unique=True)):
            readings = draw(st.integers(0, 1_500))
            flagged = draw(st.integers(0, 60))
            rows.append(CoverageRow(device_id, own, hw, cell, readings, flagged, block))
    return rows


params_st = st.builds(
    RewardParams,
    emission=st.integers(0, 10**24),
    max_devices_per_cell=st.integers(1, 6),
    one_per_owner_per_cell=st.booleans(),
    reading_cap=st.integers(1, 1_200),
)
factor_st = st.integers(0, 40_000)
weights_st = st.none() | st.dictionaries(
    st.sampled_from(CELLS), st.builds(CellFactors, boost=factor_st, freshness=factor_st, demand=factor_st)
)


@settings(max_examples=300)
@given(coverage(), params_st, weights_st)
def test_property_conservation(
    rows: list[CoverageRow], params: RewardParams, weights: dict[int, CellFactors] | None
) -> None:
    split = split_epoch(rows, params, cell_factors=weights)
    check_invariants(split, params)
    assert len(split.device_amounts) == len(rows)
    assert split.cells == len({r.cell for r in rows})
    for cell in {r.cell for r in rows}:
        paid = [a for a in split.device_amounts if a.cell == cell and a.amount > 0]
        # an owner's devices share one slot, so the cap counts owners (devices with the rule off)
        slots = {a.owner for a in paid} if params.one_per_owner_per_cell else {a.device_id for a in paid}
        assert len(slots) <= params.max_devices_per_cell
    assert sum(c.paid for c in split.cell_results) == split.allocated
    assert sum(c.share for c in split.cell_results) in (0, params.emission)


@settings(max_examples=200)
@given(coverage(), params_st)
def test_property_everything_issued_when_every_cell_has_an_earner(
    rows: list[CoverageRow], params: RewardParams
) -> None:
    split = split_epoch(rows, params)
    cells = {r.cell for r in rows}
    cells_with_earner = {r.cell for r in rows if r.readings > 0}
    full_depth = all(c.depth == BPS for c in split.cell_results)
    if cells and cells == cells_with_earner and full_depth:
        assert split.allocated == params.emission and split.unissued == 0


@settings(max_examples=200)
@given(coverage(), params_st, weights_st, st.randoms(use_true_random=False))
def test_property_row_order_irrelevant(
    rows: list[CoverageRow], params: RewardParams, weights: dict[int, CellFactors] | None, rnd: random.Random
) -> None:
    shuffled = list(rows)
    rnd.shuffle(shuffled)
    assert split_epoch(shuffled, params, cell_factors=weights) == split_epoch(
        rows, params, cell_factors=weights
    )
    assert inputs_digest(shuffled, params, weights, 3) == inputs_digest(rows, params, weights, 3)


@settings(max_examples=300)
@given(
    coverage(),
    st.integers(0, 10**12),
    st.integers(1, 999),
    st.integers(1, 999),
    st.integers(0, 60),
    st.integers(0, 4),
    st.integers(0, 4),
)
def test_property_more_readings_never_earns_less(
    others: list[CoverageRow], emission: int, r1: int, r2: int, flagged: int, block1: int, block2: int
) -> None:
    """Two devices of different owners in one cell, same quality, both below the cap: more readings
    never earn less, whoever else is in the cell and whatever their registration order."""
    fewer, more = min(r1, r2), max(r1, r2) + 1  # strictly more, still within the cap of 1000
    # Quality is the clean share, so the flagged counts keep it equal (both 0, or in proportion).
    a = CoverageRow(dev(900), owner(900), 2, CELL_A, fewer, flagged * fewer, block1)
    b = CoverageRow(dev(901), owner(901), 2, CELL_A, more, flagged * more, block2)
    rows = [*others, a, b]
    params = RewardParams(emission=emission, max_devices_per_cell=len(rows) + 2, reading_cap=1_000)
    split = split_epoch(rows, params)
    assert earned(split, 901) >= earned(split, 900)


@settings(max_examples=300)
@given(
    coverage(),
    params_st,
    weights_st,
    st.integers(0, 13),
    st.integers(0, 4),
    st.data(),
)
def test_property_splitting_a_device_never_gains(
    rows: list[CoverageRow],
    params: RewardParams,
    weights: dict[int, CellFactors] | None,
    pick: int,
    later: int,
    data: st.DataObject,
) -> None:
    """An owner moves part of one device's readings in one cell (clean and flagged alike) to a new
    device of its own, registered no earlier: the owner's total never grows."""
    if not rows:
        return
    victim = rows[pick % len(rows)]
    moved_clean = data.draw(st.integers(0, victim.readings))
    moved_flagged = data.draw(st.integers(0, victim.flagged))
    params = RewardParams(
        emission=params.emission,
        max_devices_per_cell=params.max_devices_per_cell,
        reading_cap=params.reading_cap,
        cell_readings_target=data.draw(st.integers(1, 50)),
    )
    kept = CoverageRow(
        victim.device_id,
        victim.owner,
        victim.hw_class,
        victim.cell,
        victim.readings - moved_clean,
        victim.flagged - moved_flagged,
        victim.registered_block,
    )
    twin = CoverageRow(
        dev(999),
        victim.owner,
        victim.hw_class,
        victim.cell,
        moved_clean,
        moved_flagged,
        victim.registered_block + later,
    )
    split_rows = [kept if r is victim else r for r in rows] + [twin]
    before = split_epoch(rows, params, cell_factors=weights).owner_amounts.get(victim.owner, 0)
    after = split_epoch(split_rows, params, cell_factors=weights).owner_amounts.get(victim.owner, 0)
    assert after <= before


def test_cell_readings_target_pays_a_fraction_and_leaves_the_rest_unissued() -> None:
    # README "Rewards": a dashcam with 1 clean reading alone in its cell, a station with 10 in another
    rows = [row(1, 1, CELL_A, readings=1), row(2, 2, CELL_B, readings=10)]
    split = split_epoch(rows, RewardParams(emission=1_000, cell_readings_target=10))
    assert (earned(split, 1, CELL_A), earned(split, 2, CELL_B)) == (50, 500)
    assert split.unissued == 450
    assert [c.depth for c in split.cell_results] == [1_000, BPS]
    # a flagged share lowers depth too: 10 readings at 50 % quality count as 5
    half = split_epoch(
        [row(3, 3, CELL_A, readings=10, flagged=10)], RewardParams(1_000, cell_readings_target=10)
    )
    assert half.allocated == 500


def test_cell_factors_multiply_into_the_weight() -> None:
    rows = [row(1, 1, CELL_A), row(2, 2, CELL_B)]
    factors = {CELL_A: CellFactors(boost=2 * BPS, freshness=BPS // 2, demand=3 * BPS)}
    split = split_epoch(rows, RewardParams(emission=4_000), cell_factors=factors)
    assert [c.weight for c in split.cell_results] == [3 * BPS, BPS]
    assert (earned(split, 1, CELL_A), earned(split, 2, CELL_B)) == (3_000, 1_000)


def _digest_before(
    rows: list[CoverageRow], params: RewardParams, factors: dict[int, CellFactors] | None, epoch: int
) -> bytes:
    """inputs_digest as first written (one json.dumps of the whole document): the digest's meaning."""
    import hashlib
    import json
    from dataclasses import asdict

    merged: dict[tuple[int, bytes], CoverageRow] = {}
    for r in rows:
        prev = merged.get((r.cell, r.device_id))
        merged[(r.cell, r.device_id)] = (
            r
            if prev is None
            else r._replace(readings=prev.readings + r.readings, flagged=prev.flagged + r.flagged)
        )
    covered = sorted({c for c, _ in merged})
    doc = {
        "domain": "depin-ingest/epoch-inputs/v2",
        "epoch": epoch,
        "params": asdict(params),
        "rows": [
            [r.cell, r.device_id.hex(), r.owner, r.hw_class, r.readings, r.flagged, r.registered_block]
            for _, r in sorted(merged.items())
        ],
        "cell_factors": [
            [c, f.boost, f.freshness, f.demand]
            for c in covered
            for f in [(factors or {}).get(c, CellFactors())]
        ],
    }
    encoded = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(encoded.encode("ascii")).digest()


# owners as the registry could spell them, and the characters where JSON encoders may differ
owner_text = st.sampled_from(["0xAbC", "ü", '\x00\x1f\x7f\n\t"\\/', "\u2028", "😀", ""]) | st.text(max_size=4)


@settings(max_examples=300)
@given(coverage(), params_st, weights_st, st.integers(0, 2**63), st.lists(owner_text, min_size=6, max_size=6))
def test_property_digest_bytes_unchanged(
    rows: list[CoverageRow],
    params: RewardParams,
    weights: dict[int, CellFactors] | None,
    epoch: int,
    spellings: list[str],
) -> None:
    """The digest written member by member (orjson for the lists) is the digest as first written, for
    any owner text (non-ASCII, control characters), huge emissions and epochs: the same epoch gives
    the same inputs digest, so the stored digests keep their meaning."""
    # Two spellings of one address (case apart) are refused by the merge, not a digest question.
    assume(len({s.lower() for s in set(spellings)}) == len(set(spellings)))
    names = {owner(i): spellings[i] for i in range(6)}
    rows = [dataclasses.replace(r, owner=names[r.owner]) for r in rows]
    try:
        expected = _digest_before(rows, params, weights, epoch)
    except ValueError:
        return
    assert inputs_digest(rows, params, weights, epoch) == expected
    merged = merge_coverage(rows)
    split = split_merged(merged, params, cell_factors=weights)
    by_cell = [(c.cell, c.boost, c.freshness, c.demand) for c in split.cell_results]
    assert merged_digest(merged, params, by_cell, epoch) == expected
    assert split == split_epoch(rows, params, cell_factors=weights)


@settings(max_examples=500)
@given(
    st.integers(0, 2_000),
    st.integers(0, 100),
    st.integers(0, 10**24),
    params_st,
    st.integers(1, 30),
)
def test_property_single_row_cell_is_cell_amounts(
    readings: int, flagged: int, share: int, params: RewardParams, target: int
) -> None:
    """The split's shortcut for a cell with one (device, cell) row gives what the general level 2
    gives that cell: amount, quality, rank, depth and paid."""
    params = dataclasses.replace(params, cell_readings_target=target)
    r = row(1, 1, readings=readings, flagged=flagged)
    amounts: dict[tuple[int, bytes], tuple[int, int, int]] = {}
    depth, paid = cell_amounts(CELL_A, [r], share, params, amounts)
    assert single_row_cell(r, share, params) == (*amounts[(CELL_A, r.device_id)], depth, paid)
