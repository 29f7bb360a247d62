"""OpenAPI paths of the buyers' queries (/v1/readings, /v1/aggregates, /v1/export), merged into
/openapi.json by ingest/api/openapi.py. Rules OpenAPI 3.0 cannot state are in the descriptions: a
device or a place (cell, bbox, polygon) must be given, at most one place, the time-range caps, the
area cap; the fuzz test's hooks (tests/st_hooks.py) keep valid cases within them."""

from __future__ import annotations

from typing import Any

from ingest.api.openapi import _I, _NS, DB_ERRORS, HEX64, MAX_TS_MS, _obj, _q, _ref, _resp
from ingest.core.readfilter import MAX_AREA_KM2, MAX_POLYGON_VERTICES

_NUM = r"-?[0-9]{1,3}(\.[0-9]{1,15})?"
FILTER = [
    _q("device", "device id, 64 hex digits", {"type": "string", "pattern": HEX64}),
    _q(
        "cell",
        "H3 cell index in hex at any resolution, e.g. 88283096cdfffff or its parent 87283096cffffff",
        {"type": "string", "format": "h3-cell", "pattern": "^[0-9a-fA-F]{15,16}$"},
    ),
    _q(
        "bbox",
        f"minLon,minLat,maxLon,maxLat in degrees (at most {MAX_AREA_KM2:,.0f} km²)",
        {"type": "string", "format": "bbox", "pattern": f"^{_NUM},{_NUM},{_NUM},{_NUM}$"},
    ),
    _q(
        "polygon",
        "a GeoJSON Polygon geometry (holes allowed), URL-encoded: "
        f'{{"type":"Polygon","coordinates":[[[lon,lat],…]]}}, at most {MAX_POLYGON_VERTICES} positions '
        f"and {MAX_AREA_KM2:,.0f} km²",
        {"type": "string", "format": "geojson-polygon", "minLength": 1, "maxLength": 2000},
    ),
    _q("kind", "reading kind, e.g. weather or air", {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,31}$"}),
]


INCLUDE = _q(
    "include",
    "envelope: each reading also carries `envelope`, base64 (RFC 4648, padded) of its packet's signed "
    "COSE_Sign1 message (null for a packet stored before envelopes were kept); docs/PROVENANCE.md",
    {"type": "string", "enum": ["envelope"]},
)


def _range(days: int) -> list[dict[str, Any]]:
    return [
        _q(
            "from",
            f"start, ms since 1970 (inclusive); default `to` - 1 day; at most {days} days before `to`",
            {"type": "integer", "minimum": 0, "maximum": MAX_TS_MS},
        ),
        _q(
            "to",
            "end, ms since 1970 (exclusive); default now, or `from` + 1 day",
            {"type": "integer", "minimum": 1, "maximum": MAX_TS_MS},
        ),
    ]


_WHERE = (
    "Give `device`, or one place — `cell` (any resolution: its children at the stored resolutions; a "
    "cell finer than the data matches the readings positioned in its hexagon), `bbox` or `polygon` "
    f"(at most {MAX_AREA_KM2:,.0f} km²) — or a device and a place (else 400). Unknown or repeated "
    "parameters are a 400."
)
_NUMBER = {"type": "number"}
AGGREGATE = _obj(
    {
        "cell": {**_NS, "description": "the group's cell at `res` (null without res)"},
        "device_id": {**_NS, "description": "the group's device (null unless device= is given)"},
        "t": {**_I, "description": "bucket start, ms since 1970 (buckets are aligned to 1970-01-01 UTC)"},
        "count": _I,
        "min": _NUMBER,
        "max": _NUMBER,
        "avg": _NUMBER,
    }
)

QUERY_PATHS: dict[str, Any] = {
    "/v1/readings": {
        "get": {
            "summary": "readings of a device or a place (cell at any resolution, bbox, polygon)",
            "description": (
                f"{_WHERE} `from` < `to`, at most 31 days apart (else 400). A page ends at `limit` rows or "
                "at about DEPIN_API_MAX_PAGE_BYTES; `next` is then a cursor: pass it back with the same "
                "filter (the range is inside it). A cursor from another query, or altered, is a 400."
            ),
            "parameters": [
                *FILTER,
                *_range(31),
                _q(
                    "limit",
                    "page size (default 1000, at most DEPIN_API_MAX_ROWS)",
                    {"type": "integer", "minimum": 1, "maximum": 1000},
                ),
                _q(
                    "cursor",
                    "the `next` value of the previous page",
                    {"type": "string", "format": "depin-cursor", "maxLength": 512},
                ),
                INCLUDE,
            ],
            "responses": {
                "200": _resp('a page of readings (flags named: ["bad_values"])', _ref("ReadingsPage")),
                **DB_ERRORS,
            },
        }
    },
    "/v1/aggregates": {
        "get": {
            "summary": "count, min, max, avg of a numeric value per cell (res) and/or device × bucket",
            "description": (
                f"{_WHERE} `res` is required unless `device` is given; with `device` the rows are per "
                "device (and per cell too when `res` is given). A reading stored coarser than `res` is "
                "grouped at its own cell. Only readings whose `vals[value]` is a number count. Range caps: "
                "2 days for minute buckets, 31 for hour, 366 for day; at most 10,000 rows (else 400)."
            ),
            "parameters": [
                *FILTER,
                *_range(366),
                _q(
                    "res",
                    "H3 resolution of the cells grouped by",
                    {"type": "integer", "minimum": 0, "maximum": 15},
                ),
                _q(
                    "bucket",
                    "time bucket",
                    {"type": "string", "enum": ["minute", "hour", "day"]},
                    required=True,
                ),
                _q(
                    "value",
                    "name of the value in `vals`, e.g. temperature_c",
                    {"type": "string", "pattern": "^[A-Za-z0-9_]{1,64}$"},
                    required=True,
                ),
            ],
            "responses": {
                "200": _resp(
                    "aggregates, oldest bucket first",
                    _obj(
                        {
                            "res": {**_I, "nullable": True},
                            "bucket": {"type": "string"},
                            "value": {"type": "string"},
                            "from": _I,
                            "to": _I,
                            "rows": {"type": "array", "items": AGGREGATE},
                        }
                    ),
                ),
                **DB_ERRORS,
            },
        }
    },
    "/v1/export": {
        "get": {
            "summary": "readings of a filter as streamed CSV or NDJSON (up to 366 days)",
            "description": (
                f"{_WHERE} Streamed from the database, oldest first. CSV columns: ts_ms, device_id, seq, "
                "idx, lat, lon, acc, alt, cell, kind, vals (JSON), media_sha256, media_uri, flags (names "
                "joined by |), then envelope with include=envelope. NDJSON: one reading per line, as in "
                "/v1/readings. `from` < `to`, at most 366 days apart."
            ),
            "parameters": [
                *FILTER,
                *_range(366),
                _q("format", "csv or ndjson", {"type": "string", "enum": ["csv", "ndjson"]}, required=True),
                INCLUDE,
            ],
            "responses": {
                "200": {
                    "description": "the readings, streamed",
                    "content": {"text/csv": {"schema": {"type": "string"}}, "application/x-ndjson": {}},
                },
                **DB_ERRORS,
            },
        }
    },
}
