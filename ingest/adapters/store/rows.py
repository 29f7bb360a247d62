"""What the store's classes share: the pool they stand on, value conversions, and the typed rows they
return.

Rows carry plain values: times as epoch milliseconds, ids, digests, roots and tx hashes as bytes, H3
cells and token amounts as ints. Shaping them for JSON (hex strings, decimal strings for amounts, the
key names the API documents) is the API's job (`ingest/api/shapes.py`), so the epoch scheduler reads
the same rows without converting anything back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import asyncpg

from ingest.core.storage_rules import INT64_MAX, MAX_TS_MS

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
DAY_MS = 86_400_000
# Advisory-lock key of the epoch seal ("depin_se"): every batch holds it SHARED for its transaction,
# sealing an epoch takes it EXCLUSIVE, so a seal waits for the batches in flight and the batches after
# it see the new watermark (ingest/adapters/migrations/005_epoch_seal.sql).
SEAL_LOCK_KEY = 0x6465_7069_6E5F_7365


class PoolStore:
    """One caller's part of the database on an asyncpg pool; the callers' classes may share a pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool


def ms_to_dt(ms: int) -> datetime:
    if not 0 <= ms <= MAX_TS_MS:
        raise ValueError(f"timestamp {ms} ms is outside 1970..9999")
    return _EPOCH + timedelta(0, 0, ms * 1000)  # positional microseconds: ~30 % faster than milliseconds=


def clamped_dt(ms: int) -> datetime:
    return ms_to_dt(min(max(ms, 0), MAX_TS_MS))


def dt_to_ms(dt: datetime) -> int:
    return (dt - _EPOCH) // _MS


def cell_to_db(cell: int) -> int:
    """H3 index → bigint. Identity: H3's top bit is reserved 0, so every index is in [0, 2^63)."""
    if not 0 <= cell <= INT64_MAX:
        raise ValueError(f"not an H3 index: {cell}")
    return cell


# --- rows -------------------------------------------------------------------------------------------
# Per-row types of the API's pages are NamedTuples (built in C: a page has up to thousands of rows);
# the few-per-request ones are frozen dataclasses.


class ReadingRow(NamedTuple):
    ts_ms: int
    device_id: bytes
    seq: int
    idx: int
    lat: float
    lon: float
    acc: float | None
    alt: float | None
    cell: int
    kind: str
    vals: Any  # the reading's values as stored (jsonb)
    media_sha256: bytes | None
    media_uri: str | None
    flags: int  # ingest.core.rules.FLAG_* bits


Position = tuple[int, bytes, int, int]  # a reading's key in page order: (ts_ms, device_id, seq, idx)


class ReadingPage(NamedTuple):
    items: list[ReadingRow]
    next: Position | None  # the last item's position when more may follow; pass it back as `after`


class RejectionRow(NamedTuple):
    id: int
    message_digest: bytes
    device_id: bytes | None
    seq: int | None
    reason: str
    detail: str  # cut at 1,000 characters
    topic: str  # cut at 300 characters
    received_ms: int


@dataclass(frozen=True, slots=True)
class Totals:
    """Packets and readings stored, rejection rows by reason."""

    packets: int
    readings: int
    rejections: dict[str, int]


class DeviceReward(NamedTuple):
    device_id: bytes
    owner: str
    cell: int
    readings: int
    amount: int
    flagged: int = 0
    quality: int = 0  # the slot's, bps
    rank: int = 0  # 1 = best earner in the cell; 0 = did not earn
    # as the manifest states them (None: an epoch closed before migration 019 did not keep them)
    hw_class: int | None = None
    registered_block: int | None = None


class CellReward(NamedTuple):
    """A covered cell's weight factors (bps) and share (ingest/core/rewards.py CellResult)."""

    cell: int
    base: int
    boost: int
    freshness: int
    demand: int
    weight: int
    share: int
    depth: int
    paid: int
    last_paid: int | None = None  # the last earlier epoch it paid in, if within the freshness lookback


