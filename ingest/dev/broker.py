"""Local MQTT brokers for tests, the demo and benchmarks: Mosquitto as a subprocess, amqtt in-process.

`start_broker(data_dir)` prefers Mosquitto (MQTT 5, `$share` subscriptions, on-disk persistence) and
falls back to amqtt, a pure-Python broker that needs no install but speaks MQTT 3.1.1 only and takes a
`$share/…` filter literally (it matches nothing) — so callers must check `shared_subscriptions`.
Both listen on 127.0.0.1 only. `start_broker(…, secured=SecuredFiles(…))` (the demo) runs Mosquitto
with deploy/mosquitto.conf: no anonymous clients, the dynamic security plugin; amqtt is always
anonymous. The plain `mosquitto_config` (anonymous) is for tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from devices.errors import DepinError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
# The broker only has to pass a 64 KiB message plus MQTT framing; the service enforces its own 64 KiB
# limit (docs/RELIABILITY.md A1) so an oversize message becomes a `too_large` rejection, not a disconnect.
MAX_PACKET_SIZE = 131072
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


class LocalBrokerError(DepinError):
    """A local broker could not be started (not installed, or it exited)."""


async def _unsupported(*_: object, **__: object) -> None:
    raise NotImplementedError("not supported by this broker handle")


@dataclass
class BrokerInfo:
    """Where a running broker listens and what it supports. `restart()` keeps host, port and data."""

    host: str
    port: int
    kind: str  # "mosquitto" | "amqtt"
    shared_subscriptions: bool
    _restart: Callable[..., Awaitable[None]] = field(default=_unsupported, repr=False)
    _stop: Callable[..., Awaitable[None]] = field(default=_unsupported, repr=False)
    _start: Callable[[], Awaitable[None]] = field(default=_unsupported, repr=False)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def restart(self, *, hard: bool = False) -> None:
        """Stop and start on the same port and data dir.

        Graceful (SIGTERM) by default: Mosquitto writes its persistence file, so persistent sessions and
        their queued QoS1 messages survive. `hard=True` is a crash (SIGKILL): Mosquitto only snapshots
        on shutdown (or every `autosave_interval`, 30 min by default), so queued messages are lost.
        """
        await self._restart(hard=hard)

    async def stop(self, *, hard: bool = False) -> None:
        """Take the broker down (for outage tests); `start()` brings it back on the same port."""
        await self._stop(hard=hard)

    async def start(self) -> None:
        await self._start()


def mosquitto_path() -> str | None:
    for candidate in MOSQUITTO_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("mosquitto")


def free_port(host: str = HOST) -> int:
    # Mosquitto has no "port 0 → tell me which": take one from the kernel and hand it over. The window
    # between close() and Mosquitto's bind is tiny; a collision shows up as a start failure, not a hang.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def mosquitto_config(data_dir: Path, port: int) -> str:
    lines = [
        f"listener {port} {HOST}",
        "allow_anonymous true",
        # Queued QoS1 messages of persistent sessions are written to disk on shutdown and survive a
        # restart; a SIGKILL loses what arrived since the last autosave.
        "persistence true",
        f"persistence_location {data_dir}/",
        "persistence_file mosquitto.db",
        # The default cap (1000 queued per offline session) would silently drop a consumer's backlog.
        "max_queued_messages 1000000",
        "max_queued_bytes 0",
        # Also the Receive Maximum Mosquitto grants v5 publishers: a pipelined publisher must stay below.
        "max_inflight_messages 10000",
        f"max_packet_size {MAX_PACKET_SIZE}",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
    ]
    if os.geteuid() == 0:
        # As root Mosquitto drops to user `mosquitto`, which cannot write a root-owned temp data dir.
        lines.append("user root")
    return "\n".join(lines) + "\n"


# The operators' broker configuration (dynamic security plugin, no anonymous clients): tests and the demo
# run it through `secured_config`.
DEPLOY_CONF = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto.conf"


@dataclass(frozen=True)
class SecuredFiles:
    """Where a secured broker's auth (and optional TLS) files are, for `secured_config`."""

    dynsec_file: Path  # the dynamic security plugin's JSON (`depin broker dynsec`)
    certfile: Path | None = None  # server certificate and key: the listener speaks TLS
    keyfile: Path | None = None
    client_ca: Path | None = None  # also require a client certificate signed by this CA


