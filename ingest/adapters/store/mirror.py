"""The registry follower's part of the store: the mirror of the chain's devices and hardware classes,
and the (block, hash) checkpoint the follower resumes from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from devices.protocol.model import DeviceRecord
from devices.protocol.registry_fold import HwClassInfo
from ingest.adapters.store.rows import PoolStore, cell_to_db


async def _upsert_devices(conn: Any, records: Sequence[DeviceRecord], block: int) -> None:
    latest = {r.device_id: r for r in records}
    if not latest:
        return
    rows = list(latest.values())
    ids = [r.device_id for r in rows]
    await conn.execute(
        """INSERT INTO devices (device_id, pubkey, owner, hw_class, asserted_cell, active,
                                registered_block, updated_block)
           SELECT d, k, o, h, c, a, rb, $8
           FROM unnest($1::bytea[], $2::bytea[], $3::text[], $4::int[], $5::bigint[], $6::bool[],
                       $7::bigint[]) AS u(d, k, o, h, c, a, rb)
           ON CONFLICT (device_id) DO UPDATE SET
               pubkey = excluded.pubkey, owner = excluded.owner, hw_class = excluded.hw_class,
               asserted_cell = excluded.asserted_cell, active = excluded.active,
               registered_block = CASE WHEN excluded.registered_block > 0
                                       THEN excluded.registered_block
                                       ELSE devices.registered_block END,
               updated_block = excluded.updated_block""",
        ids,
        [r.pubkey for r in rows],
        [r.owner for r in rows],
        [r.hw_class for r in rows],
        [cell_to_db(r.asserted_cell) for r in rows],
        [r.active for r in rows],
        [r.registered_block for r in rows],
        block,
    )
    # A record without its registration block (0): the first block we saw it in stands in.
    await conn.execute(
        "UPDATE devices SET registered_block = $2 WHERE device_id = ANY($1) AND registered_block = 0",
        ids,
        block,
    )


async def _set_cursor(conn: Any, name: str, block: int, block_hash: bytes) -> None:
    await conn.execute(
        """INSERT INTO chain_cursor (name, block_number, block_hash, updated_at)
           VALUES ($1, $2, $3, now())
           ON CONFLICT (name) DO UPDATE SET block_number = excluded.block_number,
               block_hash = excluded.block_hash, updated_at = excluded.updated_at""",
        name,
        block,
        block_hash,
    )


class MirrorStore(PoolStore):
    """Tables `devices`, `hw_classes` and `chain_cursor`."""

    async def upsert_devices(self, records: Sequence[DeviceRecord], block: int) -> None:
        """Insert or update mirror rows as of `block` (the last record of a device id wins)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await _upsert_devices(conn, records, block)

    async def save_mirror(
        self,
        cursor: str,
        block: int,
        block_hash: bytes,
        upserts: Sequence[DeviceRecord] = (),
        deletes: Sequence[bytes] = (),
        classes: Sequence[HwClassInfo] = (),
        class_deletes: Sequence[int] = (),
    ) -> None:
        """Mirror rows (devices and hardware classes) and the checkpoint that covers them in ONE
        transaction: after a crash or a failed write the rows are never ahead of (or behind) the
        (block, hash) a restart resumes from."""
        async with self.pool.acquire() as conn, conn.transaction():
            if deletes:
                await conn.execute("DELETE FROM devices WHERE device_id = ANY($1)", list(deletes))
            await _upsert_devices(conn, upserts, block)
            if class_deletes:
                await conn.execute("DELETE FROM hw_classes WHERE id = ANY($1)", list(class_deletes))
            if classes:
                await conn.executemany(
                    """INSERT INTO hw_classes (id, name, max_speed_kmh, h3_res, enabled, updated_block)
                       VALUES ($1, $2, $3, $4, $5, $6)
                       ON CONFLICT (id) DO UPDATE SET name = excluded.name,
                           max_speed_kmh = excluded.max_speed_kmh, h3_res = excluded.h3_res,
                           enabled = excluded.enabled, updated_block = excluded.updated_block""",
                    [(c.id, c.name, c.max_speed_kmh, c.h3_res, c.enabled, block) for c in classes],
                )
            await _set_cursor(conn, cursor, block, block_hash)

    async def load_hw_classes(self) -> list[HwClassInfo]:
        rows = await self.pool.fetch(
            "SELECT id, name, max_speed_kmh, h3_res, enabled FROM hw_classes ORDER BY id"
        )
        return [HwClassInfo(r["id"], r["name"], r["max_speed_kmh"], r["h3_res"], r["enabled"]) for r in rows]

    async def load_devices(self) -> list[DeviceRecord]:
        rows = await self.pool.fetch(
            "SELECT device_id, pubkey, owner, hw_class, asserted_cell, active, registered_block "
            "FROM devices ORDER BY device_id"
        )
        return [
            DeviceRecord(
                device_id=bytes(r["device_id"]),
                pubkey=bytes(r["pubkey"]),
                owner=r["owner"],
                hw_class=r["hw_class"],
                asserted_cell=r["asserted_cell"],
                active=r["active"],
                registered_block=r["registered_block"],
            )
            for r in rows
        ]

    async def get_cursor(self, name: str) -> tuple[int, bytes] | None:
        row = await self.pool.fetchrow(
            "SELECT block_number, block_hash FROM chain_cursor WHERE name = $1", name
        )
        return None if row is None else (row["block_number"], bytes(row["block_hash"]))

    async def set_cursor(self, name: str, block: int, block_hash: bytes) -> None:
        await _set_cursor(self.pool, name, block, block_hash)
