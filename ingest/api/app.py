"""HTTP API for buyers, owners and operators (aiohttp). Thin: parse and validate, ask the store, answer JSON.

Every bad parameter is a 400 with a message, never a 500 from the driver.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import h3
from aiohttp import web
from eth_utils import is_address, to_checksum_address
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ingest.adapters.store import Store
from ingest.api.openapi import OPENAPI
from ingest.core.rules import flag_reasons

STORE: web.AppKey[Store] = web.AppKey("store", Store)
READY: web.AppKey[Callable[[], Awaitable[dict[str, Any]]]] = web.AppKey("ready")
MAX_ROWS: web.AppKey[int] = web.AppKey("max_rows", int)
MAX_RANGE_MS = 31 * 86_400_000
DEFAULT_RANGE_MS = 86_400_000


class BadRequest(web.HTTPBadRequest):
    def __init__(self, message: str) -> None:
        super().__init__(text=json.dumps({"error": message}), content_type="application/json")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=str))


def _int_param(
    request: web.Request, name: str, default: int | None = None, *, lo: int = 0, hi: int = 2**62
) -> int:
    raw = request.query.get(name)
    if raw is None:
        if default is None:
            raise BadRequest(f"missing query parameter {name!r}")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}")
    return value


def _device_id(raw: str) -> bytes:
    try:
        value = bytes.fromhex(raw.removeprefix("0x"))
    except ValueError:
        raise BadRequest("device id must be 64 hex characters") from None
    if len(value) != 32:
        raise BadRequest("device id must be 64 hex characters")
    return value


def _cell(raw: str) -> int:
    try:
        cell = int(raw, 16) if not raw.isdigit() else int(raw)
    except ValueError:
        raise BadRequest("cell must be an H3 index (hex string or integer)") from None
    if not (0 < cell < 2**64 and h3.is_valid_cell(h3.int_to_str(cell))):
        raise BadRequest("cell is not a valid H3 index")
    return cell


async def healthz(_: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    report = await request.app[READY]()
    return _json(report, status=200 if report.get("ready") else 503)


async def metrics_view(_: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(_: web.Request) -> web.Response:
    return _json(OPENAPI)


async def readings(request: web.Request) -> web.Response:
    """Readings of one device or one H3 cell in [from, to), cursor-paginated, oldest first.

    `to` defaults to now and `from` to one day before `to`, so `?device=ID` alone shows the last day.
    """
    q = request.query
    device = _device_id(q["device"]) if "device" in q else None
    cell = _cell(q["cell"]) if "cell" in q else None
    if device is None and cell is None:
        raise BadRequest("give device=<hex id> or cell=<h3 index>")
    end = _int_param(request, "to", time.time_ns() // 1_000_000)
    start = _int_param(request, "from", max(0, end - DEFAULT_RANGE_MS))
    if end <= start or end - start > MAX_RANGE_MS:
        raise BadRequest(
            f"need from < to and a range of at most 31 days ({MAX_RANGE_MS} ms); got from={start} to={end}"
        )
    limit = _int_param(request, "limit", 1000, lo=1, hi=request.app[MAX_ROWS])
    after = None
    if "cursor" in q:
        try:
            ts, dev, seq, idx = json.loads(base64.urlsafe_b64decode(q["cursor"].encode()))
            after = (int(ts), bytes.fromhex(dev), int(seq), int(idx))
        except (ValueError, TypeError, UnicodeDecodeError):
            raise BadRequest("cursor is not one this API handed out") from None
    page = await request.app[STORE].readings(
        device_id=device, cell=cell, start_ms=start, end_ms=end, limit=limit, after=after
    )
    for item in page["items"]:
        item["flags"] = [r.value for r in flag_reasons(item["flags"])]  # named, as in the README
    body: dict[str, Any] = {"readings": page["items"], "next": None}
    if page["next"] is not None:
        ts, dev, seq, idx = page["next"]
        token = json.dumps([ts, bytes(dev).hex(), seq, idx])
        body["next"] = base64.urlsafe_b64encode(token.encode()).decode()
    return _json(body)


async def device_rejections(request: web.Request) -> web.Response:
    device = _device_id(request.match_info["device_id"])
    limit = _int_param(request, "limit", 100, lo=1, hi=1000)
    rows = await request.app[STORE].recent_rejections(device, limit)
    return _json({"device_id": device.hex(), "rejections": rows})


async def epoch_view(request: web.Request) -> web.Response:
    try:
        epoch = int(request.match_info["epoch"])
    except ValueError:
        raise BadRequest("epoch must be an integer") from None
    row = await request.app[STORE].get_epoch(epoch)
    if row is None:
        raise web.HTTPNotFound(
            text=json.dumps({"error": f"epoch {epoch} not closed yet"}), content_type="application/json"
        )
    return _json(epoch_summary(row))


def epoch_summary(row: dict[str, Any]) -> dict[str, Any]:
    """The epoch as served: amounts as decimal strings (they exceed JSON's safe integers)."""
    out = {k: v for k, v in row.items() if k not in ("raw_tx", "tx_nonce")}
    for key in ("emission", "allocated", "unissued"):
        out[key] = str(row[key])
    return out


async def owner_proof(request: web.Request) -> web.Response:
    """What an owner needs to call RewardDistributor.claim(epoch, account, cumulative, proof)."""
    raw = request.match_info["address"]
    if not is_address(raw):
        raise BadRequest("address must be a 0x EVM address")
    address = to_checksum_address(raw)
    store = request.app[STORE]
    epoch = _int_param(request, "epoch", 0)
    if epoch == 0:
        epoch = await store.last_epoch() or 0
    row = await store.owner_reward(epoch, address) if epoch else None
    if row is None:
        raise web.HTTPNotFound(
            text=json.dumps({"error": f"no reward for {address} in epoch {epoch}"}),
            content_type="application/json",
        )
    return _json(
        {
            "epoch": epoch,
            "account": address,
            "amount": str(row["amount"]),
            "cumulative": str(row["cumulative"]),
            "proof": row["proof"],
        }
    )


async def stats(request: web.Request) -> web.Response:
    return _json(await request.app[STORE].counts())


def create_app(
    store: Store, ready: Callable[[], Awaitable[dict[str, Any]]], *, max_rows: int = 10_000
) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[STORE] = store
    app[READY] = ready
    app[MAX_ROWS] = max_rows
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/v1/readings", readings)
    app.router.add_get("/v1/stats", stats)
    app.router.add_get("/v1/devices/{device_id}/rejections", device_rejections)
    app.router.add_get("/v1/epochs/{epoch}", epoch_view)
    app.router.add_get("/v1/owners/{address}/proof", owner_proof)
    return app
