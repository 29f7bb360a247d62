"""The API's JSON shapes of the store's typed rows (ingest/api/shapes.py): keys, order and spelling."""

from __future__ import annotations

import dataclasses

from ingest.adapters.store.rows import EpochRow, EpochSummary, OwnerReward, ReadingRow, RejectionRow, Totals
from ingest.api.shapes import (
    epoch_json,
    epoch_summary_json,
    owner_proof_json,
    reading_json,
    rejection_json,
    totals_json,
)
from ingest.core.rules import FLAG_MEDIA_REUSE

DEV = b"\xaa" * 32


def test_reading() -> None:
    row = ReadingRow(
        1_000,
        DEV,
        7,
        2,
        1.5,
        2.5,
        None,
        3.0,
        0x8928308280FFFFF,
        "weather",
        {"t": 1},
        b"\x01" * 32,
        "s3://x",
        0,
    )
    out = reading_json(row)
    assert list(out) == [
        "ts", "device_id", "seq", "idx", "lat", "lon", "acc", "alt", "cell", "kind", "vals", "media", "flags"
    ]  # fmt: skip
    assert out["device_id"] == "aa" * 32 and out["cell"] == "8928308280fffff" and out["ts"] == 1_000
    assert out["media"] == {"sha256": "01" * 32, "uri": "s3://x"}
    assert out["flags"] == []
    no_media = reading_json(row._replace(media_sha256=None, media_uri=None, flags=FLAG_MEDIA_REUSE))
    assert no_media["media"] is None and no_media["flags"] == ["media_reuse"]


def test_rejection() -> None:
    out = rejection_json(RejectionRow(3, b"\x0f" * 32, None, None, "malformed", "d", "t", 9))
    assert out == {
        "id": 3,
        "message_digest": "0f" * 32,
        "device_id": None,
        "seq": None,
        "reason": "malformed",
        "detail": "d",
        "topic": "t",
        "received_ms": 9,
    }


def test_epoch_hides_the_journal_and_spells_amounts_as_strings() -> None:
    big = 2**255 + 1
    row = EpochRow(
        epoch=4,
        start_ms=1,
        end_ms=2,
        status="published",
        emission=big,
        allocated=big - 1,
        unissued=1,
        root=b"\x01" * 32,
        inputs_digest=b"\x02" * 32,
        manifest={"cells": 1},
        tx_hash=b"\x03" * 32,
        raw_tx=b"\xf8raw",
        tx_nonce=5,
        block_number=10,
        closed_ms=3,
        published_ms=None,
    )
    out = epoch_json(row)
    assert list(out) == [
        "epoch", "start_ms", "end_ms", "status", "emission", "allocated", "unissued", "root",
        "inputs_digest", "manifest", "tx_hash", "block_number", "closed_ms", "published_ms",
    ]  # fmt: skip
    assert (out["emission"], out["allocated"], out["unissued"]) == (str(big), str(big - 1), "1")
    assert (out["root"], out["tx_hash"]) == ("0x" + "01" * 32, "0x" + "03" * 32)
    assert row.journal == (b"\xf8raw", b"\x03" * 32, 5)

    # The summary (GET /v1/epochs/{n}): no manifest; its params, cells and list lengths instead.
    head = dataclasses.replace(row, manifest={})
    summary = epoch_summary_json(EpochSummary(head, params={"k": "10"}, cells=1, devices=7, owners=3))
    assert "manifest" not in summary and "raw_tx" not in summary
    assert {k: summary[k] for k in ("params", "cells", "devices", "owners")} == {
        "params": {"k": "10"}, "cells": 1, "devices": 7, "owners": 3
    }  # fmt: skip
    assert summary["root"] == out["root"] and summary["published_ms"] is None


def test_owner_proof_and_totals() -> None:
    out = owner_proof_json(2, "0xAbC", OwnerReward("0xabc", 5, 2**70, [b"\xab" * 32]))
    assert out == {
        "epoch": 2,
        "account": "0xAbC",
        "amount": "5",
        "cumulative": str(2**70),
        "proof": ["0x" + "ab" * 32],
    }
    assert totals_json(Totals(1, 2, {"replay": 3})) == {
        "packets": 1,
        "readings": 2,
        "rejections": {"replay": 3},
    }
