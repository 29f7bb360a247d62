-- One mirror of the RewardDistributor's logs (ingest/distributor_mirror.py): payout events, deposits
-- and bounties are read by one loop with one cursor (`distributor_mirror`), each range's rows and the
-- cursor in one transaction, replayed after a reorg below the cursor. The deposits-and-bounties
-- watermark of 017 goes: the epoch closer reads deposits and bounties up to the cursor instead.
--
-- The two cursors were apart (each mirror read at its own pace): forget the cursor, so the next pass
-- replays from the deployment block. Rows are kept; the replay rewrites each range's rows
-- (idempotent on (tx_hash, log_index), a bounty on its id) and adds what one mirror had not read yet.
DELETE FROM distributor_mirror;
DROP TABLE market_sync;

-- A replayed range replaces the rows of its blocks.
CREATE INDEX market_deposits_block ON market_deposits (block);
CREATE INDEX bounties_block ON bounties (block);
CREATE INDEX distributor_events_block ON distributor_events (block_number);
