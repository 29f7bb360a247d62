"""PostgreSQL fixtures: ONE embedded server per test session, a fresh database per test.

`DEPIN_TEST_DATABASE_URL` (a DSN of a server where the user may CREATE DATABASE) replaces the embedded
server. These fixtures never skip: a test that needs PostgreSQL and cannot get it fails.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from ingest.adapters.db import create_pool, dsn_with_database, embedded_postgres, migrate
from ingest.adapters.store import EpochStore, IngestStore, MirrorStore, ReadStore

__all__ = ["Store", "pg_dsn", "pg_server_dsn", "store"]


class Store(IngestStore, MirrorStore, ReadStore, EpochStore):
    """Every caller's part of the store on one pool, so a test writes a batch and reads it back through
    one fixture. The service never builds this: each part gets its own class (`ingest.service.Stores`)."""


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def pg_server_dsn() -> AsyncIterator[str]:
    """DSN of the session's server (its `postgres` database): create databases from here."""
    url = os.environ.get("DEPIN_TEST_DATABASE_URL")
    if url:
        yield url
        return
    started = time.perf_counter()
    server = embedded_postgres()  # throw-away /tmp/depin-pg-* data dir, deleted at the end
    try:
        dsn = await server.__aenter__()
    except Exception as exc:
        pytest.fail(
            f"embedded PostgreSQL did not start ({exc!r}); see the wheel's log in the data dir, or set "
            "DEPIN_TEST_DATABASE_URL to a server where CREATE DATABASE is allowed",
            pytrace=False,
        )
    print(f"\nembedded PostgreSQL up in {time.perf_counter() - started:.2f} s: {dsn}")
    try:
        yield dsn
    finally:
        await server.__aexit__(None, None, None)


@pytest_asyncio.fixture
async def pg_dsn(pg_server_dsn: str) -> AsyncIterator[str]:
    """DSN of a fresh, empty (unmigrated) database, dropped after the test."""
    name = f"test_{uuid.uuid4().hex}"
    try:
        admin = await asyncpg.connect(pg_server_dsn)
    except Exception as exc:
        pytest.fail(f"cannot connect to the test PostgreSQL server ({exc!r})", pytrace=False)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield dsn_with_database(pg_server_dsn, name)
    finally:
        admin = await asyncpg.connect(pg_server_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest_asyncio.fixture
async def store(pg_dsn: str) -> AsyncIterator[Store]:
    """Every part of the store on a freshly migrated database of its own."""
    pool = await create_pool(pg_dsn, min_size=1, max_size=4)
    try:
        await migrate(pool)
        yield Store(pool)
    finally:
        await pool.close()
