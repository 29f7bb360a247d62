"""Which readings a buyer asks for, pure: query parameters → a `ReadingFilter`, and the H3 cover of an
area (ingest/core/placescan.py turns a place into index scans, ingest/adapters/store/queries.py into SQL).

One model serves GET /v1/readings, /v1/aggregates and /v1/export:

- `device=` (64 hex digits) and/or one place: `cell=` (an H3 cell at ANY resolution), `bbox=minLon,
  minLat,maxLon,maxLat` or `polygon=` (a GeoJSON Polygon, holes allowed, in the query string);
- `kind=`; the time range `from`/`to` (ms; defaults and caps per endpoint).

A cell's readings are those stored under it (any finer resolution) and, for data stored coarser than
the cell, those whose position lies in its hexagon (`exact_area`). A bbox or polygon is covered with H3
cells (h3.polygon_to_cells, plus one ring of neighbours: H3 children stick out of their parent a
little), compacted, and every row found there is checked exactly against the shape's lat/lon.
Every error is a `FilterError` naming the parameter.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import h3

MAX_AREA_KM2 = 2_500.0
MAX_POLYGON_VERTICES = 200
MAX_COVER_CELLS = 1_000  # the cover's resolution is the finest that needs at most this many cells
EARTH_RADIUS_KM = 6_371.0088
PLACE_PARAMS = ("cell", "bbox", "polygon")
FILTER_PARAMS = frozenset({"device", "kind", *PLACE_PARAMS})
_DEVICE_RE = re.compile(r"(?:0x)?[0-9a-fA-F]{64}")
_CELL_RE = re.compile(r"[0-9a-fA-F]{15,16}")
_KIND_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_NUM_RE = re.compile(r"-?[0-9]{1,3}(?:\.[0-9]{1,15})?")


class FilterError(ValueError):
    """A bad parameter: `param` names it, the message says why."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


Ring = tuple[tuple[float, float], ...]  # (lon, lat) positions, GeoJSON order, closed (first == last)


@dataclass(frozen=True, slots=True)
class Area:
    """A bbox or a polygon: its rings (the outer one first, then holes) and its extent."""

    shape: str  # "bbox" | "polygon"
    rings: tuple[Ring, ...]

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        lons = [p[0] for p in self.rings[0]]
        lats = [p[1] for p in self.rings[0]]
        return min(lons), min(lats), max(lons), max(lats)

    def edges(self) -> list[tuple[float, float, float, float]]:
        """Every ring's edges (x1, y1, x2, y2): what the even-odd test of `contains` walks."""
        return [(*a, *b) for ring in self.rings for a, b in itertools.pairwise(ring)]

    def contains(self, lon: float, lat: float) -> bool:
        """Even-odd rule over every ring's edges (holes excluded); the bbox is the closed rectangle. The
        SQL function depin_in_polygon (migration 011) is the same test."""
        if self.shape == "bbox":
            w, s, e, n = self.bbox
            return w <= lon <= e and s <= lat <= n
        inside = False
        for x1, y1, x2, y2 in self.edges():
            if (y1 > lat) != (y2 > lat) and lon < (x2 - x1) * (lat - y1) / (y2 - y1) + x1:
                inside = not inside
        return inside

    def km2(self) -> float:
        """Area on the sphere (outer ring minus holes)."""
        areas = [_ring_km2(ring) for ring in self.rings]
        return max(0.0, areas[0] - sum(areas[1:]))

    def canonical(self) -> str:
        return self.shape + ":" + ";".join(",".join(f"{x!r} {y!r}" for x, y in ring) for ring in self.rings)


def _ring_km2(ring: Ring) -> float:
    total = 0.0
    for (x1, y1), (x2, y2) in itertools.pairwise(ring):
        total += math.radians(x2 - x1) * (2 + math.sin(math.radians(y1)) + math.sin(math.radians(y2)))
    return abs(total) * EARTH_RADIUS_KM**2 / 2


@dataclass(frozen=True, slots=True)
class ReadingFilter:
    """Readings with start_ms <= ts < end_ms, of `device`, in `cell` or `area`, of `kind`."""

    start_ms: int
    end_ms: int
    device: bytes | None = None
    cell: int | None = None
    area: Area | None = None
    kind: str | None = None

    def binding(self) -> str:
        """The filter without its time range, canonical: what a page cursor is bound to."""
        return "|".join(
            [
                self.device.hex() if self.device else "",
                "" if self.cell is None else format(self.cell, "x"),
                self.area.canonical() if self.area else "",
                self.kind or "",
            ]
        )


# --- parsing ----------------------------------------------------------------------------------------


