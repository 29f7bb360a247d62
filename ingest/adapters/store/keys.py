"""API keys and metered usage: tables `api_keys`, `usage`, `usage_daily` (migration 009). The API
looks keys up and records usage on its own pool; `depin api-key …` creates, lists and revokes keys.
Keys are stored as their sha256 only (ingest/core/apikeys.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from typing import Any, NamedTuple

import asyncpg

from ingest.adapters.store.rows import PoolStore, dt_to_ms
from ingest.core import apikeys
from ingest.core.apikeys import KeyRecord

_KEY_COLUMNS = "key_id, name, scopes, quota, rate, burst, created_at, revoked_at"
_DAY0 = date(1970, 1, 1)


# `u` inserts into usage in array order (sorted by the caller), `s` a prepaid key's spend (migration
# 017; `s` waits for `u`'s count, so its rows are locked after usage's); the daily upsert waits for
# both: an uncorrelated `(SELECT count(*) FROM …)` is an InitPlan, evaluated in full before its first row.
_RECORD_USAGE = """
WITH u AS (
    INSERT INTO usage (key_id, cell, epoch, units)
    SELECT k, c, e, n FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) AS t(k, c, e, n)
    ON CONFLICT (key_id, cell, epoch) DO UPDATE SET units = usage.units + EXCLUDED.units
    RETURNING 1),
s AS (
    INSERT INTO usage_spend (key_id, spent_epoch, cell, epoch, units, amount)
    SELECT k, se, c, e, n, a
    FROM unnest($8::text[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[], $13::numeric[])
         AS t(k, se, c, e, n, a)
    WHERE (SELECT count(*) FROM u) >= 0
    ON CONFLICT (key_id, spent_epoch, cell, epoch)
    DO UPDATE SET units = usage_spend.units + EXCLUDED.units, amount = usage_spend.amount + EXCLUDED.amount
    RETURNING 1)
INSERT INTO usage_daily (key_id, day, units)
SELECT k, d, n FROM unnest($5::text[], $6::date[], $7::bigint[]) AS t(k, d, n)
WHERE (SELECT count(*) FROM u) >= 0 AND (SELECT count(*) FROM s) >= 0
ON CONFLICT (key_id, day) DO UPDATE SET units = usage_daily.units + EXCLUDED.units
RETURNING key_id, day, units"""


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


class KeyStore(PoolStore):
    """Tables `api_keys`, `usage` and `usage_daily`."""

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

    async def record_usage(self, key_id: str, day: int, units: Mapping[tuple[int, int], int]) -> int:
        """Add `units` ((cell, epoch) → units) to the key's usage and to its UTC `day`; returns the
        day's total (`record_usage_batch` for one key)."""
        return (await self.record_usage_batch({(key_id, day): units}))[(key_id, day)]

    async def record_usage_batch(
        self,
        batch: Mapping[tuple[str, int], Mapping[tuple[int, int], int]],
        spend: Mapping[tuple[str, int], Mapping[tuple[int, int], int]] | None = None,
        *,
        price: int = 0,
    ) -> dict[tuple[str, int], int]:
        """Add each (key id, UTC day)'s units ((cell, epoch) → units) to `usage` and to `usage_daily`,
        all in one statement (so one transaction, one round trip); returns each (key id, day)'s new
        total. Rows are locked in (key, cell, epoch) order, every `usage` row before any `usage_daily`
        row, so concurrent writers (other requests, other API processes) never wait on each other's
        rows in opposite orders (no deadlock). `spend`: prepaid keys' units per (key id, epoch the
        queries ran in) and (cell, epoch), written to `usage_spend` at `price` base units a unit."""
        cells: dict[tuple[str, int, int], int] = {}
        for (key_id, _), units in batch.items():
            for (cell, epoch), n in units.items():
                if n > 0:
                    cells[(key_id, cell, epoch)] = cells.get((key_id, cell, epoch), 0) + n
        rows = sorted(cells.items())
        days = sorted((k, sum(n for n in units.values() if n > 0)) for k, units in batch.items())
        spent = sorted(
            ((key_id, se, cell, epoch), n)
            for (key_id, se), units in (spend or {}).items()
            for (cell, epoch), n in units.items()
            if n > 0
        )
        done = await self.pool.fetch(
            _RECORD_USAGE,
            [k for (k, _, _), _ in rows],
            [c for (_, c, _), _ in rows],
            [e for (_, _, e), _ in rows],
            [n for _, n in rows],
            [k for (k, _), _ in days],
            [_date(d) for (_, d), _ in days],
            [n for _, n in days],
            [k for (k, _, _, _), _ in spent],
            [se for (_, se, _, _), _ in spent],
            [c for (_, _, c, _), _ in spent],
            [e for (_, _, _, e), _ in spent],
            [n for _, n in spent],
            [n * price for _, n in spent],
        )
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
