"""Prometheus metrics (served at /metrics). Names follow RELIABILITY.md: depin_rejected_total{reason}."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECEIVED = Counter("depin_received_total", "MQTT messages received by the consumer")
ACCEPTED = Counter("depin_accepted_total", "packets stored (first time)")
READINGS = Counter("depin_readings_total", "readings stored")
DUPLICATES = Counter("depin_duplicates_total", "byte-identical packets absorbed (already stored)")
REJECTED = Counter("depin_rejected_total", "messages rejected, by reason code", ["reason"])
BATCH_SIZE = Histogram(
    "depin_batch_size", "messages per committed batch", buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000)
)
COMMIT_SECONDS = Histogram("depin_commit_seconds", "time to commit one batch to PostgreSQL")
DB_RETRIES = Counter("depin_db_retries_total", "batch commits retried because the database was down")
MQTT_RECONNECTS = Counter("depin_mqtt_reconnects_total", "reconnects to the MQTT broker")
REGISTRY_BLOCK = Gauge("depin_registry_block", "last chain block folded into the registry mirror")
REGISTRY_LAG = Gauge("depin_registry_lag_blocks", "chain head minus the mirror's block")
REGISTRY_DEVICES = Gauge("depin_registry_devices", "devices in the registry mirror")
CHAIN_UP = Gauge("depin_chain_rpc_up", "1 when the last call to the chain RPC succeeded")
EPOCHS_PUBLISHED = Counter("depin_epochs_published_total", "epochs whose root was published on chain")
