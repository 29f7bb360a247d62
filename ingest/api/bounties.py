"""GET /v1/bounties: the bounties mirrored from the chain, newest first, with what each paid to devices
and refunded so far (README "Buyers' revenue and bounties"). Public, like the epochs: the same facts are
on chain and in the manifests."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ingest.adapters.store.market import MarketStore

MAX_ROWS = 1_000


async def bounties_view(request: web.Request) -> web.Response:
    from ingest.api.app import STORE  # lazy: app imports this module

    rows = await MarketStore(request.app[STORE].pool).bounties()
    body = {
        "bounties": [
            {
                "id": b.id,
                "funder": b.funder,
                "start_epoch": b.start_epoch,
                "end_epoch": b.end_epoch,
                "cells": [format(c, "x") for c in b.cells],
                "amount": str(b.amount),
                "paid": str(b.paid),
                "refunded": str(b.refunded),
                "settled_epoch": b.settled_epoch,
                "block": b.block,
            }
            for b in rows[:MAX_ROWS]
        ],
        "truncated": len(rows) > MAX_ROWS,
    }
    return web.json_response(body)


_STR = {"type": "string"}
_INT = {"type": "integer"}
_JSON_ERR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_PROPS: dict[str, Any] = {
    "id": _INT,
    "funder": _STR,
    "start_epoch": _INT,
    "end_epoch": _INT,
    "cells": {"type": "array", "items": _STR},
    "amount": _STR,
    "paid": _STR,
    "refunded": _STR,
    "settled_epoch": {**_INT, "nullable": True},
    "block": _INT,
}
_BOUNTY = {"type": "object", "properties": _PROPS, "required": list(_PROPS), "additionalProperties": False}

PATHS: dict[str, Any] = {
    "/v1/bounties": {
        "get": {
            "summary": "bounties mirrored from the chain, newest first, with what each paid and refunded",
            "description": (
                f"At most {MAX_ROWS:,} (`truncated` says when more exist). Amounts are token base units as "
                "decimal strings; `settled_epoch` is the epoch that refunded what no device earned (null "
                "while the window is open)."
            ),
            "responses": {
                "200": {
                    "description": "the bounties",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "bounties": {"type": "array", "items": _BOUNTY},
                                    "truncated": {"type": "boolean"},
                                },
                                "required": ["bounties", "truncated"],
                                "additionalProperties": False,
                            }
                        }
                    },
                },
                "503": {"description": "database unavailable or busy; retry", **_JSON_ERR},
                "504": {"description": "statement timeout", **_JSON_ERR},
            },
        }
    }
}