def single_params(pairs: Iterable[tuple[str, str]], allowed: Iterable[str]) -> dict[str, str]:
    """The query's parameters as a dict: an unknown one, or one given twice, is a FilterError."""
    allowed = frozenset(allowed)
    out: dict[str, str] = {}
    for name, value in pairs:
        if name not in allowed:
            raise FilterError(name, f"unknown parameter {name[:40]!r}; allowed: {', '.join(sorted(allowed))}")
        if name in out:
            raise FilterError(name, f"parameter {name!r} given more than once")
        out[name] = value
    return out


@dataclass(frozen=True, slots=True)
class Where:
    """The filter's parts other than time (parsed once, combined with a time range per endpoint)."""

    device: bytes | None
    cell: int | None
    area: Area | None
    kind: str | None

    def between(self, start_ms: int, end_ms: int) -> ReadingFilter:
        return ReadingFilter(start_ms, end_ms, self.device, self.cell, self.area, self.kind)


def parse_where(q: dict[str, str], *, need_place: bool = True) -> Where:
    """device / cell / bbox / polygon / kind. With `need_place`, a device or a place must be given."""
    places = [p for p in PLACE_PARAMS if p in q]
    if len(places) > 1:
        raise FilterError(places[1], f"give one of cell, bbox, polygon (got {' and '.join(places)})")
    device = parse_device(q["device"]) if "device" in q else None
    cell = parse_cell(q["cell"]) if "cell" in q else None
    area = parse_bbox(q["bbox"]) if "bbox" in q else parse_polygon(q["polygon"]) if "polygon" in q else None
    kind = None
    if "kind" in q:
        if not _KIND_RE.fullmatch(q["kind"]):
            raise FilterError("kind", "kind must be a reading kind such as weather or air (a-z, 0-9, _)")
        kind = q["kind"]
    if need_place and device is None and cell is None and area is None:
        raise FilterError("device", "give device=<hex id>, cell=<h3 index>, bbox=… or polygon=…")
    return Where(device, cell, area, kind)


INCLUDES = ("envelope",)  # extra columns a reading query or export can ask for (DESIGN §14)


def parse_include(q: dict[str, str]) -> frozenset[str]:
    """`include=envelope` (comma-separated names from INCLUDES); absent: nothing extra."""
    names = [n for n in q.get("include", "").split(",") if n] if "include" in q else []
    if "include" in q and (not names or any(n not in INCLUDES for n in names)):
        raise FilterError("include", f"include must be a comma-separated list of: {', '.join(INCLUDES)}")
    return frozenset(names)


def parse_device(raw: str) -> bytes:
    if not _DEVICE_RE.fullmatch(raw):
        raise FilterError("device", "device id must be 64 hex characters")
    return bytes.fromhex(raw.removeprefix("0x"))


def parse_cell(raw: str) -> int:
    if not _CELL_RE.fullmatch(raw) or not h3.is_valid_cell(raw.lower()):
        raise FilterError("cell", "cell must be a valid H3 cell index in hex, e.g. 88283096cdfffff")
    return int(raw, 16)


def _number(raw: str, param: str) -> float:
    if not _NUM_RE.fullmatch(raw.strip()):
        raise FilterError(param, f"{param}: {raw[:30]!r} is not a decimal number of degrees")
    return float(raw)


def _check_area(area: Area, param: str) -> Area:
    w, s, e, n = area.bbox
    if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
        raise FilterError(param, f"{param}: need -180 <= lon <= 180, -90 <= lat <= 90 and a non-empty extent")
    if e - w > 180:
        raise FilterError(param, f"{param}: spans more than 180° of longitude (across the antimeridian?)")
    km2 = area.km2()
    if km2 > MAX_AREA_KM2:
        raise FilterError(param, f"{param}: area {km2:,.0f} km² is over the cap of {MAX_AREA_KM2:,.0f} km²")
    return area


def parse_bbox(raw: str) -> Area:
    parts = raw.split(",")
    if len(parts) != 4:
        raise FilterError("bbox", "bbox must be minLon,minLat,maxLon,maxLat (degrees)")
    w, s, e, n = (_number(p, "bbox") for p in parts)
    if not (w < e and s < n):
        raise FilterError("bbox", "bbox: need minLon < maxLon and minLat < maxLat (a non-empty extent)")
    ring = ((w, s), (e, s), (e, n), (w, n), (w, s))
    return _check_area(Area("bbox", (ring,)), "bbox")


