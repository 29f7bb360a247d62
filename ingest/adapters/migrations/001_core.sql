-- Core tables: packet ledger, rejections, registry mirror, chain cursors.
--
-- Encodings used across the schema:
--   * device ids, digests, hashes: bytea (raw bytes, never hex text).
--   * seq: bigint. The wire allows uint64, but the codec caps seq at 2^63-1 (ingest.core.codec.MAX_SEQ),
--     so every accepted seq fits a signed bigint: 8 bytes, fast btree, no numeric arithmetic.
--   * H3 cells: bigint holding the H3 index unchanged. H3 indexes keep their top bit reserved as 0,
--     so every valid index is < 2^63 and maps to a non-negative int64 with no conversion.
--   * token amounts: numeric(78,0), wide enough for any uint256 (2^256 < 10^78).

-- Source of truth for (device, seq) uniqueness. Not partitioned on purpose: a unique key on a
-- partitioned table (or hypertable) must include the time column, which would let the same
-- (device, seq) be stored twice under two different timestamps.
CREATE TABLE packets (
    device_id      bytea       NOT NULL,
    seq            bigint      NOT NULL CHECK (seq >= 0),
    payload_digest bytea       NOT NULL,
    kind           text        NOT NULL,
    n_readings     int         NOT NULL,
    received_at    timestamptz NOT NULL,
    first_ts       timestamptz,
    PRIMARY KEY (device_id, seq)
);

-- One row per rejected message; the message digest makes a redelivered rejection a no-op.
CREATE TABLE rejections (
    id             bigserial   PRIMARY KEY,
    message_digest bytea       NOT NULL UNIQUE,
    device_id      bytea,
    seq            bigint,
    reason         text        NOT NULL,
    detail         text        NOT NULL DEFAULT '',
    topic          text        NOT NULL DEFAULT '',
    received_at    timestamptz NOT NULL
);
CREATE INDEX rejections_device_received ON rejections (device_id, received_at DESC);

-- Mirror of the on-chain DeviceRegistry, rebuilt from events.
CREATE TABLE devices (
    device_id        bytea   PRIMARY KEY,
    pubkey           bytea   NOT NULL,
    owner            text    NOT NULL,
    hw_class         int     NOT NULL,
    asserted_cell    bigint  NOT NULL DEFAULT 0,
    active           boolean NOT NULL,
    registered_block bigint  NOT NULL DEFAULT 0,
    updated_block    bigint  NOT NULL DEFAULT 0
);
CREATE INDEX devices_owner ON devices (owner);

-- Follower checkpoints: the last processed block and its hash (a reorg shows up as a hash mismatch).
CREATE TABLE chain_cursor (
    name         text        PRIMARY KEY,
    block_number bigint      NOT NULL,
    block_hash   bytea       NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
