"""`depin simulate` — the I/O around plan.py, ledger.py and pacing.py: register the run's devices on
chain, publish its messages, write the ledger, read the service's side back for `reconcile`, and the
paced load run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
from aiomqtt.exceptions import MqttConnectError

from devices.chain.registry import DeviceInput
from devices.cli.common import open_chain
from devices.keys import load_identity, save_identity
from devices.protocol.topics import up_topic
from devices.sdk import BrokerLogin
from devices.settings import ChainSettings
from simulator.fleet import SimDevice, make_fleet, next_message
from simulator.ledger import Ledger, LedgerBuilder, Observed, compare
from simulator.pacing import LoadReport, devices_for_rate, due_until, schedule_ms, sleep_s
from simulator.plan import Item, Plan, anchor_route, device_from_record, owner_addresses
from simulator.publish import connected_publisher, unique_client_id
from simulator.scenario import Scenario

DEFAULT = "default"


def say(msg: str) -> None:
    print(f"[simulate] {msg}", flush=True)


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    login: BrokerLogin | None = None  # the login for messages of devices without one of their own


# Creates broker logins on a running broker: (host, port, admin login, {device hex: password}). The
# simulator may not import ingest/ (the layering table); `depin simulate` is reached through
# ingest/dev/simulate.py, which passes ingest/brokeradmin.py's implementation in.
LoginProvisioner = Callable[[str, int, BrokerLogin, Mapping[str, str]], Awaitable[None]]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- devices ------------------------------------------------------------------------------------------


async def cred_devices(
    files: Sequence[Path],
    chain: ChainSettings,
    center: tuple[float, float],
    seed: int,
    dsn: str | None = None,
) -> tuple[list[SimDevice], dict[str, BrokerLogin], dict[str, tuple[str, str]]]:
    """Real devices from their credential files; class, owner and cell from the registry. A file with
    an `mqtt_password` (`depin broker dynsec --cred`) gives the device its own broker login. A device
    the registry does not hold, or holds revoked, is driven all the same and expected rejected
    (`unknown_device`, `revoked_device`). With the service's database, a dashcam continues from its
    last stored position."""
    identities = [load_identity(f) for f in files]
    logins: dict[str, BrokerLogin] = {}
    for f, ident in zip(files, identities, strict=True):
        with contextlib.suppress(ValueError):
            logins[ident.hex_id] = BrokerLogin.from_credentials(f)
    async with open_chain(chain, signing=False) as c:
        records = [await c.registry.get_device(ident.device_id) for ident in identities]
    devices, expect = [], {}
    for ident, rec in zip(identities, records, strict=True):
        devices.append(device_from_record(ident, rec, center, seed))
        if rec is None:
            expect[ident.hex_id] = ("unregistered", "rejected:unknown_device")
        elif not rec.active:
            expect[ident.hex_id] = ("revoked", "rejected:revoked_device")
    mobile = [d for d in devices if d.mobile]
    if dsn and mobile:
        conn = await asyncpg.connect(dsn)
        try:
            for dev in mobile:
                row = await conn.fetchrow(
                    "SELECT lat, lon, ts FROM readings WHERE device_id = $1 ORDER BY ts DESC LIMIT 1",
                    dev.device_id,
                )
                if row is not None:
                    anchor_route(dev, row["lat"], row["lon"], int(row["ts"].timestamp() * 1000))
        finally:
            await conn.close()
    return devices, logins, expect


async def register(plan: Plan, chain: ChainSettings) -> list[str]:
    """Register the plan's devices (operator key); coarse-cell asserters first try their coarse cell,
    which the registry must refuse. Returns notes for the ledger."""
    notes = []
    async with open_chain(chain, signing=True) as c:
        items = [
            DeviceInput(d.device_id, d.pubkey, d.owner, d.hw_class, d.asserted_cell) for d in plan.register
        ]
        if items:
            await c.registry.register_batch(items)
            say(f"registered {len(items)} devices on chain")
        for dev, coarse in plan.coarse:
            try:
                await c.registry.register_batch(
                    [DeviceInput(dev.device_id, dev.pubkey, dev.owner, dev.hw_class, coarse)]
                )
            except Exception as exc:  # the contract's InvalidCell, or the client's own check
                notes.append(f"coarse_cell {dev.identity.hex_id}: registry refused cell {coarse:x}: {exc}")
            else:
                notes.append(f"coarse_cell {dev.identity.hex_id}: registry ACCEPTED coarse cell {coarse:x}")
                continue
            await c.registry.register_batch(
                [DeviceInput(dev.device_id, dev.pubkey, dev.owner, dev.hw_class, 0)]
            )
    for n in notes:
        say(n)
    return notes


async def wait_mirrored(dsn: str, ids: Sequence[bytes], timeout_s: float = 60.0) -> None:
    """Until the service's registry mirror (its `devices` table) holds every id, plus a moment for the
    consumer's in-memory copy."""
    if not ids:
        return
    deadline = time.monotonic() + timeout_s
    conn = await asyncpg.connect(dsn)
    try:
        while True:
            n = await conn.fetchval(
                "SELECT count(*) FROM devices WHERE device_id = ANY($1::bytea[])", list(ids)
            )
            if n >= len(ids):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the service's registry mirror holds {n} of {len(ids)} devices after {timeout_s:.0f} s"
                )
            await asyncio.sleep(0.25)
    finally:
        await conn.close()
    await asyncio.sleep(1.0)


