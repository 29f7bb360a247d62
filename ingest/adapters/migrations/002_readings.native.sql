-- readings on native range partitioning: one partition per UTC day, created on demand by the store
-- through depin_ensure_readings_partitions(); anything outside the created days lands in the DEFAULT
-- partition (kept small: creating a partition scans it).
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
    -- The unique key is the set {device_id, seq, idx, ts} (time must be in it on a partitioned table);
    -- ordered (device_id, ts, seq, idx) so the same index also serves by-device time-range queries
    -- and their keyset pagination, instead of paying for a second index on every COPY.
    CONSTRAINT readings_key UNIQUE (device_id, ts, seq, idx)
) PARTITION BY RANGE (ts);

CREATE TABLE readings_default PARTITION OF readings DEFAULT;

CREATE INDEX readings_cell_ts ON readings (cell, ts);
CREATE INDEX readings_ts_brin ON readings USING brin (ts);

-- Create the daily partitions covering [lo, hi] (UTC days). Race-safe: workers serialise on an
-- advisory lock and re-check existence under it. If the DEFAULT partition already holds rows of a
-- day (they arrived before the day had a partition), they are moved into the new partition before it
-- is attached, since PostgreSQL refuses to create a partition whose rows sit in the default.
-- Returns the names of the partitions it created.
CREATE FUNCTION depin_ensure_readings_partitions(lo timestamptz, hi timestamptz)
RETURNS SETOF text
LANGUAGE plpgsql AS $fn$
DECLARE
    d        date := (lo AT TIME ZONE 'UTC')::date;
    last_day date := (hi AT TIME ZONE 'UTC')::date;
    part     text;
    from_ts  timestamptz;
    to_ts    timestamptz;
BEGIN
    IF last_day < d THEN
        RETURN;
    END IF;
    IF last_day - d > 366 THEN
        RAISE EXCEPTION 'refusing to create % daily partitions at once', last_day - d + 1;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('depin.readings.partitions'));
    WHILE d <= last_day LOOP
        part := 'readings_p' || to_char(d, 'YYYYMMDD');
        IF to_regclass(quote_ident(part)) IS NULL THEN
            from_ts := d::timestamp AT TIME ZONE 'UTC';
            to_ts := (d + 1)::timestamp AT TIME ZONE 'UTC';
            IF EXISTS (SELECT 1 FROM readings_default WHERE ts >= from_ts AND ts < to_ts) THEN
                EXECUTE format('CREATE TABLE %I (LIKE readings INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
                EXECUTE format(
                    'WITH moved AS (DELETE FROM readings_default WHERE ts >= $1 AND ts < $2 RETURNING *) '
                    'INSERT INTO %I SELECT * FROM moved', part) USING from_ts, to_ts;
                EXECUTE format('ALTER TABLE readings ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                               part, from_ts, to_ts);
            ELSE
                EXECUTE format('CREATE TABLE %I PARTITION OF readings FOR VALUES FROM (%L) TO (%L)',
                               part, from_ts, to_ts);
            END IF;
            RETURN NEXT part;
        END IF;
        d := d + 1;
    END LOOP;
END
$fn$;
