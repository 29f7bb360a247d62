"""The consumer's ack rule, on in-memory fakes of its seams (ingest/seams.py: `BrokerSession`,
`BatchWriter`): a message is acked only after the commit of the batch holding it, batches in arrival
order, and never when that commit failed or the connection dropped before it was acked.

tests/integration/test_consumer*.py / test_workers.py / test_faults.py prove the same on Mosquitto and
PostgreSQL (redelivery, crashes, a locked table); these run in milliseconds and pin down the order of
steps. Payloads are not valid packets: the pipeline rejects them, and a rejected message is committed
(as a rejection) and acked like an accepted one, which is all the ack rule needs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import aiomqtt
import pytest

from devices.keys import new_identity
from devices.protocol.model import DeviceRecord, Reading, Reason
from devices.protocol.topics import up_topic
from devices.sdk import build_message
from ingest.adapters.mqtt import MqttConfig, Received
from ingest.consumer import Consumer
from ingest.core import state as device_state
from ingest.core.ratelimit import RateLimit
from ingest.model import AcceptedPacket, BatchResult, RejectedMessage
from ingest.pipeline import Pending, PipelineConfig

TOPIC = "depin/v1/" + "ab" * 32 + "/up"


def message(mid: int) -> Received:
    return Received(TOPIC, b"not cbor %d" % mid, mid, 1, 0)


class FakeSession:
    """One broker connection: hands out what was queued, records acks in order. With `lost_at=n` the
    n-th read fails as a lost connection does (aiomqtt raises from the read, whatever is queued)."""

    def __init__(self, messages: Sequence[Received] = (), lost_at: int | None = None) -> None:
        self.queue: list[Received] = list(messages)
        self.acked: list[int] = []
        self.published: list[str] = []
        self.arrived = asyncio.Event()
        self.reads = 0
        self.lost_at = lost_at
        self.lost = False

    def push(self, *messages: Received) -> None:
        self.queue.extend(messages)
        self.arrived.set()

    def buffered(self) -> int:
        return len(self.queue)

    async def next_batch(self, max_size: int, max_wait_s: float) -> list[Received]:
        self.reads += 1
        if self.reads == self.lost_at:
            self.lost = True
            raise aiomqtt.MqttError("connection lost")
        while not self.queue:
            self.arrived.clear()
            await self.arrived.wait()
        batch, self.queue = self.queue[:max_size], self.queue[max_size:]
        return batch

    def ack(self, batch: Sequence[Received]) -> None:
        assert not self.lost, "acked on a dropped connection"
        self.acked.extend(m.mid for m in batch)

    async def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        self.published.append(topic)


@dataclass
class FakePool:
    expired: int = 0

    async def expire_connections(self) -> None:
        self.expired += 1


@dataclass
class FakeWriter:
    """Commits wait for `release()` (one gate per commit, in call order); `fail` makes the next
    commits raise it instead."""

    pool: FakePool = field(default_factory=FakePool)
    calls: int = 0
    committed: list[int] = field(default_factory=list)  # how many messages each finished commit held
    gates: list[asyncio.Event] = field(default_factory=list)
    fail: list[BaseException] = field(default_factory=list)
    held: bool = True

    async def write_batch(
        self, accepted: Sequence[AcceptedPacket], rejected: Sequence[RejectedMessage]
    ) -> BatchResult:
        self.calls += 1
        if self.held:
            gate = asyncio.Event()
            self.gates.append(gate)
            await gate.wait()
        if self.fail:
            raise self.fail.pop(0)
        self.committed.append(len(accepted) + len(rejected))
        return BatchResult(stored=len(accepted), readings=0, rejections=len(rejected))

    def release(self, n: int) -> None:
        self.gates[n].set()


async def until(cond: Callable[[], bool], what: str = "condition") -> None:
    for _ in range(2000):
        if cond():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"timed out waiting for {what}")


def consumer(writer: FakeWriter, sessions: list[FakeSession], batch: int = 3) -> Consumer:
    pending = iter(sessions)

    @contextlib.asynccontextmanager
    async def connect() -> AsyncIterator[FakeSession]:
        yield next(pending)

    return Consumer(
        MqttConfig(),
        writer,
        lambda _: None,
        batch_max_size=batch,
        batch_max_wait_s=0.001,
        connect=connect,
    )


@contextlib.asynccontextmanager
async def running(c: Consumer) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(c.run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_batch_is_acked_only_after_its_commit() -> None:
    session, writer = FakeSession([message(i) for i in (1, 2, 3)]), FakeWriter()
    c = consumer(writer, [session])
    async with running(c):
        await until(lambda: writer.calls == 1, "the first commit")
        await asyncio.sleep(0.01)
        assert session.acked == [] and c.pending() == 3  # committing: nothing acked yet
        writer.release(0)
        await until(lambda: session.acked == [1, 2, 3], "the acks")
        assert c.pending() == 0 and c.stats.received == 3

        session.push(message(4), message(5))
        await until(lambda: writer.calls == 2, "the second commit")
        await asyncio.sleep(0.01)
        assert session.acked == [1, 2, 3]
        writer.release(1)
        await until(lambda: session.acked == [1, 2, 3, 4, 5], "the second acks")


async def test_acks_keep_arrival_order_while_the_next_batch_is_judged() -> None:
    """Pipelining: batch 2 is read and judged while batch 1 commits, but its commit starts only after
    batch 1's is done and acked, so acks never overtake one another."""
    session, writer = FakeSession([message(i) for i in range(1, 8)]), FakeWriter()
    c = consumer(writer, [session])
    async with running(c):
        await until(lambda: writer.calls == 1, "the first commit")
        await until(lambda: session.buffered() == 1, "the second batch read")  # 7 - 3 - 3
        assert writer.calls == 1 and session.acked == []
        writer.release(0)
        await until(lambda: writer.calls == 2, "the second commit")
        assert session.acked == [1, 2, 3]
        writer.release(1)
        await until(lambda: writer.calls == 3, "the third commit")
        assert session.acked == [1, 2, 3, 4, 5, 6]
        writer.release(2)
        await until(lambda: len(session.acked) == 7, "the last ack")
        assert session.acked == list(range(1, 8))
        assert writer.committed == [3, 3, 1]


