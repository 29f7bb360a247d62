"""OpenAPI 3 description of the HTTP API, served at /openapi.json."""

from __future__ import annotations

from typing import Any

_ERR = {
    "description": "bad parameter",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def _q(name: str, desc: str, *, required: bool = False, typ: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": desc, "schema": {"type": typ}}


def _p(name: str, desc: str, typ: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": desc, "schema": {"type": typ}}


def _ok(desc: str) -> dict[str, Any]:
    return {"description": desc, "content": {"application/json": {"schema": {"type": "object"}}}}


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "depin-ingest API", "version": "1"},
    "paths": {
        "/healthz": {"get": {"summary": "liveness", "responses": {"200": _ok("alive")}}},
        "/readyz": {
            "get": {
                "summary": "readiness: database and registry follower",
                "responses": {"200": _ok("ready"), "503": _ok("not ready, with reasons")},
            }
        },
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
        "/v1/stats": {
            "get": {
                "summary": "totals: packets, readings, rejections by reason",
                "responses": {"200": _ok("counts")},
            }
        },
        "/v1/readings": {
            "get": {
                "summary": "readings of a device or an H3 cell in a time range, oldest first",
                "parameters": [
                    _q("device", "device id, 64 hex"),
                    _q("cell", "H3 cell (hex index)"),
                    _q(
                        "from",
                        "start, ms since epoch (inclusive; default: one day before `to`)",
                        typ="integer",
                    ),
                    _q("to", "end, ms since epoch (exclusive; default: now); at most 31 days", typ="integer"),
                    _q("limit", "page size (default 1000)", typ="integer"),
                    _q("cursor", "the `next` value of the previous page"),
                ],
                "responses": {
                    "200": _ok('a page of readings (flags named, e.g. ["bad_values"]) and the next cursor'),
                    "400": _ERR,
                },
            }
        },
        "/v1/devices/{device_id}/rejections": {
            "get": {
                "summary": "recent rejected messages of a device, with reason codes",
                "parameters": [_p("device_id", "64 hex"), _q("limit", "at most 1000", typ="integer")],
                "responses": {"200": _ok("rejections, newest first"), "400": _ERR},
            }
        },
        "/v1/epochs/{epoch}": {
            "get": {
                "summary": "an epoch: root, publish tx, totals and the reward manifest",
                "parameters": [_p("epoch", "epoch number", "integer")],
                "responses": {"200": _ok("the epoch"), "400": _ERR, "404": _ERR},
            }
        },
        "/v1/owners/{address}/proof": {
            "get": {
                "summary": "cumulative amount and Merkle proof for RewardDistributor.claim",
                "parameters": [_p("address", "owner address"), _q("epoch", "default: latest", typ="integer")],
                "responses": {"200": _ok("claim data"), "400": _ERR, "404": _ERR},
            }
        },
    },
    "components": {"schemas": {"Error": {"type": "object", "properties": {"error": {"type": "string"}}}}},
}
