"""Wiring: database, registry mirror, consumer, epochs and API, owned by one AsyncExitStack.

`depin run` hosts the parts (`PARTS`: consume, follow, epochs, api) in one process; `depin run --parts`
picks some of them, so they can be scaled independently (e.g. `depin run --parts api` as its own
process). Each part gets its group of the settings (`ingest.settings.Settings`, built once by the
command) and nothing else is configured here. Whoever opens a resource closes it (docs/DESIGN.md §1).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from web3 import AsyncWeb3

from devices.chain.deployment import Deployment
from devices.chain.distributor import DistributorClient
from devices.chain.registry import RegistryClient
from devices.chain.signer import Signer
from devices.errors import DepinError
from ingest import metrics
from ingest.adapters.db import DbProbe, create_pool, embedded_postgres, migrate, redacted
from ingest.adapters.mqtt import subscription, uses_tls
from ingest.adapters.store import EpochStore, IngestStore, MirrorStore, ReadStore
from ingest.adapters.store.payouts import PayoutStore
from ingest.adapters.store.rollups import RollupStore
from ingest.api.app import ApiLimits, create_app
from ingest.api.auth import api_access
from ingest.api.map import configure as configure_map
from ingest.consumer import DB_TRANSIENT, Consumer
from ingest.core import readiness
from ingest.core.readiness import PartsState
from ingest.core.rejection_budget import RejectionBudget
from ingest.distributor_mirror import DistributorMirror
from ingest.epochs import Epochs
from ingest.pipeline import PipelineConfig
from ingest.registry import RegistryFollower, RegistryMirror, chain_provider
from ingest.retention import run_retention
from ingest.rewards_key import check_rewards_role, rewards_account, schedule_mismatch
from ingest.rollups import run_rollups
from ingest.settings import Settings

log = logging.getLogger(__name__)

PARTS = ("consume", "follow", "epochs", "api")


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
        api = settings.api
        return ApiLimits(
            max_rows=api.max_rows,
            max_page_bytes=api.max_page_bytes,
            slots=settings.database.pool_api_size,
            busy_timeout_s=api.busy_timeout_s,
            statement_timeout_ms=api.statement_timeout_ms,
            cursor_key=self.cursor_key,
        )


def state_dir_warning(data_dir: Path, environ: Mapping[str, str]) -> str | None:
    """Under a systemd unit with `StateDirectory=` (systemd passes it as $STATE_DIRECTORY, several
    separated by ':'), a DEPIN_DATA_DIR outside it is refused by `ProtectSystem=strict` or, in /tmp or
    /var/tmp, deleted at every stop (`PrivateTmp=`): the line to warn with, or None."""
    state = [Path(p) for p in environ.get("STATE_DIRECTORY", "").split(":") if p]
    if not state:
        return None
    where = Path(os.path.abspath(data_dir))
    if any(where == d or d in where.parents for d in state):
        return None
    return (
        f"DEPIN_DATA_DIR={data_dir} is outside the unit's state directory ({':'.join(map(str, state))}): "
        "under the shipped units' hardening the embedded PostgreSQL cannot write there, or loses its "
        "data at every stop in a private /tmp or /var/tmp; remove DEPIN_DATA_DIR from the env file or "
        "give the unit ReadWritePaths= (deploy/systemd/README.md)"
    )


@asynccontextmanager
async def open_stores(settings: Settings) -> AsyncIterator[Stores]:
    """Migrated database, one pool per part (sizes DEPIN_DB_POOL_*_SIZE), the API's cursor key."""
    db, api_timeout_ms = settings.database, settings.api.statement_timeout_ms
    async with AsyncExitStack() as stack:
        dsn = db.url
        if dsn is None:
            pg_dir = db.data_dir / "pg"
            outside = state_dir_warning(db.data_dir, os.environ)
            if outside:
                log.warning("%s", outside)
            dsn = await stack.enter_async_context(embedded_postgres(pg_dir))
            log.info("database: embedded PostgreSQL in %s (DEPIN_DATABASE_URL unset)", pg_dir)
        else:
            log.info("database: %s", redacted(dsn))
        ingest = await create_pool(
            dsn, min_size=2, max_size=db.pool_ingest_size, application_name="depin-ingest"
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
            dsn, min_size=0, max_size=db.pool_chain_size, application_name="depin-chain"
        )
        stack.push_async_callback(chain.close)
        api = await create_pool(
            dsn,
            min_size=0,
            max_size=db.pool_api_size,
            statement_timeout_ms=api_timeout_ms,
            application_name="depin-api",
            reset_session=False,  # a round trip per query saved: the API keeps no session state
        )
        stack.push_async_callback(api.close)
        probe = await create_pool(dsn, min_size=1, max_size=1, application_name="depin-probe")
        stack.push_async_callback(probe.close)
        log.info(
            "database pools: ingest %d, chain %d, api %d connections (api statement timeout %d ms), probe 1",
            db.pool_ingest_size,
            db.pool_chain_size,
            db.pool_api_size,
            api_timeout_ms,
        )
        if settings.api.cursor_secret is not None:
            key = hashlib.sha256(settings.api.cursor_secret.get_secret_value().encode()).digest()
        else:
            key = await _stored_cursor_key(ingest)
        # The per-device counts are kept by epoch (device_epoch_counts, migration 010).
        counting = IngestStore(
            ingest, epoch_genesis_ms=settings.epochs.genesis_ms, epoch_length_ms=settings.epochs.length_ms
        )
        yield Stores(counting, MirrorStore(chain), EpochStore(chain), ReadStore(api), DbProbe(probe), key)


