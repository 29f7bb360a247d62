"""Buyers' money split (ingest/core/market.py): conservation, no negative amounts, order independence,
charges never beyond deposits, bounty slices and refunds, and the split added to the emission's."""

from __future__ import annotations

import h3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.core import market as mk
from ingest.core.metering import meter_cell
from ingest.core.rewards import RewardParams, split_epoch
from ingest.model import CoverageRow

CELLS = [h3.str_to_int(h3.latlng_to_cell(52.5, 13.4 + 0.1 * i, 9)) for i in range(4)]
CELLS7 = [meter_cell(c) for c in CELLS]
OWNERS = [f"0x{i:040X}" for i in range(1, 5)]
TREASURY = "0x" + "7" * 40
FUNDER = "0x" + "F" * 40
EPOCH = 5


def device(n: int) -> bytes:
    return bytes([n]) * 32


rows_st = st.lists(
    st.builds(
        lambda d, c, r, f: CoverageRow(device(d), OWNERS[d % 4], 1, CELLS[c], r, f, d),
        st.integers(0, 7),
        st.integers(0, 3),
        st.integers(0, 50),
        st.integers(0, 5),
    ),
    max_size=12,
    unique_by=lambda r: (r.device_id, r.cell),
)
spends_st = st.lists(
    st.builds(
        mk.Spend,
        st.sampled_from(["dpk_aaaaaaaa", "dpk_bbbbbbbb", "dpk_cccccccc"]),
        st.sampled_from(CELLS7),
        st.integers(0, EPOCH + 1),
        st.integers(0, 10**6),
    ),
    max_size=10,
)
accounts_st = st.fixed_dictionaries(
    {k: st.tuples(st.integers(0, 3 * 10**6), st.integers(0, 10**6)) for k in ("dpk_aaaaaaaa", "dpk_bbbbbbbb")}
)
collectors_st = st.lists(
    st.builds(
        lambda c, m, d, n: mk.Collector(CELLS7[c], m, device(d), OWNERS[d % 4], n),
        st.integers(0, 3),
        st.integers(1, EPOCH - 1),
        st.integers(0, 7),
        st.integers(0, 40),
    ),
    max_size=8,
    unique_by=lambda c: (c.cell, c.epoch, c.device_id),
)
bounties_st = st.lists(
    st.builds(
        lambda i, s, n, cells, amount, paid: mk.Bounty(
            i, FUNDER, s, s + n, tuple(cells), amount, min(paid, amount)
        ),
        st.integers(1, 10**6),
        st.integers(1, EPOCH + 1),
        st.integers(0, 4),
        st.lists(st.sampled_from(CELLS7 + CELLS), min_size=1, max_size=3, unique=True),
        st.integers(1, 10**7),
        st.integers(0, 10**6),
    ),
    max_size=4,
    unique_by=lambda b: b.id,
)


def run(rows, spends, accounts, collectors, bounties, share=7_000, treasury=TREASURY, emission=10**6):  # type: ignore[no-untyped-def]
    split = split_epoch(rows, RewardParams(emission=emission))
    market = mk.split_market(
        EPOCH,
        mk.MarketParams(revenue_share_bps=share, treasury=treasury),
        accounts=[mk.Account(k, d, s) for k, (d, s) in accounts.items()],
        spends=spends,
        collectors=collectors,
        devices=split.device_amounts,
        bounties=bounties,
    )
    return split, market


@settings(max_examples=300, deadline=None)
@given(
    rows_st,
    spends_st,
    accounts_st,
    collectors_st,
    bounties_st,
    st.integers(0, 10_000),
    st.sampled_from([TREASURY, ""]),
)
def test_conservation_and_no_negative_amounts(rows, spends, accounts, collectors, bounties, share, treasury):  # type: ignore[no-untyped-def]
    split, market = run(rows, spends, accounts, collectors, bounties, share, treasury)
    assert all(p.amount > 0 for p in market.payouts)
    assert market.paid + market.held == market.revenue + market.bounty_paid + market.refunded
    assert market.revenue_share + market.treasury == market.revenue
    assert (market.held == 0) == (treasury != "" or market.treasury == 0)
    for c in market.charges:  # never beyond what was deposited, never negative
        assert 0 <= c.charged <= max(0, c.deposited - c.spent_before) and c.charged <= c.spent
    for b in bounties:
        got = next((r for r in market.bounties if r.id == b.id), None)
        if got is not None:
            assert 0 <= got.paid <= got.slice and got.refund >= 0
            assert b.paid_before + got.paid + got.refund <= b.amount
            if got.settled:
                assert b.paid_before + got.paid + got.refund == b.amount
    total = mk.add_market(split, market)
    emission = 10**6
    # Σ = allocated; allocated + unissued (+ held) = emission + revenue + bounty funds released
    assert sum(total.owner_amounts.values()) == total.allocated
    assert total.allocated + total.unissued + market.held == emission + market.released
    assert all(v > 0 for v in total.owner_amounts.values())


