-- Scoring inputs and outputs beyond coverage (docs/DESIGN.md §6, README "Rewards").
-- Operator boosts: EIP-191-signed rows (ingest/core/boosts.py), verified again whenever they are read.
CREATE TABLE boosts (
    id         bigserial   PRIMARY KEY,
    cell       bigint      NOT NULL,
    factor_bps integer     NOT NULL CHECK (factor_bps >= 0),
    from_epoch bigint      NOT NULL CHECK (from_epoch >= 1),
    to_epoch   bigint      NOT NULL,
    set_at_ms  bigint      NOT NULL,
    signer     text        NOT NULL,
    signature  bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (to_epoch >= from_epoch)
);
CREATE INDEX boosts_epochs ON boosts (from_epoch, to_epoch);

-- What explains a device's amount without reading the manifest: its slot's quality and rank (0: did
-- not earn) and its flagged readings; per covered cell the weight factors and share.
ALTER TABLE device_rewards
    ADD COLUMN flagged int NOT NULL DEFAULT 0,
    ADD COLUMN quality int NOT NULL DEFAULT 0,
    ADD COLUMN rank    int NOT NULL DEFAULT 0;

CREATE TABLE epoch_cells (
    epoch     bigint        NOT NULL REFERENCES epochs (epoch),
    cell      bigint        NOT NULL,
    base      int           NOT NULL,
    boost     int           NOT NULL,
    freshness int           NOT NULL,
    demand    int           NOT NULL,
    weight    bigint        NOT NULL,
    share     numeric(78,0) NOT NULL,
    depth     int           NOT NULL,
    paid      numeric(78,0) NOT NULL,
    PRIMARY KEY (epoch, cell)
);
