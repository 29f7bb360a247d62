-- Epoch results and rewards. Amounts are token base units (uint256) in numeric(78,0).
CREATE TABLE epochs (
    epoch         bigint        PRIMARY KEY,
    start_at      timestamptz   NOT NULL,
    end_at        timestamptz   NOT NULL,
    status        text          NOT NULL DEFAULT 'closed'
                                CHECK (status IN ('closed', 'published', 'settled')),
    emission      numeric(78,0) NOT NULL,
    allocated     numeric(78,0) NOT NULL,
    unissued      numeric(78,0) NOT NULL,
    root          bytea         NOT NULL,
    inputs_digest bytea         NOT NULL,
    manifest      jsonb         NOT NULL,
    -- Publish journal: the signed tx is stored before broadcast so a restart rebroadcasts it
    -- instead of signing a new one with a new nonce.
    tx_hash       bytea,
    raw_tx        bytea,
    tx_nonce      bigint,
    block_number  bigint,
    closed_at     timestamptz   NOT NULL DEFAULT now(),
    published_at  timestamptz,
    CHECK (end_at > start_at)
);

CREATE TABLE device_rewards (
    epoch     bigint        NOT NULL REFERENCES epochs (epoch),
    device_id bytea         NOT NULL,
    owner     text          NOT NULL,
    cell      bigint        NOT NULL,
    readings  int           NOT NULL,
    amount    numeric(78,0) NOT NULL,
    PRIMARY KEY (epoch, device_id, cell)
);
CREATE INDEX device_rewards_device ON device_rewards (device_id, epoch);

CREATE TABLE owner_rewards (
    epoch      bigint        NOT NULL REFERENCES epochs (epoch),
    owner      text          NOT NULL,
    amount     numeric(78,0) NOT NULL,
    cumulative numeric(78,0) NOT NULL,
    proof      jsonb         NOT NULL,  -- list of 0x-hex sibling hashes (OpenZeppelin StandardMerkleTree)
    PRIMARY KEY (epoch, owner)
);
-- Latest cumulative per owner before an epoch: DISTINCT ON (owner) ... ORDER BY owner, epoch DESC.
CREATE INDEX owner_rewards_owner_epoch ON owner_rewards (owner, epoch DESC);