async def _stored_cursor_key(pool: Any) -> bytes:
    """The database's cursor key (table api_secret), written once by whichever process starts first."""
    await pool.execute(
        "INSERT INTO api_secret (secret) VALUES ($1) ON CONFLICT DO NOTHING", secrets.token_bytes(32)
    )
    return bytes(await pool.fetchval("SELECT secret FROM api_secret"))


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
    """The service's parts, built once by `build_node`; `run` starts the chosen ones."""

    settings: Settings
    store: IngestStore
    mirror: RegistryMirror
    follower: RegistryFollower
    consumer: Consumer
    epochs: Epochs
    distributor: DistributorClient  # the epochs' chain; also for the start-up REWARDS_ROLE check
    parts: frozenset[str] = frozenset(PARTS)
    api_store: ReadStore | None = None  # the API's queries (its own pool); None: on `store`'s pool
    probe: DbProbe | None = None  # readiness check of the database on a connection of its own
    api_limits: ApiLimits | None = None
    distributor_mirror: DistributorMirror | None = None  # once started (`distributor_mirror`)

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
        dm = self.distributor_mirror
        if dm is not None:
            state = dataclasses.replace(
                state,
                distributor_failing=dm.failing,
                distributor_last_ok=dm.last_ok,
                distributor_watch_since=dm.watch_since,
            )
        failing = readiness.failing(parts, state, self.settings.ready)
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
        if "epochs" in parts and dm is not None:
            report.update(
                distributor_failing=dm.failing,
                distributor_block=dm.block,
                distributor_error=dm.last_error,
                distributor_last_sync_age_s=None if dm.last_ok is None else round(state.now - dm.last_ok, 1),
            )
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
        limits = self.api_limits or ApiLimits(max_rows=self.settings.api.max_rows)
        store = self.api_store or ReadStore(self.store.pool)
        app = create_app(store, self.ready, limits=limits, access=api_access(self.settings))
        app.middlewares.append(database_unavailable)
        configure_map(app, self.settings)
        return app


