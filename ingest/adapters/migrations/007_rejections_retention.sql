-- Rejection rows are kept for a retention period (DEPIN_REJECTIONS_RETENTION_DAYS), deleted in batches by
-- the consume part (ingest/retention.py): find the expired ones without scanning the table.
CREATE INDEX rejections_received ON rejections (received_at);
