"""OpenAPI 3 description of the HTTP API, served at /openapi.json.

Precise enough for schemathesis `--checks all` (tests/integration/test_api_fuzz.py): every parameter
with its type, pattern and range, every response with its schema. The buyers' queries are described in
ingest/api/query_doc.py (with the rules OpenAPI 3.0 cannot state, in their descriptions).
"""

from __future__ import annotations

import copy
from typing import Any

from ingest.api.bounties import PATHS as BOUNTY_PATHS
from ingest.api.map import OPENAPI_PATHS as MAP_PATHS
from ingest.api.usage import PATHS as USAGE_PATHS

INT64_MAX = 2**63 - 1
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
HEX64 = "^(0x)?[0-9a-fA-F]{64}$"
# An H3 cell in hex, at most 2^63 - 1 (a bigint)
_CELL_HEX = "^(0x)?([0-7][0-9a-fA-F]{15}|[0-9a-fA-F]{1,15})$"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _resp(desc: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": desc, "content": {"application/json": {"schema": schema}}}


_ERR = _ref("Error")
E400 = _resp("bad parameter (the message says which and why)", _ERR)
E404 = _resp("not found", _ERR)
E503 = _resp("busy (all API database connections in use) or database unavailable; retry", _ERR)
E504 = _resp("the query ran past the API's statement timeout: narrow the range or the page", _ERR)
DB_ERRORS = {"400": E400, "503": E503, "504": E504}


def _q(name: str, desc: str, schema: dict[str, Any], *, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": desc, "schema": schema}


def _p(name: str, desc: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": desc, "schema": schema}


def _obj(props: dict[str, Any], *, extra: bool = False) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": list(props),
        "additionalProperties": extra,
    }


def _optional(props: dict[str, Any], optional: tuple[str, ...]) -> dict[str, Any]:
    obj = _obj(props, extra=True)
    obj["required"] = [p for p in props if p not in optional]
    return obj


_S = {"type": "string"}
_EPOCH = _p("epoch", "epoch number", {"type": "integer", "minimum": 1, "maximum": INT64_MAX})
_I = {"type": "integer"}
_NS = {"type": "string", "nullable": True}
_NI = {"type": "integer", "nullable": True}
_N = {"type": "number", "nullable": True}
_DEC = {"type": "string", "pattern": "^[0-9]+$", "description": "token amount (wei), decimal string"}

# The manifest (ingest/core/manifest.py): its top level and one entry of each list.
_MANIFEST_TOP = {
    "epoch": _I,
    "start_ms": _I,
    "end_ms": _I,
    "params": {"type": "object"},
    "inputs_digest": _S,
    "cells": _I,
    "allocated": _DEC,
    "unissued": _DEC,
    "root": _S,
}
_CELL_ENTRY = {
    "cell": _S,
    "base": _I,
    "boost": _I,
    "freshness": _I,
    "demand": _I,
    "weight": _I,
    "share": _DEC,
    "depth": _I,
    "paid": _DEC,
}
_DEVICE_ENTRY = {
    "device_id": _S,
    "owner": _S,
    "hw_class": _NI,  # null: closed before migration 019 (never in a page: those are served whole)
    "registered_block": _NI,
    "cell": _S,
    "readings": _I,
    "flagged": _I,
    "quality": _I,
    "rank": _I,
    "amount": _DEC,
}
_OWNER_ENTRY = {"owner": _S, "amount": _DEC, "cumulative": _DEC}
_LAST_PAID = "the last earlier epoch the cell paid in, within the freshness lookback (null: none)"
_NEXT = {**_NS, "description": "`after` of the next page; null on the last page"}

SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": _S}),
    "Reading": _obj(
        {
            "ts": _I,
            "device_id": _S,
            "seq": _I,
            "idx": _I,
            "lat": {"type": "number"},
            "lon": {"type": "number"},
            "acc": _N,
            "alt": _N,
            "cell": _S,
            "kind": _S,
            "vals": {"type": "object"},
            "media": {
                "type": "object",
                "nullable": True,
                "properties": {"sha256": _S, "uri": _NS},
                "required": ["sha256", "uri"],
            },
            "flags": {"type": "array", "items": _S},
        }
    ),
    "ReadingsPage": _obj(
        {
            "readings": {
                "type": "array",
                "items": {"oneOf": [_ref("Reading"), _ref("ReadingWithEnvelope")]},
            },
            "next": {**_NS, "description": "cursor of the next page; null on the last page"},
        }
    ),
    "Rejection": _obj(
        {
            "id": _I,
            "message_digest": _S,
            "device_id": _NS,
            "seq": _NI,
            "reason": _S,
            "detail": _S,
            "topic": _S,
            "received_ms": _I,
        }
    ),
    "Rejections": _obj({"device_id": _S, "rejections": {"type": "array", "items": _ref("Rejection")}}),
    "Epoch": _obj(
        {
            "epoch": _I,
            "start_ms": _I,
            "end_ms": _I,
            "status": {
                "type": "string",
                "enum": ["closed", "signed", "published", "settled", "refused", "vetoed"],
            },
            "emission": _DEC,
            "allocated": _DEC,
            "unissued": _DEC,
            "root": _NS,
            "inputs_digest": _NS,
            "tx_hash": _NS,
            "block_number": _NI,
            "closed_ms": _I,
            "published_ms": _NI,
            "params": {"type": "object", "description": "the reward parameters the epoch was scored with"},
            "cells": {**_I, "description": "covered cells"},
            "devices": {**_I, "description": "device rows (device, cell) in the manifest"},
            "owners": {**_I, "description": "owners in the manifest"},
        }
    ),
    # As ingest/scoring.py writes it (entries: ingest/core/manifest.py); extra keys allowed (older or
    # newer manifests may add some).
    "ManifestHeader": _obj(
        {
            **_MANIFEST_TOP,
            "links": _optional(
                {
                    "cells": _S,
                    "devices": _S,
                    "owners": _S,
                    "export": {**_S, "description": "the whole manifest, one JSON document"},
                },
                ("cells", "devices", "owners"),  # absent for a manifest stored whole (version 1)
            ),
        },
        extra=True,
    ),
    "ManifestCellsPage": _obj(
        {
            "epoch": _I,
            "cell_factors": {
                "type": "array",
                "items": _obj({**_CELL_ENTRY, "last_paid": {**_NI, "description": _LAST_PAID}}),
            },
            "next": _NEXT,
        }
    ),
    "ManifestDevicesPage": _obj(
        {"epoch": _I, "devices": {"type": "array", "items": _obj(_DEVICE_ENTRY)}, "next": _NEXT}
    ),
    "ManifestOwnersPage": _obj(
        {"epoch": _I, "owners": {"type": "array", "items": _obj(_OWNER_ENTRY)}, "next": _NEXT}
    ),
    "Manifest": _obj(
        {
            **_MANIFEST_TOP,
            "cell_factors": {"type": "array", "items": _obj(_CELL_ENTRY, extra=True)},
            "last_paid": {
                "type": "array",
                "description": "[cell, epoch] per covered cell: " + _LAST_PAID,
                "items": {"type": "array"},
            },
            "devices": {"type": "array", "items": _obj(_DEVICE_ENTRY, extra=True)},
            "owners": {"type": "array", "items": _obj(_OWNER_ENTRY, extra=True)},
        },
        extra=True,
    ),
    "DeviceEpoch": _obj(
        {
            "epoch": _I,
            "device_id": _S,
            "owner": _S,
            "amount": _DEC,
            "cells": {
                "type": "array",
                "items": _optional(
                    {
                        "cell": _S,
                        "readings": _I,
                        "flagged": _I,
                        "quality": _I,
                        "rank": _I,
                        "amount": _DEC,
                        "factors": {"type": "object", "additionalProperties": _I},
                        "weight": _I,
                        "cell_share": _DEC,
                        "depth": _I,
                        "cell_paid": _DEC,
                    },
                    ("factors", "weight", "cell_share", "depth", "cell_paid"),  # absent before migration 016
                ),
            },
        }
    ),
    "Proof": _obj(
        {
            "epoch": _I,
            "account": _S,
            "amount": _DEC,
            "cumulative": _DEC,
            "proof": {"type": "array", "items": _S},
        }
    ),
    "Stats": _obj(
        {
            "packets": _I,
            "readings": _I,
            "rejections": {"type": "object", "additionalProperties": _I},
            "source": _S,
        }
    ),
    "Ready": {
        "type": "object",
        "properties": {"ready": {"type": "boolean"}, "failing": {"type": "array", "items": _S}},
        "required": ["ready", "failing"],
    },
}
# With include=envelope (/v1/readings): a Reading plus its packet's signed envelope, base64 (null for a
# packet stored before migration 010). Two exact shapes, so a page of either still validates strictly.
SCHEMAS["ReadingWithEnvelope"] = _obj(
    {**SCHEMAS["Reading"]["properties"], "envelope": {**_NS, "description": "base64 of the COSE_Sign1"}}
)

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "depin-ingest API", "version": "1"},
    "paths": {
        "/healthz": {
            "get": {
                "summary": "liveness; `pid` tells apart API processes sharing a port (DEPIN_API_REUSE_PORT)",
                "responses": {
                    "200": _resp("alive", _obj({"status": {"type": "string", "enum": ["ok"]}, "pid": _I}))
                },
            }
        },
        "/readyz": {
            "get": {
                "summary": "readiness: database (and chain RPC / registry follower where they run)",
                "responses": {
                    "200": _resp("ready", _ref("Ready")),
                    "503": _resp("not ready: `failing` names what", _ref("Ready")),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {"description": "Prometheus text format", "content": {"text/plain": {}}}
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "this description",
                "responses": {"200": _resp("OpenAPI 3", {"type": "object"})},
            }
        },
        "/v1/stats": {
            "get": {
                "summary": "totals: packets, readings, rejections by reason (maintained counters, no scan)",
                "responses": {"200": _resp("counts", _ref("Stats")), "503": E503, "504": E504},
            }
        },
        "/v1/devices/{device_id}/rejections": {
            "get": {
                "summary": "recent rejected messages of a device, with reason codes",
                "parameters": [
                    _p("device_id", "64 hex digits", {"type": "string", "pattern": HEX64}),
                    _q("limit", "default 100", {"type": "integer", "minimum": 1, "maximum": 1000}),
                ],
                "responses": {"200": _resp("rejections, newest first", _ref("Rejections")), **DB_ERRORS},
            }
        },
        "/v1/epochs/{epoch}": {
            "get": {
                "summary": "an epoch: root, publish tx, totals, params and counts (the lists: …/manifest)",
                "parameters": [
                    _p("epoch", "epoch number", {"type": "integer", "minimum": 1, "maximum": INT64_MAX})
                ],
                "responses": {"200": _resp("the epoch", _ref("Epoch")), "404": E404, **DB_ERRORS},
            }
        },
        "/v1/epochs/{epoch}/manifest": {
            "get": {
                "summary": "the epoch's manifest header: parameters, inputs digest, root, totals and the "
                "inputs that do not grow with coverage, with links to its pages and the whole document",
                "parameters": [_EPOCH],
                "responses": {"200": _resp("the header", _ref("ManifestHeader")), "404": E404, **DB_ERRORS},
            }
        },
        "/v1/epochs/{epoch}/manifest/export": {
            "get": {
                "summary": "the whole manifest as one JSON document (streamed; tens of MB at scale): "
                "the header and every list, as `depin epoch verify` compares it",
                "parameters": [_EPOCH],
                "responses": {"200": _resp("the manifest", _ref("Manifest")), "404": E404, **DB_ERRORS},
            }
        },
        **{
            f"/v1/epochs/{{epoch}}/manifest/{name}": {
                "get": {
                    "summary": f"a page of the manifest's `{part}`, in the document's order ({order})",
                    "parameters": [
                        _EPOCH,
                        _q("after", "the `next` of the previous page (" + what + ")", cursor),
                        _q(
                            "limit",
                            "entries per page, default 1000",
                            {"type": "integer", "minimum": 1, "maximum": 10_000},
                        ),
                    ],
                    "responses": {
                        "200": _resp("the page", _ref(schema)),
                        "404": E404,
                        **DB_ERRORS,
                    },
                }
            }
            for name, part, order, what, cursor, schema in (
                (
                    "cells",
                    "cell_factors",
                    "by cell",
                    "a cell in hex",
                    {"type": "string", "pattern": _CELL_HEX},
                    "ManifestCellsPage",
                ),
                (
                    "devices",
                    "devices",
                    "by cell, then device id",
                    "CELL:DEVICE_ID in hex",
                    {"type": "string", "pattern": _CELL_HEX[:-1] + ":(0x)?[0-9a-fA-F]{64}$"},
                    "ManifestDevicesPage",
                ),
                (
                    "owners",
                    "owners",
                    "by address, compared as bytes",
                    "an address",
                    {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$"},
                    "ManifestOwnersPage",
                ),
            )
        },
        "/v1/epochs/{epoch}/devices/{device_id}": {
            "get": {
                "summary": "why a device earned what it did: per cell the weight factors, share, depth, "
                "the device's quality and rank, its amount (public, like the manifest)",
                "parameters": [
                    _p("epoch", "epoch number", {"type": "integer", "minimum": 1, "maximum": INT64_MAX}),
                    _p("device_id", "64 hex digits", {"type": "string", "pattern": HEX64}),
                ],
                "responses": {
                    "200": _resp("the device's epoch", _ref("DeviceEpoch")),
                    "404": E404,
                    **DB_ERRORS,
                },
            }
        },
        "/v1/owners/{address}/proof": {
            "get": {
                "summary": "cumulative amount and Merkle proof for RewardDistributor.claim",
                "parameters": [
                    _p(
                        "address",
                        "owner address: 0x + 40 hex digits, one case or EIP-55 checksummed",
                        {"type": "string", "format": "eip55-address", "pattern": "^0x[0-9a-fA-F]{40}$"},
                    ),
                    _q(
                        "epoch",
                        "default: the latest closed epoch; a claim needs the proof of the epoch "
                        "whose root is claimable on chain (RewardDistributor.claimableRoot)",
                        {"type": "integer", "minimum": 1, "maximum": INT64_MAX},
                    ),
                ],
                "responses": {"200": _resp("claim data", _ref("Proof")), "404": E404, **DB_ERRORS},
            }
        },
        **MAP_PATHS,  # the coverage map: /, /static/{name}, /v1/coverage, /v1/epochs (ingest/api/map.py)
    },
    "components": {"schemas": SCHEMAS},
}
OPENAPI["paths"].update(USAGE_PATHS)
OPENAPI["paths"].update(BOUNTY_PATHS)


def openapi_for(max_rows: int) -> dict[str, Any]:
    """The description with this process's page-size limit (DEPIN_API_MAX_ROWS)."""
    from ingest.api import query_doc  # it builds on this module

    doc = copy.deepcopy(OPENAPI)
    doc["paths"].update(copy.deepcopy(query_doc.QUERY_PATHS))  # readings, aggregates, export
    from ingest.api import devices  # lazy: it imports this module

    devices.merge_openapi(doc)
    from ingest.api import rewards  # lazy: it imports this module

    rewards.merge_openapi(doc)
    for param in doc["paths"]["/v1/readings"]["get"]["parameters"]:
        if param["name"] == "limit":
            param["schema"]["maximum"] = max_rows
    return doc