class OwnerReward(NamedTuple):
    owner: str
    amount: int
    cumulative: int
    proof: list[bytes]  # sibling hashes of the owner's leaf in the epoch's cumulative Merkle tree


class DeviceCell(NamedTuple):
    """A device's coverage of one cell in a closed epoch, and why it earned what it did."""

    device: DeviceReward
    factors: CellReward | None  # None: an epoch closed before migration 016 kept no factors


@dataclass(frozen=True, slots=True)
class EpochRewards:
    devices: list[DeviceReward]
    owners: list[OwnerReward]


@dataclass(frozen=True, slots=True)
class EpochRow:
    """A closed epoch, its publish journal and where it stands ('closed', 'signed', 'published',
    'settled', 'refused', 'vetoed': migration 018)."""

    epoch: int
    start_ms: int
    end_ms: int
    status: str
    emission: int
    allocated: int
    unissued: int
    root: bytes
    inputs_digest: bytes
    manifest: dict[str, Any]
    tx_hash: bytes | None
    raw_tx: bytes | None
    tx_nonce: int | None
    block_number: int | None
    closed_ms: int
    published_ms: int | None
    block_hash: bytes | None = None  # of the receipt's block (migration 018)

    @property
    def journal(self) -> tuple[bytes, bytes, int | None] | None:
        """The journaled publish tx (raw bytes, hash, nonce), None when none is waiting."""
        if self.raw_tx is None or self.tx_hash is None:
            return None
        return self.raw_tx, self.tx_hash, self.tx_nonce


def bytes_or_none(b: bytes | None) -> bytes | None:
    return None if b is None else bytes(b)


def epoch_row(r: asyncpg.Record, manifest: dict[str, Any] | None = None) -> EpochRow:
    """`manifest`: stands in for a row that was read without its manifest column (the summary)."""
    return EpochRow(
        epoch=r["epoch"],
        start_ms=dt_to_ms(r["start_at"]),
        end_ms=dt_to_ms(r["end_at"]),
        status=r["status"],
        emission=int(r["emission"]),
        allocated=int(r["allocated"]),
        unissued=int(r["unissued"]),
        root=bytes(r["root"]),
        inputs_digest=bytes(r["inputs_digest"]),
        manifest=r["manifest"] if manifest is None else manifest,
        tx_hash=bytes_or_none(r["tx_hash"]),
        raw_tx=bytes_or_none(r["raw_tx"]),
        tx_nonce=r["tx_nonce"],
        block_number=r["block_number"],
        closed_ms=dt_to_ms(r["closed_at"]),
        published_ms=None if r["published_at"] is None else dt_to_ms(r["published_at"]),
        block_hash=bytes_or_none(r.get("block_hash")),
    )


@dataclass(frozen=True, slots=True)
class EpochSummary:
    """A stored epoch without its manifest (GET /v1/epochs/{n}), read from columns only."""

    row: EpochRow  # manifest: {} (not read; served whole at /v1/epochs/{n}/manifest)
    params: dict[str, Any]  # = manifest["params"]
    cells: int  # = manifest["cells"]
    devices: int  # device rows (device, cell) = len(manifest["devices"])
    owners: int  # = len(manifest["owners"])


async def fetch_epoch(db: asyncpg.Pool | asyncpg.Connection, epoch: int) -> EpochRow | None:
    """One epoch's row (the API serves it, the scheduler acts on it)."""
    row = await db.fetchrow("SELECT * FROM epochs WHERE epoch = $1", epoch)
    return None if row is None else epoch_row(row)


def proof_to_db(proof: list[bytes]) -> list[str]:
    """`owner_rewards.proof` is jsonb: a list of 0x-hex sibling hashes (the OpenZeppelin spelling)."""
    return ["0x" + p.hex() for p in proof]


def proof_from_db(proof: list[str]) -> list[bytes]:
    return [bytes.fromhex(p.removeprefix("0x")) for p in proof]