def build_node(
    settings: Settings,
    store: IngestStore,
    w3: AsyncWeb3,
    deployment: Deployment,
    *,
    rewards: Any = None,
    parts: Iterable[str] = PARTS,
    stores: Stores | None = None,
) -> Node:
    """The parts on `store`'s pool; with `stores`, each part on its own pool (`store` is then
    stores.ingest). Each part is built from its group of `settings`; the consumer's broker is
    `settings.mqtt`."""
    mirror_store = stores.mirror if stores is not None else MirrorStore(store.pool)
    epoch_store = stores.epochs if stores is not None else EpochStore(store.pool)
    mirror = RegistryMirror()
    follower = RegistryFollower(
        RegistryClient(w3, deployment, None),
        mirror_store,
        mirror,
        start_block=deployment.block,
        confirmations=settings.chain.confirmations,
        poll_s=settings.chain.registry_poll_s,
    )
    c = settings.consumer
    consumer = Consumer(
        settings.mqtt,
        store,
        mirror.lookup,
        pipeline=PipelineConfig(
            max_message_bytes=c.max_message_bytes,
            time_limits=c.time_limits,
            classes=mirror.classes_view(),  # the chain's hardware classes, as the follower folds them
        ),
        batch_max_size=c.batch_max_size,
        batch_max_wait_s=c.batch_max_wait_s,
        prefetch=follower.prefetch,  # ids the mirror does not know: bounded, cached chain reads
        rejection_budget=RejectionBudget(c.rejection_budget),
        shared_state=True,  # exact with N workers: the stateful rules judged against `device_state` rows
    )
    distributor = DistributorClient(w3, deployment, Signer(w3, rewards) if rewards is not None else None)
    epochs = Epochs(epoch_store, distributor, settings.epochs)
    node = Node(settings, store, mirror, follower, consumer, epochs, distributor, frozenset(parts))
    if stores is not None:
        node.api_store, node.probe = stores.api, stores.probe
        node.api_limits = stores.api_limits(settings)
    return node


def distributor_mirror(node: Node, pool: Any) -> DistributorMirror:
    """The `epochs` part's one mirror of the distributor's logs (ingest/distributor_mirror.py: payout
    events, deposits, bounties), on `pool` (the epochs' own), every DEPIN_DISTRIBUTOR_POLL_S, trusting
    blocks as deep as the registry follower does. Kept on the node: /readyz judges it."""
    chain = node.settings.chain
    node.distributor_mirror = DistributorMirror(
        PayoutStore(pool),
        node.distributor,
        confirmations=chain.confirmations,
        poll_s=chain.distributor_poll_s,
        on_veto=node.epochs.vetoed,
    )
    return node.distributor_mirror


@asynccontextmanager
async def serve_api(
    app: web.Application, host: str, port: int, *, reuse_port: bool = False
) -> AsyncIterator[str]:
    """Run the API until the context exits; yields its base URL (port 0 → a free port). `reuse_port`
    (DEPIN_API_REUSE_PORT): bind with SO_REUSEPORT, so other API processes may bind the same port."""
    # Request lines up to 32 KiB (aiohttp's default is 8 KiB): a `polygon=` of 2,000 characters may
    # take 12 bytes a character once percent-encoded (README "Queries, aggregates, exports").
    runner = web.AppRunner(app, access_log=None, max_line_size=32_768)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port)
    await site.start()
    try:
        server = site._server  # aiohttp exposes the bound port only here (port 0 → chosen by the OS)
        sockets = getattr(server, "sockets", None) or []
        bound = sockets[0].getsockname()[1] if sockets else port
        yield f"http://{host}:{bound}"
    finally:
        await runner.cleanup()


async def first_registry_sync(node: Node, timeout_s: float = 30.0) -> None:
    """Catch the mirror up with the chain before consuming, so registered devices are not rejected as
    unknown while a fresh worker replays events. Chain down: go on with the persisted mirror (the
    follower keeps retrying; `/readyz` and `depin_chain_rpc_up` show it)."""
    try:
        await node.follower.first_sync(timeout_s)  # never cancels a chain read in flight
    except Exception as exc:
        log.warning("registry not synced before consuming (%s); using the persisted mirror", exc)


