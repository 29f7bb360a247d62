"""The store's typed rows as the JSON the API documents (ingest/api/openapi.py).

Conventions: times as epoch milliseconds, device ids and message digests as plain hex, chain values
(roots, digests, tx hashes, proofs) as 0x-hex, H3 cells as the usual H3 hex string, token amounts as
decimal strings (they exceed JSON's safe integers), flags by name (README "Outcomes and reason codes").
"""

from __future__ import annotations

import base64
from typing import Any

from ingest.adapters.store.coverage import CellCoverage, CoveragePage
from ingest.adapters.store.devices import DeviceView, PacketRow
from ingest.adapters.store.rows import (
    DeviceCell,
    EpochRow,
    EpochSummary,
    OwnerReward,
    ReadingRow,
    RejectionRow,
    Totals,
)
from ingest.core.coverage import EpochSpan, cell_ring, freshness_ms
from ingest.core.rules import flag_reasons


def hex0x(b: bytes | None) -> str | None:
    return None if b is None else "0x" + b.hex()


def reading_json(r: ReadingRow) -> dict[str, Any]:
    return {
        "ts": r.ts_ms,
        "device_id": r.device_id.hex(),
        "seq": r.seq,
        "idx": r.idx,
        "lat": r.lat,
        "lon": r.lon,
        "acc": r.acc,
        "alt": r.alt,
        "cell": format(r.cell, "x"),  # h3.int_to_str spelling
        "kind": r.kind,
        "vals": r.vals,
        "media": None if r.media_sha256 is None else {"sha256": r.media_sha256.hex(), "uri": r.media_uri},
        "flags": [reason.value for reason in flag_reasons(r.flags)] if r.flags else [],
    }


def rejection_json(r: RejectionRow) -> dict[str, Any]:
    return {
        "id": r.id,
        "message_digest": r.message_digest.hex(),
        "device_id": None if r.device_id is None else r.device_id.hex(),
        "seq": r.seq,
        "reason": r.reason,
        "detail": r.detail,
        "topic": r.topic,
        "received_ms": r.received_ms,
    }


def epoch_json(e: EpochRow) -> dict[str, Any]:
    """The epoch as served: without its journaled raw tx and nonce (the operator's business)."""
    return {
        "epoch": e.epoch,
        "start_ms": e.start_ms,
        "end_ms": e.end_ms,
        "status": e.status,
        "emission": str(e.emission),
        "allocated": str(e.allocated),
        "unissued": str(e.unissued),
        "root": hex0x(e.root),
        "inputs_digest": hex0x(e.inputs_digest),
        "manifest": e.manifest,
        "tx_hash": hex0x(e.tx_hash),
        "block_number": e.block_number,
        "closed_ms": e.closed_ms,
        "published_ms": e.published_ms,
    }


def epoch_summary_json(s: EpochSummary) -> dict[str, Any]:
    """GET /v1/epochs/{n}: the epoch without its manifest (served whole at /v1/epochs/{n}/manifest);
    what the manifest's top level adds (params, covered cells) plus the lengths of its lists."""
    body = epoch_json(s.row)
    del body["manifest"]
    return {
        **body,
        "params": s.params,
        "cells": s.cells,
        "devices": s.devices,
        "owners": s.owners,
    }


def _span_fields(e: EpochSpan) -> dict[str, Any]:
    return {"epoch": e.epoch, "start_ms": e.start_ms, "end_ms": e.end_ms, "status": e.status}


def epoch_span_json(e: EpochSpan) -> dict[str, Any]:
    """An epoch as /v1/epochs lists it (`covered`: has it any covered cell)."""
    return {**_span_fields(e), "covered": e.covered}


def coverage_json(e: EpochSpan, as_of_ms: int, page: CoveragePage) -> dict[str, Any]:
    """An epoch's coverage as a GeoJSON FeatureCollection; the epoch's fields are foreign members."""
    return {
        "type": "FeatureCollection",
        **_span_fields(e),
        "as_of_ms": as_of_ms,
        "cells": page.total,
        "truncated": page.total > len(page.cells),
        "features": [cell_feature(c, as_of_ms) for c in page.cells],
    }


