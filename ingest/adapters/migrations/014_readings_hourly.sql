-- Hourly rollups per res-7 block for /v1/aggregates over large areas and ranges (docs/DESIGN.md §8,
-- "Hourly rollups"). The same tables in both storage modes: TimescaleDB continuous aggregates were the
-- other choice there, but the native mode needs this anyway and one design is tested, not two.
--
-- readings_hourly: per (block = depin_cell7(cell), UTC hour, kind, value name) the count, min, max and
-- sum of the numeric `vals->name`. The row named '' counts every reading of (block, hour, kind),
-- numeric values or not: what metering charges for (lo, hi, total are NULL there; real value names are
-- [A-Za-z0-9_]{1,64}, never '').
CREATE TABLE readings_hourly (
    block bigint      NOT NULL,
    hour  timestamptz NOT NULL,
    kind  text        NOT NULL,
    name  text        NOT NULL,
    n     bigint      NOT NULL,
    lo    float8,
    hi    float8,
    total float8,
    PRIMARY KEY (block, hour, kind, name)
);

-- Hours whose rollup rows may not match the readings: every batch upserts the hours it wrote (bumping
-- `version`), the refresher recomputes an hour and deletes its row only if `version` is still the one
-- it read. Queries answer dirty hours from the readings. `since`: when the hour was first dirtied and
-- not refreshed since (the lag metric).
-- `shard`: the batch writer's own row (IngestStore's shard, as in stats_counters), so the batches of N
-- workers bumping the same hour never wait on one row lock until their commits; an hour is dirty while
-- any of its rows is.
CREATE TABLE readings_hourly_dirty (
    hour    timestamptz NOT NULL,
    shard   smallint    NOT NULL DEFAULT 0,
    version bigint      NOT NULL DEFAULT 1,
    since   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (hour, shard)
);

-- Every hour holding readings dirty (one scan of the readings): for readings written around the
-- batch writer (a bulk load, a restore), which the rollups would otherwise miss — like
-- depin_note_resolutions() of migration 013. The refresher then recomputes those hours.
CREATE FUNCTION depin_mark_hours_dirty() RETURNS void LANGUAGE sql AS $fn$
    INSERT INTO readings_hourly_dirty (hour)
    SELECT DISTINCT date_bin('1 hour', ts, '1970-01-01T00:00:00Z') FROM readings ORDER BY 1
    ON CONFLICT (hour, shard) DO UPDATE SET version = readings_hourly_dirty.version + 1
$fn$;

-- Readings stored before this migration have no rollup yet: their hours start dirty.
SELECT depin_mark_hours_dirty();
