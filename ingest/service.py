"""Wiring: database, registry mirror, consumer, epochs and API, owned by one AsyncExitStack.

`depin run` hosts the parts (`PARTS`: consume, follow, epochs, api) in one process; `--parts` picks
some of them, so they can be scaled independently (e.g. `depin run --parts api` as its own process).
Whoever opens a resource closes it (docs/DESIGN.md §1).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from web3 import AsyncWeb3

from devices.chain import Deployment, DistributorClient, RegistryClient, Signer
from ingest import metrics
from ingest.adapters.db import DbProbe, create_pool, embedded_postgres, migrate, redacted
from ingest.adapters.mqtt import MqttConfig, subscription, tls_context, uses_tls
from ingest.adapters.store import EpochStore, IngestStore, MirrorStore, ReadStore
from ingest.api.app import ApiLimits, create_app
from ingest.brokerauth import read_password_file
from ingest.consumer import DB_TRANSIENT, Consumer
from ingest.core import readiness, rules
from ingest.core.readiness import PartsState, ReadyRules
from ingest.core.rejection_budget import BudgetConfig, RejectionBudget
from ingest.epochs import EpochConfig, Epochs
from ingest.pipeline import PipelineConfig
from ingest.registry import RegistryFollower, RegistryMirror, chain_provider
from ingest.retention import run_retention
from ingest.rewards_key import check_rewards_role
from ingest.rewards_key import rewards_account as load_rewards_account
from ingest.settings import Settings

log = logging.getLogger(__name__)

PARTS = ("consume", "follow", "epochs", "api")


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[IngestStore]:
    """A migrated IngestStore on DEPIN_DATABASE_URL (or an embedded PostgreSQL): the ingest pool of
    `open_stores`, for callers that need only one."""
    async with open_stores(settings) as stores:
        yield stores.ingest


@dataclass
class Stores:
    """One asyncpg pool per part (docs/DESIGN.md §1, docs/RELIABILITY.md G34), so no part can take
    another's connections: the consumer's writes (`ingest`), the registry follower and the epoch
    scheduler (`chain`: `mirror` and `epochs`), the API (`api`: every statement cancelled after
    DEPIN_API_STATEMENT_TIMEOUT_MS), and one connection for readiness checks (`probe`)."""

    ingest: IngestStore
    mirror: MirrorStore
    epochs: EpochStore
    api: ReadStore
    probe: DbProbe
    cursor_key: bytes

    def api_limits(self, settings: Settings) -> ApiLimits:
        return ApiLimits(
            max_rows=settings.api_max_rows,
            max_page_bytes=settings.api_max_page_bytes,
            slots=settings.db_pool_api_size,
            busy_timeout_s=settings.api_busy_timeout_s,
            statement_timeout_ms=settings.api_statement_timeout_ms,
            cursor_key=self.cursor_key,
        )


@asynccontextmanager
async def open_stores(settings: Settings) -> AsyncIterator[Stores]:
    """Migrated database, one pool per part (sizes DEPIN_DB_POOL_*_SIZE), the API's cursor key."""
    async with AsyncExitStack() as stack:
        dsn = settings.database_url
        if dsn is None:
            pg_dir = settings.data_dir / "pg"
            dsn = await stack.enter_async_context(embedded_postgres(pg_dir))
            log.info("database: embedded PostgreSQL in %s (DEPIN_DATABASE_URL unset)", pg_dir)
        else:
            log.info("database: %s", redacted(dsn))
        ingest = await create_pool(
            dsn, min_size=2, max_size=settings.db_pool_ingest_size, application_name="depin-ingest"
        )
        stack.push_async_callback(ingest.close)
        info = await migrate(ingest)
        log.info(
            "database ready: %s, migrations %s",
            "TimescaleDB hypertables" if info.timescale else "native partitions (no TimescaleDB)",
            ", ".join(info.applied) if info.applied else "up to date",
        )
        # min_size=0: a part this process does not run opens no connection.
        chain = await create_pool(
            dsn, min_size=0, max_size=settings.db_pool_chain_size, application_name="depin-chain"
        )
        stack.push_async_callback(chain.close)
        api = await create_pool(
            dsn,
            min_size=0,
            max_size=settings.db_pool_api_size,
            statement_timeout_ms=settings.api_statement_timeout_ms,
            application_name="depin-api",
        )
        stack.push_async_callback(api.close)
        probe = await create_pool(dsn, min_size=1, max_size=1, application_name="depin-probe")
        stack.push_async_callback(probe.close)
        log.info(
            "database pools: ingest %d, chain %d, api %d connections (api statement timeout %d ms), probe 1",
            settings.db_pool_ingest_size,
            settings.db_pool_chain_size,
            settings.db_pool_api_size,
            settings.api_statement_timeout_ms,
        )
        if settings.api_cursor_secret is not None:
            key = hashlib.sha256(settings.api_cursor_secret.get_secret_value().encode()).digest()
        else:
            key = await _stored_cursor_key(ingest)
        yield Stores(
            IngestStore(ingest), MirrorStore(chain), EpochStore(chain), ReadStore(api), DbProbe(probe), key
        )