# --- publishing ----------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _clients(
    broker: Broker, logins: dict[str, BrokerLogin], keys: set[str], no_login: set[str]
) -> AsyncIterator[dict[str, aiomqtt.Client]]:
    """One connected client per key; a key in `no_login` tries the device's id with a password no one
    gave it (what such a device can do) and, refused as expected, gets no client."""
    async with contextlib.AsyncExitStack() as stack:
        out = {}
        for key in sorted(keys):
            login = logins.get(key) if key != DEFAULT else broker.login
            if key in no_login:
                login = BrokerLogin(key, secrets.token_urlsafe(16))
            try:
                out[key] = await stack.enter_async_context(
                    connected_publisher(broker.host, broker.port, login=login)
                )
            except MqttConnectError:
                if key not in no_login:
                    raise
        yield out


async def publish(
    items: Sequence[Item],
    broker: Broker,
    logins: dict[str, BrokerLogin],
    inflight: int = 100,
    no_login: set[str] | None = None,
) -> tuple[float, int]:
    """Publish in plan order, QoS 1 (one connection per device with a login of its own, one shared by
    the rest); returns the seconds it took and how many messages were not sent because the broker
    refused their sender's login (`no_login` devices: expected). Each connection keeps its messages'
    order. A `no_login` device the broker lets in publishes all the same: the service then sees what
    the ledger says it should not, and reconcile reports it."""
    no_login = no_login or set()
    keys = {i.login if i.login in logins or i.login in no_login else DEFAULT for i in items}
    sem = asyncio.Semaphore(inflight)
    errors: list[BaseException] = []
    refused = 0

    async def one(client: aiomqtt.Client, item: Item) -> None:
        try:
            await client.publish(item.topic, item.payload, qos=1)
        except Exception as exc:
            errors.append(exc)
        finally:
            sem.release()

    started = time.monotonic()
    async with _clients(broker, logins, keys, no_login) as clients:
        tasks = []
        for item in items:
            key = item.login if item.login in logins or item.login in no_login else DEFAULT
            if key not in clients:  # refused at connect
                refused += 1
                continue
            await sem.acquire()
            tasks.append(asyncio.create_task(one(clients[key], item)))
        await asyncio.gather(*tasks)
    if errors:
        raise errors[0]
    return time.monotonic() - started, refused


def save_creds(
    directory: Path, devices: Sequence[SimDevice], passwords: Mapping[str, str], classes: Mapping[str, str]
) -> list[Path]:
    """One credential file per device, as `depin device new` writes it (0600) plus, when the run made
    one, its broker login (`"mqtt_password"`, as `depin broker dynsec --cred` adds it): an owner can
    drive the device again with `--cred`. Named `<class>-<id prefix>.json` (`honest-*.json`: the
    honest fleet)."""
    out = []
    for dev in devices:
        hex_id = dev.identity.hex_id
        path = directory / f"{classes.get(hex_id, 'device')}-{hex_id[:16]}.json"
        save_identity(dev.identity, path)
        if hex_id in passwords:
            data = json.loads(path.read_text())
            data["mqtt_password"] = passwords[hex_id]
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
        out.append(path)
    return out


# --- the service's side ------------------------------------------------------------------------------


