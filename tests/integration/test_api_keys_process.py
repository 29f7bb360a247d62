"""The key flow as an operator and a buyer meet it: `depin api-key …` commands and `depin run --parts
api` as processes, settings from the environment (DEPIN_API_KEYS=required)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.fixtures_keys import bearer, seed_station
from tests.fixtures_pg import Store
from tests.procs import REPO, ConsumerProcess, wait_for

pytestmark = pytest.mark.integration


def depin_key(dsn: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPIN_")}
    if dsn is not None:
        env["DEPIN_DATABASE_URL"] = dsn
    return subprocess.run(
        [sys.executable, "-m", "ingest.cli", "api-key", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_keys_metering_quota_and_revoke_in_a_running_api(
    store: Store, pg_dsn: str, tmp_path: Path
) -> None:
    device = (await seed_station(store, time.time_ns() // 1_000_000, n=5)).hex()
    made = depin_key(pg_dsn, "create", "--name", "buyer one", "--scopes", "read", "--quota", "12", "--json")
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    key, key_id = created["key"], created["id"]
    assert key.startswith(key_id) and created["scopes"] == ["read"] and created["quota"] == 12
    assert (
        await store.pool.fetchval(
            "SELECT count(*) FROM api_keys WHERE key_sha256 = sha256($1::bytea)", key.encode()
        )
        == 1
    )
    assert (
        await store.pool.fetchval("SELECT count(*) FROM api_keys WHERE name = $1", key) == 0
    )  # never stored
    plain = depin_key(pg_dsn, "create", "--name", "second")
    assert plain.returncode == 0 and "key  dpk_" in plain.stdout, plain.stdout

    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPIN_")}
    env.update(
        DEPIN_DATABASE_URL=pg_dsn,
        DEPIN_API_KEYS="required",
        DEPIN_API_KEY_CACHE_S="0.5",
        DEPIN_API_CORS_ORIGINS="https://map.example",
        PYTHONUNBUFFERED="1",
    )
    api = ConsumerProcess(env, tmp_path / "api.log", parts="api", wait_for_mqtt=False)
    try:
        await api.start()
        url = api.url
        readings = f"{url}/v1/readings?device={device}"
        async with aiohttp.ClientSession() as http:
            async with http.get(readings) as r:
                assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
            async with http.get(readings, headers={**bearer(key), "Origin": "https://map.example"}) as r:
                assert r.status == 200, await r.text()
                assert len((await r.json())["readings"]) == 5
                assert r.headers["Access-Control-Allow-Origin"] == "https://map.example"
            units = await store.pool.fetchval("SELECT sum(units) FROM usage WHERE key_id = $1", key_id)
            assert units == 5
            statuses = []
            for _ in range(3):  # 5, 10 units: under the quota of 12; then 15 ≥ 12
                async with http.get(readings, headers=bearer(key)) as r:
                    statuses.append(r.status)
                    retry = r.headers.get("Retry-After")
            assert statuses == [200, 200, 429], statuses
            assert retry is not None and 0 < int(retry) <= 86_400
            async with http.get(f"{url}/v1/usage", headers=bearer(key)) as r:
                body = await r.json()
            assert body["today"] == {"units": 15, "quota": 12, "resets_ms": body["today"]["resets_ms"]}
            assert sum(u["units"] for u in body["usage"]) == 15

            revoked = depin_key(pg_dsn, "revoke", key_id)
            assert revoked.returncode == 0 and f"revoked {key_id}" in revoked.stdout, revoked.stderr

            async def refused() -> bool:
                async with http.get(f"{url}/v1/usage", headers=bearer(key)) as r:
                    return r.status == 401

            await wait_for(refused, timeout=3, what="the revoke to reach the API (cache 0.5 s)")
        listed = json.loads(depin_key(pg_dsn, "list", "--json").stdout)
        assert (listed[0]["id"], listed[0]["revoked"] is not None) == (key_id, True)
        assert depin_key(pg_dsn, "revoke", "dpk_zzzzzzzz").returncode == 1
        bad = depin_key(pg_dsn, "create", "--name", "x", "--scopes", "write")
        assert bad.returncode == 2 and "scopes" in bad.stderr
        assert await api.stop() == 0, api.log_tail()
    finally:
        api.kill()


def test_api_key_commands_need_a_database_url() -> None:
    done = depin_key(None, "list")
    assert done.returncode == 1 and "DEPIN_DATABASE_URL" in done.stderr, done.stderr
