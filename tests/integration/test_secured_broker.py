"""The shipped broker configuration (deploy/mosquitto.conf: no anonymous clients, the dynamic security
plugin) with its file written by `depin broker dynsec` (as a CLI process), the service as an OS process
logging in from DEPIN_MQTT_USERNAME / DEPIN_MQTT_PASSWORD_FILE, and devices logging in with their
credential file.
Proves what the ACL allows and refuses, the consumer's connection log lines, and TLS (a throw-away CA
made here; no key or password is ever committed)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import random
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiomqtt
import asyncpg
import pytest
from aiomqtt.exceptions import MqttConnectError

from devices.keys import save_identity
from devices.protocol.topics import ack_topic
from devices.sdk import BrokerLogin
from ingest.adapters.mqtt import MqttConfig, MqttSource, drop_session
from ingest.brokerauth import check_password, hash_password
from ingest.consumer import Consumer
from ingest.dev.broker import BrokerInfo, SecuredFiles, free_port
from simulator.fleet import SimDevice, make_fleet, next_message
from simulator.publish import unique_client_id
from tests.fixtures_mqtt import secured_mosquitto
from tests.integration.test_workers import register
from tests.pki import make_pki
from tests.procs import REPO, ConsumerProcess, consumer_env, publish_resilient, table_counts, wait_for

pytestmark = pytest.mark.integration

SERVICE = "depin-ingest"
NOT_AUTHORIZED = 0x87  # what Mosquitto 2.0.11 answers for a refused login (v5 and 3.1.1) or subscription


def depin(*args: str | Path) -> str:
    """`depin …` as its own process (what an operator runs); returns stderr, fails on a non-zero exit."""
    proc = subprocess.run(
        [sys.executable, "-m", "ingest.cli", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"depin {' '.join(map(str, args))}: {proc.stderr}"
    return proc.stderr


@dataclass
class Provisioned:
    dynsec: Path
    service_pass: Path
    creds: dict[bytes, Path]

    def device(self, dev: SimDevice, **tls: Any) -> BrokerLogin:
        return BrokerLogin.from_credentials(self.creds[dev.device_id], **tls)

    def service(self, **tls: Any) -> BrokerLogin:
        return BrokerLogin(SERVICE, self.service_pass.read_text().strip(), **tls)

    def files(self, **tls: Any) -> SecuredFiles:
        return SecuredFiles(self.dynsec, **tls)


def provision(d: Path, fleet: Sequence[SimDevice]) -> Provisioned:
    """Credential files for the fleet, then the broker's dynamic security file with the CLI."""
    d.mkdir(parents=True, exist_ok=True)
    creds = {}
    for i, dev in enumerate(fleet):
        creds[dev.device_id] = d / f"dev{i}.json"
        save_identity(dev.identity, creds[dev.device_id])
    p = Provisioned(d / "dynamic-security.json", d / "svc.pass", creds)
    if creds:
        depin("broker", "dynsec", "--file", p.dynsec, "--cred", *creds.values())
    depin("broker", "dynsec", "--file", p.dynsec, "--user", SERVICE, "--password-file", p.service_pass)
    return p


def new_fleet(n: int, owners: list[str]) -> list[SimDevice]:
    # A random seed: device ids must not repeat across tests sharing a database server.
    return make_fleet(n, owners, seed=random.randrange(2**32))


@asynccontextmanager
async def listening(
    broker: BrokerInfo, login: BrokerLogin | None, filters: Sequence[str]
) -> AsyncIterator[tuple[aiomqtt.Client, list[tuple[str, bytes]]]]:
    """A connected client subscribed to `filters`; what it receives is appended to the list."""
    got: list[tuple[str, bytes]] = []
    kwargs = login.client_kwargs() if login is not None else {}
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=unique_client_id("c"),
        protocol=aiomqtt.ProtocolVersion.V5,
        **kwargs,
    ) as client:
        for f in filters:
            await client.subscribe(f, qos=1)

        async def take() -> None:
            async for m in client.messages:
                got.append((str(m.topic), bytes(cast(bytes, m.payload))))

        task = asyncio.create_task(take())
        try:
            yield client, got
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def acked(got: list[tuple[str, bytes]], dev: SimDevice) -> dict[str, str]:
    out: dict[str, str] = {}
    for topic, body in got:
        if topic == ack_topic(dev.device_id):
            out.update(json.loads(body)["seq"])
    return out


