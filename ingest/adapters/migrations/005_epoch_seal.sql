-- Late readings: the sealed-until watermark (one row). Closing epoch n first raises it to the end of
-- epoch n under an EXCLUSIVE transaction-level advisory lock; every batch takes the same lock SHARED in
-- its transaction and stores no new packet whose first reading is before the watermark (rejected
-- `epoch_closed`). So a batch commits either wholly before a seal (and is counted by the close that
-- follows) or after it (and is refused): never counted late, never lost silently. Monotone.
CREATE TABLE epoch_seal (
    one          boolean     PRIMARY KEY DEFAULT true CHECK (one),
    sealed_until timestamptz NOT NULL,
    sealed_epoch bigint      NOT NULL,
    sealed_at    timestamptz
);
INSERT INTO epoch_seal (sealed_until, sealed_epoch) VALUES ('-infinity', 0);
