"""`GET /v1/owners/{address}/rewards` (README "Rewards"): an owner's amount per epoch, cumulative
total, what is claimed so far and what is claimable now, answered from the database only — the
claims and roots come from the distributor's events that the `epochs` part mirrors
(ingest/distributor_mirror.py), so an API-only process needs no chain. Public, like the proofs.
"""

from __future__ import annotations

import copy
from typing import Any

from aiohttp import web

from ingest.adapters.store.payouts import OwnerRewards, PayoutStore, RootOnChain
from ingest.api.app import STORE, BadRequest, _address, _int_param, _json
from ingest.api.openapi import DB_ERRORS, _obj, _p, _q, _ref, _resp

MAX_EPOCHS = 100


def _root(r: RootOnChain | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"epoch": r.epoch, "cumulative": str(r.cumulative), "claimable_from_ms": r.claimable_from_ms}


def rewards_json(v: OwnerRewards) -> dict[str, Any]:
    return {
        "owner": v.owner,
        "as_of_block": v.as_of_block,
        "cumulative": str(v.cumulative),
        "claimed": str(v.claimed),
        "claimable": str(v.claimable),
        "accepted": _root(v.accepted),
        "pending": _root(v.pending),
        "epochs": [
            {"epoch": e.epoch, "status": e.status, "amount": str(e.amount), "cumulative": str(e.cumulative)}
            for e in v.epochs
        ],
    }


async def owner_rewards(request: web.Request) -> web.Response:
    for name in request.query:
        if name != "epochs":
            raise BadRequest(f"unknown query parameter {name[:40]!r} (this endpoint takes: epochs)")
    owner = _address(request.match_info["address"])
    epochs = _int_param(request, "epochs", 10, lo=1, hi=MAX_EPOCHS)
    view = await PayoutStore(request.app[STORE].pool).owner_rewards(owner, epochs)
    return _json(rewards_json(view))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/owners/{address}/rewards", owner_rewards)


# --- OpenAPI ------------------------------------------------------------------------------------------

_DEC = {"type": "string", "pattern": "^[0-9]+$", "description": "token amount (wei), decimal string"}
_ROOT = {
    **_obj(
        {
            "epoch": {"type": "integer", "minimum": 1},
            "cumulative": {**_DEC, "description": "the owner's cumulative amount in this epoch's tree"},
            "claimable_from_ms": {
                "type": "integer",
                "nullable": True,
                "description": "pending: when its challenge window ends (unix ms); null once accepted",
            },
        }
    ),
    "nullable": True,
}

SCHEMAS: dict[str, Any] = {
    "OwnerRewards": _obj(
        {
            "owner": {"type": "string"},
            "as_of_block": {
                "type": "integer",
                "nullable": True,
                "description": "claims and roots are as of this block (the mirror of the distributor's "
                "events, latest − DEPIN_CHAIN_CONFIRMATIONS); null before the mirror has run",
            },
            "cumulative": {**_DEC, "description": "earned over every closed epoch"},
            "claimed": {**_DEC, "description": "claimed so far (the contract's claimed[owner])"},
            "claimable": {**_DEC, "description": "accepted root's cumulative − claimed"},
            "accepted": _ROOT,
            "pending": _ROOT,
            "epochs": {
                "type": "array",
                "items": _obj(
                    {
                        "epoch": {"type": "integer", "minimum": 1},
                        "status": {"type": "string"},
                        "amount": _DEC,
                        "cumulative": _DEC,
                    }
                ),
            },
        }
    ),
}

PATHS: dict[str, Any] = {
    "/v1/owners/{address}/rewards": {
        "get": {
            "summary": "an owner's rewards: per epoch, cumulative, claimed so far, claimable now "
            "(claims and roots from the distributor's mirrored events)",
            "parameters": [
                _p(
                    "address",
                    "owner address: 0x + 40 hex digits, one case or EIP-55 checksummed",
                    {"type": "string", "format": "eip55-address", "pattern": "^0x[0-9a-fA-F]{40}$"},
                ),
                _q(
                    "epochs",
                    f"how many of the newest epochs the owner earned in to list (default 10, at most "
                    f"{MAX_EPOCHS})",
                    {"type": "integer", "minimum": 1, "maximum": MAX_EPOCHS},
                ),
            ],
            "responses": {"200": _resp("the owner's rewards", _ref("OwnerRewards")), **DB_ERRORS},
        }
    },
}


def merge_openapi(doc: dict[str, Any]) -> None:
    doc["paths"].update(copy.deepcopy(PATHS))
    doc["components"]["schemas"].update(copy.deepcopy(SCHEMAS))