async def stored_seqs(dsn: str, dev: SimDevice) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT seq FROM packets WHERE device_id = $1 ORDER BY seq", dev.device_id)
    finally:
        await conn.close()
    return [r["seq"] for r in rows]


def service_env(
    broker: BrokerInfo, p: Provisioned, pg_dsn: str, anvil_url: str, deployment_file: Path, **extra: Any
) -> dict[str, str]:
    return consumer_env(
        database_url=pg_dsn,
        mqtt_host=broker.host,
        mqtt_port=broker.port,
        client_id=unique_client_id("svc"),
        group=unique_client_id("g"),
        chain_rpc_url=anvil_url,
        deployment_file=deployment_file,
        mqtt_username=SERVICE,
        mqtt_password_file=p.service_pass,
        **extra,
    )


async def test_service_and_devices_on_the_shipped_config(
    store: Any,
    pg_dsn: str,
    anvil_url: str,
    w3: Any,
    deployment: Any,
    signer: Any,
    accounts: list,
    tmp_path: Path,
) -> None:
    a, b, c = fleet = new_fleet(3, [accounts[2].address])
    await register(w3, deployment, signer, fleet)
    deployment.save(tmp_path / "deployment.json")
    p = provision(tmp_path / "auth", fleet)
    async with secured_mosquitto(tmp_path / "broker", p.files()) as broker:
        env = service_env(broker, p, pg_dsn, anvil_url, tmp_path / "deployment.json", ack_feedback=True)
        worker = ConsumerProcess(env, tmp_path / "worker.log")
        try:
            await worker.start()  # returns once the service logged in and subscribed
            now = time.time_ns() // 1_000_000
            stolen = (b.topic, next_message(b, now - 10_000))  # b's seq 1, validly signed by b
            own = [(a.topic, next_message(a, now - 9_000 + i * 1000)) for i in range(3)]
            b_own = (b.topic, next_message(b, now - 5_000))  # b's seq 2
            # c snoops on everything it may try: every device's up and ack, a's and b's ack, all topics.
            snoop = ["depin/v1/+/up", "depin/v1/+/ack", ack_topic(a.device_id), ack_topic(b.device_id), "#"]
            async with (
                listening(broker, p.device(a), [ack_topic(a.device_id)]) as (a_client, a_got),
                listening(broker, p.device(b), [ack_topic(b.device_id)]) as (b_client, b_got),
                listening(broker, p.device(c), snoop) as (c_client, c_got),
            ):
                # c spoofs a's feedback (the broker PUBACKs it and drops it: c may publish only on its up).
                fake = json.dumps({"accepted": 0, "seq": {"99": "bad_signature"}})
                await c_client.publish(ack_topic(a.device_id), fake, qos=1)
                # a publishes b's packet on b's topic (the broker PUBACKs it, then drops it), then its own.
                for topic, payload in [stolen, *own]:
                    await a_client.publish(topic, payload, qos=1)

                async def a_told() -> bool:
                    return acked(a_got, a) == {"1": "accepted", "2": "accepted", "3": "accepted"}

                await wait_for(a_told, 30, "a's acks for seqs 1..3")
                await b_client.publish(*b_own, qos=1)

                async def b_told() -> bool:
                    return "2" in acked(b_got, b)

                await wait_for(b_told, 30, "b's ack for seq 2")
                await asyncio.sleep(0.5)  # anything still in flight would land now
            counts = await table_counts(pg_dsn)
            # a's publish on b's topic never reached the service: b's seq 1 is neither stored nor rejected
            # (had it arrived, it would be stored: it is b's own signed packet).
            assert await stored_seqs(pg_dsn, b) == [2]
            assert await stored_seqs(pg_dsn, a) == [1, 2, 3]
            assert counts.packets == 4 and counts.rejections == {}
            assert acked(b_got, b) == {"2": "accepted"}
            assert all(b"99" not in body for _, body in a_got)  # c's forged ack never reached a
            # Each device read only its own ack; the snooping device received nothing at all, although
            # the other two published on …/up and were told on …/ack meanwhile.
            assert {t for t, _ in a_got} == {ack_topic(a.device_id)}
            assert {t for t, _ in b_got} == {ack_topic(b.device_id)}
            assert c_got == []
            connected = (
                f"INFO ingest.adapters.mqtt: connected to MQTT broker 127.0.0.1:{broker.port} as client id "
                f"{env['DEPIN_MQTT_CLIENT_ID']}, user {SERVICE}, subscribed to "
                f"$share/{env['DEPIN_MQTT_GROUP']}/depin/v1/+/up"
            )
            assert connected in worker.log_tail(400), worker.log_tail()
            assert await worker.stop() == 0, worker.log_tail()
        finally:
            worker.kill()
            await drop_session(
                broker.host,
                broker.port,
                env["DEPIN_MQTT_CLIENT_ID"],
                login=MqttConfig(username=SERVICE, password=p.service_pass.read_text().strip()),
            )


