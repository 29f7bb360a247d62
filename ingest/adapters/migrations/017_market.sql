-- Buyers' revenue and bounties (README "Rewards", docs/DESIGN.md §6). The chain's Deposited and
-- BountyCreated events are mirrored here by the `epochs` part (ingest/market.py), idempotent on
-- (tx_hash, log_index); `market_sync` is how far (block) the mirror has read, confirmations deducted.
CREATE TABLE market_deposits (
    tx_hash   bytea         NOT NULL,
    log_index int           NOT NULL,
    block     bigint        NOT NULL,
    account   bytea         NOT NULL,  -- keccak256 of the API key's public id
    payer     text          NOT NULL,
    amount    numeric(78,0) NOT NULL CHECK (amount > 0),
    PRIMARY KEY (tx_hash, log_index)
);
CREATE INDEX market_deposits_account ON market_deposits (account, block);

CREATE TABLE bounties (
    id          bigint        PRIMARY KEY,  -- the contract's bounty id
    tx_hash     bytea         NOT NULL,
    log_index   int           NOT NULL,
    block       bigint        NOT NULL,
    funder      text          NOT NULL,
    start_epoch bigint        NOT NULL,
    end_epoch   bigint        NOT NULL,
    cells       bigint[]      NOT NULL,
    amount      numeric(78,0) NOT NULL CHECK (amount > 0),
    UNIQUE (tx_hash, log_index)
);

CREATE TABLE market_sync (
    id    int    PRIMARY KEY CHECK (id = 1),
    block bigint NOT NULL
);

-- What a prepaid key spent, per epoch in which the query ran (`spent_epoch`) and per (res-7 cell,
-- epoch of the readings used): units, and their value in token base units at the price of the time
-- (DEPIN_PRICE_PER_UNIT). Written with `usage` in the same statement (ingest/adapters/store/keys.py).
CREATE TABLE usage_spend (
    key_id      text          NOT NULL REFERENCES api_keys (key_id),
    spent_epoch bigint        NOT NULL,
    cell        bigint        NOT NULL,
    epoch       bigint        NOT NULL,
    units       bigint        NOT NULL CHECK (units >= 0),
    amount      numeric(78,0) NOT NULL CHECK (amount >= 0),
    PRIMARY KEY (key_id, spent_epoch, cell, epoch)
);
CREATE INDEX usage_spend_epoch ON usage_spend (spent_epoch);

-- Who an epoch paid from revenue and bounties, per owner (devices' detail is in the manifest):
-- kind 'revenue' (ref: the key id), 'treasury' (ref: the key id), 'bounty' (ref: the bounty id),
-- 'refund' (ref: the bounty id; a row, even of 0, marks the bounty settled).
CREATE TABLE epoch_payouts (
    epoch  bigint        NOT NULL REFERENCES epochs (epoch),
    kind   text          NOT NULL CHECK (kind IN ('revenue', 'treasury', 'bounty', 'refund')),
    ref    text          NOT NULL,
    owner  text          NOT NULL,
    amount numeric(78,0) NOT NULL CHECK (amount >= 0),
    PRIMARY KEY (epoch, kind, ref, owner)
);
CREATE INDEX epoch_payouts_ref ON epoch_payouts (kind, ref, epoch);
