"""Prometheus metrics (served at /metrics). Every metric of the service is defined here (docs/DESIGN.md §10).

Metrics are per process: with N consumer processes on one shared subscription, each serves its own
share (scrape every worker, or sum). Publish→commit latency uses the packet's newest reading timestamp
as the publish time: devices stamp readings when they take them and publish right after, so this is
the latency an owner sees (it includes any time the device held the packet, and device clock error;
negative values from fast device clocks count as 0). No extra field on the wire.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECEIVED = Counter("depin_received_total", "MQTT messages received by the consumer")
ACCEPTED = Counter("depin_accepted_total", "packets stored (first time)")
READINGS = Counter("depin_readings_total", "readings stored")
DUPLICATES = Counter("depin_duplicates_total", "byte-identical packets absorbed (already stored)")
REJECTED = Counter("depin_rejected_total", "messages rejected, by reason code", ["reason"])
# Unsigned rejections over the per-topic (or per-worker) row budget: counted in depin_rejected_total and
# here, not stored (ingest/core/rejection_budget.py).
REJECTIONS_UNRECORDED = Counter(
    "depin_rejections_unrecorded_total", "rejections counted but not stored (row budget spent)", ["reason"]
)
DEVICE_STATE_PRUNED = Counter(
    "depin_device_state_pruned_total",
    "device_state rows deleted: devices silent for DEPIN_DEVICE_STATE_IDLE_DAYS",
)
REJECTIONS_PRUNED = Counter(
    "depin_rejections_pruned_total",
    "rejection rows deleted: `expired` past the retention, `trimmed` unsigned ones over a device's cap",
    ["why"],
)
# Readings partition upkeep (ingest/retention.py): created ahead of need, compacted, dropped past retention.
READINGS_PARTITIONS = Counter(
    "depin_readings_partitions_total",
    "readings partitions `created` ahead of time, `compacted` (indexes rebuilt once the day is over) or"
    " `dropped` past DEPIN_READINGS_RETENTION_DAYS (TimescaleDB: chunks)",
    ["action"],
)
BATCH_SIZE = Histogram(
    "depin_batch_size", "messages per committed batch", buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000)
)
COMMIT_SECONDS = Histogram(
    "depin_commit_seconds",
    "time to commit one batch to PostgreSQL (one attempt that succeeded)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
STATE_LOCK_SECONDS = Histogram(
    "depin_device_state_lock_seconds",
    "per batch: locking its devices' device_state rows, i.e. waiting for other workers' batches that "
    "hold some of them (high with N workers on a broker without affinity, docs/DESIGN.md §2)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
PUBLISH_TO_COMMIT_SECONDS = Histogram(
    "depin_publish_to_commit_seconds",
    "newest reading's timestamp in a packet → its batch committed, per newly stored packet",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
# Set to a callback by the consumer: evaluated at scrape time, so it is right even while a commit hangs.
MQTT_PENDING = Gauge(
    "depin_mqtt_pending_messages",
    "messages received from the broker whose outcome is not committed yet (batch + client queue); "
    "bounded by the Receive Maximum when acks are manual",
)
MQTT_CONNECTED = Gauge("depin_mqtt_connected", "1 while the consumer is connected and subscribed")
FEEDBACK_PUBLISHED = Counter("depin_feedback_published_total", "owner feedback messages published (…/ack)")
MEDIA_REUSED = Counter(
    "depin_media_reused_total", "batches' media hashes found sent by more than one device (readings flagged)"
)
DB_RETRIES = Counter("depin_db_retries_total", "batch commits retried because the database was down")
MQTT_RECONNECTS = Counter("depin_mqtt_reconnects_total", "reconnects to the MQTT broker")
REGISTRY_BLOCK = Gauge("depin_registry_block", "last chain block folded into the registry mirror")
REGISTRY_LAG = Gauge("depin_registry_lag_blocks", "chain head minus the mirror's block")
REGISTRY_DEVICES = Gauge("depin_registry_devices", "devices in the registry mirror")
CHAIN_UP = Gauge("depin_chain_rpc_up", "1 when the last call to the chain RPC succeeded")
REGISTRY_SYNC_FAILURES = Counter(
    "depin_registry_sync_failures_total", "registry syncs that failed (RPC or DB down)"
)
REGISTRY_REORGS = Counter(
    "depin_registry_reorgs_total",
    "reorgs below the registry checkpoint, by how they were undone",
    ["recovery"],
)
REGISTRY_ONDEMAND_READS = Counter(
    "depin_registry_ondemand_reads_total",
    "contract reads for ids unknown to the mirror, by result (found, absent, error, timeout)",
    ["result"],
)
REGISTRY_ONDEMAND_SKIPPED = Counter(
    "depin_registry_ondemand_skipped_total",
    "unknown ids left unread this batch (over_budget, rpc_down); not negative-cached",
    ["why"],
)
REGISTRY_NEGATIVE_CACHE_IDS = Gauge("depin_registry_negative_cache_ids", "ids cached as not registered")
EPOCHS_PUBLISHED = Counter("depin_epochs_published_total", "epochs whose root was published on chain")
EPOCHS_CLOSED = Counter("depin_epochs_closed_total", "epochs sealed, scored and stored by this process")
EPOCH_ERRORS = Counter("depin_epoch_errors_total", "failed attempts to close or publish an epoch (retried)")
CHAIN_RPC_SECONDS = Gauge(
    "depin_chain_rpc_seconds", "duration of the last successful registry sync (chain RPC round trips)"
)
CHAIN_RPC_TIMEOUTS = Counter(
    "depin_chain_rpc_timeouts_total",
    "chain RPC calls of the follower and on-demand reads that timed out (DEPIN_CHAIN_RPC_TIMEOUT_S)",
)
EPOCH_FAILING = Gauge(
    "depin_epoch_publish_failing", "1 while the epoch scheduler's last attempt to close or publish failed"
)
EPOCH_LAST_ERROR = Gauge(
    "depin_epoch_last_error_timestamp_seconds",
    "unix time of the scheduler's last failed attempt (0: none since start); age = time() - this",
)
EPOCH_DUE_SECONDS = Gauge(
    "depin_epoch_due_seconds", "how long the epoch the scheduler must close or publish next has been due"
)
EPOCHS_REFUSED = Counter(
    "depin_epochs_refused_total",
    "epochs whose publish the contract refused for good (marked 'refused', not retried): alert on any",
)
EPOCH_NONCE_TAKEN = Counter(
    "depin_epoch_publish_nonce_taken_total",
    "journaled publish transactions whose nonce another transaction used (dropped and re-signed)",
)
EPOCHS_SETTLED = Counter(
    "depin_epochs_settled_total",
    "published epochs settled: DEPIN_CHAIN_CONFIRMATIONS blocks past their receipt, still canonical",
)
EPOCH_REORGED = Counter(
    "depin_epoch_publish_reorged_total",
    "publish transactions a reorg dropped or moved after their receipt (dropped ones are rebroadcast)",
    ["outcome"],
)
EPOCHS_VETOED = Counter(
    "depin_epochs_vetoed_total",
    "epochs whose root GUARDIAN_ROLE vetoed (a mirrored RootVetoed): alert on any",
)
DISTRIBUTOR_MIRROR_BLOCK = Gauge(
    "depin_distributor_mirror_block",
    "last block whose distributor events (payouts, deposits, bounties) are mirrored into the database",
)
DISTRIBUTOR_MIRROR_LAG = Gauge(
    "depin_distributor_mirror_lag_blocks", "chain head minus the distributor mirror's block"
)
DISTRIBUTOR_MIRROR_ERRORS = Counter(
    "depin_distributor_mirror_errors_total", "failed passes of the distributor mirror (RPC or DB down)"
)
API_DB_UNAVAILABLE = Counter(
    "depin_api_db_unavailable_total", "API requests answered 503 because the database was unavailable"
)
# Hourly rollups (ingest/rollups.py, run by the epochs part): hours recomputed, and how far behind.
ROLLUP_HOURS_REFRESHED = Counter(
    "depin_rollup_hours_refreshed_total",
    "dirty hours recomputed into readings_hourly (`clean`: left clean; `redirtied`: a batch wrote the hour"
    " meanwhile, it stays dirty)",
    ["result"],
)
ROLLUP_DIRTY_HOURS = Gauge(
    "depin_rollup_dirty_hours",
    "hours whose rollups wait for a refresh (queries read them raw), open hour included",
)
ROLLUP_LAG_SECONDS = Gauge(
    "depin_rollup_lag_seconds",
    "longest an ended hour has been dirty (since it ended or was dirtied, whichever is later); 0: none",
)
ROLLUP_ERRORS = Counter("depin_rollup_errors_total", "failed refreshes of an hour or passes (retried)")
