"""GET /v1/coverage (an epoch's covered H3 cells as GeoJSON) and GET /v1/epochs (the map's picker).
Public: no key, no usage charged (README "The coverage map").

Cheap by construction. A closed epoch's answer is built from its stored rewards (`device_rewards`, by
primary key) plus one index probe per cell for its newest reading, and never changes once built: the
encoded body is kept (the last `CLOSED_KEPT` epochs, per status, per process). The open epoch is
counted from the readings of its time range, the same scan an epoch close makes; its body is kept
`OPEN_TTL_S` seconds and requests arriving meanwhile share one query (no stampede when many maps
poll). An answer holds at most `limit` (≤ MAX_CELLS) cells, the most-read first; `cells` says how
many are covered in all and `truncated` whether some were left out.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from aiohttp import web

from ingest.adapters.store.coverage import CoverageStore
from ingest.api.app import STORE, BadRequest, _dumps, _int_param, _not_found
from ingest.api.map import MAX_EPOCHS
from ingest.api.metering import EPOCH_GRID
from ingest.api.shapes import coverage_json, epoch_span_json
from ingest.core.coverage import MAX_CELLS, as_of, coverage_source, current_epoch, epoch_list, open_span
from ingest.core.storage_rules import INT64_MAX

OPEN_TTL_S = 5.0
CLOSED_KEPT = 8


class _Bodies:
    """Encoded coverage answers of one app: built once per key by one task that every request asking
    meanwhile awaits; a failed build is forgotten (the next request tries again)."""

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple[Any, ...], tuple[float, asyncio.Future[bytes]]] = OrderedDict()

    async def get(
        self, key: tuple[Any, ...], ttl_s: float | None, build: Callable[[], Awaitable[bytes]]
    ) -> bytes:
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is None or (entry[0] <= now and entry[1].done()):
            task = asyncio.ensure_future(build())
            expires = float("inf") if ttl_s is None else now + ttl_s
            self._entries[key] = entry = (expires, task)
            task.add_done_callback(lambda t: self._forget_failed(key, t))
            while len(self._entries) > CLOSED_KEPT + 2:  # a few open-epoch keys + the closed ones
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        return await asyncio.shield(entry[1])

    def _forget_failed(self, key: tuple[Any, ...], task: asyncio.Future[bytes]) -> None:
        if task.cancelled() or task.exception() is not None:
            entry = self._entries.get(key)
            if entry is not None and entry[1] is task:
                del self._entries[key]


_BODIES: weakref.WeakKeyDictionary[web.Application, _Bodies] = weakref.WeakKeyDictionary()


def _only(request: web.Request, *names: str) -> None:
    unknown = sorted(set(request.query) - set(names))
    if unknown:
        raise BadRequest(
            f"unknown query parameter {unknown[0][:40]!r} (this endpoint takes {', '.join(names)})"
        )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def coverage(request: web.Request) -> web.Response:
    """The epoch's covered cells as a GeoJSON FeatureCollection (default: the open epoch so far)."""
    _only(request, "epoch", "limit")
    genesis, length = request.app[EPOCH_GRID]
    limit = _int_param(request, "limit", MAX_CELLS, lo=1, hi=MAX_CELLS)
    now = _now_ms()
    current = current_epoch(now, genesis, length)
    epoch = _int_param(request, "epoch", current, lo=1, hi=INT64_MAX)
    store = CoverageStore(request.app[STORE].pool)
    stored = await store.stored_epoch(epoch)
    source = coverage_source(epoch, stored is not None, now, genesis, length)
    if source == "future":
        raise _not_found(f"epoch {epoch} has not started yet (the open epoch is {current})")
    span = stored or open_span(epoch, genesis, length)

    async def build() -> bytes:
        at = as_of(source, span.end_ms, _now_ms())
        if source == "closed":
            page = await store.closed_coverage(epoch, span.start_ms, span.end_ms, limit)
        else:
            page = await store.open_coverage(span.start_ms, span.end_ms, limit)
        return _dumps(coverage_json(span, at, page))

    bodies = _BODIES.setdefault(request.app, _Bodies())
    key = (epoch, span.status, limit)
    body = await bodies.get(key, None if source == "closed" else OPEN_TTL_S, build)
    return web.Response(body=body, content_type="application/geo+json")


async def epochs_list(request: web.Request) -> web.Response:
    """Epochs newest first: the open one, then the stored ones (`before`: below that number)."""
    _only(request, "limit", "before")
    genesis, length = request.app[EPOCH_GRID]
    limit = _int_param(request, "limit", 100, lo=1, hi=MAX_EPOCHS)
    before = _int_param(request, "before", 0, lo=1, hi=INT64_MAX) or None
    now = _now_ms()
    store = CoverageStore(request.app[STORE].pool)
    stored = await store.stored_epochs(limit, before)
    listed = [
        e if e.covered is not None else replace(e, covered=await store.any_readings(e.start_ms, e.end_ms))
        for e in epoch_list(stored, now, genesis, length, limit, before)
    ]
    current = current_epoch(now, genesis, length)
    return web.Response(
        body=_dumps({"epochs": [epoch_span_json(e) for e in listed], "open": current}),
        content_type="application/json",
    )
