-- Buyers' usage counts in the epoch in which it is WRITTEN, and an epoch's usage is final once it is
-- sealed (README "API access", docs/DESIGN.md §6; the rule of late readings, migration 005). Each usage
-- write takes the seal lock SHARED and stamps its rows with greatest(the epoch by the API's clock when
-- the query ran, sealed_epoch + 1), read from `epoch_seal` in a statement after the lock: the seal,
-- taken EXCLUSIVE, waits for the writes in flight and the writes after it see its watermark. So no
-- unit lands in an epoch that is already sealed, and `depin epoch verify` of a closed epoch reads the
-- same usage forever. (`usage` stays per epoch of the READINGS used, for GET /v1/usage: a query of an
-- old epoch's data adds to its rows, and nothing scores them.)

-- Every key's units per epoch they count in and resolution-7 cell: what demand reads (the last
-- DEPIN_DEMAND_EPOCHS epochs). Per key, so keys' writes never wait on each other's rows.
CREATE TABLE usage_demand (
    key_id text   NOT NULL REFERENCES api_keys (key_id),
    epoch  bigint NOT NULL,  -- the epoch the units count in (written; never one sealed before the write)
    cell   bigint NOT NULL,  -- H3 index (resolution 7, or coarser for a coarser reading's cell)
    units  bigint NOT NULL CHECK (units >= 0),
    PRIMARY KEY (key_id, epoch, cell)
);
CREATE INDEX usage_demand_epoch ON usage_demand (epoch, cell);

-- Usage written before this migration: the epoch of its readings stands in for the epoch it was
-- written in (nothing else was kept). That is the sum the old rule read, so the demand of an epoch
-- closed before the migration is recomputed as it was, and it stays so: every later write is stamped
-- after the watermark, outside the window of any sealed epoch. (Units added to a closed epoch's rows
-- before this migration, the flaw it ends, stay where they are: they cannot be told apart.)
INSERT INTO usage_demand (key_id, epoch, cell, units)
SELECT key_id, epoch, cell, units FROM usage WHERE units > 0;

-- `usage_spend.spent_epoch` (migration 017) is stamped by the same rule from now on: the epoch whose
-- close charges the spend, never one already sealed. Its rows are kept as they are: they already name
-- the epoch the query ran in.
