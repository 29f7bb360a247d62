"""The service's registry mirror against anvil and PostgreSQL (docs/DESIGN.md §4).

Replay in ranges with progress and a persisted (block, hash) checkpoint a restart resumes from; reorgs
(anvil_reorg) taken back through undo records and, after a restart, by a full rebuild; revoke and rotate
taking effect in a running node; the negative-cache / read-budget bound on on-demand reads, counted on
the wire; and the RPC-down behaviour (mirror keeps serving, /readyz 503 naming the chain, metric 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest
from web3 import AsyncHTTPProvider, AsyncWeb3

from devices.chain.deployment import Deployment
from devices.chain.registry import DeviceInput, RegistryClient
from devices.chain.signer import Signer
from devices.keys import new_identity
from devices.protocol.model import DeviceRecord
from ingest import metrics
from ingest.adapters.mqtt import MqttConfig
from ingest.registry import CURSOR, PROVIDER_OPTIONS, RegistryFollower, RegistryMirror, chain_provider
from ingest.service import Node, build_node, serve_api
from ingest.settings import Environment, load_settings
from simulator import cheaters
from simulator.fleet import SimDevice, make_fleet, next_message
from simulator.publish import connected_publisher, publish_raw, unique_client_id
from tests.fixtures_pg import Store
from tests.procs import HangingProxy

pytestmark = pytest.mark.integration

GET_DEVICE_SELECTOR_LEN = 4  # eth_call data = selector + abi(bytes32 id)


class CountingProvider(AsyncHTTPProvider):
    """The real HTTP provider, counting every JSON-RPC request it sends (and which ids getDevice read)."""

    def __init__(self, url: str) -> None:
        super().__init__(url, **PROVIDER_OPTIONS)  # as the service configures it
        self.methods: Counter[str] = Counter()
        self.read_ids: Counter[bytes] = Counter()
        self.get_logs_from: list[int] = []

    async def _make_request(self, method: Any, request_data: bytes) -> bytes:
        # Below web3's request cache: only what really goes over HTTP is counted.
        params = json.loads(request_data)["params"]
        self.methods[str(method)] += 1
        if method == "eth_call":
            data = params[0].get("data") or params[0]["input"]
            raw = bytes.fromhex(data[2:])
            self.read_ids[raw[GET_DEVICE_SELECTOR_LEN : GET_DEVICE_SELECTOR_LEN + 32]] += 1
        elif method == "eth_getLogs":
            self.get_logs_from.append(int(params[0]["fromBlock"], 16))
        return await super()._make_request(method, request_data)

    def total(self) -> int:
        return sum(self.methods.values())

    def reset(self) -> None:
        self.methods.clear()
        self.read_ids.clear()
        self.get_logs_from.clear()


@pytest.fixture
async def counted(anvil_url: str) -> AsyncIterator[tuple[AsyncWeb3[Any], CountingProvider]]:
    provider = CountingProvider(anvil_url)
    w3 = AsyncWeb3(provider)
    try:
        yield w3, provider
    finally:
        await provider.disconnect()


def follower_on(w3: AsyncWeb3[Any], deployment: Deployment, store: Store, **kw: Any) -> RegistryFollower:
    return RegistryFollower(
        RegistryClient(w3, deployment), store, RegistryMirror(), start_block=deployment.block, **kw
    )


def inputs(n: int, owner: str) -> list[DeviceInput]:
    return [DeviceInput(os.urandom(32), new_identity().pubkey, owner, 1, 0) for _ in range(n)]


async def chain_view(registry: RegistryClient, ids: list[bytes]) -> dict[bytes, DeviceRecord]:
    """What the contract says now about `ids` (absent ids left out)."""
    out = {}
    for device_id in ids:
        rec = await registry.get_device(device_id)
        if rec is not None:
            out[device_id] = rec
    return out


async def assert_mirror_is_chain(
    follower: RegistryFollower, registry: RegistryClient, ids: list[bytes]
) -> None:
    """Memory, database and contract agree on every id, and the checkpoint is a canonical block."""
    expected = await chain_view(registry, ids)
    assert {d: r for d, r in follower.mirror.devices.items() if d in ids} == expected
    stored = {r.device_id: r for r in await follower.store.load_devices()}
    assert {d: r for d, r in stored.items() if d in ids} == expected
    cursor = await follower.store.get_cursor(CURSOR)
    assert cursor is not None and cursor[0] == follower.mirror.block
    assert cursor[1] == bytes((await registry.w3.eth.get_block(cursor[0]))["hash"])


async def mine(w3: AsyncWeb3[Any], blocks: int) -> None:
    await w3.provider.make_request("anvil_mine", [hex(blocks)])  # type: ignore[arg-type]


async def reorg(w3: AsyncWeb3[Any], signer: Signer, depth: int) -> None:
    """Replace the newest `depth` blocks with empty ones: whatever they held is orphaned (anvil drops
    those transactions, so the operator's nonce goes back too)."""
    response = await w3.provider.make_request("anvil_reorg", [depth, []])  # type: ignore[arg-type]
    assert "error" not in response, response
    await signer.resync_nonce()


# --- replay, checkpoint, restart ------------------------------------------------------------------------


async def test_replay_in_ranges_persists_checkpoint_and_restart_resumes(
    store: Store, w3: Any, counted: Any, deployment: Deployment, signer: Signer, accounts: list
) -> None:
    registry = RegistryClient(w3, deployment, signer)
    devices = inputs(12, accounts[2].address)
    for chunk in (devices[:4], devices[4:8], devices[8:]):
        await registry.register_batch(chunk)
        await mine(w3, 5)  # spread the history over several replay ranges
    await registry.revoke(devices[0].device_id)
    await registry.rotate_key(devices[1].device_id, new_identity().pubkey)
    ids = [d.device_id for d in devices]

    cw3, provider = counted
    progress: list[tuple[int, int]] = []
    first = follower_on(cw3, deployment, store, chunk_blocks=4, progress=lambda b, t: progress.append((b, t)))
    await first.load()
    assert first.mirror.block == deployment.block - 1 and not first.checkpoints
    applied = await first.sync_once()
    head = await w3.eth.block_number
    assert applied >= 14 and first.mirror.block == head
    # Ranges of 4 blocks from the deployment block, reported in order up to the target.
    assert [b for b, _ in progress] == [*range(deployment.block + 3, head, 4), head]
    assert {t for _, t in progress} == {head}
    assert provider.get_logs_from[0] == deployment.block
    await assert_mirror_is_chain(first, registry, ids)
    assert first.healthy and first.mirror.devices[ids[0]].active is False

    # A restart: a new follower on the same database resumes after the checkpoint, not from genesis.
    await registry.revoke(devices[5].device_id)
    provider.reset()
    second = follower_on(cw3, deployment, store, chunk_blocks=4)
    await second.load()
    assert second.mirror.block == head and second.mirror.devices == first.mirror.devices
    await second.sync_once()
    assert provider.get_logs_from == [head + 1], "the restarted follower replayed old blocks"
    await assert_mirror_is_chain(second, registry, ids)
    assert second.mirror.devices[ids[5]].active is False


async def test_first_sync_outliving_its_wait_is_not_cancelled(
    store: Store, w3: Any, anvil_url: str, deployment: Deployment, signer: Signer, accounts: list
) -> None:
    """`depin run`'s start-up sync on a hung RPC: left running, not cancelled (cancelling a web3 8
    request can leave its session-cache lock held, hanging every later chain call); the chain shows
    down until it ends, then the same follower syncs and reads again at once."""
    devices = inputs(3, accounts[2].address)
    await RegistryClient(w3, deployment, signer).register_batch(devices)
    host, port = anvil_url.removeprefix("http://").rsplit(":", 1)
    rpc = HangingProxy(host, int(port))
    await rpc.start()
    hw3 = AsyncWeb3(chain_provider(rpc.url, timeout_s=60))
    follower = follower_on(hw3, deployment, store)
    try:
        await follower.load()
        rpc.hang()
        with pytest.raises(TimeoutError, match=r"still running after 0\.5 s"):
            await follower.first_sync(0.5)
        task = follower.first_sync_task
        assert task is not None and not task.done()
        assert not follower.rpc_up and metrics.CHAIN_UP._value.get() == 0
        rpc.release()
        await asyncio.wait_for(asyncio.shield(task), 30)
        assert follower.rpc_up and metrics.CHAIN_UP._value.get() == 1
        assert all(d.device_id in follower.mirror.devices for d in devices)
        await asyncio.wait_for(follower.sync_once(), 10)
        assert await asyncio.wait_for(follower.client.get_device(devices[0].device_id), 10) is not None
    finally:
        await hw3.provider.disconnect()
        await rpc.stop()


# --- reorgs ---------------------------------------------------------------------------------------------


async def test_reorg_undone_from_checkpoints_then_rescanned(
    store: Store, w3: Any, counted: Any, deployment: Deployment, signer: Signer, accounts: list
) -> None:
    registry = RegistryClient(w3, deployment, signer)
    a, b = inputs(2, accounts[2].address)
    await registry.register_batch([a, b])
    cw3, provider = counted
    follower = follower_on(cw3, deployment, store)
    await follower.load()
    await follower.sync_once()
    agreed = follower.mirror.block

    # Three blocks the mirror folds and that a reorg then orphans: a registration, a revocation, a rotation.
    c = inputs(1, accounts[3].address)[0]
    await registry.register_batch([c])
    await registry.revoke(a.device_id)
    await registry.rotate_key(b.device_id, new_identity().pubkey)
    await follower.sync_once()
    assert c.device_id in follower.mirror.devices and not follower.mirror.devices[a.device_id].active
    assert follower.mirror.block == agreed + 3

    await reorg(w3, signer, 3)
    # The canonical chain now has a different history after `agreed`: B revoked instead.
    await registry.revoke(b.device_id)
    provider.reset()
    await follower.sync_once()
    assert follower.reorgs == {"undo": 1, "rebuild": 0}
    assert provider.get_logs_from == [agreed + 1], "not re-scanned from the last agreed block"
    await assert_mirror_is_chain(follower, registry, [a.device_id, b.device_id, c.device_id])
    mirror = follower.mirror.devices
    assert c.device_id not in mirror and mirror[a.device_id].active and not mirror[b.device_id].active
    assert mirror[b.device_id].pubkey == b.pubkey  # the orphaned rotation is gone too


async def test_reorg_after_restart_rebuilds_from_the_deployment_block(
    store: Store, w3: Any, counted: Any, deployment: Deployment, signer: Signer, accounts: list
) -> None:
    registry = RegistryClient(w3, deployment, signer)
    a, b = inputs(2, accounts[2].address)
    await registry.register_batch([a])
    cw3, provider = counted
    first = follower_on(cw3, deployment, store)
    await first.load()
    await first.sync_once()
    # Folded and persisted, then orphaned while no process holds its undo records.
    await registry.register_batch([b])
    await registry.revoke(a.device_id)
    await first.sync_once()
    assert b.device_id in first.mirror.devices and not first.mirror.devices[a.device_id].active

    await reorg(w3, signer, 2)
    await mine(w3, 1)
    provider.reset()
    restarted = follower_on(cw3, deployment, store)
    await restarted.load()
    assert b.device_id in restarted.mirror.devices  # the stale persisted state, until the first sync
    await restarted.sync_once()
    assert restarted.reorgs == {"undo": 0, "rebuild": 1}
    assert provider.get_logs_from[0] == deployment.block
    await assert_mirror_is_chain(restarted, registry, [a.device_id, b.device_id])
    assert b.device_id not in restarted.mirror.devices and restarted.mirror.devices[a.device_id].active

    # The rebuilt follower keeps undo records again: the next shallow reorg is taken back cheaply.
    await registry.revoke(a.device_id)
    await restarted.sync_once()
    await reorg(w3, signer, 1)
    await restarted.sync_once()
    assert restarted.reorgs == {"undo": 1, "rebuild": 1}
    await assert_mirror_is_chain(restarted, registry, [a.device_id, b.device_id])


# --- unknown ids: negative cache and read budget ----------------------------------------------------------


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def flood(follower: RegistryFollower, ids: list[bytes], batch: int = 1000) -> None:
    """Like the consumer: one prefetch per batch with the ids its topics name."""
    for i in range(0, len(ids), batch):
        await follower.prefetch(set(ids[i : i + batch]))


async def test_flood_of_unknown_ids_costs_a_bounded_number_of_reads(
    store: Store, counted: Any, deployment: Deployment
) -> None:
    cw3, provider = counted
    clock = ManualClock()
    follower = follower_on(
        cw3, deployment, store, negative_ttl_s=60.0, prefetch_budget=50, prefetch_rate_s=20.0, clock=clock
    )
    await follower.load()
    await follower.sync_once()
    ids = [os.urandom(32) for _ in range(10_000)]

    provider.reset()
    await flood(follower, ids)
    # No time passed: the bucket grants its burst and nothing more, whatever the flood's size.
    # Plus web3's eth_chainId, cached: fetched once per concurrent read slot the first time only.
    assert provider.methods["eth_call"] == 50 and provider.methods["eth_chainId"] <= 8, provider.methods
    assert provider.total() == provider.methods["eth_call"] + provider.methods["eth_chainId"]
    first_read = set(provider.read_ids)
    assert len(first_read) == 50 and set(provider.read_ids.values()) == {1}

    # Ten seconds later, the same flood: at most burst + rate × 10 s more reads, none of an id cached.
    clock.now += 10
    provider.reset()
    await flood(follower, ids)
    # (the bucket refilled to its burst: 10 s × 20/s is more than it holds)
    assert provider.total() == provider.methods["eth_call"] == 50 <= 50 + 20 * 10, provider.methods
    assert not first_read & set(provider.read_ids)
    cached = first_read | set(provider.read_ids)

    # Within the TTL the cached ids cost nothing at all, however often they come.
    clock.now += 10
    provider.reset()
    for _ in range(5):
        await flood(follower, list(cached))
    assert provider.total() == 0
    assert all(follower.mirror.lookup(d) is None for d in cached)  # still unknown → unknown_device

    # After the TTL an id may be read once more (it could have been registered meanwhile).
    clock.now += 61
    provider.reset()
    await flood(follower, list(cached)[:10])
    assert provider.methods["eth_call"] == 10


async def test_one_read_per_id_per_ttl_and_found_ids_resolve(
    store: Store, w3: Any, counted: Any, deployment: Deployment, signer: Signer, accounts: list
) -> None:
    cw3, provider = counted
    clock = ManualClock()
    # A generous read deadline: this test counts reads, and 500 reads at once on a loaded machine can
    # take longer than the default 2 s, which (rightly) marks the RPC down and skips the rest.
    follower = follower_on(
        cw3,
        deployment,
        store,
        negative_ttl_s=60.0,
        prefetch_budget=1000,
        prefetch_rate_s=100.0,
        prefetch_timeout_s=60.0,
        clock=clock,
    )
    await follower.load()
    await follower.sync_once()
    # Registered after the last sync: only an on-demand read can know it yet.
    fresh = inputs(1, accounts[2].address)[0]
    await RegistryClient(w3, deployment, signer).register_batch([fresh])
    ids = [os.urandom(32) for _ in range(999)] + [fresh.device_id]

    provider.reset()
    for _ in range(10):  # 10,000 messages naming 1,000 ids
        await flood(follower, ids, batch=500)
    assert provider.methods["eth_call"] == 1000 and set(provider.read_ids.values()) == {1}
    assert follower.reads["absent"] == 999 and follower.reads["found"] == 1
    found = follower.mirror.lookup(fresh.device_id)
    assert found is not None and found.pubkey == fresh.pubkey and found.active

    # The event fold then takes over from the on-demand overlay.
    await follower.sync_once()
    assert fresh.device_id in follower.mirror.devices and not follower.mirror.resolved


# --- revoke and rotate in a running node ------------------------------------------------------------------


@pytest.fixture
async def node(
    store: Store, mosquitto: Any, w3: Any, deployment: Deployment, signer: Signer, accounts: list
) -> AsyncIterator[dict[str, Any]]:
    fleet = make_fleet(3, [accounts[2].address], seed=7, dashcam_share=0.0)
    await RegistryClient(w3, deployment, signer).register_batch(
        [DeviceInput(d.device_id, d.pubkey, d.owner, d.hw_class, d.asserted_cell) for d in fleet]
    )
    env = Environment(registry_poll_s=0.2, epoch_genesis_ms=0, epoch_length_s=3600)
    mqtt = MqttConfig(
        host=mosquitto.host,
        port=mosquitto.port,
        client_id=unique_client_id("ingest"),
        group=unique_client_id("g"),
    )
    node = build_node(load_settings(env, mqtt=mqtt), store, w3, deployment)
    await node.follower.load()
    await node.follower.sync_once()
    async with AsyncExitStack() as stack:
        tasks = [asyncio.create_task(node.follower.run()), asyncio.create_task(node.consumer.run())]
        stack.push_async_callback(cancel_all, tasks)
        await asyncio.wait_for(node.consumer.connected.wait(), 10)
        yield {"node": node, "fleet": fleet, "broker": mosquitto}


async def cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def outcomes(store: Store, device_id: bytes) -> dict[int, str]:
    """seq → "stored" or the rejection reason, for one device."""
    out = {
        r["seq"]: "stored"
        for r in await store.pool.fetch("SELECT seq FROM packets WHERE device_id=$1", device_id)
    }
    for r in await store.pool.fetch("SELECT seq, reason FROM rejections WHERE device_id=$1", device_id):
        out.setdefault(r["seq"], r["reason"])
    return out


class Streamer:
    """A device publishing a packet every `interval_s` (device clock 1 s apart: never rate limited)."""

    def __init__(self, dev: SimDevice, broker: Any, interval_s: float = 0.1) -> None:
        self.dev, self.broker, self.interval_s = dev, broker, interval_s
        self.base_ms = time.time_ns() // 1_000_000 - 3_600_000
        self.sent_at: dict[int, float] = {}  # seq → monotonic publish time
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def __aenter__(self) -> Streamer:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Stopped by a flag, not by cancelling: a cancellation that reached aiomqtt's QoS 1 publish was
        # swallowed there once, and the loop published on forever (a CI run hung in this __aexit__).
        assert self._task is not None
        self._stop.set()
        await asyncio.wait_for(self._task, 30)

    async def _run(self) -> None:
        async with connected_publisher(self.broker.host, self.broker.port) as client:
            while not self._stop.is_set():
                payload = next_message(self.dev, self.base_ms + (self.dev.seq + 1) * 1000)
                await client.publish(self.dev.topic, payload, qos=1)
                self.sent_at[self.dev.seq] = time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.interval_s)


