"""ingest/core/placescan.py: the block scans of a place hold exactly its readings, each in one scan.

Readings are points stored at several resolutions (coarser than 7, 7, finer than 7); what a place means
is checked from first principles with h3: a cell holds the readings stored under it at its resolution
or finer, and those stored coarser whose position lies in its hexagon; an area holds the points inside.
"""

from __future__ import annotations

import json
import random

import h3
import pytest

from ingest.core import h3cells
from ingest.core.placescan import MAX_BLOCKS, BlockScan, PlaceTooFine, block_of, blocks_whole, place_scans
from ingest.core.readfilter import exact_area, parse_where

STORED = [5, 6, 7, 8, 9, 10]


def _points(n: int, seed: int, lat: float = 52.5, lon: float = 13.4, spread: float = 0.6) -> list:
    rnd = random.Random(seed)
    return [(lat + rnd.uniform(-spread, spread), lon + rnd.uniform(-spread, spread)) for _ in range(n)]


def _holders(scans: list[BlockScan], cell: int, inside: bool) -> list[BlockScan]:
    return [s for s in scans if s.holds(cell, inside)]


@pytest.mark.parametrize("query_res", [4, 5, 6, 7, 8, 9, 11])
def test_a_cell_holds_what_lies_under_it_and_coarser_data_in_its_hexagon(query_res: int) -> None:
    points = _points(3000, query_res, spread=0.08 if query_res >= 8 else 0.6)
    query = h3.str_to_int(h3.latlng_to_cell(points[0][0], points[0][1], query_res))
    where = parse_where({"cell": format(query, "x")})
    hexagon = exact_area(where)
    assert hexagon is not None
    scans = place_scans(where, STORED)
    found = 0
    for lat, lon in points:
        for s in STORED:
            cell = h3.str_to_int(h3.latlng_to_cell(lat, lon, s))
            inside = hexagon.contains(lon, lat)
            wanted = h3cells.parent(cell, query_res) == query if s >= query_res else inside
            holders = _holders(scans, cell, inside)
            assert len(holders) == int(wanted), (lat, lon, s, holders)  # found once, or not at all
            found += wanted
    assert found > 0


CONCAVE = {  # a "C" with a hole: edges that cut through cells both ways
    "type": "Polygon",
    "coordinates": [
        [[13.3, 52.45], [13.45, 52.45], [13.45, 52.48], [13.34, 52.48], [13.34, 52.52], [13.45, 52.52],
         [13.45, 52.55], [13.3, 52.55], [13.3, 52.45]],
        [[13.31, 52.46], [13.33, 52.46], [13.33, 52.47], [13.31, 52.46]],
    ],
}  # fmt: skip


@pytest.mark.parametrize("query", [{"bbox": "13.3,52.45,13.45,52.55"}, {"polygon": json.dumps(CONCAVE)}])
def test_an_area_holds_exactly_the_points_inside_once(query: dict[str, str]) -> None:
    where = parse_where(query)
    area = where.area
    assert area is not None
    scans = place_scans(where, STORED)
    for lat, lon in _points(4000, 1, spread=0.12):
        inside = area.contains(lon, lat)
        for s in STORED:
            cell = h3.str_to_int(h3.latlng_to_cell(lat, lon, s))
            assert len(_holders(scans, cell, inside)) == int(inside), (lat, lon, s)


def test_a_res7_cell_is_one_whole_block_per_stored_level() -> None:
    cell7 = h3.str_to_int(h3.latlng_to_cell(52.5, 13.4, 7))
    scans = place_scans(parse_where({"cell": format(cell7, "x")}), [8, 9])
    assert scans == [BlockScan(cell7, cell7, None, frozenset(), False)]  # res 8 and 9 share the block
    assert block_of(h3.str_to_int(h3.latlng_to_cell(52.5, 13.4, 9))) == cell7


def test_a_small_area_lists_its_cells_and_tests_only_the_edge_ones() -> None:
    where = parse_where({"bbox": "13.38,52.48,13.42,52.5"})
    scans = place_scans(where, [9])
    assert scans and all(s.cells for s in scans) and not any(s.exact for s in scans)
    listed = [c for s in scans for c in s.cells or ()]
    edge = [c for s in scans for c in s.edge]
    assert 0 < len(edge) < len(listed)
    assert len({block_of(c) for c in listed}) == len(scans)  # one scan per block


def test_a_cell_far_coarser_than_fine_data_is_refused() -> None:
    cell8 = h3.latlng_to_cell(52.5, 13.4, 8)
    with pytest.raises(PlaceTooFine):
        place_scans(parse_where({"cell": cell8}), [14])


def test_a_region_scans_each_block_and_a_huge_one_falls_back_to_ranges() -> None:
    cell5 = h3.latlng_to_cell(52.5, 13.4, 5)
    scans = place_scans(parse_where({"cell": cell5}), [9])
    assert len(scans) == 49 and blocks_whole(scans)
    cell2 = h3.latlng_to_cell(52.5, 13.4, 2)
    huge = place_scans(parse_where({"cell": cell2}), [9])
    assert 7**5 > MAX_BLOCKS and not blocks_whole(huge) and len(huge) == 1
    lat, lon = 52.7, 13.9
    inside = h3.str_to_int(h3.latlng_to_cell(lat, lon, 9))
    assert h3.cell_to_parent(h3.int_to_str(inside), 2) == cell2
    assert len(_holders(huge, inside, True)) == 1


def test_no_stored_resolution_no_scans_and_device_only_none() -> None:
    assert place_scans(parse_where({"bbox": "13,52,13.1,52.1"}), []) == []
    assert place_scans(parse_where({"device": "ab" * 32}), [9]) == []