@settings(max_examples=100, deadline=None)
@given(rows_st, spends_st, accounts_st, collectors_st, bounties_st, st.randoms(use_true_random=False))
def test_input_order_is_irrelevant(rows, spends, accounts, collectors, bounties, rnd):  # type: ignore[no-untyped-def]
    _, market = run(rows, spends, accounts, collectors, bounties)
    shuffled = [list(x) for x in (rows, spends, collectors, bounties)]
    for x in shuffled:
        rnd.shuffle(x)
    keys = list(accounts.items())
    rnd.shuffle(keys)
    _, again = run(shuffled[0], shuffled[1], dict(keys), shuffled[2], shuffled[3])
    assert again == market


def test_revenue_goes_to_the_collectors_of_the_data_used_and_the_rest_to_the_treasury() -> None:
    a, b = device(1), device(2)
    collectors = [
        mk.Collector(CELLS7[0], 3, a, OWNERS[0], 30),
        mk.Collector(CELLS7[0], 3, b, OWNERS[1], 10),
        mk.Collector(CELLS7[1], 4, a, OWNERS[0], 5),  # another cell and epoch: not used
    ]
    spends = [mk.Spend("dpk_aaaaaaaa", CELLS7[0], 3, 1_000), mk.Spend("dpk_aaaaaaaa", CELLS7[2], 3, 1_000)]
    market = mk.split_market(
        EPOCH,
        mk.MarketParams(7_000, TREASURY),
        accounts=[mk.Account("dpk_aaaaaaaa", 1_500, 0)],  # deposits cover 1,500 of the 2,000 spent
        spends=spends,
        collectors=collectors,
        devices=[],
        bounties=[],
    )
    assert market.revenue == 1_500
    # 750 on the collected cell: 525 to its collectors 3 : 1, 225 to the treasury; the other cell's 750
    # found nobody: all to the treasury
    assert market.owner_amounts() == {OWNERS[0]: 394, OWNERS[1]: 131, TREASURY: 975}


def test_a_bounty_pays_its_slices_to_covering_devices_and_refunds_the_rest_at_the_end() -> None:
    rows = [CoverageRow(device(1), OWNERS[0], 1, CELLS[0], 10, 0, 1)]
    split = split_epoch(rows, RewardParams(emission=0))
    bounty = mk.Bounty(1, FUNDER, EPOCH - 1, EPOCH, (CELLS7[0],), 1_001, 500)  # epoch 4's slice paid
    other = mk.Bounty(2, FUNDER, EPOCH - 1, EPOCH + 1, (CELLS7[3],), 900, 0)

    def at(epoch: int, b: mk.Bounty, devices: list) -> mk.MarketSplit:  # type: ignore[type-arg]
        return mk.split_market(
            epoch, mk.MarketParams(), accounts=[], spends=[], collectors=[], devices=devices, bounties=[b]
        )

    covered = at(EPOCH, bounty, split.device_amounts)  # the last window epoch, covered
    assert (covered.bounty_paid, covered.refunded) == (501, 0)  # slices 500 + 501
    assert covered.bounties[0].settled
    # an epoch-4 slice that nobody covered is refunded at the end
    refund = at(EPOCH, mk.Bounty(1, FUNDER, EPOCH - 1, EPOCH, (CELLS7[0],), 1_001, 0), [])
    assert refund.owner_amounts() == {FUNDER: 1_001}
    assert mk.payout_rows(covered) == [("bounty", "1", OWNERS[0], 501), ("refund", "1", FUNDER, 0)]
    # a window not over: the uncovered slice waits
    waiting = at(EPOCH, other, split.device_amounts)
    assert (waiting.bounty_paid, waiting.refunded, waiting.bounties[0].settled) == (0, 0, False)
    # seen only after its window: all of it back
    late = at(EPOCH + 3, other, [])
    assert late.owner_amounts() == {FUNDER: 900}


def test_slices_sum_to_the_amount() -> None:
    for amount, n in [(10, 3), (1, 4), (10**20 + 7, 7)]:
        assert sum(mk.bounty_slice(amount, 3, 2 + n, e) for e in range(1, 20)) == amount


def test_charge_is_bounded_by_deposits() -> None:
    assert mk.charge(100, 0, 30) == 30
    assert mk.charge(100, 90, 30) == 10
    assert mk.charge(100, 120, 30) == 0
    with pytest.raises(ValueError):
        mk.charge(100, -1, 3)