async def _stored_cursor_key(pool: Any) -> bytes:
    """The database's cursor key (table api_secret), written once by whichever process starts first."""
    await pool.execute(
        "INSERT INTO api_secret (secret) VALUES ($1) ON CONFLICT DO NOTHING", secrets.token_bytes(32)
    )
    return bytes(await pool.fetchval("SELECT secret FROM api_secret"))


def rewards_account(settings: Settings) -> Any:
    """The REWARDS_ROLE account, parsed strictly (ingest/rewards_key.py); None without a key."""
    return load_rewards_account(settings)


@web.middleware
async def database_unavailable(request: web.Request, handler: Any) -> web.StreamResponse:
    """A request that meets the database down or out of connections is a 503 with Retry-After, not a
    500: the client retries, the process keeps serving."""
    try:
        return await handler(request)
    except DB_TRANSIENT as exc:
        metrics.API_DB_UNAVAILABLE.inc()
        log.warning("API %s %s: database unavailable (%s)", request.method, request.path, exc)
        return web.json_response(
            {"error": "database unavailable, retry later"}, status=503, headers={"Retry-After": "1"}
        )


@dataclass
class Node:
    """The service's parts, built once; `tasks()` yields the coroutines to run for the chosen parts."""

    settings: Settings
    store: IngestStore
    mirror: RegistryMirror
    follower: RegistryFollower
    consumer: Consumer
    epochs: Epochs
    parts: frozenset[str] = frozenset(PARTS)
    api_store: ReadStore | None = None  # the API's queries (its own pool); None: on `store`'s pool
    probe: DbProbe | None = None  # readiness check of the database on a connection of its own
    api_limits: ApiLimits | None = None

    async def db_ok(self) -> bool:
        """`SELECT 1` on the probe's own connection (never behind API queries or ingest), else on `store`."""
        if self.probe is not None:
            return await self.probe()
        try:
            await asyncio.wait_for(self.store.pool.fetchval("SELECT 1"), 5)
        except Exception:
            return False
        return True

    async def ready(self) -> dict[str, Any]:
        """Readiness of the parts this process runs (`--parts`); the rules are
        `ingest.core.readiness.failing` (README "Readiness")."""
        db_ok = await self.db_ok()
        parts = set(self.parts)
        if "consume" in parts:
            parts.add("follow")
        s = self.settings
        state = PartsState(
            now=time.monotonic(),
            database_ok=db_ok,
            mqtt_connected=self.consumer.connected.is_set(),
            mqtt_down_since=self.consumer.down_since,
            chain_rpc_up=self.follower.rpc_up,
            chain_last_ok=self.follower.last_ok,
            chain_watch_since=self.follower.watch_since,
            epoch_failing=self.epochs.failing,
            epoch_due_since=self.epochs.due_since,
        )
        ready_rules = ReadyRules(s.ready_mqtt_grace_s, s.ready_chain_stale_s, s.ready_epoch_overdue_s)
        failing = readiness.failing(parts, state, ready_rules)
        report: dict[str, Any] = {"parts": sorted(self.parts), "database": db_ok}
        if "follow" in parts:
            report.update(
                registry=self.follower.healthy,
                registry_block=self.mirror.block,
                devices=len(self.mirror.devices),
                chain_rpc=self.follower.rpc_up,
                chain_error=self.follower.last_error,
                chain_last_sync_age_s=None
                if self.follower.last_ok is None
                else round(state.now - self.follower.last_ok, 1),
            )
        if "consume" in parts:
            report["mqtt"] = state.mqtt_connected
            if state.mqtt_down_since is not None:
                report["mqtt_down_s"] = round(state.now - state.mqtt_down_since, 1)
        if "epochs" in parts:
            report.update(
                epochs_failing=self.epochs.failing,
                epoch_error=self.epochs.last_error,
                epoch_due_s=None
                if self.epochs.due_since is None
                else round(state.now - self.epochs.due_since, 1),
            )
        # Name what is failing, so a 503 says "chain" (RPC down: known devices still flow) or "database".
        report["failing"] = failing
        report["ready"] = not failing
        return report

    def app(self) -> web.Application:
        limits = self.api_limits or ApiLimits(max_rows=self.settings.api_max_rows)
        app = create_app(self.api_store or ReadStore(self.store.pool), self.ready, limits=limits)
        app.middlewares.append(database_unavailable)
        return app


