"""An epoch's manifest as stored (migration 019): the header in `epochs.manifest` and its lists as rows
of `epoch_cells`, `device_rewards` and `owner_rewards`. Read in pages (keyset, the API), as one
streamed document (the export) and whole (`depin epoch verify`). The entries are spelled by
`ingest.core.manifest`, the same functions the closer's manifest uses.

Epochs closed before 019 with a version-1 manifest keep it whole in `epochs.manifest`
(`manifest_paged` false): the export streams it as stored; it has no pages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from ingest.adapters.store.rows import PoolStore
from ingest.core import manifest as mf

MANIFEST_CHUNK = 256 * 1024  # bytes per row of a whole (version 1) manifest's stream
EXPORT_BATCH = 2_000  # list entries per fetch and per write of the export

# Each list: the rows in the document's order (the key is the keyset for pages), and the entry.
_SQL = {
    "cell_factors": """SELECT cell, base, boost, freshness, demand, weight, share, depth, paid, last_paid
        FROM epoch_cells WHERE epoch = $1 AND cell > $2 ORDER BY cell LIMIT $3""",
    "last_paid": """SELECT cell, last_paid FROM epoch_cells
        WHERE epoch = $1 AND cell > $2 AND last_paid IS NOT NULL ORDER BY cell LIMIT $3""",
    "devices": """SELECT device_id, owner, hw_class, registered_block, cell, readings, flagged, quality,
               rank, amount
        FROM device_rewards WHERE epoch = $1 AND (cell, device_id) > ($2, $3)
        ORDER BY cell, device_id LIMIT $4""",
    "owners": """SELECT owner, amount, cumulative FROM owner_rewards
        WHERE epoch = $1 AND owner COLLATE "C" > $2 ORDER BY owner COLLATE "C" LIMIT $3""",
}
_FIRST = {"cell_factors": (-1,), "last_paid": (-1,), "devices": (-1, b""), "owners": ("",)}


def _entry(part: str, r: asyncpg.Record) -> Any:
    if part == "cell_factors":
        return mf.cell_entry(r[0], r[1], r[2], r[3], r[4], r[5], int(r[6]), r[7], int(r[8]))
    if part == "last_paid":
        return mf.last_paid_entry(r[0], r[1])
    if part == "devices":
        return mf.device_entry(bytes(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], int(r[9]))
    return mf.owner_entry(r[0], int(r[1]), int(r[2]))


def _key(part: str, r: asyncpg.Record) -> tuple[Any, ...]:
    if part == "devices":
        return (r["cell"], bytes(r["device_id"]))
    return (r["owner"],) if part == "owners" else (r["cell"],)


@dataclass(frozen=True, slots=True)
class ManifestPage:
    """Up to `limit` entries of one list after a key; `next` is the last entry's key (None: the end)."""

    entries: list[Any]
    next: tuple[Any, ...] | None
    # cell_factors pages: each cell's last paid epoch (freshness input) beside its entry, or None
    last_paid: list[int | None] | None = None


class ManifestStore(PoolStore):
    """Reads of the stored manifest (tables `epochs`, `epoch_cells`, `device_rewards`, `owner_rewards`)."""

    async def manifest_header(self, epoch: int) -> tuple[dict[str, Any], bool] | None:
        """(the header, paged). A version-1 manifest stored whole (not paged) comes without its lists."""
        row = await self.pool.fetchrow(
            """SELECT CASE WHEN manifest_paged THEN manifest
                           ELSE manifest - 'devices' - 'owners' - 'cell_factors' - 'last_paid' END AS m,
                      manifest_paged FROM epochs WHERE epoch = $1""",
            epoch,
        )
        return None if row is None else (row["m"], row["manifest_paged"])

    async def manifest_paged(self, epoch: int) -> bool | None:
        """Whether the epoch's manifest is stored in pages; None if the epoch is not stored."""
        value: bool | None = await self.pool.fetchval(
            "SELECT manifest_paged FROM epochs WHERE epoch = $1", epoch
        )
        return value

    async def manifest_page(
        self, epoch: int, part: str, after: tuple[Any, ...] | None, limit: int
    ) -> ManifestPage:
        """One page of a list (`mf.LISTS`) of a paged manifest, in the document's order."""
        rows = await self.pool.fetch(_SQL[part], epoch, *(after or _FIRST[part]), limit)
        return ManifestPage(
            [_entry(part, r) for r in rows],
            _key(part, rows[-1]) if len(rows) == limit else None,
            [r["last_paid"] for r in rows] if part == "cell_factors" else None,
        )

    async def _batches(self, conn: asyncpg.Connection, epoch: int, part: str) -> AsyncIterator[list[Any]]:
        after = _FIRST[part]
        while True:
            rows = await conn.fetch(_SQL[part], epoch, *after, EXPORT_BATCH)
            if rows:
                yield [_entry(part, r) for r in rows]
            if len(rows) < EXPORT_BATCH:
                return
            after = _key(part, rows[-1])

    async def copy_manifest(self, epoch: int, write: Callable[[bytes], Awaitable[None]]) -> None:
        """Hand the whole manifest (one JSON document, UTF-8) to `write` piece by piece, never whole in
        this process: the header's members, then each list `EXPORT_BATCH` entries at a time. Nothing is
        written when the epoch is not stored. One repeatable-read transaction: one snapshot."""
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            row = await conn.fetchrow(
                "SELECT manifest_paged, CASE WHEN manifest_paged THEN manifest END AS m FROM epochs "
                "WHERE epoch = $1",
                epoch,
            )
            if row is None:
                return
            if not row["manifest_paged"]:
                await _copy_whole(conn, epoch, write)
                return
            await write(mf.document_start(row["m"]))
            for i, part in enumerate(mf.LISTS):
                await write(mf.list_start(part, i == 0))
                first = True
                async for batch in self._batches(conn, epoch, part):
                    await write(mf.entries(batch, first))
                    first = False
                await write(mf.LIST_END)
            await write(mf.DOCUMENT_END)

    async def manifest(self, epoch: int) -> dict[str, Any] | None:
        """The whole manifest as one dict (for a recomputation to compare with), None if not stored."""
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            row = await conn.fetchrow("SELECT manifest, manifest_paged FROM epochs WHERE epoch = $1", epoch)
            if row is None:
                return None
            doc: dict[str, Any] = row["manifest"]
            if row["manifest_paged"]:
                for part in mf.LISTS:
                    doc[part] = [e async for batch in self._batches(conn, epoch, part) for e in batch]
            return doc


async def _copy_whole(
    conn: asyncpg.Connection, epoch: int, write: Callable[[bytes], Awaitable[None]]
) -> None:
    """A manifest stored whole, as stored (jsonb as text), in MANIFEST_CHUNK pieces. Rendered once (the
    CTE is materialized) and cut as bytea: substring on text walks UTF-8 from the start each time."""
    async for row in conn.cursor(
        """WITH m AS MATERIALIZED (
               SELECT convert_to(manifest::text, 'UTF8') AS b FROM epochs WHERE epoch = $1)
           SELECT substring(b FROM i FOR $2) AS chunk
           FROM m, generate_series(1, octet_length(b), $2) AS i ORDER BY i""",
        epoch,
        MANIFEST_CHUNK,
        prefetch=4,
    ):
        await write(row["chunk"])