async def observe(dsn: str, ledger: Ledger) -> Observed:
    """What the service stored, flagged and rejected for the ledger's devices (from its database:
    exact, unpaginated and free of API metering; the rejections include the unsigned ones the API
    pages would trim)."""
    ids = ledger.device_ids()
    since = ledger.started_ms / 1000.0 - 5.0
    conn = await asyncpg.connect(dsn)
    try:
        packets = await conn.fetch(
            "SELECT device_id, seq, received_at >= to_timestamp($2) AS new FROM packets "
            "WHERE device_id = ANY($1::bytea[])",
            ids,
            since,
        )
        # Readings of this run are at most the max lateness (2 days) older than its start: the time
        # bound lets a partitioned `readings` skip every older partition.
        flags = await conn.fetch(
            "SELECT device_id, seq, bit_or(flags) AS flags FROM readings "
            "WHERE device_id = ANY($1::bytea[]) AND ts >= to_timestamp($2) GROUP BY device_id, seq",
            ids,
            since - 2 * 86_400,
        )
        rejections = await conn.fetch(
            "SELECT device_id, seq, reason FROM rejections WHERE device_id = ANY($1::bytea[]) "
            "AND received_at >= to_timestamp($2)",
            ids,
            since,
        )
    finally:
        await conn.close()
    seen = Observed()
    by_key = {(bytes(r["device_id"]), r["seq"]): r["flags"] for r in flags}
    for r in packets:
        dev = bytes(r["device_id"])
        seen.packets.setdefault(dev.hex(), {})[r["seq"]] = by_key.get((dev, r["seq"]), 0)
        if r["new"]:
            seen.new_packets.setdefault(dev.hex(), set()).add(r["seq"])
    for r in rejections:
        seen.rejections.setdefault(bytes(r["device_id"]).hex(), []).append((r["seq"], r["reason"]))
    return seen


async def reconcile(dsn: str, ledger: Ledger, wait_s: float = 10.0) -> list[str]:
    """The differences, re-read until there are none or `wait_s` has passed (the service may still be
    working through the run's messages)."""
    deadline = time.monotonic() + wait_s
    while True:
        diffs = compare(ledger, await observe(dsn, ledger))
        if not diffs or time.monotonic() > deadline:
            return diffs
        await asyncio.sleep(0.5)


# --- load ----------------------------------------------------------------------------------------------