async def test_two_workers_with_their_own_accounts_and_no_session_takeover(
    store: Any,
    pg_dsn: str,
    anvil_url: str,
    w3: Any,
    deployment: Any,
    signer: Any,
    accounts: list,
    tmp_path: Path,
) -> None:
    """use_username_as_clientid: the broker keys each session by username. Two workers, one account
    each, share the load even with the same DEPIN_MQTT_CLIENT_ID, and a device that connects with a
    worker's client id (or username) as its own client id does not knock that worker off."""
    fleet = new_fleet(4, [accounts[2].address])
    await register(w3, deployment, signer, fleet)
    deployment.save(tmp_path / "deployment.json")
    p = provision(tmp_path / "auth", fleet)
    second = "depin-ingest-2"
    depin("broker", "dynsec", "--file", p.dynsec, "--user", second, "--password-file", tmp_path / "w2.pass")
    async with secured_mosquitto(tmp_path / "broker", p.files()) as broker:
        group = unique_client_id("g")
        workers = []
        for user, pass_file in ((SERVICE, p.service_pass), (second, tmp_path / "w2.pass")):
            env = service_env(broker, p, pg_dsn, anvil_url, tmp_path / "deployment.json")
            env |= {
                "DEPIN_MQTT_GROUP": group,
                "DEPIN_MQTT_CLIENT_ID": "depin-ingest-1",  # the same for both: the broker uses the username
                "DEPIN_MQTT_USERNAME": user,
                "DEPIN_MQTT_PASSWORD_FILE": str(pass_file),
            }
            workers.append(ConsumerProcess(env, tmp_path / f"{user}.log"))
        try:
            await asyncio.gather(*(w.start() for w in workers))
            # A device tries to take over the first worker's session by its client id and its username.
            for client_id in ("depin-ingest-1", SERVICE):
                async with aiomqtt.Client(
                    broker.host,
                    broker.port,
                    identifier=client_id,
                    protocol=aiomqtt.ProtocolVersion.V5,
                    clean_start=False,
                    **p.device(fleet[0]).client_kwargs(),
                ):
                    await asyncio.sleep(0.3)
            now = time.time_ns() // 1_000_000
            per_device = [
                [(d.topic, next_message(d, now - 60_000 + i * 1000)) for i in range(30)] for d in fleet
            ]
            await asyncio.gather(
                *(
                    publish_resilient(broker.host, broker.port, msgs, login=p.device(d), timeout=30)
                    for d, msgs in zip(fleet, per_device, strict=True)
                )
            )

            async def all_stored() -> bool:
                return (await table_counts(pg_dsn)).packets >= 120

            try:
                await wait_for(all_stored, 30, "120 packets stored")
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {await table_counts(pg_dsn)}") from None
            counts = await table_counts(pg_dsn)
            assert counts.packets == 120 and counts.rejections == {}
            samples = [await w.metrics() for w in workers]
            shares = [m.get("depin_accepted_total", 0.0) for m in samples]
            assert sum(shares) == 120 and all(s > 0 for s in shares), shares
            assert [m.get("depin_mqtt_reconnects_total", 0.0) for m in samples] == [0.0, 0.0], workers[
                0
            ].log_tail()
            for w in workers:
                assert await w.stop() == 0, w.log_tail()
        finally:
            for w in workers:
                w.kill()
            for user, pass_file in ((SERVICE, p.service_pass), (second, tmp_path / "w2.pass")):
                login = MqttConfig(username=user, password=pass_file.read_text().strip())
                await drop_session(broker.host, broker.port, "any", login=login)


