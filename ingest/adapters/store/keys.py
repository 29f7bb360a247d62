"""API keys and metered usage: tables `api_keys`, `usage`, `usage_daily` (migration 009), `usage_spend`
(017) and `usage_demand` (021). The API looks keys up and records usage on its own pool; `depin api-key
…` creates, lists and revokes keys. Keys are stored as their sha256 only (ingest/core/apikeys.py)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from typing import Any, NamedTuple

import asyncpg

from ingest.adapters.store.rows import SEAL_LOCK_KEY, PoolStore, dt_to_ms
from ingest.core import apikeys
from ingest.core.apikeys import KeyRecord

log = logging.getLogger(__name__)

_KEY_COLUMNS = "key_id, name, scopes, quota, rate, burst, created_at, revoked_at"
_DAY0 = date(1970, 1, 1)


# The usage write is one transaction: BEGIN and the seal lock SHARED in one round trip (a simple query),
# then `_RECORD_USAGE`, then COMMIT. The watermark is read by `_RECORD_USAGE`, a LATER statement than the
# lock: in READ COMMITTED a statement's snapshot is taken when it starts, so a read in the lock's own
# statement could see the seal from before it waited (ingest/adapters/store/ingest.py does the same).
_BEGIN_SHARED = f"BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock_shared({SEAL_LOCK_KEY})"

# `q`: the batch's units per (key, epoch by the clock when the query ran, cell, epoch of the readings),
# `a` their value when the key is prepaid (else 0). `w`: the first epoch not sealed. Every unit counts in
# greatest(its query's epoch, w), for demand (`d`) and a prepaid key's spend (`s`): never in an epoch
# already sealed, so an epoch's usage is final once it is sealed (migration 021). Rows are inserted in
# primary-key order, `usage` first, then `usage_spend`, then `usage_demand`, then `usage_daily`: each
# waits for the one before (an uncorrelated `(SELECT count(*) FROM …)` is an InitPlan, evaluated in full
# before its first row), so concurrent writers never lock rows in opposite orders.
_RECORD_USAGE = """
WITH q AS MATERIALIZED (
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::numeric[])
         AS t(k, qe, c, e, n, a)),
w AS (SELECT coalesce(max(sealed_epoch), 0) + 1 AS open FROM epoch_seal),
u AS (
    INSERT INTO usage (key_id, cell, epoch, units)
    SELECT k, c, e, sum(n)::bigint FROM q GROUP BY k, c, e ORDER BY k, c, e
    ON CONFLICT (key_id, cell, epoch) DO UPDATE SET units = usage.units + EXCLUDED.units
    RETURNING 1),
s AS (
    INSERT INTO usage_spend (key_id, spent_epoch, cell, epoch, units, amount)
    SELECT k, greatest(qe, w.open), c, e, sum(n)::bigint, sum(a) FROM q, w
    WHERE a > 0 AND (SELECT count(*) FROM u) >= 0
    GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (key_id, spent_epoch, cell, epoch)
    DO UPDATE SET units = usage_spend.units + EXCLUDED.units, amount = usage_spend.amount + EXCLUDED.amount
    RETURNING 1),
d AS (
    INSERT INTO usage_demand (key_id, epoch, cell, units)
    SELECT k, greatest(qe, w.open), c, sum(n)::bigint FROM q, w
    WHERE (SELECT count(*) FROM s) >= 0
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (key_id, epoch, cell) DO UPDATE SET units = usage_demand.units + EXCLUDED.units
    RETURNING 1)
