"""GET /v1/readings: readings by device, H3 cell at any resolution, bbox or GeoJSON polygon, time range
and kind, oldest first, in pages with HMAC-signed cursors bound to their query.

A cursor carries the last row's (ts, device, seq, idx) and the first page's time range, signed with the
API's cursor key over the query's filter (device, cell, and — when given — the area and kind), so an
altered, forged or other-query cursor is a 400. Each page charges its rows to the request's usage
(ingest/core/metering.py `usage_of`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from typing import Any

from aiohttp import web

from ingest.api.metering import charge_readings
from ingest.api.query_common import (
    QUERIES,
    QUERY_LIMITS,
    bad_request,
    json_response,
    query_params,
    time_range,
    where_of,
)
from ingest.api.shapes import reading_json
from ingest.core.readfilter import FILTER_PARAMS, FilterError, Where, parse_include
from ingest.core.storage_rules import INT64_MAX, MAX_TS_MS, SMALLINT_MAX

MAX_RANGE_DAYS = 31
MAX_RANGE_MS = MAX_RANGE_DAYS * 86_400_000
PARAMS = FILTER_PARAMS | {"from", "to", "limit", "cursor", "include"}


def cursor_extra(where: Where) -> str:
    """The filter beyond device and cell that a cursor is bound to ('' when there is none)."""
    if where.area is None and where.kind is None:
        return ""
    return f"{where.area.canonical() if where.area else ''}|{where.kind or ''}"


def _query_key(device: bytes | None, cell: int | None, extra: str = "") -> bytes:
    base = f"readings|{device.hex() if device else ''}|{'' if cell is None else format(cell, 'x')}"
    return (base + (f"|{extra}" if extra else "")).encode()


def _mac(key: bytes, query: bytes, payload: bytes) -> bytes:
    return hmac.new(key, query + b"\n" + payload, hashlib.sha256).digest()[:16]


def encode_cursor(
    key: bytes,
    device: bytes | None,
    cell: int | None,
    rng: tuple[int, int],
    pos: tuple[int, bytes, int, int],
    extra: str = "",
) -> str:
    """`next`: the last row's (ts, device, seq, idx) and the page's time range, HMAC-signed with the query."""
    ts, dev, seq, idx = pos
    payload = json.dumps([ts, bytes(dev).hex(), seq, idx, rng[0], rng[1]], separators=(",", ":")).encode()
    mac = _mac(key, _query_key(device, cell, extra), payload)
    return base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + mac.hex()


def decode_cursor(
    key: bytes, raw: str, device: bytes | None, cell: int | None, extra: str = ""
) -> tuple[tuple[int, int], tuple[int, bytes, int, int]]:
    """((from, to), (ts, device, seq, idx)) of a cursor this API handed out for this same query."""
    bad = bad_request("cursor is not one this API handed out for this query (its filter); start over")
    if len(raw) > 512 or raw.count(".") != 1:
        raise bad
    body, mac_hex = raw.split(".")
    try:
        payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        mac = bytes.fromhex(mac_hex)
    except (ValueError, binascii.Error):
        raise bad from None
    if not hmac.compare_digest(mac, _mac(key, _query_key(device, cell, extra), payload)):
        raise bad
    # Signed by us, but checked as if it were not: every field typed and in range.
    try:
        ts, dev_hex, seq, idx, start, end = json.loads(payload)
    except (ValueError, TypeError):
        raise bad from None
    ints = (ts, seq, idx, start, end)
    if not all(type(v) is int for v in ints) or not isinstance(dev_hex, str):
        raise bad
    if not (
        0 <= ts <= MAX_TS_MS
        and 0 <= seq <= INT64_MAX
        and 0 <= idx <= SMALLINT_MAX
        and 0 <= start < end <= MAX_TS_MS
        and end - start <= MAX_RANGE_MS
        and re.fullmatch(r"[0-9a-f]{64}", dev_hex)
    ):
        raise bad
    return (start, end), (ts, bytes.fromhex(dev_hex), seq, idx)


def include_of(q: dict[str, str]) -> frozenset[str]:
    try:
        return parse_include(q)
    except FilterError as exc:
        raise bad_request(str(exc)) from None


def _limit(q: dict[str, str], max_rows: int) -> int:
    raw = q.get("limit", str(min(1000, max_rows)))
    if not re.fullmatch(r"[0-9]{1,7}", raw) or not 1 <= int(raw) <= max_rows:
        raise bad_request(f"limit must be an integer between 1 and {max_rows}")
    return int(raw)


async def readings(request: web.Request) -> web.Response:
    """Readings of a device and/or a place in [from, to), cursor-paginated, oldest first.

    `to` defaults to now (or `from` + 1 day) and `from` to one day before `to`, so `?device=ID` alone
    shows the last day. With a cursor the range is the one of the first page (it is in the cursor).
    """
    q = query_params(request, PARAMS)
    where = where_of(q)
    include = include_of(q)
    limits = request.app[QUERY_LIMITS]
    limit = _limit(q, limits.max_rows)
    extra = cursor_extra(where)
    after = None
    if "cursor" in q:
        (start, end), after = decode_cursor(limits.cursor_key, q["cursor"], where.device, where.cell, extra)
        given = time_range(q, max_days=MAX_RANGE_DAYS) if "from" in q or "to" in q else (start, end)
        if ("from" in q and given[0] != start) or ("to" in q and given[1] != end):
            raise bad_request(f"cursor belongs to the range from={start} to={end}; drop from/to or use those")
    else:
        start, end = time_range(q, max_days=MAX_RANGE_DAYS)
    page = await request.app[QUERIES].readings(
        where.between(start, end), limit=limit, after=after, max_bytes=limits.max_page_bytes
    )
    charge_readings(request, ((r.cell, r.ts_ms) for r in page.items))
    items = [reading_json(r) for r in page.items]
    if "envelope" in include:
        # Looked up after the page is chosen: a cursor names the same rows with or without include.
        found = await request.app[QUERIES].envelopes(sorted({(r.device_id, r.seq) for r in page.items}))
        for item, r in zip(items, page.items, strict=True):
            env = found.get((r.device_id, r.seq))
            item["envelope"] = None if env is None else base64.b64encode(env).decode()
    body: dict[str, Any] = {"readings": items, "next": None}
    if page.next is not None:
        body["next"] = encode_cursor(
            limits.cursor_key, where.device, where.cell, (start, end), page.next, extra
        )
    return json_response(body)