def _codes(granted: Any) -> list[int]:
    return [int(getattr(c, "value", c)) for c in granted]


async def test_a_device_cannot_join_the_service_share_group_nor_take_its_client_id(
    store: Any,
    pg_dsn: str,
    anvil_url: str,
    w3: Any,
    deployment: Any,
    signer: Any,
    accounts: list,
    tmp_path: Path,
) -> None:
    """The issue's attack on the shipped config: a device subscribes to the service's shared group
    (`$share/<group>/depin/v1/+/up`: on Mosquitto 2.0.11 with acl_file this was granted and 20 of 40
    messages went to the device and were dropped) and logs in with the service's client id. With the
    dynamic security plugin the SUBSCRIBE is refused (0x87), so every message reaches the service."""
    a, b, evil = fleet = new_fleet(3, [accounts[2].address])
    await register(w3, deployment, signer, fleet)
    deployment.save(tmp_path / "deployment.json")
    p = provision(tmp_path / "auth", fleet)
    async with secured_mosquitto(tmp_path / "broker", p.files()) as broker:
        env = service_env(broker, p, pg_dsn, anvil_url, tmp_path / "deployment.json")
        group = env["DEPIN_MQTT_GROUP"]
        worker = ConsumerProcess(env, tmp_path / "worker.log")
        try:
            await worker.start()
            got: list[str] = []
            start = time.time_ns() // 1_000_000 - 60_000  # seqs 1..40, one reading a second
            for k, client_id in enumerate((env["DEPIN_MQTT_CLIENT_ID"], SERVICE)):
                async with aiomqtt.Client(
                    broker.host,
                    broker.port,
                    identifier=client_id,
                    protocol=aiomqtt.ProtocolVersion.V5,
                    clean_start=False,
                    **p.device(evil).client_kwargs(),
                ) as thief:
                    for f in (
                        f"$share/{group}/depin/v1/+/up",
                        f"$share/{group}/depin/v1/{a.identity.hex_id}/up",
                        f"$share/{group}/#",
                        "$share/other/depin/v1/+/up",
                        "depin/v1/+/up",
                        "#",
                    ):
                        assert _codes(await thief.subscribe(f, qos=1)) == [NOT_AUTHORIZED], f

                    async def take(client: aiomqtt.Client = thief) -> None:
                        async for m in client.messages:
                            got.append(str(m.topic))

                    task = asyncio.create_task(take())
                    per_device = [
                        [(d.topic, next_message(d, start + (k * 20 + i) * 1000)) for i in range(20)]
                        for d in (a, b)
                    ]
                    await asyncio.gather(
                        *(
                            publish_resilient(broker.host, broker.port, msgs, login=p.device(d), timeout=30)
                            for d, msgs in zip((a, b), per_device, strict=True)
                        )
                    )
                    await asyncio.sleep(0.5)
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)

            async def all_handled() -> bool:
                counts = await table_counts(pg_dsn)
                return counts.packets + sum(counts.rejections.values()) >= 80

            await wait_for(all_handled, 30, "80 packets handled")
            counts = await table_counts(pg_dsn)
            # All 80 published (2 rounds × 2 devices × 20) were stored: the thief took nothing.
            assert counts.packets == 80 and counts.rejections == {}, counts
            assert await stored_seqs(pg_dsn, a) == list(range(1, 41))
            assert got == []
            metrics = await worker.metrics()
            assert metrics.get("depin_accepted_total") == 80
            assert metrics.get("depin_mqtt_reconnects_total", 0.0) == 0.0, worker.log_tail()
            assert await worker.stop() == 0, worker.log_tail()
        finally:
            worker.kill()
            await drop_session(
                broker.host,
                broker.port,
                env["DEPIN_MQTT_CLIENT_ID"],
                login=MqttConfig(username=SERVICE, password=p.service_pass.read_text().strip()),
            )


