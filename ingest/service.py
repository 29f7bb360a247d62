"""Wiring: database, registry mirror, consumer, epochs and API, owned by one AsyncExitStack.

`depin run` hosts every part in one process; `depin consume` / `depin api` / `depin epochs` run one
part each so they can be scaled independently. Whoever opens a resource closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from eth_account import Account
from web3 import AsyncHTTPProvider, AsyncWeb3

from devices.chain import Deployment, DistributorClient, RegistryClient, Signer
from ingest.adapters.db import create_pool, embedded_postgres, migrate, redacted
from ingest.adapters.mqtt import MqttConfig, subscription, tls_context, uses_tls
from ingest.adapters.store import Store
from ingest.api.app import create_app
from ingest.brokerauth import read_password_file
from ingest.consumer import Consumer
from ingest.core import rules
from ingest.core.rejection_budget import BudgetConfig, RejectionBudget
from ingest.epochs import EpochConfig, Epochs
from ingest.pipeline import PipelineConfig
from ingest.registry import PROVIDER_OPTIONS, RegistryFollower, RegistryMirror
from ingest.retention import run_retention
from ingest.settings import Settings

log = logging.getLogger(__name__)

PARTS = ("consume", "follow", "epochs", "api")


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[Store]:
    """A migrated Store on DEPIN_DATABASE_URL, or on an embedded PostgreSQL when none is given."""
    async with AsyncExitStack() as stack:
        dsn = settings.database_url
        if dsn is None:
            pg_dir = settings.data_dir / "pg"
            dsn = await stack.enter_async_context(embedded_postgres(pg_dir))
            log.info("database: embedded PostgreSQL in %s (DEPIN_DATABASE_URL unset)", pg_dir)
        else:
            log.info("database: %s", redacted(dsn))
        pool = await create_pool(dsn)
        stack.push_async_callback(pool.close)
        info = await migrate(pool)
        log.info(
            "database ready: %s, migrations %s",
            "TimescaleDB hypertables" if info.timescale else "native partitions (no TimescaleDB)",
            ", ".join(info.applied) if info.applied else "up to date",
        )
        yield Store(pool)


def rewards_account(settings: Settings) -> Any:
    if settings.rewards_key is not None:
        return Account.from_key(settings.rewards_key.get_secret_value())
    if settings.rewards_key_file is not None:
        return Account.from_key(settings.rewards_key_file.read_text().strip())
    return None


@dataclass
class Node:
    """The service's parts, built once; `tasks()` yields the coroutines to run for the chosen parts."""

    settings: Settings
    store: Store
    mirror: RegistryMirror
    follower: RegistryFollower
    consumer: Consumer
    epochs: Epochs

    async def ready(self) -> dict[str, Any]:
        db_ok = True
        try:
            await self.store.pool.fetchval("SELECT 1")
        except Exception:
            db_ok = False
        chain_ok = self.follower.healthy and self.follower.rpc_up
        report: dict[str, Any] = {
            "database": db_ok,
            "registry": self.follower.healthy,
            "registry_block": self.mirror.block,
            "devices": len(self.mirror.devices),
            "chain_rpc": self.follower.rpc_up,
            "chain_error": self.follower.last_error,
            "mqtt": self.consumer.connected.is_set(),
        }
        # Name what is failing, so a 503 says "chain" (RPC down: known devices still flow) or "database".
        report["failing"] = [name for name, ok in (("database", db_ok), ("chain", chain_ok)) if not ok]
        report["ready"] = db_ok and chain_ok
        return report

    def app(self) -> web.Application:
        return create_app(self.store, self.ready, max_rows=self.settings.api_max_rows)