def parse_polygon(raw: str) -> Area:
    """A GeoJSON Polygon geometry: {"type": "Polygon", "coordinates": [[[lon, lat], …], …]}."""
    bad = 'polygon must be a GeoJSON Polygon: {"type":"Polygon","coordinates":[[[lon,lat],…]]}'
    if len(raw) > 16_000:
        raise FilterError("polygon", "polygon is longer than 16,000 characters")
    try:
        doc = json.loads(raw, parse_constant=lambda _: None)
    except (ValueError, RecursionError):
        raise FilterError("polygon", bad) from None
    if (
        not isinstance(doc, dict)
        or doc.get("type") != "Polygon"
        or not isinstance(doc.get("coordinates"), list)
    ):
        raise FilterError("polygon", bad)
    rings: list[Ring] = []
    for ring in doc["coordinates"]:
        if not isinstance(ring, list) or len(ring) < 4:
            raise FilterError("polygon", "polygon: each ring needs at least 4 positions (closed)")
        points = []
        for pos in ring:
            if not (
                isinstance(pos, list)
                and len(pos) in (2, 3)
                and all(type(v) in (int, float) and math.isfinite(v) for v in pos)
            ):
                raise FilterError("polygon", "polygon: a position is [lon, lat] (numbers)")
            points.append((float(pos[0]), float(pos[1])))
        if points[0] != points[-1]:
            raise FilterError("polygon", "polygon: each ring must end where it starts")
        rings.append(tuple(points))
    if not rings:
        raise FilterError("polygon", bad)
    if sum(len(r) for r in rings) > MAX_POLYGON_VERTICES:
        raise FilterError("polygon", f"polygon has more than {MAX_POLYGON_VERTICES} positions")
    return _check_area(Area("polygon", tuple(rings)), "polygon")


def parse_range(
    q: dict[str, str], *, now_ms: int, default_ms: int, max_ms: int, max_ts_ms: int
) -> tuple[int, int]:
    """[from, to) in ms: `to` defaults to now (or `from` + default), `from` to `to` - default."""
    given = {name: _int(q[name], name, lo, max_ts_ms) for name, lo in (("from", 0), ("to", 1)) if name in q}
    end = given.get("to", min(given["from"] + default_ms, max_ts_ms) if "from" in given else now_ms)
    start = given.get("from", max(0, end - default_ms))
    if end <= start or end - start > max_ms:
        raise FilterError(
            "from",
            f"need from < to and a range of at most {max_ms // 86_400_000} days; got from={start} to={end}",
        )
    return start, end


def _int(raw: str, name: str, lo: int, hi: int) -> int:
    if not re.fullmatch(r"-?[0-9]{1,40}", raw) or not lo <= int(raw) <= hi:
        raise FilterError(name, f"{name} must be an integer between {lo} and {hi}")
    return int(raw)


# --- the grid ---------------------------------------------------------------------------------------


def exact_area(where: Where | ReadingFilter) -> Area | None:
    """The shape rows in an `exact` range must lie in: the area, or a query cell's hexagon."""
    if where.area is not None:
        return where.area
    if where.cell is not None:
        boundary = h3.cell_to_boundary(h3.int_to_str(where.cell))  # (lat, lng) pairs
        ring = tuple((lng, lat) for lat, lng in boundary)
        return Area("polygon", (ring + ring[:1],))
    return None


def cover_res(km2: float, finest: int) -> int:
    """The finest resolution ≤ `finest` whose cells cover `km2` with at most MAX_COVER_CELLS of them."""
    res = finest
    while res > 0 and km2 / h3.average_hexagon_area(res, "km^2") > MAX_COVER_CELLS:
        res -= 1
    return res


def compact_cover(area: Area, res: int) -> list[int]:
    """Cells at `res` or coarser (compacted) covering the area, with one ring of neighbours more: H3
    children stick out of their parents a little, and a reading's cell at a finer resolution must lie
    under the cover."""
    ringed = {n for c in overlap_cells(area, res) for n in h3.grid_disk(h3.int_to_str(c), 1)}
    return sorted(h3.str_to_int(c) for c in h3.compact_cells(list(ringed)))


def overlap_cells(area: Area, res: int, contain: str = "overlap") -> set[int]:
    """The cells at `res` the area overlaps (`contain="full"`: lies entirely inside). A shape h3
    refuses (self-crossing, degenerate) counts as its extent; an area smaller than a cell overlaps at
    least the cell holding its first vertex."""
    cells = _overlap(area.rings, res, contain)
    if cells is None:
        w, s, e, n = area.bbox
        cells = _overlap((((w, s), (e, s), (e, n), (w, n), (w, s)),), res, contain) or set()
    if not cells and contain == "overlap":
        lon, lat = area.rings[0][0]
        cells = {h3.latlng_to_cell(lat, lon, res)}
    return {h3.str_to_int(c) for c in cells}


def _overlap(rings: Sequence[Ring], res: int, contain: str = "overlap") -> set[str] | None:
    """The cells at `res` the shape overlaps (or, `contain="full"`, holds entirely); None when h3
    refuses the shape."""
    try:
        shape = h3.LatLngPoly(*[[(lat, lon) for lon, lat in ring[:-1]] for ring in rings])
        return set(h3.h3shape_to_cells_experimental(shape, res, contain=contain))
    except (h3.H3BaseException, ValueError):
        return None
