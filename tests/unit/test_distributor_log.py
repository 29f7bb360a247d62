"""The distributor mirror's pure decisions (ingest/core/distributor_log.py): when a pass replays, its
ranges, and a range's decoded logs sorted into the rows of the three tables."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from ingest.core.distributor_log import Cursor, payout_blocks, ranges, replay_reason, sort_logs

D = "0x" + "ab" * 20
H = b"\x01" * 32


@pytest.mark.parametrize(
    ("cursor", "head", "chain_hash", "expected"),
    [
        (None, 10, None, "fresh"),
        (Cursor("0x" + "cd" * 20, 5, H), 10, H, "other distributor"),
        (Cursor(D, 12, H), 10, None, "the chain is below the mirrored block 12"),
        (Cursor(D, 5, H), 10, b"\x02" * 32, "block 5 changed (a reorg below the mirrored height)"),
        (Cursor(D, 5, H), 10, H, None),
        (Cursor(D, 5, None), 10, None, None),  # just rewound: no hash to compare yet
        (Cursor(D, 10, H), 10, H, None),
    ],
)
def test_replay_reason(
    cursor: Cursor | None, head: int, chain_hash: bytes | None, expected: str | None
) -> None:
    assert replay_reason(cursor, D, head, chain_hash) == expected


def test_ranges() -> None:
    assert ranges(5, 4, 3) == []
    assert ranges(1, 7, 3) == [(1, 3), (4, 6), (7, 7)]
    assert ranges(1, 6, 3) == [(1, 3), (4, 6)]


def log(event: str, block: int, index: int, **args: Any) -> dict[str, Any]:
    return {
        "event": event,
        "args": args,
        "transactionHash": bytes([block, index]) * 16,
        "logIndex": index,
        "blockNumber": block,
        "blockHash": bytes([block]) * 32,
    }


def test_sort_logs_into_rows_in_chain_order() -> None:
    payer = "0x" + "11" * 20
    logs = [
        log("Claimed", 9, 0, epoch=2, account="0xAbC" + "0" * 37, amount=5, cumulative=7),
        log("Deposited", 8, 1, account=b"\x07" * 32, payer=payer, amount=100),
        log("BountyCreated", 8, 0, id=3, funder=payer, startEpoch=4, endEpoch=6, cells=[1, 2], amount=60),
        log("EpochPublished", 7, 0, epoch=2, root=b"\x09" * 32, total=50),
        log("RoleGranted", 7, 1),  # not mirrored
    ]
    assert payout_blocks(logs) == {7, 9}
    t = {7: datetime(2026, 1, 1, tzinfo=UTC), 9: datetime(2026, 1, 2, tzinfo=UTC)}
    rows = sort_logs(logs, t, 5, 10, H)
    assert (rows.first, rows.last, rows.last_hash, len(rows)) == (5, 10, H, 4)
    assert [e.event for e in rows.events] == ["EpochPublished", "Claimed"]
    published, claimed = rows.events
    assert (published.root, published.total, published.account, published.block_time) == (
        b"\x09" * 32,
        50,
        None,
        t[7],
    )
    assert (claimed.account, claimed.amount, claimed.cumulative, claimed.root) == (
        "0xabc" + "0" * 37,
        5,
        7,
        None,
    )
    (deposit,) = rows.deposits
    assert (deposit.block, deposit.log_index, deposit.account, deposit.amount) == (8, 1, b"\x07" * 32, 100)
    assert deposit.payer == "0x" + "11" * 20
    (bounty,) = rows.bounties
    assert (bounty.id, bounty.start_epoch, bounty.end_epoch, bounty.cells, bounty.amount) == (
        3,
        4,
        6,
        (1, 2),
        60,
    )