def build_node(
    settings: Settings,
    store: Store,
    w3: AsyncWeb3,
    deployment: Deployment,
    *,
    rewards: Any = None,
    mqtt: MqttConfig | None = None,
) -> Node:
    mirror = RegistryMirror()
    follower = RegistryFollower(
        RegistryClient(w3, deployment, None),
        store,
        mirror,
        start_block=deployment.block,
        confirmations=settings.chain_confirmations,
        poll_s=settings.registry_poll_s,
    )
    pipeline = PipelineConfig(
        max_message_bytes=settings.max_message_bytes,
        time_limits=rules.TimeLimits(settings.max_future_ms, settings.max_lateness_ms),
        classes=mirror.classes_view(),  # the chain's hardware classes, as the follower folds them
    )
    mqtt = mqtt or mqtt_config(settings)  # one builder: login, TLS, manual ack and feedback included
    consumer = Consumer(
        mqtt,
        store,
        mirror.lookup,
        pipeline=pipeline,
        batch_max_size=settings.batch_max_size,
        batch_max_wait_s=settings.batch_max_wait_ms / 1000,
        prefetch=follower.prefetch,  # ids the mirror does not know: bounded, cached chain reads
        rejection_budget=RejectionBudget(
            BudgetConfig(
                per_topic_per_min=settings.rejections_per_topic_per_min,
                per_topic_burst=settings.rejections_per_topic_burst,
                total_per_min=settings.rejections_per_worker_per_min,
            )
        ),
    )
    distributor = DistributorClient(w3, deployment, Signer(w3, rewards) if rewards is not None else None)
    epochs = Epochs(
        store,
        distributor,
        EpochConfig(
            genesis_ms=settings.epoch_genesis_ms,
            length_ms=int(settings.epoch_length_s * 1000),
            emission=settings.epoch_emission,
            max_devices_per_cell=settings.max_devices_per_cell,
            grace_ms=int(settings.epoch_grace_s * 1000),
        ),
    )
    return Node(settings, store, mirror, follower, consumer, epochs)


