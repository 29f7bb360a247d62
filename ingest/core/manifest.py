"""An epoch manifest's shape (docs/DESIGN.md §6): a small header and lists that grow with coverage.
PURE (no I/O).

The whole manifest is one JSON document (what `depin epoch verify` and independent checkers compare);
it is stored and served as its header (`epochs.manifest`) plus rows of the reward tables, one per list
entry (`epoch_cells`, `device_rewards`, `owner_rewards`). The entry functions here are the only
spelling of a list entry: the closer's manifest, the export assembled from stored rows and the API's
pages all go through them, so a recomputation and the stored rows compare equal when their values do.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

# The lists of the whole document, in the order the export writes them after the header. Each entry
# is one row: `cell_factors` and `last_paid` of `epoch_cells` (ascending cell; last_paid only for the
# covered cells that paid in the freshness lookback), `devices` of `device_rewards` (ascending cell,
# then device id: the split's order), `owners` of `owner_rewards` (ascending address as a string).
LISTS = ("cell_factors", "last_paid", "devices", "owners")


def header_of(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """What `epochs.manifest` keeps of a whole manifest: everything but its lists."""
    return {k: v for k, v in manifest.items() if k not in LISTS}


def cell_entry(
    cell: int,
    base: int,
    boost: int,
    freshness: int,
    demand: int,
    weight: int,
    share: int,
    depth: int,
    paid: int,
) -> dict[str, Any]:
    return {
        "cell": hex(cell),
        "base": base,
        "boost": boost,
        "freshness": freshness,
        "demand": demand,
        "weight": weight,
        "share": str(share),
        "depth": depth,
        "paid": str(paid),
    }


def last_paid_entry(cell: int, epoch: int) -> list[Any]:
    return [hex(cell), epoch]


def device_entry(
    device_id: bytes,
    owner: str,
    hw_class: int,
    registered_block: int,
    cell: int,
    readings: int,
    flagged: int,
    quality: int,
    rank: int,
    amount: int,
) -> dict[str, Any]:
    return {
        "device_id": device_id.hex(),
        "owner": owner,
        "hw_class": hw_class,
        "registered_block": registered_block,
        "cell": hex(cell),
        "readings": readings,
        "flagged": flagged,
        "quality": quality,
        "rank": rank,
        "amount": str(amount),
    }


def owner_entry(owner: str, amount: int, cumulative: int) -> dict[str, Any]:
    return {"owner": owner, "amount": str(amount), "cumulative": str(cumulative)}


def dumps(value: Any) -> bytes:
    """Compact JSON; orjson, and the json module for what orjson refuses (integers beyond 64 bits)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def document_start(header: Mapping[str, Any]) -> bytes:
    """The export's first bytes: the header's members, the document left open for the lists."""
    head = dumps(dict(header))[:-1]  # without the closing brace
    return head if len(head) == 1 else head + b","


def list_start(name: str, first: bool) -> bytes:
    return (b"" if first else b",") + dumps(name) + b":["


def entries(batch: Iterable[Any], first: bool) -> bytes:
    """A batch of list entries, comma-separated (with a leading comma unless it starts the list)."""
    body = b",".join(dumps(e) for e in batch)
    return body if first or not body else b"," + body


LIST_END = b"]"
DOCUMENT_END = b"}"
