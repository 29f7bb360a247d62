-- 'refused': the contract refused the epoch's publish for good (EpochNotAfterLatest, an emission cap, a
-- missing role): the scheduler moves on instead of retrying it forever. Cumulative roots lose nothing:
-- the next epoch's root carries the refused epoch's amounts. `refused` keeps the decoded error.
ALTER TABLE epochs DROP CONSTRAINT epochs_status_check;
ALTER TABLE epochs
    ADD CONSTRAINT epochs_status_check CHECK (status IN ('closed', 'published', 'settled', 'refused')),
    ADD COLUMN refused text;
