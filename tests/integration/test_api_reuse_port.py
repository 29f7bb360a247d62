"""DEPIN_API_REUSE_PORT: several `depin run --parts api` processes share one port (SO_REUSEPORT) and
the kernel spreads new connections over them; without the setting a taken port still fails the start
(the demo relies on that to pick another port)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from ingest.dev.broker import free_port
from tests.fixtures_pg import Store
from tests.procs import REPO, ConsumerProcess, wait_for

pytestmark = pytest.mark.integration


def api_env(dsn: str, port: int, reuse: bool | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPIN_")}
    env.update(DEPIN_DATABASE_URL=dsn, DEPIN_API_HOST="127.0.0.1", DEPIN_API_PORT=str(port))
    env["PYTHONUNBUFFERED"] = "1"
    if reuse is not None:
        env["DEPIN_API_REUSE_PORT"] = "true" if reuse else "false"
    return env


async def pids_answering(url: str, want: set[int] | None, tries: int = 400) -> set[int]:
    """The pids that answer /healthz on `url`, one new connection per request, until `want` are seen
    (None: all `tries` requests)."""
    seen: set[int] = set()
    for _ in range(tries):
        # A new session per request: a new connection (a new source port) for the kernel to place.
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            async with http.get(f"{url}/healthz") as r:
                assert r.status == 200
                seen.add((await r.json())["pid"])
        if want is not None and want <= seen:
            break
    return seen


def listening(p: ConsumerProcess) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        assert p.proc is not None and p.proc.poll() is None, p.log_tail()
        return "API listening" in p.log_tail()

    return check


async def test_two_api_processes_share_a_port(store: Store, pg_dsn: str, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    procs = [
        ConsumerProcess(
            api_env(pg_dsn, port, reuse=True),
            tmp_path / f"api-{i}.log",
            parts="api",
            wait_for_mqtt=False,
            fixed_port=port,
        )
        for i in range(2)
    ]
    try:
        for p in procs:
            await p.start()  # its /metrics may be answered by the other: wait for its own log line
            await wait_for(listening(p), 30, f"{p.log_file.name} to bind")
        pids = {p.proc.pid for p in procs if p.proc is not None}
        seen = await pids_answering(url, pids)
        logs = "\n".join(p.log_tail() for p in procs)
        assert seen == pids, (seen, pids, logs)
        assert all(p.proc is not None and p.proc.poll() is None for p in procs), logs
        assert "port shared: SO_REUSEPORT" in logs

        # The default (false): a third process on the taken port fails to bind and stops.
        refused = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "ingest.cli", "run", "--parts", "api"],
            cwd=REPO,
            env=api_env(pg_dsn, port, reuse=None),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert refused.returncode != 0, refused.stderr[-2000:]
        assert "address already in use" in (refused.stdout + refused.stderr).lower(), refused.stderr[-2000:]

        # One process gone, the other keeps the port and answers every new connection.
        await procs[0].stop()
        assert procs[1].proc is not None
        assert await pids_answering(url, None, tries=20) == {procs[1].proc.pid}
    finally:
        for p in procs:
            await p.stop()
