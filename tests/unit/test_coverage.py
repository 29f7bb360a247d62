"""The coverage map's pure rules (ingest/core/coverage.py) and the GeoJSON shape of a covered cell."""

from __future__ import annotations

import itertools

import h3
import pytest

from ingest.adapters.store.coverage import CellCoverage
from ingest.api.map import MapConfig, page_html
from ingest.api.shapes import cell_feature, epoch_span_json
from ingest.core.coverage import (
    EpochSpan,
    as_of,
    cell_ring,
    coverage_source,
    current_epoch,
    epoch_list,
    freshness_ms,
    open_span,
)

G, L = 1_000_000, 1_000  # genesis and epoch length (ms) of these tables: epoch n is [G+(n-1)L, G+nL)


@pytest.mark.parametrize(
    "epoch,stored,now,expected",
    [
        (1, True, G + 5 * L, "closed"),  # stored: its result, whatever the clock says
        (9, True, G + 5 * L, "closed"),  # stored ahead of this process's clock
        (6, False, G + 5 * L, "open"),  # the epoch holding now
        (5, False, G + 5 * L, "open"),  # over but not closed yet (grace, a scheduler behind)
        (1, False, G + 5 * L, "open"),  # before the first reading: never stored, empty
        (7, False, G + 5 * L, "future"),
        (1, False, G - 1, "open"),  # before genesis, readings count in epoch 1
        (2, False, G - 1, "future"),
        (2, False, G + L, "open"),  # the first ms of epoch 2
    ],
)
def test_coverage_source(epoch: int, stored: bool, now: int, expected: str) -> None:
    assert coverage_source(epoch, stored, now, G, L) == expected


@pytest.mark.parametrize(
    "now,expected", [(0, 1), (G - 1, 1), (G, 1), (G + L - 1, 1), (G + L, 2), (G + 7 * L, 8)]
)
def test_current_epoch(now: int, expected: int) -> None:
    assert current_epoch(now, G, L) == expected


def _stored(*epochs: int) -> list[EpochSpan]:
    return [EpochSpan(n, G + (n - 1) * L, G + n * L, "published") for n in epochs]


def _listed(spans: list[EpochSpan]) -> list[tuple[int, str]]:
    return [(e.epoch, e.status) for e in spans]


@pytest.mark.parametrize(
    "stored,now,limit,before,expected",
    [
        # nothing stored: only the open epoch (the ones before the first reading are never stored)
        ((), G + 300 * L, 100, None, [(301, "open")]),
        ((), G + 300 * L, 100, 400, [(301, "open")]),
        ((), G + 300 * L, 100, 301, []),
        # the open epoch, then the stored ones
        (
            (3, 2, 1),
            G + 3 * L,
            100,
            None,
            [(4, "open"), (3, "published"), (2, "published"), (1, "published")],
        ),
        # epochs over but not closed yet come between
        (
            (2, 1),
            G + 4 * L,
            100,
            None,
            [(5, "open"), (4, "open"), (3, "open"), (2, "published"), (1, "published")],
        ),
        ((2, 1), G + 4 * L, 2, None, [(5, "open"), (4, "open")]),
        # the next page: only stored epochs below `before`
        ((2, 1), G + 4 * L, 100, 3, [(2, "published"), (1, "published")]),
        ((2, 1), G + 4 * L, 100, 4, [(3, "open"), (2, "published"), (1, "published")]),
        # a clock behind the scheduler: the stored epoch is listed once, as stored
        ((4, 3), G + 3 * L, 100, None, [(4, "published"), (3, "published")]),
    ],
)
def test_epoch_list(
    stored: tuple[int, ...], now: int, limit: int, before: int | None, expected: list[tuple[int, str]]
) -> None:
    below = [e for e in _stored(*stored) if before is None or e.epoch < before]
    assert _listed(epoch_list(below, now, G, L, limit, before)) == expected


def test_open_span_bounds() -> None:
    assert open_span(3, G, L) == EpochSpan(3, G + 2 * L, G + 3 * L, "open")
    assert epoch_span_json(open_span(3, G, L)) == {
        "epoch": 3,
        "start_ms": G + 2 * L,
        "end_ms": G + 3 * L,
        "status": "open",
        "covered": None,
    }