def cell_feature(c: CellCoverage, as_of_ms: int) -> dict[str, Any]:
    """One covered cell as a GeoJSON Feature: its hexagon ([lon, lat], closed ring) and coverage."""
    cell = format(c.cell, "x")
    return {
        "type": "Feature",
        "id": cell,
        "geometry": {"type": "Polygon", "coordinates": [cell_ring(c.cell)]},
        "properties": {
            "cell": cell,
            "devices": c.devices,
            "device_ids": [d.hex() for d in c.device_ids],
            "readings": c.readings,
            "newest_ms": c.newest_ms,
            "freshness_ms": freshness_ms(c.newest_ms, as_of_ms),
            "reward": None if c.reward is None else str(c.reward),
        },
    }


def owner_proof_json(epoch: int, account: str, r: OwnerReward) -> dict[str, Any]:
    """What an owner needs to call RewardDistributor.claim(account, cumulative, proof); the proof is
    valid against the epoch's root, so claim with the epoch the distributor's claimableRoot() names."""
    return {
        "epoch": epoch,
        "account": account,
        "amount": str(r.amount),
        "cumulative": str(r.cumulative),
        "proof": [hex0x(p) for p in r.proof],
    }


def totals_json(t: Totals) -> dict[str, Any]:
    return {"packets": t.packets, "readings": t.readings, "rejections": t.rejections}


def packet_json(p: PacketRow) -> dict[str, Any]:
    """A packet for provenance: `envelope` is base64 (padded) of the COSE_Sign1 bytes as received."""
    return {
        "device_id": p.device_id.hex(),
        "seq": p.seq,
        "kind": p.kind,
        "received_ms": p.received_ms,
        "payload_digest": p.payload_digest.hex(),
        "envelope": None if p.envelope is None else base64.b64encode(p.envelope).decode(),
        "readings": [reading_json(r) for r in p.readings],
    }


def _quality(readings: int, flagged: int) -> float | None:
    return None if readings <= 0 else round((readings - flagged) / readings, 4)


def device_view_json(v: DeviceView) -> dict[str, Any]:
    readings = sum(e.readings for e in v.epochs)
    status = "unregistered" if not v.registered else "active" if v.active else "revoked"
    return {
        "device_id": v.device_id.hex(),
        "status": status,
        "owner": v.owner,
        "hw_class": v.hw_class,
        "kind": v.kind,
        "asserted_cell": None if v.asserted_cell is None else format(v.asserted_cell, "x"),
        "registered_block": v.registered_block,
        "last_seen_ms": v.last_seen_ms,
        "quality": _quality(readings, sum(e.flagged for e in v.epochs)),
        "epochs": [
            {
                "epoch": e.epoch,
                "packets": e.packets,
                "readings": e.readings,
                "flagged": e.flagged,
                "rejected": e.rejected,
                "quality": _quality(e.readings, e.flagged),
            }
            for e in v.epochs
        ],
    }


def device_epoch_json(epoch: int, device_id: bytes, cells: list[DeviceCell]) -> dict[str, Any]:
    """GET /v1/epochs/{n}/devices/{id} and `depin epoch explain`: per cell the weight factors (bps),
    the cell's share, its depth and what it paid, the device's slot quality and rank (0: not an
    earner) and its amount; then the device's total. Amounts are decimal strings (uint256)."""
    out = []
    for device, f in cells:
        cell: dict[str, Any] = {
            "cell": hex(device.cell),
            "readings": device.readings,
            "flagged": device.flagged,
            "quality": device.quality,
            "rank": device.rank,
            "amount": str(device.amount),
        }
        if f is not None:
            cell["factors"] = {"base": f.base, "boost": f.boost, "freshness": f.freshness, "demand": f.demand}
            cell |= {
                "weight": f.weight,
                "cell_share": str(f.share),
                "depth": f.depth,
                "cell_paid": str(f.paid),
            }
        out.append(cell)
    return {
        "epoch": epoch,
        "device_id": device_id.hex(),
        "owner": cells[0].device.owner if cells else None,
        "amount": str(sum(c.device.amount for c in cells)),
        "cells": out,
    }