INSERT INTO usage_daily (key_id, day, units)
SELECT k, d, n FROM unnest($7::text[], $8::date[], $9::bigint[]) AS t(k, d, n)
WHERE (SELECT count(*) FROM d) >= 0
ON CONFLICT (key_id, day) DO UPDATE SET units = usage_daily.units + EXCLUDED.units
RETURNING key_id, day, units"""


# A batch's unit of use: (key id, UTC day, epoch by the clock when the query ran, the key is prepaid)
Use = tuple[str, int, int, bool]


class UsageRow(NamedTuple):
    cell: int
    epoch: int
    units: int


def _record(r: Any) -> KeyRecord:
    return KeyRecord(
        key_id=r["key_id"],
        name=r["name"],
        scopes=tuple(r["scopes"]),
        quota=r["quota"],
        rate=r["rate"],
        burst=r["burst"],
        created_ms=dt_to_ms(r["created_at"]),
        revoked_ms=None if r["revoked_at"] is None else dt_to_ms(r["revoked_at"]),
        deposited=int(r.get("deposited", 0)),
        spent=int(r.get("spent", 0)),
    )


def _date(day: int) -> date:
    return _DAY0 + timedelta(days=day)


async def _rollback(conn: Any) -> None:
    """End a usage write that failed (or was cancelled) before its COMMIT. If the connection cannot
    say ROLLBACK now (a cancelled query still being cancelled), the pool resets or closes it on release,
    which rolls back too."""
    if conn.is_closed() or not conn.is_in_transaction():
        return
    try:
        await conn.execute("ROLLBACK")
    except Exception:  # the pool's reset on release rolls back
        log.debug("usage write: ROLLBACK not sent now; the pool resets the connection", exc_info=True)


class KeyStore(PoolStore):
    """Tables `api_keys`, `usage`, `usage_daily`, `usage_spend` (written) and `usage_demand`."""

    async def create(
        self,
        name: str,
        scopes: Sequence[str],
        *,
        quota: int | None = None,
        rate: float | None = None,
        burst: float | None = None,
    ) -> tuple[str, KeyRecord]:
        """A new key: (the key, shown once; its stored record)."""
        for _ in range(5):  # a 40-bit public id: a collision is rare, a retry cheap
            key = apikeys.new_key()
            try:
                row = await self.pool.fetchrow(
                    f"""INSERT INTO api_keys (key_id, key_sha256, name, scopes, quota, rate, burst)
                        VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_KEY_COLUMNS}""",
                    apikeys.key_id(key),
                    apikeys.digest(key),
                    name,
                    list(scopes),
                    quota,
                    rate,
                    burst,
                )
            except asyncpg.UniqueViolationError:
                continue
            return key, _record(row)
        raise RuntimeError("could not find a free key id in 5 tries")

    async def list_keys(self) -> list[KeyRecord]:
        rows = await self.pool.fetch(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at, key_id")
        return [_record(r) for r in rows]

    async def revoke(self, key_id: str) -> KeyRecord | None:
        """Revoke a key (once: a second revoke keeps the first time); None if there is no such key."""
        row = await self.pool.fetchrow(
            f"""UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = $1
                RETURNING {_KEY_COLUMNS}""",
            key_id,
        )
        return None if row is None else _record(row)

    async def lookup(self, key_sha256: bytes, day: int, account: bytes = b"") -> tuple[KeyRecord, int] | None:
        """The key with this digest and its units used on UTC `day` (days since 1970), or None. With
        its `account` (keccak256 of its id): its deposits as mirrored and its spend, for the credit."""
        row = await self.pool.fetchrow(
            f"""SELECT {_KEY_COLUMNS},
                       coalesce((SELECT units FROM usage_daily d WHERE d.key_id = k.key_id AND d.day = $2), 0)
                       AS used,
                       coalesce((SELECT sum(amount) FROM market_deposits m WHERE m.account = $3), 0)
                       AS deposited,
                       coalesce((SELECT sum(amount) FROM usage_spend s WHERE s.key_id = k.key_id), 0) AS spent
                FROM api_keys k WHERE key_sha256 = $1""",
            key_sha256,
            _date(day),
            account,
        )
        return None if row is None else (_record(row), int(row["used"]))

    async def record_usage(
        self, key_id: str, day: int, epoch: int, units: Mapping[tuple[int, int], int], *, price: int = 0
    ) -> int:
        """Add `units` ((cell, epoch of the readings) → units) of a query that ran in `epoch` to the key's
        usage and to its UTC `day`; returns the day's total (`record_usage_batch` for one key; `price`:
        the key is prepaid)."""
        use = (key_id, day, epoch, price > 0)
        return (await self.record_usage_batch({use: units}, price=price))[(key_id, day)]

    async def record_usage_batch(
        self, batch: Mapping[Use, Mapping[tuple[int, int], int]], *, price: int = 0
    ) -> dict[tuple[str, int], int]:
        """Add each use's units ((cell, epoch of the readings) → units) to `usage`, `usage_demand`,
        `usage_daily` and, for a prepaid key, to `usage_spend` at `price` base units a unit, in one
        transaction: BEGIN with the seal lock shared, one statement, COMMIT. Returns each (key id, day)'s
        new total. A use is (key id, UTC day, epoch by the clock when the query ran, prepaid); its units
        count in that epoch or, if it is sealed already, in the first one that is not (`_RECORD_USAGE`).
        Rows are locked in primary-key order, table after table, so concurrent writers (other requests,
        other API processes) never wait on each other's rows in opposite orders (no deadlock)."""
        cells: dict[tuple[str, int, int, int, bool], int] = {}
        days: dict[tuple[str, int], int] = {}
        for (key_id, day, epoch, prepaid), units in batch.items():
            for (cell, used), n in units.items():
                if n > 0:
                    at = (key_id, epoch, cell, used, prepaid and price > 0)
                    cells[at] = cells.get(at, 0) + n
                    days[(key_id, day)] = days.get((key_id, day), 0) + n
            days.setdefault((key_id, day), 0)
        if not days:
            return {}
        rows = sorted(cells.items())
        daily = sorted(days.items())
        args = (
            [k for (k, _, _, _, _), _ in rows],
            [q for (_, q, _, _, _), _ in rows],
            [c for (_, _, c, _, _), _ in rows],
            [e for (_, _, _, e, _), _ in rows],
            [n for _, n in rows],
            [n * price if paid else 0 for (_, _, _, _, paid), n in rows],
            [k for (k, _), _ in daily],
            [_date(d) for (_, d), _ in daily],
            [n for _, n in daily],
        )
        async with self.pool.acquire() as conn:
            await conn.execute(_BEGIN_SHARED)
            try:
                done = await conn.fetch(_RECORD_USAGE, *args)
                await conn.execute("COMMIT")
            except BaseException:
                await _rollback(conn)
                raise
        return {(r["key_id"], (r["day"] - _DAY0).days): int(r["units"]) for r in done}

    async def usage(self, key_id: str, from_epoch: int, to_epoch: int, limit: int) -> list[UsageRow]:
        """The key's units per (cell, epoch) with from_epoch <= epoch <= to_epoch, by epoch then cell;
        at most `limit` rows."""
        rows = await self.pool.fetch(
            """SELECT cell, epoch, units FROM usage WHERE key_id = $1 AND epoch BETWEEN $2 AND $3
               ORDER BY epoch, cell LIMIT $4""",
            key_id,
            from_epoch,
            to_epoch,
            limit,
        )
        return [UsageRow(r["cell"], r["epoch"], r["units"]) for r in rows]

    async def credit(self, key_id: str, account: bytes) -> tuple[int, int]:
        """(deposited, spent) of a key in token base units: its deposits as mirrored (`account`:
        keccak256 of its id) and the value of its usage as a prepaid key."""
        row = await self.pool.fetchrow(
            """SELECT coalesce((SELECT sum(amount) FROM market_deposits WHERE account = $1), 0) AS deposited,
                      coalesce((SELECT sum(amount) FROM usage_spend WHERE key_id = $2), 0) AS spent""",
            account,
            key_id,
        )
        return int(row["deposited"]), int(row["spent"])

    async def used_on(self, key_id: str, day: int) -> int:
        used = await self.pool.fetchval(
            "SELECT units FROM usage_daily WHERE key_id = $1 AND day = $2", key_id, _date(day)
        )
        return int(used or 0)