async def run_load(
    s: Scenario,
    broker: Broker,
    *,
    chain: ChainSettings | None,
    dsn: str | None,
    ledger_path: Path | None,
    feedback_timeout_s: float = 10.0,
    provision: Callable[[dict[str, str]], Awaitable[None]] | None = None,
) -> LoadReport:
    """`s.load.rate` packets/s for `s.load.seconds` over `s.load.connections` connections, on a fleet of
    stations big enough that none exceeds its rate limit. Messages are signed before the run with their
    scheduled send time as the reading's timestamp; latency comes from the service's …/ack feedback
    (`DEPIN_ACK_FEEDBACK=true`), as bench/ingest.py measures it.

    `provision` (a secured broker: it creates the given hex id → password logins on the running broker)
    gives every device a login and a connection of its own, as a real fleet has, each reading its own
    …/ack; `s.load.connections` is then the fleet's size."""
    rate, seconds, conns = s.load.rate, s.load.seconds, s.load.connections
    if rate <= 0:
        raise ValueError("the scenario has no load rate ([load] rate = …)")
    n = devices_for_rate(rate)
    owners = owner_addresses(s.seed, s.owners)
    fleet = make_fleet(n, owners, seed=s.seed + 1000, center=s.region.center, dashcam_share=0.0)
    if chain is not None:
        plan = Plan(register=list(fleet))
        await register(plan, chain)
        if dsn:
            await wait_mirrored(dsn, [d.device_id for d in fleet])
    logins: list[BrokerLogin] = []
    if provision is not None:
        _enough_descriptors(n + 64)  # a connection per device, and some for everything else
        passwords = {d.identity.hex_id: secrets.token_urlsafe(24) for d in fleet}
        await provision(passwords)
        logins = [BrokerLogin(h, pw) for h, pw in passwords.items()]
        conns = n
        say(f"broker logins created live for {n} load devices: one connection each")
    total = int(rate * seconds)
    # Sign everything first, for timestamps in the future: signing must not slow the pacer.
    probe = time.perf_counter()
    for d in fleet[:50]:
        next_message(d, now_ms())
        d.seq -= 1
    lead_ms = int((time.perf_counter() - probe) / max(1, min(50, len(fleet))) * total * 1500) + 1500
    t0 = now_ms() + lead_ms
    times = schedule_ms(t0, rate, total)
    book = LedgerBuilder(f"{s.name}-load", now_ms())
    items: list[tuple[str, bytes]] = []
    keys: list[tuple[str, int]] = []
    for i, t in enumerate(times):
        dev = fleet[i % n]
        items.append((dev.topic, next_message(dev, int(t))))
        keys.append((dev.identity.hex_id, dev.seq))
        book.expect(dev.device_id, dev.seq, "load", "accepted")
    for d in fleet:
        book.device(d.device_id, kind=d.kind, owner=d.owner, cls="load")
    scheduled = dict(zip(keys, times, strict=True))
    committed: dict[tuple[str, int], float] = {}
    if now_ms() > t0:
        raise RuntimeError("signing took longer than planned: the timestamps would inflate the latency")

    async with contextlib.AsyncExitStack() as stack:

        async def listen(sub: aiomqtt.Client) -> None:
            async for message in sub.messages:
                at = time.time_ns() / 1e6
                dev_hex = str(message.topic).split("/")[2]
                try:
                    body = json.loads(bytes(message.payload))
                except ValueError:
                    continue
                for seq, outcome in body.get("seq", {}).items():
                    if outcome in ("accepted", "flagged"):
                        committed.setdefault((dev_hex, int(seq)), at)

        subs: list[aiomqtt.Client] = []
        if logins:  # device i's connection is clients[i]; it reads its own acks
            clients = [
                await stack.enter_async_context(
                    connected_publisher(broker.host, broker.port, login=login, inflight=100)
                )
                for login in logins
            ]
            for client, d in zip(clients, fleet, strict=True):
                await client.subscribe(f"depin/v1/{d.identity.hex_id}/ack", qos=0)
            subs = clients
        else:
            sub = await stack.enter_async_context(
                aiomqtt.Client(
                    broker.host,
                    broker.port,
                    identifier=unique_client_id("sim-ack"),
                    **(broker.login.client_kwargs() if broker.login else {}),
                )
            )
            await sub.subscribe("depin/v1/+/ack", qos=0)
            subs = [sub]
            clients = [
                await stack.enter_async_context(
                    connected_publisher(broker.host, broker.port, login=broker.login, inflight=1000)
                )
                for _ in range(conns)
            ]
        for sub in subs:
            listener = asyncio.create_task(listen(sub))
            stack.callback(listener.cancel)
        pending: set[asyncio.Task[None]] = set()
        errors: list[BaseException] = []

        def done(t: asyncio.Task[None]) -> None:
            pending.discard(t)
            if not t.cancelled() and (exc := t.exception()) is not None:
                errors.append(exc)

        await asyncio.sleep(max(0.0, (t0 - now_ms()) / 1000))
        start = time.monotonic()
        sent = 0
        while sent < total:
            upto = due_until(times, sent, time.time_ns() / 1e6)
            for i in range(sent, upto):
                topic, payload = items[i]
                # Devices stay on one connection each, so a device's packets keep their order.
                client = clients[(i % n) % conns]
                task = asyncio.create_task(client.publish(topic, payload, qos=1))
                pending.add(task)
                task.add_done_callback(done)
            sent = upto
            if errors:
                raise errors[0]
            await asyncio.sleep(sleep_s(times, sent, time.time_ns() / 1e6))
        if pending:
            await asyncio.gather(*pending)
        elapsed = time.monotonic() - start
        deadline = time.monotonic() + feedback_timeout_s
        while len(committed) < total and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    latencies = sorted(at - scheduled[k] for k, at in committed.items() if k in scheduled)
    if ledger_path is not None:
        ledger = book.build()
        ledger.sent = total
        ledger.save(ledger_path)
    return LoadReport(rate, total, elapsed, len(latencies), tuple(latencies))


def _enough_descriptors(needed: int) -> None:
    """Raise the soft open-files limit to `needed` (up to the hard limit), or say what to raise."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise ValueError(
                f"{needed} open files needed (a connection per load device) but the hard limit is {hard}: "
                "lower --rate or raise `ulimit -Hn`"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def topic_of(device_hex: str) -> str:
    return up_topic(bytes.fromhex(device_hex))


def summary_lines(ledger: Ledger) -> list[str]:
    counts: dict[str, int] = {}
    for e in ledger.entries:
        counts[f"{e.cls} → {e.outcome}"] = counts.get(f"{e.cls} → {e.outcome}", 0) + e.last - e.first + 1
    for u in ledger.unsequenced:
        counts[f"{u.cls} → {u.outcome}"] = counts.get(f"{u.cls} → {u.outcome}", 0) + u.count
    return [f"  {k}: {v}" for k, v in sorted(counts.items())]


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1)