def secured_config(template: str, data_dir: Path, port: int, files: SecuredFiles) -> str:
    """A deployment config (deploy/mosquitto.conf) made runnable here: every directive kept as written,
    only the listener (port, 127.0.0.1, + TLS files), persistence_location and the dynamic security
    file (plugin_opt_config_file) rewritten (and `user root` added when root, as `mosquitto_config`
    does). A template missing one of those or the plugin, or with a second active listener, is an error:
    tests and the demo must run what operators deploy."""
    rewrite = {
        "persistence_location": f"persistence_location {data_dir}/",
        "plugin_opt_config_file": f"plugin_opt_config_file {files.dynsec_file}",
    }
    seen: dict[str, int] = {}
    out = []
    for line in template.splitlines():
        words = line.split()
        key = words[0] if words and not words[0].startswith("#") else None
        if key is not None:
            seen[key] = seen.get(key, 0) + 1
        if key == "listener":
            out.append(f"listener {port} {HOST}")
            if files.certfile is not None:
                out += [f"certfile {files.certfile}", f"keyfile {files.keyfile or files.certfile}"]
                if files.client_ca is not None:
                    out += [f"cafile {files.client_ca}", "require_certificate true"]
        elif key in rewrite:
            out.append(rewrite[key])
        else:
            out.append(line)
    for key in ("listener", "plugin", *rewrite):
        if seen.get(key) != 1:
            raise ValueError(f"broker config template: expected one {key!r} line, found {seen.get(key, 0)}")
    if os.geteuid() == 0:
        out.append("user root")  # as in mosquitto_config: root-owned temp files stay readable
    return "\n".join(out) + "\n"


async def _wait_for_port(host: str, port: int, proc: asyncio.subprocess.Process, log_file: Path) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_S
    while True:
        if proc.returncode is not None:
            raise LocalBrokerError(f"mosquitto exited with {proc.returncode}: {_tail(log_file)}")
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            if loop.time() > deadline:
                raise TimeoutError(f"mosquitto did not listen on {host}:{port}: {_tail(log_file)}") from None
            await asyncio.sleep(0.02)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _prepare_dir(data_dir: Path) -> Path:
    # Absolute: the config names it and Mosquitto resolves relative paths from its own cwd.
    path = Path(data_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


ConfigWriter = Callable[[Path, int], str]  # (data dir, port) → mosquitto.conf text


class _MosquittoProcess:
    def __init__(self, exe: str, data_dir: Path, port: int, config: ConfigWriter = mosquitto_config) -> None:
        self.exe = exe
        self.data_dir = data_dir
        self.port = port
        self.config = config
        self.conf = data_dir / "mosquitto.conf"
        self.log_file = data_dir / "mosquitto.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            return
        self.conf.write_text(self.config(self.data_dir, self.port))
        with self.log_file.open("ab") as log_fh:
            self.proc = await asyncio.create_subprocess_exec(
                self.exe,
                "-c",
                str(self.conf),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_fh,
                stderr=log_fh,
                start_new_session=True,  # a Ctrl-C in the terminal goes to us; we stop it in order
            )
        try:
            await _wait_for_port(HOST, self.port, self.proc, self.log_file)
        except BaseException:
            await self.stop()
            raise
        log.info("mosquitto started", extra={"port": self.port, "pid": self.proc.pid})

    async def stop(self, *, hard: bool = False) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        # SIGTERM is graceful: Mosquitto saves its persistence file. SIGKILL simulates a crash.
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        log.info("mosquitto stopped", extra={"port": self.port, "rc": proc.returncode})

    async def restart(self, *, hard: bool = False) -> None:
        await self.stop(hard=hard)
        await self.start()


class _Broker(Protocol):
    port: int

    async def start(self) -> None: ...
    async def stop(self, *, hard: bool = False) -> None: ...
    async def restart(self, *, hard: bool = False) -> None: ...


@asynccontextmanager
async def _serving(broker: _Broker, kind: str, *, shared_subscriptions: bool) -> AsyncIterator[BrokerInfo]:
    """Start `broker`, yield where it listens (its port is known once started), stop it on exit."""
    await broker.start()
    try:
        yield BrokerInfo(
            HOST,
            broker.port,
            kind=kind,
            shared_subscriptions=shared_subscriptions,
            _restart=broker.restart,
            _stop=broker.stop,
            _start=broker.start,
        )
    finally:
        await broker.stop()


@asynccontextmanager
async def start_mosquitto(
    data_dir: Path, *, port: int = 0, config: ConfigWriter = mosquitto_config
) -> AsyncIterator[BrokerInfo]:
    """Run Mosquitto on 127.0.0.1 with persistence in `data_dir`; stop it on exit. `config` writes its
    configuration (default: anonymous, for tests and benchmarks; the demo runs `secured_config`)."""
    exe = mosquitto_path()
    if exe is None:
        raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto)")
    broker = _MosquittoProcess(exe, _prepare_dir(data_dir), port or free_port(), config)
    async with _serving(broker, "mosquitto", shared_subscriptions=True) as info:
        yield info


