"""Table and property tests for ingest.core.cellweights and ingest.core.boosts (pure)."""

from __future__ import annotations

import pytest
from eth_account import Account
from hypothesis import given
from hypothesis import strategies as st

from ingest.core import boosts as bst
from ingest.core import h3cells
from ingest.core.cellweights import (
    CELLS_PER_REGION,
    DemandParams,
    cell_factors,
    demand_bps,
    regions,
    stationary_cells,
)
from ingest.core.geo import BPS
from ingest.core.rewards import CellFactors
from ingest.model import CoverageRow

CELL9 = 0x8928308280FFFFF  # resolution 9
CELL7 = h3cells.parent(CELL9, 7)
REGION = h3cells.parent(CELL9, 5)
KEY = "0x" + "11" * 32
OTHER_KEY = "0x" + "22" * 32


def factors(epoch: int = 10, **kw: object) -> CellFactors:
    args: dict[str, object] = {
        "last_paid": {},
        "stationary": set(),
        "usage7": {},
        "boosts": {},
        "refill_epochs": 4,
        "demand": DemandParams(epochs=3, units=100, cap_bps=3 * BPS),
    }
    args.update(kw)
    return cell_factors([CELL9], epoch, **args)[CELL9]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("last", "expected"),
    [(None, BPS), (9, BPS // 4), (8, BPS // 2), (7, 3 * BPS // 4), (6, BPS), (1, BPS)],
)
def test_freshness_refills_linearly(last: int | None, expected: int) -> None:
    paid = {} if last is None else {CELL9: last}
    assert factors(last_paid=paid).freshness == expected


def test_stationary_cell_keeps_full_freshness() -> None:
    assert factors(last_paid={CELL9: 9}, stationary={CELL9}).freshness == BPS
    rows = [
        CoverageRow(b"a" * 32, "0x1", 1, CELL9, 5, 0, 0),
        CoverageRow(b"b" * 32, "0x2", 2, CELL7, 0, 3, 0),  # stationary class, no clean reading
    ]
    assert stationary_cells(rows, {1, 2}) == {CELL9}


@pytest.mark.parametrize(
    ("usage7", "expected"),
    [
        ({}, BPS),
        ({CELL7: 50}, BPS + BPS // 2),
        ({CELL7: 100}, 2 * BPS),
        ({CELL7: 10_000}, 3 * BPS),  # capped
    ],
)
def test_demand_from_the_cells_usage(usage7: dict[int, int], expected: int) -> None:
    assert factors(usage7=usage7).demand == expected


def test_demand_from_the_region_spread_over_its_cells() -> None:
    digit = 7 << 24  # the resolution-7 digit: changing it keeps the resolution-5 parent
    neighbour = (CELL7 & ~digit) | ((((CELL7 & digit) >> 24) + 1) % 7 << 24)
    assert neighbour != CELL7 and h3cells.parent(neighbour, 5) == REGION
    usage = {neighbour: 100 * CELLS_PER_REGION}
    assert regions(usage) == {REGION: 100 * CELLS_PER_REGION}
    assert factors(usage7=usage).demand == 2 * BPS  # the region's usage / 49 = 100 units
    assert factors(usage7={**usage, CELL7: 50}).demand == 25_000  # its own usage counts whole


@given(st.dictionaries(st.just(CELL7), st.integers(0, 10**9)))
def test_demand_between_one_and_the_cap(usage7: dict[int, int]) -> None:
    p = DemandParams(units=7, cap_bps=25_000)
    d = demand_bps(CELL9, usage7, regions(usage7), p)
    assert BPS <= d <= 25_000


def test_boost_sign_verify_and_tamper() -> None:
    operator = Account.from_key(KEY).address
    b = bst.sign(bst.Boost(CELL9, 20_000, 3, 5, 1_000), KEY)
    assert b.signer == operator and bst.valid(b, [operator.lower()])
    assert not bst.valid(b, [Account.from_key(OTHER_KEY).address])  # not an allowed signer
    tampered = bst.Boost(CELL9, 30_000, 3, 5, 1_000, b.signer, b.signature)
    assert not bst.valid(tampered, [operator])
    forged = bst.sign(bst.Boost(CELL9, 20_000, 3, 5, 1_000), OTHER_KEY)
    claims_operator = bst.Boost(CELL9, 20_000, 3, 5, 1_000, operator, forged.signature)
    assert not bst.valid(claims_operator, [operator])
    assert not bst.valid(bst.Boost(CELL9, 20_000, 3, 5, 1_000, operator, b"\x01" * 3), [operator])
    assert bst.from_json(bst.to_json(b)) == b


def test_boost_in_force_latest_signed_wins() -> None:
    old = bst.sign(bst.Boost(CELL9, 20_000, 1, 10, 1_000), KEY)
    new = bst.sign(bst.Boost(CELL9, 5_000, 4, 4, 2_000), KEY)
    assert bst.boosts_for_epoch([new, old], 4) == {CELL9: new}
    assert bst.boosts_for_epoch([new, old], 5) == {CELL9: old}
    assert bst.boosts_for_epoch([new, old], 11) == {}
    assert factors(epoch=4, boosts={CELL9: new.factor_bps}).boost == 5_000


@pytest.mark.parametrize(
    ("factor", "frm", "to"), [(-1, 1, 1), (10 * BPS + 1, 1, 1), (BPS, 0, 1), (BPS, 3, 2)]
)
def test_boost_refuses_bad_values(factor: int, frm: int, to: int) -> None:
    with pytest.raises(ValueError):
        bst.Boost(CELL9, factor, frm, to, 0)