async def test_a_failed_commit_acks_nothing_and_stops_the_consumer() -> None:
    """A commit error that is not an outage (a bug, a constraint) ends `run` with it: the batch stays
    unacked, so the broker redelivers it to the restarted worker; the batch before it stays acked."""
    session, writer = FakeSession([message(i) for i in range(1, 5)]), FakeWriter()
    writer.held = False
    c = consumer(writer, [session])

    async def second_fails(
        accepted: Sequence[AcceptedPacket], rejected: Sequence[RejectedMessage]
    ) -> BatchResult:
        if writer.calls == 1:
            writer.fail.append(ValueError("constraint violated"))
        return await FakeWriter.write_batch(writer, accepted, rejected)

    writer.write_batch = second_fails  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="constraint violated"):
        await asyncio.wait_for(c.run(), 5)
    assert session.acked == [1, 2, 3]  # batch 2 (message 4) failed: not acked
    assert writer.committed == [3]


async def test_an_outage_is_retried_and_acked_only_once_committed() -> None:
    session, writer = FakeSession([message(1), message(2)]), FakeWriter()
    writer.held = False
    writer.fail = [OSError("connection refused"), ConnectionResetError("reset")]
    c = consumer(writer, [session])
    async with running(c):
        await until(lambda: session.acked == [1, 2], "the acks after the retries")
    assert writer.calls == 3 and writer.committed == [2]


