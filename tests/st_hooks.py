"""Schemathesis hooks for tests/integration/test_api_fuzz.py (loaded by `st run` through SCHEMATHESIS_HOOKS).

The custom string formats of /openapi.json get generators of valid values (H3 cells, EIP-55 addresses,
bboxes and GeoJSON polygons), and positive cases of the buyers' queries (readings, aggregates, export) are
kept within the rules OpenAPI 3.0 cannot state (and the descriptions state): a device or one place
given, a bbox or polygon within the area cap; `from` < `to` within the endpoint's cap; aggregates get
`res` without a device; a cursor is one the API handed out for the same query (signed with
DEPIN_TEST_CURSOR_KEY, as the server does). Negative cases are left alone: they must all come back 4xx.
"""

from __future__ import annotations

import json
import os
from typing import Any

import h3
import schemathesis
from eth_utils import to_checksum_address
from hypothesis import strategies as st

from ingest.api.aggregates import MAX_DAYS as AGGREGATE_DAYS
from ingest.api.export import MAX_DAYS as EXPORT_DAYS
from ingest.api.openapi import MAX_TS_MS
from ingest.api.readings import MAX_RANGE_MS, cursor_extra, encode_cursor
from ingest.core.readfilter import FILTER_PARAMS, FilterError, parse_bbox, parse_polygon, parse_where

KEY = bytes.fromhex(os.environ.get("DEPIN_TEST_CURSOR_KEY", "00" * 32))
KNOWN_DEVICE = os.environ.get("DEPIN_TEST_DEVICE", "ab" * 32)

cells = st.builds(
    lambda lat, lon, res: h3.latlng_to_cell(lat, lon, res),
    st.floats(-89.9, 89.9),
    st.floats(-179.9, 179.9),
    st.integers(0, 15),
)


def _address(raw: bytes, style: str) -> str:
    plain = "0x" + raw.hex()
    return {"checksum": to_checksum_address(plain), "lower": plain, "upper": "0x" + raw.hex().upper()}[style]


addresses = st.builds(
    _address, st.binary(min_size=20, max_size=20), st.sampled_from(["checksum", "lower", "upper"])
)
schemathesis.openapi.format("h3-cell", cells)
schemathesis.openapi.format("eip55-address", addresses)
schemathesis.openapi.format("depin-cursor", st.just("replaced-by-map_case"))
BBOX = "13.38,52.48,13.42,52.5"
POLYGON = '{"type":"Polygon","coordinates":[[[13.38,52.48],[13.42,52.48],[13.4,52.5],[13.38,52.48]]]}'


def _box(lon: float, lat: float, w: float, h: float) -> str:
    return f"{lon:.4f},{lat:.4f},{lon + w:.4f},{lat + h:.4f}"


def _triangle(lon: float, lat: float, d: float) -> str:
    ring = [[lon, lat], [lon + d, lat], [lon + d / 2, lat + d], [lon, lat]]
    return json.dumps({"type": "Polygon", "coordinates": [ring]}, separators=(",", ":"))


small = st.floats(0.001, 0.2)
schemathesis.openapi.format("bbox", st.builds(_box, st.floats(-179, 179), st.floats(-80, 79), small, small))
schemathesis.openapi.format(
    "geojson-polygon", st.builds(_triangle, st.floats(-179, 179), st.floats(-80, 79), small)
)


def _valid_place(q: dict[str, Any]) -> None:
    """Keep one valid place (a pattern-only draw may be over the area cap, inverted, or not H3)."""
    places = [p for p in ("cell", "bbox", "polygon") if p in q]
    for extra in places[1:]:
        del q[extra]
    if isinstance(q.get("cell"), str) and not h3.is_valid_cell(q["cell"]):
        q["cell"] = "88283096cdfffff"  # a pattern-only draw is not of format h3-cell
    for name, parse, fallback in (("bbox", parse_bbox, BBOX), ("polygon", parse_polygon, POLYGON)):
        if name in q:
            try:
                parse(q[name])
            except (FilterError, TypeError):
                q[name] = fallback
    if "device" not in q and not any(p in q for p in ("cell", "bbox", "polygon")):
        q["device"] = KNOWN_DEVICE


def _max_range_ms(path: str, q: dict[str, Any]) -> int:
    if path == "/v1/aggregates":
        return AGGREGATE_DAYS.get(q.get("bucket", "day"), 366) * 86_400_000
    return EXPORT_DAYS * 86_400_000 if path == "/v1/export" else MAX_RANGE_MS


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    meta = getattr(case, "meta", None)
    if meta is None or not meta.generation.mode.is_positive:
        return case
    path = case.operation.path
    if path in ("/v1/owners/{address}/proof", "/v1/owners/{address}/devices"):
        # The coverage phase draws from the pattern alone, ignoring the format: keep it to its format
        # (one case, or EIP-55 mixed case).
        address = (case.path_parameters or {}).get("address")
        if isinstance(address, str) and address != to_checksum_address(address):
            case.path_parameters = {**case.path_parameters, "address": address.lower()}
        return case
    if path not in ("/v1/readings", "/v1/aggregates", "/v1/export"):
        return case
    q: dict[str, Any] = dict(case.query or {})
    _valid_place(q)
    if path == "/v1/aggregates" and "res" not in q and "device" not in q:
        q["res"] = 7
    for name in ("from", "to"):  # the coverage phase may spell integers as strings
        if isinstance(q.get(name), str) and q[name].isascii() and q[name].isdigit():
            q[name] = int(q[name])
    cap = _max_range_ms(path, q)
    start, end = q.get("from"), q.get("to")
    if isinstance(start, int) and isinstance(end, int) and not (0 < end - start <= cap):
        q["to"] = end = min(start + 3_600_000, MAX_TS_MS)
        if end <= start:
            q["from"] = start = end - 3_600_000
    if path == "/v1/readings" and "cursor" in q:
        device = bytes.fromhex(q["device"].removeprefix("0x")) if "device" in q else None
        cell = int(q["cell"], 16) if "cell" in q else None
        if isinstance(end, int):
            hi = end
            lo = start if isinstance(start, int) else max(0, hi - 86_400_000)
        else:
            lo = start if isinstance(start, int) else 0
            hi = min(lo + 86_400_000, MAX_TS_MS)
            if hi <= lo:
                lo = hi - 86_400_000
        q.update({k: v for k, v in (("from", lo), ("to", hi)) if k in q})
        extra = cursor_extra(parse_where({k: str(v) for k, v in q.items() if k in FILTER_PARAMS}))
        q["cursor"] = encode_cursor(KEY, device, cell, (lo, hi), (lo, bytes(32), 0, 0), extra)
    case.query = q
    return case
