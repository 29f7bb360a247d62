-- Readings indexes sized for the buyer queries (docs/DESIGN.md §8, §12), replacing the two of 002:
--
-- * readings_block_ts (depin_cell7(cell), ts, cell): a place is a set of res-7 "blocks" (a reading's
--   res-7 parent cell, or its own cell when stored coarser than res 7). One block's readings come out
--   of this index already in time order, so a page of a place reads about its own rows per block,
--   where readings_cell_ts (cell, ts) had to sort every row of the 7 or 49 stored cells under a res-7
--   cell first (p95 2.6 s at 10 M readings). `cell` last: a place that holds only some cells of a block
--   (an area's edge, a cell finer than 7) tests `cell = ANY(…)` on the index entries, and the table
--   is read only for the rows that pass.
-- * readings_device_ts (hashbyteaextended(device_id, 0), ts): a device's readings in time order. The
--   8-byte hash instead of the 32-byte id halves the index; queries also test `device_id = …`, so a
--   hash collision only costs a skipped row.
--
-- readings_key UNIQUE (device_id, ts, seq, idx) goes: it was the largest index (74 % of the table at
-- 10 M readings) and guarded nothing the ingest relies on. A reading is written only by the batch that
-- inserted its packet into `packets` (primary key (device_id, seq), not partitioned) in the same
-- transaction, so `packets` keeps every reading stored once (docs/RELIABILITY.md H48).
CREATE FUNCTION depin_cell7(cell bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    -- h3cells.parent(cell, 7) for cells finer than res 7 (resolution in bits 52-55); others unchanged.
    SELECT CASE WHEN ((cell >> 52) & 15) > 7 THEN (cell & 9155818042427441152) | 31525197408370687
                ELSE cell END
$fn$;

-- The H3 resolutions readings are stored at: what a place's scans are built for (one row per
-- resolution ever stored). The batch writer adds a resolution the first time it stores one; after a
-- bulk load by hand, `SELECT depin_note_resolutions()` adds those of the loaded rows.
CREATE TABLE readings_resolutions (res smallint PRIMARY KEY CHECK (res BETWEEN 0 AND 15));

CREATE FUNCTION depin_note_resolutions() RETURNS SETOF smallint
LANGUAGE sql AS $fn$
    INSERT INTO readings_resolutions
    SELECT DISTINCT ((cell >> 52) & 15)::smallint FROM readings
    ON CONFLICT DO NOTHING
    RETURNING res
$fn$;

-- The resolutions already stored, one probe of readings_cell_ts each (it is dropped below).
INSERT INTO readings_resolutions
SELECT r FROM generate_series(0, 15) r
WHERE EXISTS (SELECT 1 FROM readings
              WHERE cell >= ((1::bigint << 59) | (r::bigint << 52))
                AND cell < ((1::bigint << 59) | ((r + 1)::bigint << 52)));

-- Daily partitions whose indexes the upkeep has rebuilt packed once the day was over
-- (ingest/retention.py compact_partitions): index entries inserted in time order across many blocks
-- and devices leave pages half full; a rebuild fills them (fillfactor 90), about a third smaller.
CREATE TABLE readings_compactions (
    partition    text        PRIMARY KEY,
    compacted_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX readings_block_ts ON readings (depin_cell7(cell), ts, cell);
CREATE INDEX readings_device_ts ON readings (hashbyteaextended(device_id, 0), ts);
ALTER TABLE readings DROP CONSTRAINT readings_key;
DROP INDEX readings_cell_ts;
