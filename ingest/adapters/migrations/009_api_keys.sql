-- API keys and metered usage (README "API access"). A key is never stored: only its sha256, with a
-- public id (the key's first 12 characters) to list and revoke it by.
CREATE TABLE api_keys (
    key_id     text        PRIMARY KEY,
    key_sha256 bytea       NOT NULL UNIQUE,
    name       text        NOT NULL,
    scopes     text[]      NOT NULL,
    quota      bigint      CHECK (quota >= 0),           -- usage units per UTC day; NULL: no quota
    rate       double precision CHECK (rate > 0),       -- requests/s per API process; NULL: the default
    burst      double precision CHECK (burst >= 1),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

-- What each key's requests used, per H3 cell at resolution 7 and epoch (ingest/core/metering.py): the
-- table the rewards read to find the cells buyers want. Written by the API after a request's answer
-- is built and before it is sent (units added); a request whose usage cannot be written fails.
CREATE TABLE usage (
    key_id text   NOT NULL REFERENCES api_keys (key_id),
    cell   bigint NOT NULL,  -- H3 index (resolution 7, or coarser for a coarser reading's cell)
    epoch  bigint NOT NULL,  -- epoch of the readings used (0: before genesis)
    units  bigint NOT NULL CHECK (units >= 0),
    PRIMARY KEY (key_id, cell, epoch)
);
CREATE INDEX usage_epoch ON usage (epoch, cell);

-- The same units per key and UTC day, written in the same transaction: what a quota counts.
CREATE TABLE usage_daily (
    key_id text   NOT NULL REFERENCES api_keys (key_id),
    day    date   NOT NULL,
    units  bigint NOT NULL CHECK (units >= 0),
    PRIMARY KEY (key_id, day)
);
