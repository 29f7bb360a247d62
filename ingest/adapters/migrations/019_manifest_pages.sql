-- The manifest in pages (docs/DESIGN.md §6, README "Rewards"): `epochs.manifest` keeps a small header
-- (params, inputs digest, root, totals, the inputs beyond coverage that do not grow with it); its lists
-- are the rows of the reward tables, written in the same transaction: `cell_factors` and `last_paid`
-- are `epoch_cells`, `devices` is `device_rewards` (which now also keeps each device's class and
-- registration, as the manifest states them), `owners` is `owner_rewards`. The whole document is
-- assembled from them on demand (GET /v1/epochs/{n}/manifest/export, `depin epoch verify`).
ALTER TABLE device_rewards
    ADD COLUMN hw_class         int,
    ADD COLUMN registered_block bigint;
ALTER TABLE epoch_cells
    ADD COLUMN last_paid bigint;  -- the last earlier epoch the cell paid in (freshness), if looked up
-- false: the whole manifest is in `manifest` (an epoch closed before this migration and not converted
-- below: a version-1 manifest, whose lists have other keys).
ALTER TABLE epochs
    ADD COLUMN manifest_paged boolean NOT NULL DEFAULT false;

-- Version-2 manifests stored whole are converted: their lists are the same rows as the reward tables
-- (written together), so only the two device columns and last_paid are copied out of the lists.
UPDATE device_rewards r
SET hw_class = (d ->> 'hw_class')::int, registered_block = (d ->> 'registered_block')::bigint
FROM epochs e, jsonb_array_elements(e.manifest -> 'devices') d
WHERE e.epoch = r.epoch AND e.manifest ->> 'version' = '2'
  AND r.device_id = decode(d ->> 'device_id', 'hex')
  AND r.cell = ('x' || lpad(substr(d ->> 'cell', 3), 16, '0'))::bit(64)::bigint;

UPDATE epoch_cells c
SET last_paid = (p ->> 1)::bigint
FROM epochs e, jsonb_array_elements(e.manifest -> 'last_paid') p
WHERE e.epoch = c.epoch AND e.manifest ->> 'version' = '2'
  AND c.cell = ('x' || lpad(substr(p ->> 0, 3), 16, '0'))::bit(64)::bigint;

UPDATE epochs
SET manifest = manifest - 'devices' - 'owners' - 'cell_factors' - 'last_paid', manifest_paged = true
WHERE manifest ->> 'version' = '2';

-- The lists' order in the document (the split's) is the keyset of their pages: devices by (cell,
-- device id), owners by address compared as bytes (Python's string order, whatever the collation).
-- The devices' primary key takes that order (it was (epoch, device_id, cell)): the closer COPYs them
-- in it, so the index is filled in order rather than at random places (lookups by device use
-- device_rewards_device).
ALTER TABLE device_rewards
    DROP CONSTRAINT device_rewards_pkey,
    ADD CONSTRAINT device_rewards_pkey PRIMARY KEY (epoch, cell, device_id);
CREATE INDEX owner_rewards_epoch_owner_c ON owner_rewards (epoch, owner COLLATE "C");

-- The two tables that grow with coverage lose their foreign key to `epochs`: their rows are written
-- only by the closer (EpochStore.save_epoch_result) in the transaction that inserts their epoch, and
-- no epoch is ever deleted, while the per-row check cost ~0.25 s per 50,000 rows of each at close.
ALTER TABLE device_rewards DROP CONSTRAINT device_rewards_epoch_fkey;
ALTER TABLE epoch_cells DROP CONSTRAINT epoch_cells_epoch_fkey;
