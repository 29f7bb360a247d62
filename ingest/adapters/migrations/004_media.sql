-- First use of every media hash (RELIABILITY D.19: the same media from two devices flags both).
-- Written in each batch's transaction, so reuse is found across batches, workers and restarts.
-- (device_id, ts, seq, idx) is the first reading's key in `readings`, to flag it when a second device
-- sends the hash. Not pruned with the readings' retention: a hash a copier re-sends after a year is
-- still not theirs. About 100 bytes per hash.
CREATE TABLE media (
    media_sha256 bytea       PRIMARY KEY,
    device_id    bytea       NOT NULL,
    ts           timestamptz NOT NULL,
    seq          bigint      NOT NULL,
    idx          smallint    NOT NULL,
    reused       boolean     NOT NULL DEFAULT false
);