# A part's main loop, started as a task of its name once every part is wired.
Part = Callable[[], Coroutine[Any, Any, None]]


class PartStoppedError(DepinError):
    """A part's task ended on its own (a bug, an error it does not handle): the process stops."""


async def run(settings: Settings, parts: Iterable[str] = PARTS) -> None:
    """`depin run`: the chosen parts until SIGINT/SIGTERM, then an ordered stop.

    `consume` implies `follow` (the consumer judges against the registry mirror). If a part stops on
    its own the process stops with an error rather than staying up half-dead: its messages are
    unacked, so the broker hands them to the restarted (or another) worker.
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
    # Before anything starts, like the MQTT files (read by load_settings): the rewards key's format and
    # file mode are one error line. Its role is checked once the chain is known.
    rewards = rewards_account(settings.chain) if "epochs" in parts else None
    async with AsyncExitStack() as stack:
        stores = await stack.enter_async_context(open_stores(settings))
        w3, deployment = await _open_chain(stack, settings)
        node = build_node(
            settings, stores.ingest, w3, deployment, rewards=rewards, parts=parts, stores=stores
        )
        if rewards is not None:
            setting = "DEPIN_REWARDS_KEY_FILE" if settings.chain.rewards_key_file else "DEPIN_REWARDS_KEY"
            await check_rewards_role(node.distributor, rewards, setting)
        if "epochs" in parts:
            # With a key, a stop: epochs numbered otherwise than on chain, or a schedule the contract's cap
            # refuses, would be closed into manifests that can never be published as computed. Without
            # one nothing is published, so a warning; the start that brings a key refuses.
            e = settings.epochs
            mismatch = await schedule_mismatch(
                node.distributor,
                e.genesis_ms,
                e.length_ms,
                e.emission,
                halving_epochs=e.emission_halving_epochs,
                recorded_halving_epochs=None
                if deployment.schedule is None
                else deployment.schedule.emission_halving_epochs,
            )
            if mismatch:
                problem = f"the distributor's emission schedule does not fit the settings: {mismatch}"
                if rewards is not None:
                    raise ValueError(problem)
                log.warning("%s (no rewards key: nothing is published; with one, depin run refuses)", problem)
        await node.follower.load()
        tasks: dict[str, Part] = {}
        if "follow" in parts or "consume" in parts:
            tasks["follower"] = await _follow(node, first_sync="consume" in parts)
        if "consume" in parts:
            tasks.update(_consume(node, stores.ingest))
        if "epochs" in parts:
            tasks["epochs"] = _epochs(node, rewards)
            # The distributor's logs into the database: claims and roots (GET /v1/owners/{address}/
            # rewards, vetoes), buyers' deposits and bounties (the API's credit, the epochs' market split).
            tasks["distributor-mirror"] = distributor_mirror(node, stores.epochs.pool).run
            # On the epochs' pool: one connection per refresh, one hour at a time.
            rollups = RollupStore(stores.epochs.pool)
            tasks["rollups"] = lambda: run_rollups(rollups, settings.epochs.rollup_interval_s)
        if "api" in parts:
            api = settings.api
            url = await stack.enter_async_context(
                serve_api(node.app(), api.host, api.port, reuse_port=api.reuse_port)
            )
            shared = " (port shared: SO_REUSEPORT)" if api.reuse_port else ""
            log.info("API listening on %s%s (try %s/readyz)", url, shared, url)
        await _until_stopped(tasks, stop, node)
        log.info("stopped")


async def _open_chain(stack: AsyncExitStack, settings: Settings) -> tuple[AsyncWeb3, Deployment]:
    chain = settings.chain
    w3 = AsyncWeb3(chain_provider(chain.rpc_url, chain.rpc_timeout_s))
    stack.push_async_callback(w3.provider.disconnect)
    deployment = Deployment.load(chain.deployment_file)
    log.info(
        "chain: %s, deployment %s (chain id %d, registry %s, distributor %s, from block %d)",
        chain.rpc_url,
        chain.deployment_file,
        deployment.chain_id,
        deployment.registry,
        deployment.distributor,
        deployment.block,
    )
    return w3, deployment


async def _follow(node: Node, *, first_sync: bool) -> Part:
    if first_sync:
        await first_registry_sync(node)
    log.info(
        "registry mirror: %d devices at block %d; polling every %.1f s",
        len(node.mirror.devices),
        node.mirror.block,
        node.settings.chain.registry_poll_s,
    )
    return node.follower.run


def _consume(node: Node, store: IngestStore) -> dict[str, Part]:
    cfg, c = node.consumer.mqtt, node.settings.consumer
    log.info(
        "MQTT: broker %s:%d%s, client id %s, %s, subscription %s",
        cfg.host,
        cfg.port,
        " (TLS)" if uses_tls(cfg) else "",
        cfg.client_id,
        f"user {cfg.username}" if cfg.username else "anonymous",
        subscription(cfg),
    )
    return {
        "consumer": node.consumer.run,
        "rejections-retention": lambda: run_retention(store, c),
    }


def _epochs(node: Node, rewards: Any) -> Part:
    c = node.settings.epochs
    log.info(
        "epochs: length %s s from genesis %s, grace %s s; %s",
        f"{c.length_ms / 1000:g}",
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(c.genesis_ms / 1000)),
        f"{c.grace_ms / 1000:g}",
        f"publishing as {rewards.address}"
        if rewards is not None
        else "no DEPIN_REWARDS_KEY(_FILE): epochs are closed but not published",
    )
    return node.epochs.run


async def _until_stopped(parts: dict[str, Part], stop: asyncio.Event, node: Node) -> None:
    """Run the parts until `stop` is set or one of them ends (PartStoppedError), then cancel all."""
    tasks = [asyncio.create_task(part(), name=name) for name, part in parts.items()]
    stopping = asyncio.create_task(stop.wait(), name="stop")
    await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
    ended = [t for t in tasks if t.done()]
    log.info("stopping", extra={"consumer": vars(node.consumer.stats)})
    for t in [stopping, *tasks]:
        t.cancel()
    await asyncio.gather(stopping, *tasks, return_exceptions=True)
    for t in ended:
        exc = None if t.cancelled() else t.exception()
        # The traceback goes to the log: the command line shows only the one-line error.
        log.error("part %r stopped unexpectedly", t.get_name(), exc_info=exc)
        raise PartStoppedError(f"part {t.get_name()!r} stopped unexpectedly: {exc!r}") from exc


async def run_api_only(settings: Settings, stop: asyncio.Event) -> None:
    """`depin run --parts api`: the API alone, on the database only — no broker, no chain, no
    deployment file, no registry mirror. Ready while the database answers."""

    async def ready() -> dict[str, Any]:
        db_ok = await stores.probe()
        failing = [] if db_ok else ["database"]
        return {"parts": ["api"], "database": db_ok, "failing": failing, "ready": db_ok}

    async with open_stores(settings) as stores:
        app = create_app(stores.api, ready, limits=stores.api_limits(settings), access=api_access(settings))
        app.middlewares.append(database_unavailable)
        configure_map(app, settings)
        api = settings.api
        async with serve_api(app, api.host, api.port, reuse_port=api.reuse_port) as url:
            log.info(
                "API listening on %s%s (try %s/readyz); API only: no consumer, follower, epochs",
                url,
                " (port shared: SO_REUSEPORT)" if api.reuse_port else "",
                url,
            )
            await stop.wait()
    log.info("stopped")
