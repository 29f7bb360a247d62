"""GET /v1/usage: the calling key's metered units per (res-7 cell, epoch), and today's total against
its quota. Free (it charges nothing); any valid key (ingest/core/apikeys.py `ACCESS`)."""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from ingest.api.auth import KEYS, REQUEST_KEY
from ingest.core import apikeys
from ingest.core.apikeys import DAY_MS, KeyRecord
from ingest.core.market import account_of

INT64_MAX = 2**63 - 1
MAX_ROWS = 10_000
_UINT_RE = re.compile(r"[0-9]{1,19}")


def _epoch_param(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not _UINT_RE.fullmatch(raw) or int(raw) > INT64_MAX:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"{name} must be an integer between 0 and {INT64_MAX}"}),
            content_type="application/json",
        )
    return int(raw)


async def usage_view(request: web.Request) -> web.Response:
    unknown = sorted(set(request.query) - {"from_epoch", "to_epoch"})
    if unknown:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"unknown parameter {unknown[0]!r}; allowed: from_epoch, to_epoch"}),
            content_type="application/json",
        )
    lo = _epoch_param(request, "from_epoch", 0)
    hi = _epoch_param(request, "to_epoch", INT64_MAX)
    key: KeyRecord = request[REQUEST_KEY]
    keys = request.app[KEYS]
    now_ms = keys.wall_ms()
    day = apikeys.utc_day(now_ms)
    rows = await keys.store.usage(key.key_id, lo, hi, MAX_ROWS + 1)
    used = await keys.store.used_on(key.key_id, day)
    deposited, spent = await keys.store.credit(key.key_id, account_of(key.key_id))
    body: dict[str, Any] = {
        "key_id": key.key_id,
        "name": key.name,
        "scopes": list(key.scopes),
        "usage": [{"cell": format(r.cell, "x"), "epoch": r.epoch, "units": r.units} for r in rows[:MAX_ROWS]],
        "truncated": len(rows) > MAX_ROWS,
        "today": {"units": used, "quota": key.quota, "resets_ms": (day + 1) * DAY_MS},
        # Prepaid credit (README "Rewards"): token base units as decimal strings; a key with deposits
        # is refused (402) once `balance` reaches 0.
        "credit": {
            "account": "0x" + account_of(key.key_id).hex(),
            "deposited": str(deposited),
            "spent": str(spent),
            "balance": str(max(0, deposited - spent)),
            "price_per_unit": str(keys.access.price_per_unit),
        },
    }
    return web.json_response(body)


_INT = {"type": "integer"}
_EPOCH = {"type": "integer", "minimum": 0, "maximum": INT64_MAX}
_JSON_ERR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _object(props: dict[str, Any], nullable: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {k: ({**v, "nullable": True} if k in nullable else v) for k, v in props.items()},
        "required": list(props),
        "additionalProperties": False,
    }


PATHS: dict[str, Any] = {
    "/v1/usage": {
        "get": {
            "summary": "the calling key's usage units per res-7 cell and epoch, and today's units vs quota",
            "description": (
                f"Rows ordered by epoch then cell, at most {MAX_ROWS:,} (`truncated` says when more exist: "
                "narrow the epochs; `from_epoch` after `to_epoch` selects nothing). `today` counts the "
                "current UTC day; the quota resets at `resets_ms`."
            ),
            "parameters": [
                {"name": "from_epoch", "in": "query", "required": False, "schema": _EPOCH},
                {"name": "to_epoch", "in": "query", "required": False, "schema": _EPOCH},
            ],
            "responses": {
                "200": {
                    "description": "usage of this key",
                    "content": {
                        "application/json": {
                            "schema": _object(
                                {
                                    "key_id": {"type": "string"},
                                    "name": {"type": "string"},
                                    "scopes": {"type": "array", "items": {"type": "string"}},
                                    "usage": {
                                        "type": "array",
                                        "items": _object(
                                            {"cell": {"type": "string"}, "epoch": _INT, "units": _INT}
                                        ),
                                    },
                                    "truncated": {"type": "boolean"},
                                    "today": _object(
                                        {"units": _INT, "quota": _INT, "resets_ms": _INT}, ("quota",)
                                    ),
                                    "credit": _object(
                                        {
                                            k: {"type": "string"}
                                            for k in (
                                                "account",
                                                "deposited",
                                                "spent",
                                                "balance",
                                                "price_per_unit",
                                            )
                                        }
                                    ),
                                }
                            )
                        }
                    },
                },
                "400": {"description": "bad parameter (the message says which)", **_JSON_ERR},
                "503": {"description": "database unavailable or busy; retry", **_JSON_ERR},
                "504": {"description": "statement timeout", **_JSON_ERR},
            },
        }
    }
}
