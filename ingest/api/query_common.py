"""What the buyers' query handlers (readings.py, aggregates.py, export.py) share: their app keys, the
query string as a checked dict (unknown or repeated parameters are a 400), the filter model
(ingest/core/readfilter.py) with its errors as JSON 400s naming the parameter, and the epoch clock
usage is metered with."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any, Protocol

import orjson
from aiohttp import web

from ingest.adapters.store.queries import QueryStore
from ingest.core.readfilter import FilterError, Where, parse_range, parse_where, single_params
from ingest.core.storage_rules import MAX_TS_MS

DAY_MS = 86_400_000
# Until the keys branch puts the epoch clock on the app, `depin run` sets EPOCH_CLOCK from its settings
# (DEPIN_EPOCH_GENESIS_MS, DEPIN_EPOCH_LENGTH_S); the defaults are those settings' defaults.
DEFAULT_EPOCH_CLOCK = (1_767_225_600_000, DAY_MS)


class QueryLimits(Protocol):
    """The part of ingest.api.app.ApiLimits the query handlers read."""

    max_rows: int
    max_page_bytes: int
    cursor_key: bytes


QUERIES: web.AppKey[QueryStore] = web.AppKey("queries", QueryStore)
QUERY_LIMITS: web.AppKey[QueryLimits] = web.AppKey("query_limits")
EPOCH_CLOCK: web.AppKey[tuple[int, int]] = web.AppKey("epoch_clock")


def bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


def json_response(data: Any) -> web.Response:
    try:  # orjson refuses ints beyond 64 bits, which a reading's values may hold
        body = orjson.dumps(data)
    except TypeError:
        body = json.dumps(data).encode()
    return web.Response(body=body, content_type="application/json")


def query_params(request: web.Request, allowed: Iterable[str]) -> dict[str, str]:
    """The query string as a dict; an unknown or repeated parameter, or a NUL byte, is a 400."""
    try:
        q = single_params(request.query.items(), allowed)
    except FilterError as exc:
        raise bad_request(str(exc)) from None
    for name, value in q.items():
        if "\x00" in value:
            raise bad_request(f"{name} holds a NUL byte")
    return q


def where_of(q: dict[str, str], *, need_place: bool = True) -> Where:
    try:
        return parse_where(q, need_place=need_place)
    except FilterError as exc:
        raise bad_request(str(exc)) from None


def time_range(q: dict[str, str], *, max_days: int) -> tuple[int, int]:
    """[from, to): `to` defaults to now (or `from` + 1 day), `from` to `to` - 1 day; at most max_days."""
    try:
        return parse_range(
            q,
            now_ms=time.time_ns() // 1_000_000,
            default_ms=DAY_MS,
            max_ms=max_days * DAY_MS,
            max_ts_ms=MAX_TS_MS,
        )
    except FilterError as exc:
        raise bad_request(str(exc)) from None


def choice(q: dict[str, str], name: str, options: Iterable[str], default: str | None = None) -> str:
    options = list(options)
    value = q.get(name, default)
    if value is None:
        raise bad_request(f"missing query parameter {name!r} ({'|'.join(options)})")
    if value not in options:
        raise bad_request(f"{name} must be one of {', '.join(options)}")
    return value


def epoch_clock(request: web.Request) -> tuple[int, int]:
    """(genesis ms, epoch length ms) that usage is metered by."""
    return request.app.get(EPOCH_CLOCK, DEFAULT_EPOCH_CLOCK)
