"""The consumer: MQTT batch → pipeline → one database transaction → ack. Nothing is acked before commit.

A batch that cannot be committed is retried with backoff while its messages stay unacknowledged; if
the MQTT connection drops, the broker redelivers them on the persistent session and the store's
(device, seq) key absorbs whatever had already been committed.

Pipelining and backpressure: while one batch commits the next is judged (CPU work overlaps the database
round trip), but a third is not read until that commit is done and acked, so a slow database stops the
reading and acks stay in arrival order; what this process holds is bounded by the Receive Maximum (see
ingest/adapters/mqtt.py) and visible as `depin_mqtt_pending_messages`. Owner feedback
(`MqttConfig.ack_feedback`) is published after the ack, QoS 0, best effort: the API's rejections
endpoint is the durable record.

The store and the broker are reached through `ingest.seams.BatchWriter` and `BrokerSession`, so
tests/unit/test_consumer_acks.py checks the ack order with in-memory fakes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiomqtt
import asyncpg

from devices.protocol.model import DeviceRecord
from devices.protocol.topics import ack_topic, device_from_topic
from ingest import metrics
from ingest.adapters.mqtt import (
    MqttConfig,
    MqttSource,
    Received,
    describe_connect_error,
    describe_lost,
)
from ingest.core.feedback import DeviceFeedback, batch_feedback, packet_flags, stored_keys
from ingest.core.rejection_budget import RejectionBudget
from ingest.model import AcceptedPacket, BatchResult, RejectedMessage
from ingest.pipeline import (
    Incoming,
    Pending,
    PipelineConfig,
    PipelineState,
    Sorted,
    prejudge_batch,
    sort_batch,
)
from ingest.seams import BatchWriter, BrokerConnect, BrokerSession

log = logging.getLogger(__name__)

# Errors that mean "the database is unavailable right now", worth retrying the same batch for.
DB_TRANSIENT = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    # Also covers CannotConnectNowError (server starting up) and CrashShutdownError.
    asyncpg.exceptions.OperatorInterventionError,
    TimeoutError,
    # After the server went away mid-operation, asyncpg's pool can hand out a connection whose protocol
    # is still "in an operation" (MagicStack/asyncpg#784): the pool's connections are replaced, see below.
    asyncpg.exceptions.InternalClientError,
    # Out of connections ("sorry, too many clients already", SQLSTATE 53300): the pool could not open a
    # connection to replace one it lost; others free theirs, so retry like any outage.
    asyncpg.exceptions.TooManyConnectionsError,
)


# Messages judged between two yields to the event loop with shared state (~5 ms of 1-reading packets).
JUDGE_SLICE = 64


@dataclass(slots=True)
class _Inflight:
    """A judged batch whose commit runs while the next batch is judged; acked once that commit is done."""

    batch: list[Received]
    commit: asyncio.Task[BatchResult]


@dataclass
class ConsumerStats:
    batches: int = 0
    received: int = 0
    stored: int = 0
    readings: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    reconnects: int = 0


class Consumer:
    def __init__(
        self,
        mqtt: MqttConfig,
        store: BatchWriter,
        lookup: Callable[[bytes], DeviceRecord | None],
        *,
        pipeline: PipelineConfig | None = None,
        batch_max_size: int = 2000,
        batch_max_wait_s: float = 0.05,
        clock: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        prefetch: Callable[[set[bytes]], Awaitable[None]] | None = None,
        rejection_budget: RejectionBudget | None = None,
        connect: BrokerConnect | None = None,
        shared_state: bool = False,
    ) -> None:
        """`connect` opens one broker session per (re)connect; default: `MqttSource(mqtt)`.

        `shared_state`: judge the stateful rules in each batch's transaction against the devices'
        `device_state` rows (what `depin run` does: exact with N workers; the store must take
        `pending`), instead of against this process's `pipeline_state` (exact with one worker only)."""
        self.mqtt = mqtt
        self.store = store
        self.lookup = lookup
        self.pipeline = pipeline or PipelineConfig()
        self.pipeline_state = PipelineState()  # per-device rate buckets and tracks (shared_state=False)
        self.shared_state = shared_state
        self.batch_max_size = min(batch_max_size, mqtt.receive_maximum)
        self.batch_max_wait_s = batch_max_wait_s
        self.clock = clock
        # Called with the device ids named by a batch's topics before it is judged, so the registry
        # can resolve ids its mirror does not know (one bounded, cached chain read each) off the hot path.
        self.prefetch = prefetch
        # Which rejections get a row: signed ones always, unsigned ones per topic while the budget lasts.
        self.rejection_budget = RejectionBudget() if rejection_budget is None else rejection_budget
        self.connect: BrokerConnect = connect or (lambda: MqttSource(mqtt))
        self.stats = ConsumerStats()
        self.connected = asyncio.Event()
        # monotonic time since which the consumer has had no connection (None while connected): the
        # readiness rule allows a short reconnect (ingest/core/readiness.py).
        self.down_since: float | None = time.monotonic()
        self._source: BrokerSession | None = None
        self._in_batch = 0  # messages of the batch being judged/committed (not acked yet)
        self._feedback: dict[bytes, DeviceFeedback] = {}

    def pending(self) -> int:
        """Messages received from the broker whose outcome is not committed yet (batch + queue)."""
        return self._in_batch + (self._source.buffered() if self._source is not None else 0)

    async def run(self) -> None:
        """Consume until cancelled, reconnecting with backoff when the broker goes away."""
        metrics.MQTT_PENDING.set_function(self.pending)
        backoff = 0.2
        while True:
            inflight: _Inflight | None = None
            connected = False
            try:
                async with self.connect() as source:
                    connected = True
                    self._source = source
                    self.connected.set()
                    self.down_since = None
                    metrics.MQTT_CONNECTED.set(1)
                    backoff = 0.2
                    while True:
                        if inflight is not None and source.buffered() == 0:
                            # Nothing waiting: finish the previous batch now rather than hold its acks
                            # while waiting on an empty queue (and the broker's Receive Maximum).
                            await self._finish(inflight, source)
                            inflight = None
                        batch = await source.next_batch(self.batch_max_size, self.batch_max_wait_s)
                        self._in_batch += len(batch)
                        sorted_batch = await self.judge(batch)
                        if inflight is not None:
                            await self._finish(inflight, source)  # acks stay in arrival order
                        inflight = _Inflight(batch, asyncio.create_task(self.commit(batch, sorted_batch)))
            except aiomqtt.MqttError as exc:
                if inflight is not None:  # let its outcome become durable; the broker redelivers it
                    await asyncio.gather(inflight.commit, return_exceptions=True)
                    inflight = None
                self._disconnected()
                self.stats.reconnects += 1
                metrics.MQTT_RECONNECTS.inc()
                if connected:
                    log.warning("%s; reconnecting in %.1fs", describe_lost(self.mqtt, exc), backoff)
                else:
                    log.warning("%s; retrying in %.1fs", describe_connect_error(self.mqtt, exc), backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)  # short: a restarted broker is back in seconds
            finally:
                if inflight is not None:
                    inflight.commit.cancel()  # rolled back, never acked: redelivered after a restart
                    await asyncio.gather(inflight.commit, return_exceptions=True)
                self._disconnected()

    async def _finish(self, inflight: _Inflight, source: BrokerSession) -> None:
        await inflight.commit  # raises what the commit raised (a non-transient database error)
        source.ack(inflight.batch)  # after a connection loss this is a no-op: redelivered
        self._in_batch -= len(inflight.batch)
        await self._publish_feedback(source)

    def _disconnected(self) -> None:
        # Whatever the dropped connection held is gone from this process: the broker redelivers it.
        self.connected.clear()
        if self.down_since is None:
            self.down_since = time.monotonic()
        metrics.MQTT_CONNECTED.set(0)
        self._source = None
        self._in_batch = 0

    async def handle(self, batch: list[Received]) -> BatchResult:
        """Judge and commit one batch; returns only once the outcome is durable."""
        return await self.commit(batch, await self.judge(batch))

    async def judge(self, batch: list[Received]) -> Sorted | tuple[list[RejectedMessage], Pending]:
        """The pure part: every message's outcome, against and into this worker's pipeline state; with
        `shared_state`, only the stateless part (the rest is judged in the batch's transaction)."""
        incoming = [Incoming(m.topic, m.payload, m.received_ms) for m in batch]
        if self.prefetch is not None:
            ids = {d for m in batch if (d := device_from_topic(m.topic)) is not None}
            await self.prefetch(ids)
        if self.shared_state:
            # In slices, yielding between them: the previous batch's transaction holds its devices'
            # state rows locked while it runs, and each of its statements resumes only when this loop
            # is free, so a batch judged in one go (~100 ms) would keep other workers waiting that long.
            now, rejected, pending = self.clock(), [], Pending(self.pipeline)
            for i in range(0, len(incoming), JUDGE_SLICE):
                if i:
                    await asyncio.sleep(0)
                rej, part = prejudge_batch(incoming[i : i + JUDGE_SLICE], self.lookup, now, self.pipeline)
                rejected += rej
                pending.items += part.items
            return rejected, pending
        return sort_batch(incoming, self.lookup, self.clock(), self.pipeline, self.pipeline_state)

    async def commit(
        self, batch: list[Received], judged: Sorted | tuple[list[RejectedMessage], Pending]
    ) -> BatchResult:
        """Store a judged batch (retrying while the database is away) and count its outcomes."""
        if isinstance(judged, Sorted):
            sorted_batch, pending = judged, None
        else:
            sorted_batch, pending = Sorted(rejected=judged[0]), judged[1]
        # Only unsigned rejections are budgeted: what the stateful rules reject is signed, always recorded.
        recorded, unrecorded = self.rejection_budget.split(sorted_batch.rejected, self.clock())
        result = await self._commit_with_retry(sorted_batch.accepted, recorded, pending)
        if pending is not None:
            sorted_batch = Sorted(pending.result.accepted, sorted_batch.rejected + pending.result.rejected)
        self._count(batch, result, sorted_batch.accepted, sorted_batch.rejected)
        for r in unrecorded:  # counted in depin_rejected_total too, by _count
            metrics.REJECTIONS_UNRECORDED.labels(reason=r.reason).inc()
        if self.mqtt.ack_feedback:
            self._feedback = batch_feedback(
                [(p.device_id, p.seq) for p in sorted_batch.accepted],
                [(r.device_id, r.seq, r.reason.value) for r in sorted_batch.rejected],
                result.duplicates,
                result.replays,
                packet_flags(sorted_batch.accepted, result.reused_media),
                result.epoch_closed,
            )
        return result

    async def _publish_feedback(self, source: BrokerSession) -> None:
        feedback, self._feedback = self._feedback, {}
        for device_id, fb in feedback.items():
            await source.publish(ack_topic(device_id), fb.encode(), qos=0)
        metrics.FEEDBACK_PUBLISHED.inc(len(feedback))

    async def _commit_with_retry(
        self, accepted: list, rejected: list, pending: Pending | None
    ) -> BatchResult:
        delay = 0.1
        while True:
            started = time.perf_counter()
            try:
                if pending is None:
                    result = await self.store.write_batch(accepted, rejected)
                else:
                    result = await self.store.write_batch(accepted, rejected, pending)
            except DB_TRANSIENT as exc:
                metrics.DB_RETRIES.inc()
                if isinstance(exc, asyncpg.exceptions.InternalClientError):
                    await self.store.pool.expire_connections()  # reconnect rather than reuse one
                log.warning("database unavailable (%s); retrying batch in %.1fs, nothing acked", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
            if result.state_lock_s is not None:
                metrics.STATE_LOCK_SECONDS.observe(result.state_lock_s)
            return result

    def _count(
        self,
        batch: list[Received],
        result: BatchResult,
        accepted: list[AcceptedPacket],
        rejected: list[RejectedMessage],
    ) -> None:
        s = self.stats
        s.batches += 1
        s.received += len(batch)
        s.stored += result.stored
        s.readings += result.readings
        s.duplicates += len(result.duplicates)
        metrics.RECEIVED.inc(len(batch))
        metrics.BATCH_SIZE.observe(len(batch))
        metrics.ACCEPTED.inc(result.stored)
        metrics.READINGS.inc(result.readings)
        metrics.DUPLICATES.inc(len(result.duplicates))
        metrics.MEDIA_REUSED.inc(len(result.reused_media))
        self._observe_latency(accepted, result)
        for r in rejected:
            s.rejected[r.reason] = s.rejected.get(r.reason, 0) + 1
            metrics.REJECTED.labels(reason=r.reason).inc()
        # The store's own rejections (decided in the batch's transaction).
        for reason, keys in (("replay", result.replays), ("epoch_closed", result.epoch_closed)):
            if keys:
                s.rejected[reason] = s.rejected.get(reason, 0) + len(keys)
                metrics.REJECTED.labels(reason=reason).inc(len(keys))

    @staticmethod
    def _observe_latency(accepted: list[AcceptedPacket], result: BatchResult) -> None:
        """publish→commit per newly stored packet; publish time = its newest reading's timestamp."""
        committed_ms = time.time_ns() // 1_000_000
        if result.duplicates or result.replays or result.epoch_closed:
            first = {(p.device_id, p.seq): p for p in reversed(accepted)}
            keys = stored_keys(
                [(p.device_id, p.seq) for p in accepted],
                result.duplicates,
                result.replays,
                result.epoch_closed,
            )
            stored = [first[k] for k in keys]
        else:
            stored = accepted
        observe = metrics.PUBLISH_TO_COMMIT_SECONDS.observe
        for p in stored:
            if p.readings:
                observe(max(0, committed_ms - p.readings[-1].ts_ms) / 1000)
