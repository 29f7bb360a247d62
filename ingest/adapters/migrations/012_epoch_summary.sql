-- GET /v1/epochs/{n} (ReadStore.epoch_summary) reads small columns only: what the summary serves beyond
-- the epoch's own columns (the manifest's `params` and `cells`, the lengths of its `devices` and
-- `owners` lists) is stored beside it. Selecting anything out of `manifest` detoasts the whole jsonb
-- (tens of MB at scale) even to cut its lists off. The epoch closer fills these in the transaction
-- that stores the manifest (EpochStore.save_epoch_result); existing rows are filled here from the
-- manifest and the reward tables (the same rows as the lists, written in the same transaction).
ALTER TABLE epochs
    ADD COLUMN params  jsonb,
    ADD COLUMN cells   integer,
    ADD COLUMN devices integer,
    ADD COLUMN owners  integer;

UPDATE epochs e SET
    params  = coalesce(e.manifest -> 'params', '{}'::jsonb),
    cells   = coalesce((e.manifest ->> 'cells')::integer, 0),
    devices = (SELECT count(*) FROM device_rewards d WHERE d.epoch = e.epoch),
    owners  = (SELECT count(*) FROM owner_rewards o WHERE o.epoch = e.epoch);

ALTER TABLE epochs
    ALTER COLUMN params  SET NOT NULL,
    ALTER COLUMN cells   SET NOT NULL,
    ALTER COLUMN devices SET NOT NULL,
    ALTER COLUMN owners  SET NOT NULL;