async def test_revoke_takes_effect_in_a_running_node(
    node: dict[str, Any], w3: Any, deployment: Deployment, signer: Signer
) -> None:
    running: Node = node["node"]
    dev = node["fleet"][0]
    store = running.store
    async with Streamer(dev, node["broker"]) as stream:
        await wait_for(
            lambda: _has(store, dev.device_id, lambda o: list(o.values()).count("stored") >= 5),
            what="streaming",
        )
        receipt = await RegistryClient(w3, deployment, signer).revoke(dev.device_id)
        revoked_at = time.monotonic()
        await wait_for(
            lambda: _has(store, dev.device_id, lambda o: list(o.values()).count("revoked_device") >= 5),
            what="revoked_device rejections",
        )
    seen = await outcomes(store, dev.device_id)
    first_rejected = min(s for s, o in seen.items() if o == "revoked_device")
    # Once rejected, every later packet is rejected: the mirror never flips back.
    assert all(seen[s] == "revoked_device" for s in seen if s > first_rejected)
    assert set(seen.values()) == {"stored", "revoked_device"}
    assert running.mirror.block >= receipt["blockNumber"]
    # From the revocation's receipt to the first packet rejected for it: about one poll interval (0.2 s)
    # when measured; the bound is generous for a loaded machine. Printed for the notes.
    latency = stream.sent_at[first_rejected] - revoked_at
    print(f"revocation effective {latency:.2f}s after its receipt (poll 0.2 s)")
    assert latency < 10.0