def build_node(
    settings: Settings,
    store: IngestStore,
    w3: AsyncWeb3,
    deployment: Deployment,
    *,
    rewards: Any = None,
    mqtt: MqttConfig | None = None,
    parts: Iterable[str] = PARTS,
    stores: Stores | None = None,
) -> Node:
    """The parts on `store`'s pool; with `stores`, each part on its own pool (`store` is then
    stores.ingest)."""
    mirror_store = stores.mirror if stores is not None else MirrorStore(store.pool)
    epoch_store = stores.epochs if stores is not None else EpochStore(store.pool)
    mirror = RegistryMirror()
    follower = RegistryFollower(
        RegistryClient(w3, deployment, None),
        mirror_store,
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
        epoch_store,
        distributor,
        EpochConfig(
            genesis_ms=settings.epoch_genesis_ms,
            length_ms=int(settings.epoch_length_s * 1000),
            emission=settings.epoch_emission,
            max_devices_per_cell=settings.max_devices_per_cell,
            grace_ms=int(settings.epoch_grace_s * 1000),
        ),
    )
    node = Node(settings, store, mirror, follower, consumer, epochs, frozenset(parts))
    if stores is not None:
        node.api_store, node.probe = stores.api, stores.probe
        node.api_limits = stores.api_limits(settings)
    return node


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
    if parts == {"api"}:
        await run_api_only(settings, stop)
        return
    mqtt = mqtt_config(settings)  # before anything starts: an unreadable password file is one error line
    # The same for the rewards key (format, file mode); its role is checked once the chain is known.
    rewards = rewards_account(settings) if "epochs" in parts else None
    async with AsyncExitStack() as stack:
        stores = await stack.enter_async_context(open_stores(settings))
        store = stores.ingest
        w3 = AsyncWeb3(chain_provider(settings.chain_rpc_url, settings.chain_rpc_timeout_s))
        stack.push_async_callback(w3.provider.disconnect)
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
        node = build_node(
            settings, store, w3, deployment, rewards=rewards, mqtt=mqtt, parts=parts, stores=stores
        )
        if rewards is not None and node.epochs.distributor is not None:
            setting = "DEPIN_REWARDS_KEY_FILE" if settings.rewards_key_file else "DEPIN_REWARDS_KEY"
            await check_rewards_role(node.epochs.distributor, rewards, setting)
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


async def run_api_only(settings: Settings, stop: asyncio.Event) -> None:
    """`depin run --parts api`: the API alone, on the database only — no broker, no chain, no
    deployment file, no registry mirror. Ready while the database answers."""

    async def ready() -> dict[str, Any]:
        db_ok = await stores.probe()
        failing = [] if db_ok else ["database"]
        return {"parts": ["api"], "database": db_ok, "failing": failing, "ready": db_ok}

    async with open_stores(settings) as stores:
        app = create_app(stores.api, ready, limits=stores.api_limits(settings))
        app.middlewares.append(database_unavailable)
        async with serve_api(app, settings.api_host, settings.api_port) as url:
            log.info("API listening on %s (try %s/readyz); API only: no consumer, follower, epochs", url, url)
            await stop.wait()
    log.info("stopped")
