-- The registry mirror's hardware-class table (DeviceRegistry HwClassSet events), written in the same
-- transaction as the device rows and the checkpoint that covers them (chain_cursor 'registry').
CREATE TABLE hw_classes (
    id            int      PRIMARY KEY,
    name          text     NOT NULL,
    max_speed_kmh bigint   NOT NULL,
    h3_res        smallint NOT NULL,
    enabled       boolean  NOT NULL,
    updated_block bigint   NOT NULL DEFAULT 0
);
