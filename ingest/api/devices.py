"""Provenance and owner views (docs/DESIGN.md §14): `GET /v1/packets/{device_id}/{seq}` (a packet's
signed envelope and its readings: data, keyed and metered), `GET /v1/devices/{device_id}` and
`GET /v1/owners/{address}/devices` (registry status, class, owner, asserted cell, last seen, per-epoch
counts and quality: public, like the coverage summaries). Queries: `ingest.adapters.store.devices`;
JSON: `ingest.api.shapes`; the OpenAPI paths (`PATHS`) are merged by `ingest.api.openapi`.
"""

from __future__ import annotations

import copy
from typing import Any

from aiohttp import web

from ingest.adapters.store.devices import DeviceStore
from ingest.api.app import (
    STORE,
    BadRequest,
    _address,
    _device_id,
    _int_param,
    _json,
    _not_found,
    parse_int,
)
from ingest.api.metering import charge_readings
from ingest.api.openapi import DB_ERRORS, E404, HEX64, INT64_MAX, _obj, _p, _q, _ref, _resp
from ingest.api.shapes import device_view_json, packet_json

MAX_EPOCHS = 100  # epochs of counts per device in one answer
MAX_FLEET_PAGE = 100


def _only(request: web.Request, *allowed: str) -> None:
    """Unknown query parameters are refused, not ignored (a typo would silently change the answer)."""
    for name in request.query:
        if name not in allowed:
            known = ", ".join(allowed) or "none"
            raise BadRequest(f"unknown query parameter {name[:40]!r} (this endpoint takes: {known})")


def _store(request: web.Request) -> DeviceStore:
    return DeviceStore(request.app[STORE].pool)


async def packet_view(request: web.Request) -> web.Response:
    """One packet as the device signed it (base64 COSE_Sign1) and the readings stored from it."""
    _only(request)
    device = _device_id(request.match_info["device_id"])
    seq = parse_int(request.match_info["seq"], "seq", lo=0, hi=INT64_MAX)
    row = await _store(request).packet(device, seq)
    if row is None:
        raise _not_found(f"no packet {seq} of device {device.hex()}")
    charge_readings(request, ((r.cell, r.ts_ms) for r in row.readings))
    return _json(packet_json(row))


async def device_view(request: web.Request) -> web.Response:
    _only(request, "epochs")
    device = _device_id(request.match_info["device_id"])
    epochs = _int_param(request, "epochs", 10, lo=1, hi=MAX_EPOCHS)
    view = await _store(request).device(device, epochs)
    if view is None:
        raise _not_found(f"device {device.hex()} is not registered and has sent nothing")
    return _json(device_view_json(view))


async def owner_devices(request: web.Request) -> web.Response:
    """An owner's fleet in device-id order; `next` is the `after` of the following page."""
    _only(request, "epochs", "limit", "after")
    owner = _address(request.match_info["address"])
    epochs = _int_param(request, "epochs", 10, lo=1, hi=MAX_EPOCHS)
    limit = _int_param(request, "limit", 50, lo=1, hi=MAX_FLEET_PAGE)
    after = _device_id(request.query["after"]) if "after" in request.query else None
    views = await _store(request).owner_devices(owner, after=after, limit=limit, epochs=epochs)
    body: dict[str, Any] = {
        "owner": owner,
        "devices": [device_view_json(v) for v in views],
        "next": views[-1].device_id.hex() if len(views) == limit else None,
    }
    return _json(body)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/packets/{device_id}/{seq}", packet_view)
    app.router.add_get("/v1/devices/{device_id}", device_view)
    app.router.add_get("/v1/owners/{address}/devices", owner_devices)


# --- OpenAPI ------------------------------------------------------------------------------------------

