"""HTTP API for buyers, owners and operators (aiohttp). Thin: parse and validate, ask the store, answer JSON.

Every answer is JSON, errors included. Every parameter and every cursor field is range-checked: a bad
one is a 400 with a message, never a 500 from the driver. Isolation from ingest (docs/RELIABILITY.md
G34): the API asks its own ReadStore, on a pool of its own whose statements PostgreSQL cancels after
DEPIN_API_STATEMENT_TIMEOUT_MS (→ 504); at most `slots` requests (the pool's size) query at once and
each holds its slot until its answer is written, the others wait up to `busy_timeout_s` (→ 503); a
page ends at `max_rows` rows or about `max_page_bytes` bytes. The buyers' queries (readings, aggregates,
export) are in their own modules (ingest/api/buyers.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson
from aiohttp import web
from eth_utils import to_checksum_address
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ingest.adapters.store import ReadStore
from ingest.api.auth import ACCESS, ApiAccess, describe_access, install_access
from ingest.api.bounties import bounties_view
from ingest.api.buyers import add_query_routes
from ingest.api.map import map_page, map_static
from ingest.api.openapi import openapi_for
from ingest.api.shapes import (
    device_epoch_json,
    epoch_summary_json,
    owner_proof_json,
    rejection_json,
    totals_json,
)
from ingest.api.usage import usage_view
from ingest.core.readfilter import FilterError
from ingest.core.storage_rules import INT64_MAX

log = logging.getLogger(__name__)

STORE: web.AppKey[ReadStore] = web.AppKey("store", ReadStore)
READY: web.AppKey[Callable[[], Awaitable[dict[str, Any]]]] = web.AppKey("ready")
LIMITS: web.AppKey[ApiLimits] = web.AppKey("limits")
SLOTS: web.AppKey[asyncio.Semaphore] = web.AppKey("slots", asyncio.Semaphore)
_INT_RE = re.compile(r"-?[0-9]{1,40}")
_DEVICE_RE = re.compile(r"(?:0x)?[0-9a-fA-F]{64}")
_ADDRESS_RE = re.compile(r"0x[0-9a-fA-F]{40}")
MANIFEST_PAGE_MAX = 10_000  # entries per page of a manifest list


class ApiLimits:
    """What bounds one API process: page size, page bytes, concurrent requests, waits; the cursor key."""

    def __init__(
        self,
        *,
        max_rows: int = 1000,
        max_page_bytes: int = 2 * 1024 * 1024,
        slots: int = 4,
        busy_timeout_s: float = 2.0,
        statement_timeout_ms: int | None = None,
        cursor_key: bytes | None = None,
    ) -> None:
        self.max_rows = max_rows
        self.max_page_bytes = max_page_bytes
        self.slots = slots
        self.busy_timeout_s = busy_timeout_s
        self.statement_timeout_ms = statement_timeout_ms
        self.cursor_key = cursor_key or secrets.token_bytes(32)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


class BadRequest(web.HTTPBadRequest):
    def __init__(self, message: str) -> None:
        super().__init__(text=json.dumps({"error": message}), content_type="application/json")


def _not_found(message: str) -> web.HTTPNotFound:
    return web.HTTPNotFound(text=json.dumps({"error": message}), content_type="application/json")


def _dumps(data: Any) -> bytes:
    # orjson: a 1000-reading page encodes ~10x faster than with the json module, which matters when the
    # API shares its event loop with the consumer. json for what orjson refuses (ints beyond 64 bits).
    try:
        return orjson.dumps(data, default=str)
    except TypeError:
        return json.dumps(data, default=str).encode()


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=_dumps(data), status=status, content_type="application/json")


def parse_int(raw: str, name: str, *, lo: int, hi: int) -> int:
    """A plain decimal integer (ASCII digits, optional minus) within [lo, hi], or a 400."""
    if not _INT_RE.fullmatch(raw):
        raise BadRequest(f"{name} must be an integer between {lo} and {hi}")
    value = int(raw)
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}, got {raw[:40]}")
    return value


def _int_param(request: web.Request, name: str, default: int | None = None, *, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        if default is None:
            raise BadRequest(f"missing query parameter {name!r}")
        return default
    return parse_int(raw, name, lo=lo, hi=hi)


def _device_id(raw: str) -> bytes:
    if not _DEVICE_RE.fullmatch(raw):
        raise BadRequest("device id must be 64 hex characters")
    return bytes.fromhex(raw.removeprefix("0x"))


def _address(raw: str) -> str:
    """0x + 40 hex digits; all lower or all upper case, or mixed case with a valid EIP-55 checksum."""
    if not _ADDRESS_RE.fullmatch(raw):
        raise BadRequest("address must be a 0x EVM address (40 hex digits)")
    body = raw[2:]
    checksummed = to_checksum_address(raw)
    if body != body.lower() and body != body.upper() and raw != checksummed:
        raise BadRequest(f"address has a bad EIP-55 checksum (mixed case): did you mean {checksummed}?")
    return checksummed


# --- middlewares --------------------------------------------------------------------------------------


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error as JSON: aiohttp's own 404/405/413 too, database trouble as 503/504, never a text page."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        message = exc.reason
        if exc.status == 404:
            message = f"no such endpoint: {request.path[:200]} (see /openapi.json)"
        elif exc.status == 405:
            message = f"method {request.method} not allowed here; allowed: {exc.headers.get('Allow', '')}"
        return _error(exc.status, message, headers)
    except FilterError as exc:  # found only against the data (placescan.PlaceTooFine)
        return _error(400, str(exc))
    except asyncpg.QueryCanceledError:
        limits = request.app[LIMITS]
        return _error(
            504,
            f"the query took longer than the API's statement timeout ({limits.statement_timeout_ms} ms): "
            "ask for a shorter time range or a smaller page (limit)",
        )
    except (TimeoutError, asyncpg.TooManyConnectionsError):
        return _error(
            503,
            "the API is busy (all its database connections are in use); retry shortly",
            {"Retry-After": "1"},
        )
    except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError):
        log.warning("API: database unavailable for %s %s", request.method, request.path, exc_info=True)
        return _error(503, "the database is unavailable; retry shortly", {"Retry-After": "5"})
    except Exception:
        log.exception("API: unexpected error on %s %s", request.method, request.path)
        return _error(500, "internal error (logged)")


@web.middleware
async def db_slots(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """/v1/* requests take one of `slots` (the API pool's size) for their query AND the writing of their
    answer, so at most `slots` answers are held in memory at once; a request waits `busy_timeout_s`."""
    if not request.path.startswith("/v1/"):
        return await handler(request)
    limits, slots = request.app[LIMITS], request.app[SLOTS]
    if not slots.locked():
        await slots.acquire()  # a slot is free: taken at once, no timer to arm and cancel
    else:
        try:
            async with asyncio.timeout(limits.busy_timeout_s):
                await slots.acquire()
        except TimeoutError:
            raise TimeoutError("no API slot free") from None
    try:
        response = await handler(request)
        if isinstance(response, web.Response) and not response.prepared:
            await response.prepare(request)
            await response.write_eof()
        return response
    finally:
        slots.release()


# --- handlers -----------------------------------------------------------------------------------------


async def healthz(_: web.Request) -> web.Response:
    # The pid tells apart the API processes that share one port (DEPIN_API_REUSE_PORT).
    return _json({"status": "ok", "pid": os.getpid()})


async def readyz(request: web.Request) -> web.Response:
    report = await request.app[READY]()
    return _json(report, status=200 if report.get("ready") else 503)


async def metrics_view(_: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return _json(describe_access(openapi_for(request.app[LIMITS].max_rows), request.app[ACCESS]))


async def device_rejections(request: web.Request) -> web.Response:
    device = _device_id(request.match_info["device_id"])
    limit = _int_param(request, "limit", 100, lo=1, hi=1000)
    rows = await request.app[STORE].recent_rejections(device, limit)
    return _json({"device_id": device.hex(), "rejections": [rejection_json(r) for r in rows]})


async def epoch_view(request: web.Request) -> web.Response:
    epoch = parse_int(request.match_info["epoch"], "epoch", lo=1, hi=INT64_MAX)
    row = await request.app[STORE].epoch_summary(epoch)
    if row is None:
        raise _not_found(f"epoch {epoch} not closed yet")
    return _json(epoch_summary_json(row))


async def epoch_manifest(request: web.Request) -> web.Response:
    """The manifest's header (parameters, inputs digest, root, totals, small inputs) with links to its
    pages and to the whole document; its lists are served in pages (README "Rewards")."""
    epoch = parse_int(request.match_info["epoch"], "epoch", lo=1, hi=INT64_MAX)
    found = await request.app[STORE].manifest_header(epoch)
    if found is None:
        raise _not_found(f"epoch {epoch} not closed yet")
    header, paged = found
    base = f"/v1/epochs/{epoch}/manifest"
    links = {part: f"{base}/{part}" for part in MANIFEST_PAGES} if paged else {}
    return _json({**header, "links": {**links, "export": f"{base}/export"}})


async def epoch_manifest_export(request: web.Request) -> web.StreamResponse:
    """The whole manifest as one JSON document, streamed from Postgres list by list (tens of MB at
    scale, never whole in this process): what `depin epoch verify` and independent checkers compare."""
    epoch = parse_int(request.match_info["epoch"], "epoch", lo=1, hi=INT64_MAX)
    response = web.StreamResponse(headers={"Content-Type": "application/json"})

    async def write(chunk: bytes) -> None:
        if not response.prepared:  # the first chunk: the epoch is stored (else nothing is written)
            await response.prepare(request)
        await response.write(chunk)

    await request.app[STORE].copy_manifest(epoch, write)
    if not response.prepared:
        raise _not_found(f"epoch {epoch} not closed yet")
    await response.write_eof()
    return response


# A page's URL name → the manifest list it serves, and how its `after` cursor is read.
MANIFEST_PAGES = {"cells": "cell_factors", "devices": "devices", "owners": "owners"}
_CELL_RE = re.compile(r"(?:0x)?(?:[0-7][0-9a-fA-F]{15}|[0-9a-fA-F]{1,15})")  # a bigint


def _cell_cursor(raw: str) -> int:
    if not _CELL_RE.fullmatch(raw):
        raise BadRequest("after: an H3 cell in hex (the `next` of the previous page)")
    return int(raw.removeprefix("0x"), 16)


def _page_cursor(part: str, raw: str) -> tuple[Any, ...]:
    if part == "owners":
        if not _ADDRESS_RE.fullmatch(raw):
            raise BadRequest("after: an owner address (the `next` of the previous page)")
        return (raw,)
    if part == "devices":
        cell, _, device = raw.partition(":")
        if not _DEVICE_RE.fullmatch(device):
            raise BadRequest("after: CELL:DEVICE_ID in hex (the `next` of the previous page)")
        return (_cell_cursor(cell), bytes.fromhex(device.removeprefix("0x")))
    return (_cell_cursor(raw),)


def _next_cursor(key: tuple[Any, ...] | None) -> str | None:
    if key is None:
        return None
    if isinstance(key[0], str):
        return key[0]
    return ":".join(hex(k) if isinstance(k, int) else k.hex() for k in key)


async def epoch_manifest_page(request: web.Request) -> web.Response:
    """One page of a manifest list in the document's order, keyset-paginated: `after` is the `next`
    of the previous page (null on the last). Cells carry their `last_paid` epoch (freshness input)."""
    epoch = parse_int(request.match_info["epoch"], "epoch", lo=1, hi=INT64_MAX)
    name = request.match_info["part"]
    part = MANIFEST_PAGES[name]
    limit = _int_param(request, "limit", 1000, lo=1, hi=MANIFEST_PAGE_MAX)
    raw = request.query.get("after")
    after = None if raw is None else _page_cursor(part, raw)
    store = request.app[STORE]
    found = await store.manifest_paged(epoch)
    if found is None:
        raise _not_found(f"epoch {epoch} not closed yet")
    if not found:
        raise _not_found(
            f"epoch {epoch}'s manifest is stored whole (closed before pages): GET "
            f"/v1/epochs/{epoch}/manifest/export"
        )
    page = await store.manifest_page(epoch, part, after, limit)
    entries = page.entries
    if page.last_paid is not None:
        entries = [{**e, "last_paid": lp} for e, lp in zip(entries, page.last_paid, strict=True)]
    return _json({"epoch": epoch, part: entries, "next": _next_cursor(page.next)})


async def epoch_device(request: web.Request) -> web.Response:
    """Why a device earned what it did in an epoch (public, as the manifest is)."""
    epoch = parse_int(request.match_info["epoch"], "epoch", lo=1, hi=INT64_MAX)
    device = _device_id(request.match_info["device_id"])
    store = request.app[STORE]
    cells = await store.device_epoch(epoch, device)
    if not cells:
        if await store.epoch_summary(epoch) is None:
            raise _not_found(f"epoch {epoch} not closed yet")
        raise _not_found(f"device {device.hex()} covered no cell in epoch {epoch}")
    return _json(device_epoch_json(epoch, device, cells))


async def owner_proof(request: web.Request) -> web.Response:
    """What an owner needs to call RewardDistributor.claim(account, cumulative, proof) (README Rewards)."""
    address = _address(request.match_info["address"])
    store = request.app[STORE]
    epoch = _int_param(request, "epoch", 0, lo=1, hi=INT64_MAX)
    if epoch == 0:
        epoch = await store.last_epoch() or 0
    row = await store.owner_reward(epoch, address) if epoch else None
    if row is None:
        raise _not_found(f"no reward for {address} in epoch {epoch}")
    return _json(owner_proof_json(epoch, address, row))


async def stats(request: web.Request) -> web.Response:
    body = totals_json(await request.app[STORE].stats())
    body["source"] = "counters maintained in each batch's transaction (cumulative)"
    return _json(body)


def create_app(
    store: ReadStore,
    ready: Callable[[], Awaitable[dict[str, Any]]],
    *,
    max_rows: int = 1000,
    limits: ApiLimits | None = None,
    access: ApiAccess | None = None,
) -> web.Application:
    """The API on `store` (a ReadStore on the API's own pool). `limits` default: ApiLimits(max_rows).
    `access`: keys, metering and CORS (ingest/api/auth.py; default: keys required)."""
    limits = limits or ApiLimits(max_rows=max_rows)
    app = web.Application(client_max_size=64 * 1024, middlewares=[json_errors, db_slots])
    app[STORE] = store
    app[READY] = ready
    app[LIMITS] = limits
    app[SLOTS] = asyncio.Semaphore(limits.slots)
    install_access(app, store.pool, access or ApiAccess())
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/openapi.json", openapi)
    add_query_routes(app, store, limits)
    app.router.add_get("/v1/stats", stats)
    app.router.add_get("/v1/devices/{device_id}/rejections", device_rejections)
    app.router.add_get("/v1/epochs/{epoch}", epoch_view)
    app.router.add_get("/v1/epochs/{epoch}/manifest", epoch_manifest)
    app.router.add_get("/v1/epochs/{epoch}/manifest/export", epoch_manifest_export)
    app.router.add_get("/v1/epochs/{epoch}/manifest/{part:cells|devices|owners}", epoch_manifest_page)
    app.router.add_get("/v1/epochs/{epoch}/devices/{device_id}", epoch_device)
    app.router.add_get("/v1/owners/{address}/proof", owner_proof)
    app.router.add_get("/v1/usage", usage_view)
    app.router.add_get("/v1/bounties", bounties_view)
    from ingest.api.coverage import coverage, epochs_list  # here: ingest.api.coverage imports this module

    app.router.add_get("/", map_page)
    app.router.add_get("/static/{name}", map_static)
    app.router.add_get("/v1/coverage", coverage)
    app.router.add_get("/v1/epochs", epochs_list)
    from ingest.api import devices  # lazy: it imports this module's helpers

    devices.add_routes(app)  # /v1/packets/{device_id}/{seq}, /v1/devices/{device_id}, …/devices
    from ingest.api import rewards

    rewards.add_routes(app)  # /v1/owners/{address}/rewards
    return app