@asynccontextmanager
async def serve_api(app: web.Application, host: str, port: int) -> AsyncIterator[str]:
    """Run the API until the context exits; yields its base URL (port 0 → a free port)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    try:
        server = site._server  # aiohttp exposes the bound port only here (port 0 → chosen by the OS)
        sockets = getattr(server, "sockets", None) or []
        bound = sockets[0].getsockname()[1] if sockets else port
        yield f"http://{host}:{bound}"
    finally:
        await runner.cleanup()


def mqtt_config(settings: Settings) -> MqttConfig:
    """The consumer's MQTT settings from DEPIN_MQTT_* (and DEPIN_ACK_FEEDBACK). Reads the password file
    here, at start: a missing or empty file stops `depin run` with one line instead of a reconnect loop."""
    password = None
    if settings.mqtt_password is not None:
        password = settings.mqtt_password.get_secret_value()
    elif settings.mqtt_password_file is not None:
        password = read_password_file(settings.mqtt_password_file)
    config = MqttConfig(
        host=settings.mqtt_host,
        port=settings.mqtt_port,
        client_id=settings.mqtt_client_id,
        group=settings.mqtt_group,
        shared=settings.mqtt_shared,
        receive_maximum=settings.mqtt_receive_maximum,
        username=settings.mqtt_username,
        password=password,
        tls=settings.mqtt_tls_on,
        tls_ca_file=_path(settings.mqtt_tls_ca_file),
        tls_cert_file=_path(settings.mqtt_tls_cert_file),
        tls_key_file=_path(settings.mqtt_tls_key_file),
        manual_ack=settings.mqtt_manual_ack,
        ack_feedback=settings.ack_feedback,
    )
    try:
        tls_context(config)  # load the CA and client certificate now, not at every reconnect attempt
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        files = "DEPIN_MQTT_TLS_CA_FILE / DEPIN_MQTT_TLS_CERT_FILE / DEPIN_MQTT_TLS_KEY_FILE"
        raise ValueError(f"cannot load the MQTT TLS files ({files}): {exc}") from None
    return config


def _path(p: Path | None) -> str | None:
    return None if p is None else str(p)


async def first_registry_sync(node: Node, timeout_s: float = 30.0) -> None:
    """Catch the mirror up with the chain before consuming, so registered devices are not rejected as
    unknown while a fresh worker replays events. Chain down: go on with the persisted mirror (the
    follower keeps retrying; `/readyz` and `depin_chain_rpc_up` show it)."""
    try:
        await asyncio.wait_for(node.follower.sync_once(), timeout_s)
    except Exception as exc:
        log.warning("registry not synced before consuming (%s); using the persisted mirror", exc)


async def run(settings: Settings, parts: Iterable[str] = PARTS) -> None:
    """`depin run`: the chosen parts until SIGINT/SIGTERM, then an ordered stop.

    `consume` implies `follow` (the consumer judges against the registry mirror). If a part stops on
    its own (a bug, an error it does not handle) the process stops with an error rather than staying up
    half-dead: its messages are unacked, so the broker hands them to the restarted (or another) worker.
    """
    parts = set(parts)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    log.info("depin run: parts %s (pid %d)", ", ".join(p for p in PARTS if p in parts), os.getpid())
    mqtt = mqtt_config(settings)  # before anything starts: an unreadable password file is one error line
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(open_store(settings))
        w3 = AsyncWeb3(AsyncHTTPProvider(settings.chain_rpc_url, **PROVIDER_OPTIONS))
        deployment = Deployment.load(settings.deployment_file)
        log.info(
            "chain: %s, deployment %s (chain id %d, registry %s, distributor %s, from block %d)",
            settings.chain_rpc_url,
            settings.deployment_file,
            deployment.chain_id,
            deployment.registry,
            deployment.distributor,
            deployment.block,
        )
        rewards = rewards_account(settings)
        node = build_node(settings, store, w3, deployment, rewards=rewards, mqtt=mqtt)
        await node.follower.load()
        if "consume" in parts:
            await first_registry_sync(node)
        if "follow" in parts or "consume" in parts:
            log.info(
                "registry mirror: %d devices at block %d; polling every %.1f s",
                len(node.mirror.devices),
                node.mirror.block,
                settings.registry_poll_s,
            )
        tasks: list[asyncio.Task[None]] = []
        if "follow" in parts or "consume" in parts:
            tasks.append(asyncio.create_task(node.follower.run(), name="follower"))
        if "consume" in parts:
            cfg = node.consumer.mqtt
            log.info(
                "MQTT: broker %s:%d%s, client id %s, %s, subscription %s",
                cfg.host,
                cfg.port,
                " (TLS)" if uses_tls(cfg) else "",
                cfg.client_id,
                f"user {cfg.username}" if cfg.username else "anonymous",
                subscription(cfg),
            )
            tasks.append(asyncio.create_task(node.consumer.run(), name="consumer"))
            tasks.append(
                asyncio.create_task(
                    run_retention(
                        store,
                        int(settings.rejections_retention_days * 86_400_000),
                        settings.rejections_unsigned_keep,
                        settings.rejections_prune_interval_s,
                    ),
                    name="rejections-retention",
                )
            )
        if "epochs" in parts:
            log.info(
                "epochs: length %s s from genesis %s, grace %s s; %s",
                f"{settings.epoch_length_s:g}",
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(settings.epoch_genesis_ms / 1000)),
                f"{settings.epoch_grace_s:g}",
                f"publishing as {rewards.address}"
                if rewards is not None
                else "no DEPIN_REWARDS_KEY(_FILE): epochs are closed but not published",
            )
            tasks.append(asyncio.create_task(node.epochs.run(), name="epochs"))
        if "api" in parts:
            url = await stack.enter_async_context(serve_api(node.app(), settings.api_host, settings.api_port))
            log.info("API listening on %s (try %s/readyz)", url, url)
        stopping = asyncio.create_task(stop.wait(), name="stop")
        await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
        ended = [t for t in tasks if t.done()]
        log.info("stopping", extra={"consumer": vars(node.consumer.stats)})
        for t in [stopping, *tasks]:
            t.cancel()
        await asyncio.gather(stopping, *tasks, return_exceptions=True)
        for t in ended:
            exc = None if t.cancelled() else t.exception()
            raise RuntimeError(f"part {t.get_name()!r} stopped unexpectedly: {exc!r}") from exc
        log.info("stopped")
