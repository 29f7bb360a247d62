"""The distributor mirror's decisions, pure (no I/O): where a pass starts, and a range's decoded logs
sorted into the rows of the three tables (`distributor_events`, `market_deposits`, `bounties`).

The mirror itself (ingest/distributor_mirror.py) reads the chain and the database and calls these.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from eth_utils import to_checksum_address

# Every event the mirror keeps; the rest of the contract's logs (role changes, …) are skipped.
PAYOUT_EVENTS = ("EpochPublished", "RootAccepted", "RootVetoed", "Claimed")
MARKET_EVENTS = ("Deposited", "BountyCreated")
EVENTS = PAYOUT_EVENTS + MARKET_EVENTS


@dataclass(frozen=True, slots=True)
class DistributorEvent:
    """One decoded payout log of the RewardDistributor. `account`, `amount`, `cumulative`: Claimed only;
    `root`: EpochPublished, RootAccepted, RootVetoed; `total`: EpochPublished, RootAccepted."""

    tx_hash: bytes
    log_index: int
    block_number: int
    block_hash: bytes
    block_time: datetime
    event: str
    epoch: int
    account: str | None = None
    amount: int | None = None
    cumulative: int | None = None
    root: bytes | None = None
    total: int | None = None


class DepositEvent(NamedTuple):
    tx_hash: bytes
    log_index: int
    block: int
    account: bytes
    payer: str
    amount: int


class BountyEvent(NamedTuple):
    id: int
    tx_hash: bytes
    log_index: int
    block: int
    funder: str
    start_epoch: int
    end_epoch: int
    cells: tuple[int, ...]
    amount: int


@dataclass(frozen=True, slots=True)
class MirroredRange:
    """What blocks [first, last] of the distributor hold, as rows: stored with the cursor (last, its
    hash) in one transaction, replacing whatever the tables held for those blocks."""

    first: int
    last: int
    last_hash: bytes
    events: list[DistributorEvent] = field(default_factory=list)
    deposits: list[DepositEvent] = field(default_factory=list)
    bounties: list[BountyEvent] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.events) + len(self.deposits) + len(self.bounties)


@dataclass(frozen=True, slots=True)
class Cursor:
    distributor: str
    block: int
    block_hash: bytes | None


def replay_reason(
    cursor: Cursor | None, distributor: str, head: int, chain_hash_at_cursor: bytes | None
) -> str | None:
    """Why the mirror must start again from the deployment block, or None to go on from its cursor.
    `chain_hash_at_cursor`: the chain's hash of the cursor block now (None: not looked up: the cursor
    is above the head, or has no hash yet)."""
    if cursor is None:
        return "fresh"
    if cursor.distributor != distributor:
        return "other distributor"
    if cursor.block > head:
        return f"the chain is below the mirrored block {cursor.block}"
    if cursor.block_hash is not None and chain_hash_at_cursor is not None:
        if chain_hash_at_cursor != cursor.block_hash:
            return f"block {cursor.block} changed (a reorg below the mirrored height)"
    return None


def ranges(first: int, target: int, chunk: int) -> list[tuple[int, int]]:
    """[first, target] in chunks of at most `chunk` blocks (empty when first > target)."""
    return [(lo, min(lo + chunk - 1, target)) for lo in range(first, target + 1, chunk)]


def sort_logs(
    decoded: Iterable[Any], times: Mapping[int, datetime], first: int, last: int, last_hash: bytes
) -> MirroredRange:
    """A range's decoded logs (web3 event dicts: `event`, `args`, `transactionHash`, `logIndex`,
    `blockNumber`, `blockHash`) → its rows; `times`: block number → block time (payout events)."""
    out = MirroredRange(first, last, last_hash)
    for ev in sorted(decoded, key=lambda e: (int(e["blockNumber"]), int(e["logIndex"]))):
        a, name = ev["args"], ev["event"]
        tx, index, block = bytes(ev["transactionHash"]), int(ev["logIndex"]), int(ev["blockNumber"])
        if name == "Deposited":
            out.deposits.append(
                DepositEvent(
                    tx, index, block, bytes(a["account"]), to_checksum_address(a["payer"]), int(a["amount"])
                )
            )
        elif name == "BountyCreated":
            out.bounties.append(
                BountyEvent(
                    int(a["id"]),
                    tx,
                    index,
                    block,
                    to_checksum_address(a["funder"]),
                    int(a["startEpoch"]),
                    int(a["endEpoch"]),
                    tuple(int(c) for c in a["cells"]),
                    int(a["amount"]),
                )
            )
        elif name in PAYOUT_EVENTS:
            claimed = name == "Claimed"
            out.events.append(
                DistributorEvent(
                    tx_hash=tx,
                    log_index=index,
                    block_number=block,
                    block_hash=bytes(ev["blockHash"]),
                    block_time=times[block],
                    event=name,
                    epoch=int(a["epoch"]),
                    account=str(a["account"]).lower() if claimed else None,
                    amount=int(a["amount"]) if claimed else None,
                    cumulative=int(a["cumulative"]) if claimed else None,
                    root=bytes(a["root"]) if "root" in a else None,
                    total=int(a["total"]) if "total" in a else None,
                )
            )
    return out


def payout_blocks(decoded: Iterable[Any]) -> set[int]:
    """The blocks whose time the payout events need (deposits and bounties need none)."""
    return {int(ev["blockNumber"]) for ev in decoded if ev["event"] in PAYOUT_EVENTS}