def _amqtt_config(port: int) -> dict[str, Any]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{HOST}:{port}"}},
        # Only anonymous auth: the default plugin set also logs every packet and publishes $SYS topics.
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


class _AmqttBroker:
    def __init__(self, port: int) -> None:
        self.port = port
        self.broker: Any = None

    async def start(self) -> None:
        try:
            from amqtt.broker import Broker  # optional dependency (extra "embedded")
        except ImportError:
            raise LocalBrokerError(
                "neither mosquitto nor amqtt (the in-process fallback) is installed: "
                "apt-get install mosquitto, or pip install 'depin-ingest[embedded]'"
            ) from None

        if self.broker is not None:
            return
        broker = Broker(_amqtt_config(self.port))
        await broker.start()
        self.broker = broker
        if self.port == 0:
            # Bound to port 0: ask the listening socket which port the kernel picked.
            server = broker._servers["default"].instance
            self.port = int(server.sockets[0].getsockname()[1])

    async def stop(self, *, hard: bool = False) -> None:
        broker, self.broker = self.broker, None
        if broker is not None:
            await broker.shutdown()

    async def restart(self, *, hard: bool = False) -> None:
        # In-memory broker: sessions and queued messages never survive this, hard or not.
        await self.stop()
        await self.start()


@asynccontextmanager
async def start_amqtt(*, port: int = 0) -> AsyncIterator[BrokerInfo]:
    """Run the pure-Python amqtt broker in this event loop (MQTT 3.1.1 only, no `$share`)."""
    async with _serving(_AmqttBroker(port), "amqtt", shared_subscriptions=False) as info:
        yield info


@asynccontextmanager
async def start_broker(
    data_dir: Path, *, port: int = 0, secured: SecuredFiles | None = None
) -> AsyncIterator[BrokerInfo]:
    """Mosquitto when installed, else amqtt (the demo's no-install fallback). With `secured`, Mosquitto
    runs deploy/mosquitto.conf (`secured_config`: no anonymous clients, dynamic security); amqtt
    always runs anonymous (it has no per-topic ACLs), and says so."""
    if mosquitto_path() is not None:
        config: ConfigWriter = mosquitto_config
        if secured is not None:
            template = DEPLOY_CONF.read_text()

            def config(data_dir: Path, port: int) -> str:
                return secured_config(template, data_dir, port, secured)

        async with start_mosquitto(data_dir, port=port, config=config) as info:
            yield info
    else:
        log.warning(
            "mosquitto not found; using the in-process amqtt broker (no $share, MQTT 3.1.1) — it is "
            "ANONYMOUS: any local client may read and publish every topic"
        )
        async with start_amqtt(port=port) as info:
            yield info