async def test_rotated_key_takes_effect_in_a_running_node(
    node: dict[str, Any], w3: Any, deployment: Deployment, signer: Signer
) -> None:
    running: Node = node["node"]
    dev = node["fleet"][1]
    store = running.store
    new = new_identity(dev.device_id)
    async with Streamer(dev, node["broker"]) as old_stream:
        await wait_for(lambda: _has(store, dev.device_id, lambda o: "stored" in o.values()), what="streaming")
        await RegistryClient(w3, deployment, signer).rotate_key(dev.device_id, new.pubkey)
        await wait_for(
            lambda: _has(store, dev.device_id, lambda o: list(o.values()).count("bad_signature") >= 3),
            what="old-key packets rejected",
        )
    seen = await outcomes(store, dev.device_id)
    first_bad = min(s for s, o in seen.items() if o == "bad_signature")
    assert all(seen[s] == "bad_signature" for s in seen if s > first_bad)
    assert max(old_stream.sent_at) >= first_bad

    # The same device with its new key is accepted.
    dev.identity = new
    now = time.time_ns() // 1_000_000
    await publish_raw(
        node["broker"].host, node["broker"].port, [(dev.topic, next_message(dev, now)) for _ in range(3)]
    )
    new_seqs = {dev.seq - 2, dev.seq - 1, dev.seq}
    await wait_for(
        lambda: _has(store, dev.device_id, lambda o: all(o.get(s) == "stored" for s in new_seqs)),
        what="new-key packets stored",
    )