@pytest.mark.parametrize(
    "source,end,now,expected",
    [("closed", 2_000, 9_000, 2_000), ("open", 2_000, 1_500, 1_500), ("open", 2_000, 9_000, 2_000)],
)
def test_as_of(source: str, end: int, now: int, expected: int) -> None:
    assert as_of(source, end, now) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "newest,at,expected", [(None, 5_000, None), (4_000, 5_000, 1_000), (5_000, 5_000, 0), (6_000, 5_000, 0)]
)
def test_freshness(newest: int | None, at: int, expected: int | None) -> None:
    assert freshness_ms(newest, at) == expected


def _signed_area(ring: list[list[float]]) -> float:
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in itertools.pairwise(ring)) / 2


@pytest.mark.parametrize(
    "cell",
    [
        "88283096cdfffff",  # a hexagon (the README's demo cell)
        "872830828ffffff",
        "8009fffffffffff",  # a res-0 pentagon
        "8f754e64992d6d8",  # res 15
        "81017ffffffffff",  # a class-III cell with a distortion vertex (7 vertices)
    ],
)
def test_cell_ring_is_a_closed_counterclockwise_lon_lat_ring(cell: str) -> None:
    ring = cell_ring(int(cell, 16))
    boundary = h3.cell_to_boundary(cell)
    assert ring[0] == ring[-1] and len(ring) == len(boundary) + 1
    assert [(lat, lon) for lon, lat in ring[:-1]] == [(round(a, 6), round(b, 6)) for a, b in boundary]
    assert _signed_area(ring) > 0  # counter-clockwise with lon as x, lat as y (RFC 7946 §3.1.6)


def test_a_cell_across_the_antimeridian_stays_one_small_ring() -> None:
    cell = h3.latlng_to_cell(0.0, 179.99, 3)
    lons = [lon for lon, _ in cell_ring(h3.str_to_int(cell))]
    assert max(lons) > 180 and min(lons) > 0 and max(lons) - min(lons) < 5
    assert _signed_area(cell_ring(h3.str_to_int(cell))) > 0


def test_cell_feature() -> None:
    c = CellCoverage(0x88283096CDFFFFF, 12, [b"\xaa" * 32, b"\xbb" * 32], 340, 9_000, 10**22)
    f = cell_feature(c, 10_000)
    assert f["type"] == "Feature" and f["id"] == "88283096cdfffff"
    assert f["geometry"]["type"] == "Polygon" and f["geometry"]["coordinates"] == [cell_ring(c.cell)]
    assert f["properties"] == {
        "cell": "88283096cdfffff",
        "devices": 12,
        "device_ids": ["aa" * 32, "bb" * 32],
        "readings": 340,
        "newest_ms": 9_000,
        "freshness_ms": 1_000,
        "reward": "10000000000000000000000",
    }
    open_cell = cell_feature(c._replace(reward=None, newest_ms=None), 10_000)["properties"]
    assert open_cell["reward"] is None and open_cell["freshness_ms"] is None


def test_the_default_epoch_clock_and_tiles_are_the_settings_defaults() -> None:
    """An app nobody configured (tests' create_app) numbers epochs as `depin run` does by default,
    on a plain background."""
    from ingest.api.auth import DEFAULT_GRID
    from ingest.settings import Environment

    fields = Environment.model_fields
    assert DEFAULT_GRID == (
        fields["epoch_genesis_ms"].default,
        fields["epoch_length_s"].default * 1000,
    )
    assert MapConfig().tiles_url == fields["map_tiles_url"].default == ""


def test_the_page_carries_its_settings_as_inert_json() -> None:
    html = page_html(
        MapConfig(tiles_url="https://t.example/{z}/{x}/{y}.png", tiles_attribution="</script><b>&")
    )
    assert '"tilesUrl": "https://t.example/{z}/{x}/{y}.png"' in html
    assert "</script><b>" not in html and "\\u003c/script\\u003e\\u003cb\\u003e\\u0026" in html


@pytest.mark.parametrize(
    "url", ["ftp://tiles/{z}/{x}/{y}.png", "tiles.example/{z}/{x}/{y}.png", "http://a b"]
)
def test_a_tile_url_that_is_not_http_is_refused_at_start(url: str) -> None:
    from devices.errors import SettingsError
    from ingest.settings import read_environment

    with pytest.raises(SettingsError, match="DEPIN_MAP_TILES_URL"):
        read_environment(map_tiles_url=url)
    assert read_environment(map_tiles_url="https://t.example/{z}/{x}/{y}.png").map_tiles_url