async def test_a_dropped_connection_lets_the_commit_finish_but_acks_nothing() -> None:
    """The connection drops while a batch commits (the next batch was being read): the commit is let
    finish, so its outcome is durable, nothing is acked on the dead connection, and the broker's
    redelivery on the next session is committed again (duplicates for the store) and acked there."""
    messages = [message(i) for i in (1, 2, 3, 4)]
    first, second = FakeSession(messages, lost_at=2), FakeSession(messages)
    writer = FakeWriter()
    c = consumer(writer, [first, second])
    async with running(c):
        await until(lambda: first.lost, "the lost connection")
        assert writer.calls == 1  # the commit is awaited before reconnecting
        writer.release(0)  # the commit completes after the loss
        await until(lambda: writer.calls == 2, "the redelivered batch's commit")  # after the backoff
        assert first.acked == [] and c.stats.reconnects == 1
        writer.release(1)
        await until(lambda: writer.calls == 3, "the last batch's commit")
        assert second.acked == [1, 2, 3]
        writer.release(2)
        await until(lambda: second.acked == [1, 2, 3, 4], "the acks on the new session")
    assert writer.committed == [3, 3, 1]


@dataclass
class StateRowsWriter:
    """A store that judges `pending` against state rows it keeps as bytes, as `IngestStore` does in
    the batch's transaction; its first commit fails after judging (a transaction rolled back)."""

    pool: FakePool = field(default_factory=FakePool)
    rows: dict[bytes, bytes] = field(default_factory=dict)
    failures: int = 1
    judged: int = 0

    async def write_batch(
        self,
        accepted: Sequence[AcceptedPacket],
        rejected: Sequence[RejectedMessage],
        pending: Pending | None = None,
    ) -> BatchResult:
        assert pending is not None and not accepted
        states = {d: device_state.decode(self.rows.get(d)) for d in pending.devices}
        out = pending.finish(states)
        self.judged += 1
        if self.failures:  # rolled back: the rows stay as they were
            self.failures -= 1
            raise OSError("connection reset")
        self.rows.update({d: device_state.encode(s) for d, s in states.items()})
        return BatchResult(stored=len(out.accepted), readings=len(out.accepted))


async def test_with_shared_state_a_retried_commit_judges_again_from_the_rows() -> None:
    """`shared_state`: the worker judges only the stateless part; the store runs the stateful rules in
    its transaction, again from the rows when the transaction is retried, and the consumer counts
    what the committed run decided (burst of 3: 3 stored, 2 rate limited, each counted once)."""
    ident = new_identity()
    rec = DeviceRecord(ident.device_id, ident.pubkey, "0x" + "ab" * 20, 2, 0, True)
    now = 1_795_000_000_000
    messages = [
        Received(
            up_topic(ident.device_id),
            build_message(ident, seq, "weather", [Reading(now - 1000, 52.5, 13.4, {"temperature_c": 9.0})]),
            seq,
            1,
            now,
        )
        for seq in range(1, 6)
    ]
    session, writer = FakeSession(messages), StateRowsWriter()
    pending_sessions = iter([session])

    @contextlib.asynccontextmanager
    async def connect() -> AsyncIterator[FakeSession]:
        yield next(pending_sessions)

    c = Consumer(
        MqttConfig(),
        writer,
        {rec.device_id: rec}.get,
        pipeline=PipelineConfig(rate_limit=RateLimit(per_second=1.0, burst=3)),
        batch_max_size=5,
        batch_max_wait_s=0.001,
        clock=lambda: now,
        connect=connect,
        shared_state=True,
    )
    async with running(c):
        await until(lambda: session.acked == [1, 2, 3, 4, 5], "the acks")
    assert writer.judged == 2  # the failed transaction's run, then the committed one
    assert c.stats.stored == 3 and c.stats.rejected == {Reason.RATE_LIMITED: 2}
    assert c.pipeline_state.devices == 0  # nothing judged against the process's own state
    assert device_state.decode(writer.rows[rec.device_id]).bucket.top_seq == 5