async def _has(store: Store, device_id: bytes, check: Callable[[dict[int, str]], bool]) -> bool:
    return check(await outcomes(store, device_id))


# --- RPC down ---------------------------------------------------------------------------------------------


class TcpProxy:
    """A TCP forwarder in front of anvil that the test can cut and restore (a real outage on the wire)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = _free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()
                self._writers.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_rpc_down_known_devices_flow_unknown_rejected_and_readyz_names_the_chain(
    store: Store,
    mosquitto: Any,
    anvil_url: str,
    w3: Any,
    deployment: Deployment,
    signer: Signer,
    accounts: list,
) -> None:
    fleet = make_fleet(2, [accounts[2].address], seed=11, dashcam_share=0.0)
    known = fleet[0]
    await RegistryClient(w3, deployment, signer).register_batch(
        [DeviceInput(known.device_id, known.pubkey, known.owner, known.hw_class, known.asserted_cell)]
    )
    host, port = anvil_url.removeprefix("http://").rsplit(":", 1)
    proxy = TcpProxy(host, int(port))
    await proxy.start()
    provider = AsyncHTTPProvider(proxy.url, **PROVIDER_OPTIONS)
    node_w3 = AsyncWeb3(provider)
    env = Environment(registry_poll_s=0.2, epoch_genesis_ms=0, epoch_length_s=3600)
    mqtt = MqttConfig(
        host=mosquitto.host,
        port=mosquitto.port,
        client_id=unique_client_id("ingest"),
        group=unique_client_id("g"),
    )
    node = build_node(load_settings(env, mqtt=mqtt), store, node_w3, deployment)
    await node.follower.load()
    await node.follower.sync_once()
    assert node.follower.healthy and known.device_id in node.mirror.devices

    async with AsyncExitStack() as stack:
        stack.push_async_callback(provider.disconnect)
        stack.push_async_callback(proxy.stop)
        tasks = [asyncio.create_task(node.follower.run()), asyncio.create_task(node.consumer.run())]
        stack.push_async_callback(cancel_all, tasks)
        await asyncio.wait_for(node.consumer.connected.wait(), 10)
        api = await stack.enter_async_context(serve_api(node.app(), "127.0.0.1", 0))
        http = await stack.enter_async_context(aiohttp.ClientSession())

        async def readyz() -> tuple[int, dict[str, Any]]:
            async with http.get(f"{api}/readyz") as r:
                return r.status, await r.json()

        async def chain_metric() -> float:
            async with http.get(f"{api}/metrics") as r:
                text = await r.text()
            line = next(x for x in text.splitlines() if x.startswith("depin_chain_rpc_up "))
            return float(line.split()[1])

        assert (await readyz())[0] == 200 and await chain_metric() == 1.0

        await proxy.stop()
        await wait_for(lambda: _is(readyz, 503), what="/readyz 503 with the RPC down")
        _, report = await readyz()
        assert report["failing"] == ["chain"] and report["chain_rpc"] is False and report["chain_error"]
        assert await chain_metric() == 0.0

        # Known devices keep flowing from the mirror; an unknown one is rejected, never accepted.
        now = time.time_ns() // 1_000_000
        stranger = cheaters.unregistered_device(now)
        messages = [(known.topic, next_message(known, now - 10_000 + i * 1000)) for i in range(5)]
        await publish_raw(mosquitto.host, mosquitto.port, [*messages, stranger])
        await wait_for(lambda: _received(node, 6), what="6 messages judged")
        counts = await store.counts()
        assert counts.packets == 5 and counts.rejections == {"unknown_device": 1}
        assert not node.follower.reads["found"]

        await proxy.start()
        await wait_for(lambda: _is(readyz, 200), what="/readyz 200 after the RPC returns")
        assert await chain_metric() == 1.0 and (await readyz())[1]["failing"] == []


async def _is(probe: Callable[[], Any], status: int) -> bool:
    return bool((await probe())[0] == status)


async def _received(node: Node, n: int) -> bool:
    return node.consumer.stats.received >= n
