-- Settlement (docs/DESIGN.md §6 "Lifecycle", README "When epochs close").
-- Stored states of an epoch, each a point a crash can stop at:
--   closed    sealed, scored and its manifest stored (one transaction: save_epoch_result)
--   signed    the publish tx is journaled (raw_tx), maybe broadcast: a restart rebroadcasts the bytes
--   published its receipt was seen in block_number / block_hash
--   settled   DEPIN_CHAIN_CONFIRMATIONS blocks past that block with the receipt still there (same
--             block hash); or, without a tx, an epoch that commits to nothing (zero root)
--   refused   the contract refused the publish for good (015)
--   vetoed    GUARDIAN_ROLE vetoed the root (a mirrored RootVetoed event); final, like refused
-- A published epoch whose tx a reorg dropped goes back to 'signed' and is rebroadcast.
ALTER TABLE epochs DROP CONSTRAINT epochs_status_check;
ALTER TABLE epochs
    ADD CONSTRAINT epochs_status_check
        CHECK (status IN ('closed', 'signed', 'published', 'settled', 'refused', 'vetoed')),
    ADD COLUMN block_hash bytea,
    ADD COLUMN settled_at timestamptz,
    ADD COLUMN vetoed_at  timestamptz;
UPDATE epochs SET status = 'signed' WHERE status = 'closed' AND raw_tx IS NOT NULL;
-- Published but not yet settled: the scheduler re-checks their receipts every turn.
CREATE INDEX epochs_unsettled ON epochs (epoch) WHERE status IN ('published', 'signed', 'closed');

-- The distributor's events, mirrored by the `epochs` part (ingest/distributor_mirror.py) up to
-- latest − DEPIN_CHAIN_CONFIRMATIONS, so an API-only process answers GET /v1/owners/{a}/rewards
-- without a chain. Idempotent on (tx_hash, log_index).
CREATE TABLE distributor_events (
    tx_hash      bytea         NOT NULL,
    log_index    int           NOT NULL,
    block_number bigint        NOT NULL,
    block_hash   bytea         NOT NULL,
    block_time   timestamptz   NOT NULL,
    event        text          NOT NULL
                               CHECK (event IN ('EpochPublished', 'RootAccepted', 'RootVetoed', 'Claimed')),
    epoch        bigint        NOT NULL,
    account      text,          -- Claimed: the account (lower case)
    amount       numeric(78,0), -- Claimed: paid by this claim
    cumulative   numeric(78,0), -- Claimed: the account's claimed total after it
    root         bytea,         -- EpochPublished, RootAccepted, RootVetoed
    total        numeric(78,0), -- EpochPublished, RootAccepted
    PRIMARY KEY (tx_hash, log_index)
);
CREATE INDEX distributor_events_claims ON distributor_events (account, block_number DESC)
    WHERE event = 'Claimed';
CREATE INDEX distributor_events_roots ON distributor_events (event, epoch DESC);

-- How far the mirror has read (one row): the last block folded, its hash (a reorg below it is seen
-- and replayed from the deployment block), and the distributor's challenge window in seconds.
CREATE TABLE distributor_mirror (
    one              boolean     PRIMARY KEY DEFAULT true CHECK (one),
    distributor      text        NOT NULL,
    block            bigint      NOT NULL,
    block_hash       bytea,
    challenge_window bigint      NOT NULL DEFAULT 0,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
