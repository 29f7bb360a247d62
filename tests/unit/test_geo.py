"""Table and property tests for ingest.core.geo and devices.protocol.hwclass (pure, no services)."""

from __future__ import annotations

import math
import random

import h3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.protocol.hwclass import (
    DEFAULT_CLASSES,
    HwClass,
    cell_for,
    class_by_id,
    class_by_name,
    from_registry,
)
from ingest.core import geo
from ingest.core.geo import (
    BPS,
    cell_weight_bps,
    distance_to_cell_m,
    freshness_bps,
    haversine_m,
    location_trust,
)

LAT, LON = 37.7752702151959, -122.418307270836  # h3's documentation example point

lats = st.floats(min_value=-89.9, max_value=89.9, allow_nan=False)
lons = st.floats(min_value=-179.9, max_value=179.9, allow_nan=False)

# ---------------------------------------------------------------- hardware classes


@pytest.mark.parametrize(
    ("class_id", "name", "res", "speed", "mobile"),
    [(1, "dashcam", 9, 200, True), (2, "weather", 7, 0, False), (3, "air", 8, 0, False)],
)
def test_default_classes(class_id: int, name: str, res: int, speed: int, mobile: bool) -> None:
    hw = class_by_id(class_id)
    assert hw == HwClass(class_id, name, res, speed, mobile)
    assert class_by_name(name) is hw
    # the contract's constructor seeds the same classes: the registry reproduces the defaults exactly
    assert from_registry(class_id, name, speed, res) == hw


def test_unknown_class_is_none_not_error() -> None:
    assert class_by_id(99) is None
    assert class_by_name("lidar") is None


def test_classes_are_a_plain_mapping_passed_in() -> None:
    lidar = HwClass(4, "lidar", 10, 120, True)
    registry = {**DEFAULT_CLASSES, 4: lidar}
    assert class_by_id(4, registry) is lidar
    assert class_by_name("lidar", registry) is lidar
    assert class_by_id(4) is None  # the defaults are untouched
    with pytest.raises(TypeError):
        DEFAULT_CLASSES[4] = lidar  # type: ignore[index]


def test_duplicate_names_resolve_to_lowest_id() -> None:
    registry = {7: HwClass(7, "air", 9, 0, False), 3: HwClass(3, "air", 8, 0, False)}
    hw = class_by_name("air", registry)
    assert hw is not None and hw.id == 3


# ---------------------------------------------------------------- cells and distances


def test_cell_for_known_point() -> None:
    cell = cell_for(LAT, LON, 9)
    assert isinstance(cell, int)
    assert h3.int_to_str(cell) == "8928308280fffff"


@given(lats, lons, st.sampled_from([7, 8, 9]))
def test_cell_for_resolution_and_containment(lat: float, lon: float, res: int) -> None:
    cell = cell_for(lat, lon, res)
    assert h3.get_resolution(h3.int_to_str(cell)) == res
    # a point lies within about one edge length of its cell's centre (generous bound for distortion)
    assert distance_to_cell_m(lat, lon, cell) <= 2 * h3.average_hexagon_edge_length(res, unit="m")


@given(st.lists(st.tuples(lats, lons), max_size=12), st.sampled_from([7, 9]), st.randoms())
def test_cells_for_is_cell_for_of_each_point(points: list, res: int, rnd: random.Random) -> None:
    # Repeat some points back to back: those reuse the previous cell, and must still be right.
    points = [p for p in points for _ in range(rnd.randint(1, 3))]
    assert geo.cells_for(points, res) == tuple(cell_for(lat, lon, res) for lat, lon in points)


@pytest.mark.parametrize(
    ("a", "b", "expected_m"),
    [
        ((0.0, 0.0), (0.0, 0.0), 0.0),
        ((0.0, 0.0), (1.0, 0.0), 111_195.08),  # one degree of latitude
        ((0.0, 0.0), (0.0, 180.0), math.pi * geo.EARTH_RADIUS_M),  # antipodal
        ((51.5007, -0.1246), (40.6892, -74.0445), 5_574_840.0),  # Big Ben → Statue of Liberty
    ],
)
def test_haversine_table(a: tuple[float, float], b: tuple[float, float], expected_m: float) -> None:
    assert haversine_m(*a, *b) == pytest.approx(expected_m, rel=1e-3, abs=0.01)