_S = {"type": "string"}
_I = {"type": "integer", "minimum": 0}
_NS = {"type": "string", "nullable": True}
_NI = {"type": "integer", "nullable": True}
_QUALITY = {
    "type": "number",
    "nullable": True,
    "minimum": 0,
    "maximum": 1,
    "description": "clean readings / readings stored (null without readings)",
}
_DEVICE_ID = _p("device_id", "device id, 64 hex digits", {"type": "string", "pattern": HEX64})
_ADDRESS = _p(
    "address",
    "owner address: 0x + 40 hex digits, one case or EIP-55 checksummed",
    {"type": "string", "format": "eip55-address", "pattern": "^0x[0-9a-fA-F]{40}$"},
)
_EPOCHS_Q = _q(
    "epochs",
    f"how many of the newest epochs with activity to list (default 10, at most {MAX_EPOCHS})",
    {"type": "integer", "minimum": 1, "maximum": MAX_EPOCHS},
)

SCHEMAS: dict[str, Any] = {
    "Packet": _obj(
        {
            "device_id": _S,
            "seq": _I,
            "kind": _S,
            "received_ms": _I,
            "payload_digest": {**_S, "description": "sha256 of the signed payload bytes, hex"},
            "envelope": {
                **_NS,
                "format": "byte",
                "description": "base64 (RFC 4648, padded) of the COSE_Sign1 message exactly as the device "
                "published it; null for packets stored before envelopes were kept",
            },
            "readings": {"type": "array", "items": _ref("Reading")},
        }
    ),
    "EpochCounts": _obj(
        {
            "epoch": {"type": "integer"},
            "packets": _I,
            "readings": _I,
            "flagged": _I,
            "rejected": _I,
            "quality": _QUALITY,
        }
    ),
    "DeviceView": _obj(
        {
            "device_id": _S,
            "status": {"type": "string", "enum": ["active", "revoked", "unregistered"]},
            "owner": _NS,
            "hw_class": _NI,
            "kind": _NS,
            "asserted_cell": _NS,
            "registered_block": _NI,
            "last_seen_ms": _NI,
            "quality": _QUALITY,
            "epochs": {"type": "array", "items": _ref("EpochCounts")},
        }
    ),
    "Fleet": _obj(
        {
            "owner": _S,
            "devices": {"type": "array", "items": _ref("DeviceView")},
            "next": {**_NS, "description": "pass as `after` for the next page; null on the last page"},
        }
    ),
}

PATHS: dict[str, Any] = {
    "/v1/packets/{device_id}/{seq}": {
        "get": {
            "summary": "a packet's signed envelope (base64 COSE_Sign1) and its readings: check one reading",
            "parameters": [
                _DEVICE_ID,
                _p(
                    "seq",
                    "the packet's sequence number",
                    {"type": "integer", "minimum": 0, "maximum": INT64_MAX},
                ),
            ],
            "responses": {"200": _resp("the packet", _ref("Packet")), "404": E404, **DB_ERRORS},
        }
    },
    "/v1/devices/{device_id}": {
        "get": {
            "summary": "a device for its owner: registry status, class, owner, cell, last seen, "
            "per-epoch counts",
            "parameters": [_DEVICE_ID, _EPOCHS_Q],
            "responses": {"200": _resp("the device", _ref("DeviceView")), "404": E404, **DB_ERRORS},
        }
    },
    "/v1/owners/{address}/devices": {
        "get": {
            "summary": "an owner's devices, as GET /v1/devices/{device_id}, in device-id order",
            "parameters": [
                _ADDRESS,
                _EPOCHS_Q,
                _q(
                    "limit",
                    f"devices per page (default 50, at most {MAX_FLEET_PAGE})",
                    {"type": "integer", "minimum": 1, "maximum": MAX_FLEET_PAGE},
                ),
                _q(
                    "after",
                    "the `next` of the previous page (a device id)",
                    {"type": "string", "pattern": HEX64},
                ),
            ],
            "responses": {"200": _resp("a page of the fleet", _ref("Fleet")), **DB_ERRORS},
        }
    },
}


def merge_openapi(doc: dict[str, Any]) -> None:
    """Add these endpoints and their schemas to the API's OpenAPI document (a deep copy of it)."""
    doc["paths"].update(copy.deepcopy(PATHS))
    doc["components"]["schemas"].update(copy.deepcopy(SCHEMAS))