async def connect_code(
    broker: BrokerInfo, login: BrokerLogin | None, *, v5: bool = True, **client: Any
) -> int:
    """0 if the login is accepted, else the CONNACK reason code."""
    kwargs = login.client_kwargs() if login is not None else {}
    proto = aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311
    try:
        async with aiomqtt.Client(broker.host, broker.port, protocol=proto, **kwargs, **client):
            return 0
    except MqttConnectError as exc:
        rc = exc.rc
        return int(rc.value if hasattr(rc, "value") else rc)  # type: ignore[arg-type]


async def test_depin_run_without_a_login_says_what_to_set(
    pg_dsn: str, anvil_url: str, deployment: Any, tmp_path: Path
) -> None:
    """The issue's symptom: `depin run` against the shipped config without a login looped on a bare
    "Not authorized". Now its log (default level) names the broker and the settings to check."""
    deployment.save(tmp_path / "deployment.json")
    p = provision(tmp_path / "auth", [])
    async with secured_mosquitto(tmp_path / "broker", p.files()) as broker:
        env = service_env(broker, p, pg_dsn, anvil_url, tmp_path / "deployment.json")
        del env["DEPIN_MQTT_USERNAME"], env["DEPIN_MQTT_PASSWORD_FILE"]
        worker = ConsumerProcess(env, tmp_path / "worker.log")
        expected = (
            f"MQTT broker 127.0.0.1:{broker.port} refused the connection: Not authorized — check "
            "DEPIN_MQTT_USERNAME / DEPIN_MQTT_PASSWORD(_FILE) (anonymous: no username set); retrying in"
        )
        try:
            with pytest.raises(AssertionError, match="timed out"):
                await worker.start(timeout=4)  # never connects

            async def told() -> bool:
                return worker.log_tail(200).count(expected) >= 2  # and keeps retrying, with backoff

            await wait_for(told, 20, "the refusal in the service's log")
            assert "WARNING" in worker.log_tail(200)
        finally:
            await worker.stop()


async def test_anonymous_and_wrong_passwords_are_refused(tmp_path: Path) -> None:
    a, b = fleet = new_fleet(2, ["0x" + "a1" * 20])
    p = provision(tmp_path / "auth", fleet)
    async with secured_mosquitto(tmp_path / "broker", p.files()) as broker:
        assert await connect_code(broker, p.service()) == 0
        assert await connect_code(broker, p.device(a)) == 0
        assert await connect_code(broker, None) == NOT_AUTHORIZED
        assert await connect_code(broker, None, v5=False) == NOT_AUTHORIZED
        assert await connect_code(broker, BrokerLogin(SERVICE, "wrong")) == NOT_AUTHORIZED
        assert await connect_code(broker, BrokerLogin(SERVICE, "")) == NOT_AUTHORIZED
        assert await connect_code(broker, BrokerLogin("nobody", "x")) == NOT_AUTHORIZED
        # One device's password is not another's.
        assert (
            await connect_code(broker, BrokerLogin(b.identity.hex_id, p.device(a).password)) == NOT_AUTHORIZED
        )

        # Re-running for one device rewrites only its entry (new salt, same password): everyone still logs in.
        before = {c["username"]: c for c in json.loads(p.dynsec.read_text())["clients"]}
        out = depin("broker", "dynsec", "--file", p.dynsec, "--cred", p.creds[a.device_id])
        assert "0 new password(s), 1 kept" in out
        after = {c["username"]: c for c in json.loads(p.dynsec.read_text())["clients"]}
        assert set(after) == set(before) and len(after) == 3
        assert {k: v for k, v in after.items() if k != a.identity.hex_id} == {
            k: v for k, v in before.items() if k != a.identity.hex_id
        }
        assert after[a.identity.hex_id]["salt"] != before[a.identity.hex_id]["salt"]
        await broker.restart()
        for login in (p.service(), p.device(a), p.device(b)):
            assert await connect_code(broker, login) == 0, login.username


