"""Charging a request's usage to its API key: handlers call `charge` with units per (res-7 cell,
epoch) (ingest/core/metering.py computes them); what the request accumulated is persisted to the
usage tables for its key once the answer is built and before it is sent (the key middleware,
ingest/api/auth.py). A streamed answer calls `await record_usage(request, units)` before its first
byte instead. Either way a failed write fails the request (503): data is never served unpaid.

Epoch numbering for metering is the app's `EPOCH_GRID` (DEPIN_EPOCH_GENESIS_MS, DEPIN_EPOCH_LENGTH_S):
`charge_readings(request, pairs)` charges readings given as (cell, ts_ms) with it, or pass
`*request.app[EPOCH_GRID]` to `ingest.core.metering.usage_of` / `epoch_sql` yourself.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import NamedTuple

from aiohttp import web

from ingest.core import metering

# Request-scoped: what the request was charged and not yet recorded; the key it is metered to (absent:
# none, the request is free).
USAGE: web.RequestKey[Counter[tuple[int, int]]] = web.RequestKey("depin.usage", Counter)
KEY_ID: web.RequestKey[str] = web.RequestKey("depin.key_id", str)


class EpochGrid(NamedTuple):
    """The epochs' numbering: epoch 1 starts at `genesis_ms`, each lasts `length_ms`."""

    genesis_ms: int
    length_ms: int


# The app's epoch numbering, set by create_app from the settings (ingest/api/auth.py `install_access`).
EPOCH_GRID: web.AppKey[EpochGrid] = web.AppKey("epoch_grid", EpochGrid)
# Writes (key id, units) to the usage tables; set by the key middleware's install.
UsageSink = Callable[[str, Mapping[tuple[int, int], int]], Awaitable[None]]
USAGE_SINK: web.AppKey[UsageSink] = web.AppKey("usage_sink")


class UsageNotRecorded(web.HTTPServiceUnavailable):
    """The usage of a request could not be written: the request fails rather than serve unpaid data."""

    def __init__(self) -> None:
        super().__init__(
            text=json.dumps({"error": "the request's usage could not be recorded; retry shortly"}),
            content_type="application/json",
            headers={"Retry-After": "1"},
        )


def charge(request: web.Request, units: Mapping[tuple[int, int], int]) -> None:
    """Add `units` to what this request will be charged."""
    usage = request.setdefault(USAGE, Counter())
    usage.update(units)


def charge_readings(request: web.Request, readings: Iterable[tuple[int, int]]) -> None:
    """Charge readings given as (cell, ts_ms) pairs, one unit each, in the app's epoch numbering."""
    charge(request, metering.usage_of(readings, *request.app[EPOCH_GRID]))


def charged(request: web.Request) -> Counter[tuple[int, int]]:
    """What this request has been charged so far and not yet recorded (empty for a free request)."""
    return request.get(USAGE) or Counter()


async def flush(request: web.Request) -> None:
    """Write what the request was charged to its key's usage, and clear it. Nothing to do for a
    request without a key (public, or DEPIN_API_KEYS=off without one). Raises UsageNotRecorded."""
    usage = charged(request)
    key_id = request.get(KEY_ID)
    if not usage or key_id is None:
        return
    try:
        await request.app[USAGE_SINK](key_id, usage)
    except Exception as exc:
        raise UsageNotRecorded() from exc
    usage.clear()


async def record_usage(request: web.Request, units: Mapping[tuple[int, int], int]) -> None:
    """For a streamed answer: charge `units` (and anything charged before) and write them now, before
    the first byte. Raises UsageNotRecorded (a JSON 503) if the write fails: do not start the stream."""
    charge(request, units)
    await flush(request)
