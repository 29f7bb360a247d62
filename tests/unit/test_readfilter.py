"""ingest/core/readfilter.py: query parameters → ReadingFilter (table tests: every bad input names its
parameter), areas (size, exact test)."""

from __future__ import annotations

import json

import h3
import pytest

from ingest.core.readfilter import (
    FILTER_PARAMS,
    MAX_AREA_KM2,
    FilterError,
    exact_area,
    parse_bbox,
    parse_polygon,
    parse_range,
    parse_where,
    single_params,
)

DEV = "ab" * 32
CELL9 = "89283082803ffff"
SQUARE = {
    "type": "Polygon",
    "coordinates": [[[13.0, 52.0], [13.1, 52.0], [13.1, 52.1], [13.0, 52.1], [13.0, 52.0]]],
}


@pytest.mark.parametrize(
    ("query", "param", "words"),
    [
        ({}, "device", "give device"),
        ({"kind": "air"}, "device", "give device"),
        ({"device": "zz"}, "device", "64 hex"),
        ({"cell": "nothex"}, "cell", "H3"),
        ({"cell": "8" + "f" * 14}, "cell", "H3"),
        ({"cell": CELL9, "bbox": "13,52,13.1,52.1"}, "bbox", "one of"),
        ({"bbox": "13,52,13.1"}, "bbox", "minLon"),
        ({"bbox": "13,52,13.1,1e3"}, "bbox", "decimal"),
        ({"bbox": "13.1,52,13,52.1"}, "bbox", "non-empty"),
        ({"bbox": "13,52,14,53"}, "bbox", "cap"),  # ~7,600 km²
        ({"bbox": "-170,10,170,10.01"}, "bbox", "180"),
        ({"bbox": "13,95,13.1,96"}, "bbox", "lat"),
        ({"polygon": "{"}, "polygon", "GeoJSON"),
        ({"polygon": json.dumps({"type": "Point", "coordinates": [1, 2]})}, "polygon", "GeoJSON"),
        (
            {"polygon": json.dumps({"type": "Polygon", "coordinates": [[[1, 2], [2, 3], [1, 2]]]})},
            "polygon",
            "4",
        ),
        (
            {"polygon": json.dumps({"type": "Polygon", "coordinates": [[[1, 2], [2, 3], [3, 2], [1, 3]]]})},
            "polygon",
            "end where",
        ),
        (
            {"polygon": '{"type":"Polygon","coordinates":[[[1,"a"],[2,3],[3,2],[1,"a"]]]}'},
            "polygon",
            "numbers",
        ),
        (
            {"polygon": '{"type":"Polygon","coordinates":[[[1,NaN],[2,3],[3,2],[1,NaN]]]}'},
            "polygon",
            "numbers",
        ),
        ({"device": DEV, "kind": "Air!"}, "kind", "kind"),
    ],
)
def test_bad_filters_name_their_parameter(query: dict[str, str], param: str, words: str) -> None:
    with pytest.raises(FilterError) as err:
        parse_where(query)
    assert err.value.param == param
    assert words in str(err.value)


def test_unknown_and_repeated_parameters() -> None:
    assert single_params([("device", DEV)], FILTER_PARAMS) == {"device": DEV}
    with pytest.raises(FilterError, match="unknown parameter 'format'"):
        single_params([("format", "csv")], FILTER_PARAMS)
    with pytest.raises(FilterError, match="more than once"):
        single_params([("device", DEV), ("device", DEV)], FILTER_PARAMS)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, (1_000 - 100, 1_000)),
        ({"from": "500"}, (500, 600)),
        ({"to": "50"}, (0, 50)),
        ({"from": "10", "to": "20"}, (10, 20)),
    ],
)
def test_time_range_defaults(query: dict[str, str], expected: tuple[int, int]) -> None:
    assert parse_range(query, now_ms=1_000, default_ms=100, max_ms=300, max_ts_ms=10**6) == expected


@pytest.mark.parametrize(
    "query", [{"from": "20", "to": "10"}, {"from": "0", "to": "400"}, {"from": "x"}, {"to": "0"}]
)
def test_bad_time_ranges(query: dict[str, str]) -> None:
    with pytest.raises(FilterError):
        parse_range(query, now_ms=1_000, default_ms=100, max_ms=300, max_ts_ms=10**6)


def test_area_size_and_exact_test() -> None:
    box = parse_bbox("13,52,13.1,52.1")
    assert 70 < box.km2() < 80  # 0.1° × 0.1° at 52° N ≈ 6.85 km × 11.1 km
    square = parse_polygon(json.dumps(SQUARE))
    assert square.km2() == pytest.approx(box.km2())
    for area in (box, square):
        assert area.contains(13.05, 52.05)
        assert not area.contains(13.2, 52.05)
        assert not area.contains(13.05, 51.9)
    holed = dict(
        SQUARE,
        coordinates=[
            *SQUARE["coordinates"],
            [[13.04, 52.04], [13.06, 52.04], [13.06, 52.06], [13.04, 52.04]],
        ],
    )
    hole = parse_polygon(json.dumps(holed))
    assert not hole.contains(13.055, 52.045)  # inside the hole
    assert hole.contains(13.02, 52.02)
    assert hole.km2() < square.km2()


def test_area_cap_is_documented_value() -> None:
    side = (MAX_AREA_KM2**0.5) / 111.2  # degrees of latitude for the cap's side, at the equator
    parse_bbox(f"0,0,{side * 0.99:.6f},{side * 0.99:.6f}")
    with pytest.raises(FilterError, match="cap"):
        parse_bbox(f"0,0,{side * 1.01:.6f},{side * 1.01:.6f}")


def test_a_cells_exact_area_is_its_hexagon() -> None:
    fine = h3.latlng_to_cell(52.52, 13.4, 11)
    hexagon = exact_area(parse_where({"cell": fine}))
    assert hexagon is not None
    lat, lon = h3.cell_to_latlng(fine)
    assert hexagon.contains(lon, lat)
    lat2, lon2 = h3.cell_to_latlng(h3.grid_ring(fine, 2)[0])
    assert not hexagon.contains(lon2, lat2)
    assert exact_area(parse_where({"device": DEV})) is None


def test_binding_covers_every_filter_but_time() -> None:
    a = parse_where({"device": DEV, "kind": "air"}).between(0, 10)
    b = parse_where({"device": DEV, "kind": "weather"}).between(0, 10)
    c = parse_where({"device": DEV, "kind": "air"}).between(5, 10)
    assert a.binding() != b.binding() and a.binding() == c.binding()
