"""create_pool(reset_session=False) (the API's pool): a released connection skips asyncpg's session
reset (a round trip per release) but never goes back to the pool inside a transaction."""

from __future__ import annotations

import pytest

from ingest.adapters.db import create_pool

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("reset_session", [True, False])
async def test_session_reset_on_release(pg_dsn: str, reset_session: bool) -> None:
    pool = await create_pool(pg_dsn, max_size=1, application_name="depin-test", reset_session=reset_session)
    try:
        async with pool.acquire() as conn:
            await conn.execute("SET application_name = 'left behind'")
        async with pool.acquire() as conn:
            name = await conn.fetchval("SELECT current_setting('application_name')")
        assert name == ("depin-test" if reset_session else "left behind")

        async with pool.acquire() as conn:
            await conn.execute("BEGIN")
            await conn.execute("CREATE TABLE never_committed (x int)")
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass('never_committed')") is None
    finally:
        await pool.close()