def test_hashes_match_mosquitto_passwd(tmp_path: Path) -> None:
    """Our `$7$` hash and mosquitto_passwd's are the same function: recompute its hash from its salt."""
    path = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), "alice", "s3cret:with colon"], check=True)
    user, hashed = path.read_text().strip().split(":", 1)
    _, kind, iterations, salt64, _digest = hashed.split("$")
    assert (user, kind) == ("alice", "7")
    assert (
        hash_password("s3cret:with colon", salt=base64.b64decode(salt64), iterations=int(iterations))
        == hashed
    )
    assert check_password("s3cret:with colon", hashed) and not check_password("s3cret", hashed)


# --- the consumer's connection log ---------------------------------------------------------------------


@asynccontextmanager
async def running(consumer: Consumer) -> AsyncIterator[None]:
    task = asyncio.create_task(consumer.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def logged(caplog: pytest.LogCaptureFixture, pattern: str, timeout: float = 15) -> str:
    async def check() -> str | None:
        for r in caplog.records:
            if re.search(pattern, r.getMessage()):
                return f"{r.levelname} {r.getMessage()}"
        return None

    return cast(str, await wait_for(check, timeout, f"a log line matching {pattern!r}", every=0.05))


async def test_connection_problems_are_logged_with_the_broker_and_what_to_check(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ingest")
    store = cast(Any, None)  # nothing is received, so nothing is stored
    port = free_port()
    nobody = MqttConfig(port=port, client_id=unique_client_id("log"))
    async with running(Consumer(nobody, store, lambda _: None)):
        line = await logged(caplog, "cannot connect")
    assert re.fullmatch(
        rf"WARNING cannot connect to MQTT broker 127\.0\.0\.1:{port}: "
        r".*Connection refused.*; retrying in 0\.2s",
        line,
    ), line

    p = provision(tmp_path / "auth", new_fleet(1, ["0x" + "a1" * 20]))
    async with secured_mosquitto(tmp_path / "broker", p.files()) as broker:
        caplog.clear()
        where = f"127.0.0.1:{broker.port}"
        wrong = MqttConfig(
            port=broker.port, client_id=unique_client_id("log"), username=SERVICE, password="no"
        )
        async with running(Consumer(wrong, store, lambda _: None)):
            line = await logged(caplog, "refused")
        assert line == (
            f"WARNING MQTT broker {where} refused the connection: Not authorized — check "
            f"DEPIN_MQTT_USERNAME / DEPIN_MQTT_PASSWORD(_FILE) (user 'depin-ingest'); retrying in 0.2s"
        )

        caplog.clear()
        good = MqttConfig(
            port=broker.port,
            client_id=unique_client_id("log"),
            group="gl",
            username=SERVICE,
            password=p.service().password,
        )
        consumer = Consumer(good, store, lambda _: None)
        try:
            async with running(consumer):
                line = await logged(caplog, "connected to")
                assert line == (
                    f"INFO connected to MQTT broker {where} as client id {good.client_id}, "
                    f"user depin-ingest, subscribed to $share/gl/depin/v1/+/up"
                )
                caplog.clear()
                await broker.restart()  # the connection drops, then the consumer logs in again
                lost = await logged(caplog, "lost")
                assert lost == (
                    f"WARNING MQTT connection to {where} lost: the broker or the network closed it; "
                    "reconnecting in 0.2s"
                ), lost
                await logged(caplog, "connected to")
        finally:
            await drop_session(broker.host, broker.port, good.client_id, login=good)


# --- TLS -----------------------------------------------------------------------------------------------


async def test_service_over_tls_with_a_private_ca(
    store: Any,
    pg_dsn: str,
    anvil_url: str,
    w3: Any,
    deployment: Any,
    signer: Any,
    accounts: list,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (a,) = fleet = new_fleet(1, [accounts[2].address])
    await register(w3, deployment, signer, fleet)
    deployment.save(tmp_path / "deployment.json")
    p = provision(tmp_path / "auth", fleet)
    pki, other = make_pki(tmp_path / "pki"), make_pki(tmp_path / "other-pki", "another CA")
    files = p.files(certfile=pki.server_cert, keyfile=pki.server_key)
    async with secured_mosquitto(tmp_path / "broker", files) as broker:
        env = service_env(broker, p, pg_dsn, anvil_url, tmp_path / "deployment.json", mqtt_tls_ca_file=pki.ca)
        worker = ConsumerProcess(env, tmp_path / "worker.log")
        try:
            await worker.start()
            login = p.device(a, tls_ca_file=str(pki.ca))
            now = time.time_ns() // 1_000_000
            msgs = [(a.topic, next_message(a, now - 5000 + i * 1000)) for i in range(3)]
            await publish_resilient(broker.host, broker.port, msgs, login=login, timeout=20)

            async def stored() -> bool:
                return await stored_seqs(pg_dsn, a) == [1, 2, 3]

            await wait_for(stored, 30, "a's 3 packets stored over TLS")
            assert await worker.stop() == 0, worker.log_tail()
        finally:
            worker.kill()
            await drop_session(
                broker.host,
                broker.port,
                env["DEPIN_MQTT_CLIENT_ID"],
                login=MqttConfig(username=SERVICE, password=p.service().password, tls_ca_file=str(pki.ca)),
            )

        # Plain TCP to the TLS listener, or a broker certificate from another CA: no connection.
        with pytest.raises(aiomqtt.MqttError):
            await connect_code(broker, p.device(a), timeout=3)  # the broker waits for a TLS hello
        with pytest.raises(aiomqtt.MqttError, match="CERTIFICATE_VERIFY_FAILED"):
            await connect_code(broker, p.device(a, tls_ca_file=str(other.ca)))
        # … and the service says which setting to check.
        caplog.set_level(logging.WARNING, logger="ingest")
        bad_ca = MqttConfig(
            port=broker.port,
            client_id=unique_client_id("tls"),
            username=SERVICE,
            password=p.service().password,
            tls_ca_file=str(other.ca),
        )
        async with running(Consumer(bad_ca, cast(Any, None), lambda _: None)):
            line = await logged(caplog, "TLS handshake")
        assert f"TLS handshake with MQTT broker 127.0.0.1:{broker.port} failed: " in line
        assert "CERTIFICATE_VERIFY_FAILED" in line and "check DEPIN_MQTT_TLS_CA_FILE" in line


async def test_client_certificate_when_the_broker_requires_one(tmp_path: Path) -> None:
    p = provision(tmp_path / "auth", [])
    pki = make_pki(tmp_path / "pki")
    files = p.files(certfile=pki.server_cert, keyfile=pki.server_key, client_ca=pki.ca)
    async with secured_mosquitto(tmp_path / "broker", files) as broker:
        base = MqttConfig(
            port=broker.port,
            client_id=unique_client_id("cc"),
            username=SERVICE,
            password=p.service().password,
            tls_ca_file=str(pki.ca),
            shared=False,
        )
        without = BrokerLogin(SERVICE, p.service().password, tls_ca_file=str(pki.ca))
        with pytest.raises(aiomqtt.MqttError):  # no client certificate: the broker drops the connection
            await connect_code(broker, without, timeout=3)
        with_cert = dataclasses.replace(
            base, tls_cert_file=str(pki.client_cert), tls_key_file=str(pki.client_key)
        )
        async with _source(with_cert):
            pass
        await drop_session(broker.host, broker.port, base.client_id, login=with_cert)


@asynccontextmanager
async def _source(cfg: MqttConfig) -> AsyncIterator[None]:
    async with MqttSource(cfg):
        yield
