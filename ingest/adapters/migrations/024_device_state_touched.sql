-- When each `device_state` row was last written (server time), so the retention task can delete the
-- rows of devices silent for DEPIN_DEVICE_STATE_IDLE_DAYS (README "Storage"): without it the table
-- keeps one row per device ever seen. A device that comes back after that long starts as a new one
-- (a full rate-limit bucket, no last fix, no value runs): its state would be near that anyway. Not
-- indexed, so a batch's rewrite stays a HOT update; the pruner scans the table instead, a few times a
-- day at most. Existing rows count from this migration.
ALTER TABLE device_state ADD COLUMN touched_at timestamptz NOT NULL DEFAULT now();
