-- Provenance and owner views (issue 13, docs/DESIGN.md §13).
--
-- packets.envelope: the packet's original signed COSE_Sign1 message, the exact MQTT payload bytes the
-- device published (and the service verified), written in the batch's transaction with the packet
-- row. A buyer re-checks the signature of any reading against the device key in the on-chain
-- registry without trusting the service (`depin verify-export`, docs/PROVENANCE.md). NULL for packets
-- stored before this migration. Exports and reading queries include it as base64 of these bytes.
ALTER TABLE packets ADD COLUMN envelope bytea;

-- Per device and epoch: what the device delivered, for GET /v1/devices/{id} and
-- GET /v1/owners/{address}/devices without scanning readings. Added to in each batch's transaction
-- (like stats_counters, migration 008), a writer on its own shard (0..63) so two workers storing the
-- same device's packets do not wait on one row; a read sums the shards. `epoch` of a reading is its
-- timestamp's epoch (as the rewards count it); a packet counts in its first reading's epoch, a
-- rejection in the epoch of its receipt. Not backfilled: counts start with this migration.
CREATE TABLE device_epoch_counts (
    device_id bytea       NOT NULL,
    epoch     bigint      NOT NULL,
    shard     smallint    NOT NULL,
    packets   bigint      NOT NULL DEFAULT 0,  -- packets stored
    readings  bigint      NOT NULL DEFAULT 0,  -- readings stored
    flagged   bigint      NOT NULL DEFAULT 0,  -- of those, readings stored with any flag
    rejected  bigint      NOT NULL DEFAULT 0,  -- rejection rows recorded for its id (if registered)
    last_seen timestamptz,                     -- newest receipt of a stored packet
    PRIMARY KEY (device_id, epoch, shard)
) WITH (fillfactor = 50);  -- room on each page for HOT updates: a batch updates rows, never their key

-- An owner's fleet page by page (GET /v1/owners/{address}/devices): keyset on device_id.
CREATE INDEX devices_owner_device ON devices (owner, device_id);
