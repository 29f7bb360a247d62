-- readings as a TimescaleDB hypertable: 1-day chunks created automatically, compression after a
-- week (past the default max lateness of 2 days), retention of a year (epochs must stay recomputable
-- from stored readings for as long as claims may be disputed: tune with the deployment).
CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE readings (
    ts           timestamptz      NOT NULL,
    device_id    bytea            NOT NULL,
    seq          bigint           NOT NULL,
    idx          smallint         NOT NULL,
    lat          double precision NOT NULL,
    lon          double precision NOT NULL,
    acc          real,
    alt          real,
    cell         bigint           NOT NULL,
    kind         text             NOT NULL,
    vals         jsonb            NOT NULL DEFAULT '{}',
    media_sha256 bytea,
    media_uri    text,
    flags        int              NOT NULL DEFAULT 0,
    -- Same key as the native branch: the set {device_id, seq, idx, ts}, ordered to serve device queries.
    CONSTRAINT readings_key UNIQUE (device_id, ts, seq, idx)
);

SELECT create_hypertable('readings', 'ts',
                         chunk_time_interval => INTERVAL '1 day',
                         create_default_indexes => false);

CREATE INDEX readings_cell_ts ON readings (cell, ts);
CREATE INDEX readings_ts_brin ON readings USING brin (ts);

ALTER TABLE readings SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id',
    timescaledb.compress_orderby = 'ts, seq, idx'
);
SELECT add_compression_policy('readings', INTERVAL '7 days');
SELECT add_retention_policy('readings', INTERVAL '365 days');
