-- Totals for GET /v1/stats without scanning packets/readings/rejections (issue 11): every batch adds
-- what it stored to these counters in its own transaction (one UPSERT, its last statement), so the
-- counters move exactly with the rows they count. A writer adds to its own shard (0..63, picked at
-- random per process) so two workers rarely wait on one row; a read sums the shards.
-- Names: 'packets', 'readings', 'rejections:<reason>'. Cumulative: rows removed later (retention)
-- stay counted.
CREATE TABLE stats_counters (
    name  text     NOT NULL,
    shard smallint NOT NULL,
    n     bigint   NOT NULL,
    PRIMARY KEY (name, shard)
);
-- Backfill from what is stored now (exact at migration time).
INSERT INTO stats_counters (name, shard, n)
SELECT 'packets', 0, count(*) FROM packets
UNION ALL SELECT 'readings', 0, count(*) FROM readings
UNION ALL SELECT 'rejections:' || reason, 0, count(*) FROM rejections GROUP BY reason;

-- The key that signs API page cursors, shared by every API process on this database (a cursor handed
-- out by one is accepted by the others and after a restart). Written once at start if absent;
-- DEPIN_API_CURSOR_SECRET overrides it.
CREATE TABLE api_secret (
    one    boolean PRIMARY KEY DEFAULT true CHECK (one),
    secret bytea   NOT NULL
);
