-- Per-device state of the stateful rules (rate limit, motion, jumps, flatline), shared by every
-- consumer worker (docs/DESIGN.md §2). Each batch locks the rows of its
-- devices in device order inside its transaction, judges against them and writes them back, so a
-- device's packets are judged one batch after another whichever worker received them. `state` is the
-- JSON of ingest/core/state.py `encode` (token bucket with its 512-seq decision window, newest fix,
-- value runs); empty for a row just created. Rewritten by every batch that names the device: a low
-- fillfactor keeps those updates HOT (no index entry per update; only the key is indexed).
CREATE TABLE device_state (
    device_id bytea PRIMARY KEY,
    state     bytea NOT NULL DEFAULT ''
) WITH (fillfactor = 50);