@given(lats, lons, lats, lons)
def test_haversine_symmetric_non_negative(lat1: float, lon1: float, lat2: float, lon2: float) -> None:
    d = haversine_m(lat1, lon1, lat2, lon2)
    assert d >= 0
    assert d == pytest.approx(haversine_m(lat2, lon2, lat1, lon1))


def test_distance_to_cell_centre_is_zero_at_centre() -> None:
    cell = cell_for(LAT, LON, 7)
    c_lat, c_lon = h3.cell_to_latlng(h3.int_to_str(cell))
    assert distance_to_cell_m(c_lat, c_lon, cell) == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- location trust (HIP-98 shape)


@pytest.mark.parametrize(
    ("distance_m", "trust"),
    [
        (0.0, BPS),
        (299.0, BPS),
        (300.0, BPS),
        (301.0, 2_500),
        (399.0, 2_500),
        (400.0, 2_500),
        (401.0, 0),
        (10_000.0, 0),
        (math.inf, 0),
        (math.nan, 0),
    ],
)
def test_location_trust_thresholds(distance_m: float, trust: int) -> None:
    assert location_trust(distance_m) == trust


def test_location_trust_from_real_offset() -> None:
    cell = cell_for(LAT, LON, 7)
    c_lat, c_lon = h3.cell_to_latlng(h3.int_to_str(cell))
    metres_per_deg_lat = math.pi * geo.EARTH_RADIUS_M / 180
    for offset_m, trust in [(299, BPS), (301, 2_500), (399, 2_500), (401, 0)]:
        d = distance_to_cell_m(c_lat + offset_m / metres_per_deg_lat, c_lon, cell)
        assert location_trust(d) == trust, (offset_m, d)


@given(st.floats(min_value=0, max_value=1e7), st.floats(min_value=0, max_value=1e7))
def test_location_trust_never_rises_with_distance(d1: float, d2: float) -> None:
    near, far = sorted((d1, d2))
    assert location_trust(near) >= location_trust(far)


# ---------------------------------------------------------------- freshness (Hivemapper refill)


@pytest.mark.parametrize(
    ("last", "epoch", "refill", "expected"),
    [
        (None, 5, 7, BPS),  # never covered: full value
        (5, 5, 7, 0),  # right after coverage
        (4, 5, 7, 1_428),  # 1/7, floored
        (2, 5, 7, 4_285),  # 3/7
        (0, 7, 7, BPS),  # fully refilled
        (0, 100, 7, BPS),  # capped, never above 1.0
        (9, 10, 1, BPS),  # one-epoch refill
        (0, 5, 10, 5_000),
    ],
)
def test_freshness_curve(last: int | None, epoch: int, refill: int, expected: int) -> None:
    assert freshness_bps(last, epoch, refill) == expected


def test_freshness_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="after epoch"):
        freshness_bps(6, 5, 7)
    with pytest.raises(ValueError, match="refill_epochs"):
        freshness_bps(1, 5, 0)


@given(st.integers(0, 1000), st.integers(0, 50), st.integers(0, 50), st.integers(1, 30))
def test_freshness_monotone_and_bounded(last: int, gap1: int, gap2: int, refill: int) -> None:
    early, late = sorted((gap1, gap2))
    f_early = freshness_bps(last, last + early, refill)
    f_late = freshness_bps(last, last + late, refill)
    assert 0 <= f_early <= f_late <= BPS


# ---------------------------------------------------------------- cell weight


@pytest.mark.parametrize(
    ("factors", "expected"),
    [
        ((BPS, BPS, BPS, BPS), BPS),
        ((BPS, 20_000, BPS, BPS), 20_000),  # operator boost ×2
        ((BPS, BPS, 0, BPS), 0),  # just covered: worthless this epoch
        ((BPS, BPS, 5_000, 15_000), 7_500),
        ((1, 1, 1, 1), 0),  # floors once, at the end
        ((3, BPS, BPS, BPS), 3),
    ],
)
def test_cell_weight_table(factors: tuple[int, int, int, int], expected: int) -> None:
    assert cell_weight_bps(*factors) == expected


@given(st.permutations([BPS, 12_345, 7_777, 30_000]))
def test_cell_weight_order_of_factors_irrelevant(factors: list[int]) -> None:
    assert cell_weight_bps(*factors) == 12_345 * 7_777 * 30_000 // BPS**2


def test_cell_weight_rejects_negative() -> None:
    with pytest.raises(ValueError):
        cell_weight_bps(BPS, -1, BPS, BPS)
