"""deploy/compose.yaml's own logic, run without a container runtime: its init job (deploy/compose/init.sh)
against anvil, its broker's config (deploy/compose/mosquitto.conf) on Mosquitto with the file the init job
wrote, its consumers' slot script (deploy/compose/consumer.sh) starting `depin run --parts consume,api`
on PostgreSQL, then its API and epoch worker with their command lines. The containers' paths (/state,
/slots) become temporary directories (STATE_DIR, SLOTS_DIR); everything else — the scripts, the config,
the dev keys and settings in compose.yaml — is used as written.

Proves: init deploys, registers the fleet and writes every login, and a re-run changes nothing; two
consumers take two different broker accounts and become ready (`/readyz` 200: database, chain and
the broker login and subscription); a third finds no free slot and says so; the API and the epoch
worker start ready, the worker publishing with the rewards key init wrote (REWARDS_ROLE and the
schedule are checked at its start); a device of the fleet logs in with the password init wrote and its
packet is stored."""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import asyncpg
import pytest
import yaml
from eth_account import Account

from devices.keys import load_identity
from devices.protocol.model import Reading
from devices.sdk import BrokerLogin, build_message, publish
from ingest.dev.broker import SecuredFiles, free_port, secured_config, start_mosquitto
from tests.procs import REPO, consumer_env, wait_for

pytestmark = pytest.mark.integration

COMPOSE_DIR = REPO / "deploy" / "compose"
VENV_BIN = Path(sys.executable).parent


def init_env(anvil_url: str, state: Path) -> dict[str, str]:
    """The init service's environment from compose.yaml, with the host's anvil and a temp state dir."""
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    written = compose["services"]["init"]["environment"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPIN_")}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        STATE_DIR=str(state),
        DEPIN_CHAIN_RPC_URL=anvil_url,
        DEPIN_DEPLOYMENT_FILE=str(state / "deployment.json"),
        DEV_OPERATOR_KEY=written["DEV_OPERATOR_KEY"],
        DEV_REWARDS_KEY=written["DEV_REWARDS_KEY"],
        SIM_OWNER=written["SIM_OWNER"],
        SIM_DEVICES="3",
        CONSUMER_SLOTS="2",
    )
    return env


def run_init(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", str(COMPOSE_DIR / "init.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


async def test_compose_init_broker_and_consumer_slots(tmp_path: Path, anvil_url: str, pg_dsn: str) -> None:
    state, slots = tmp_path / "state", tmp_path / "slots"
    state.mkdir()
    slots.mkdir()
    env = init_env(anvil_url, state)
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    first = run_init(env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "init: deployment, 3 devices and 2 consumer accounts ready" in first.stdout
    secrets = ("operator.key", "rewards.key", "mqtt/depin-ingest-1.pass", "mqtt/broker-admin.pass")
    for secret in (*secrets, "broker/dynamic-security.json"):
        assert stat.S_IMODE((state / secret).stat().st_mode) == 0o600, secret
    creds = sorted((state / "devices").glob("dev-*.json"))
    assert len(creds) == 3
    dynsec = json.loads((state / "broker" / "dynamic-security.json").read_text())
    users = {c["username"] for c in dynsec["clients"]}
    ids = {json.loads(c.read_text())["device_id"] for c in creds}
    assert users == {"depin-ingest-1", "depin-ingest-2", "depin-admin"} | ids
    deployment = (state / "deployment.json").read_text()

    again = run_init(env)  # idempotent: nothing redeployed, registered devices skipped
    assert again.returncode == 0, again.stdout + again.stderr
    assert (state / "deployment.json").read_text() == deployment
    assert "0 registered, 3 skipped" in again.stdout

    conf = (COMPOSE_DIR / "mosquitto.conf").read_text()
    writer = partial(
        secured_config, conf, files=SecuredFiles(dynsec_file=state / "broker" / "dynamic-security.json")
    )
    async with start_mosquitto(tmp_path / "broker", config=writer) as broker:
        procs: list[tuple[subprocess.Popen[bytes], Path, int]] = []
        try:
            for n in range(3):
                port = free_port()
                run_env = consumer_env(
                    database_url=pg_dsn,
                    mqtt_host=broker.host,
                    mqtt_port=broker.port,
                    client_id="overridden-by-the-slot",
                    group="ingest",
                    chain_rpc_url=anvil_url,
                    deployment_file=state / "deployment.json",
                    api_host="127.0.0.1",
                    api_port=port,
                    db_pool_api_size=1,
                )
                run_env.update(
                    PATH=env["PATH"], STATE_DIR=str(state), SLOTS_DIR=str(slots), CONSUMER_SLOTS="2"
                )
                log = tmp_path / f"consumer-{n}.log"
                with log.open("wb") as out:
                    proc = subprocess.Popen(  # noqa: ASYNC220 (fork and exec only)
                        [
                            "/bin/sh",
                            str(COMPOSE_DIR / "consumer.sh"),
                            "depin",
                            "run",
                            "--parts",
                            "consume,api",
                        ],
                        env=run_env,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                procs.append((proc, log, port))
                if n < 2:
                    await wait_for(partial(ready, port, proc, log), 90, f"consumer {n} ready")
            third, third_log, _ = procs[2]
            assert third.wait(30) == 1
            assert "all 2 slots are taken" in third_log.read_text()
            slots_taken = sorted(
                line for _, log, _ in procs[:2] for line in log.read_text().splitlines() if "slot" in line
            )
            assert slots_taken == [
                "consumer: slot 1 (broker account depin-ingest-1)",
                "consumer: slot 2 (broker account depin-ingest-2)",
            ]

            # A device of the fleet, with the login init wrote into its credential file.
            identity = load_identity(creds[0])
            now = int(time.time() * 1000)
            message = build_message(identity, 1, "dashcam", [Reading(now, 37.77, -122.42, {"speed": 10.0})])
            async with aiomqtt.Client(
                broker.host,
                broker.port,
                identifier=identity.device_id.hex(),
                **BrokerLogin.from_credentials(creds[0]).client_kwargs(),
            ) as client:
                await publish(client, identity, message)
            # The API and the epoch worker, with compose's command lines and the rewards key init made
            # (REWARDS_ROLE checked at start; the schedule checked against the distributor init deployed).
            for role in ("api", "epochs"):
                written = compose["services"][role]
                port = free_port()
                role_env = {
                    **run_env,
                    "DEPIN_API_PORT": str(port),
                    **{
                        k: v.replace("/state", str(state))
                        for k, v in written["environment"].items()
                        if k in ("DEPIN_REWARDS_KEY_FILE", "DEPIN_DB_POOL_API_SIZE")
                    },
                }
                log = tmp_path / f"{role}.log"
                with log.open("wb") as out:
                    proc = subprocess.Popen(  # noqa: ASYNC220 (fork and exec only)
                        ["depin", *written["command"]],
                        env=role_env,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                procs.append((proc, log, port))
                await wait_for(partial(ready, port, proc, log, mqtt=None), 90, f"{role} ready")
            rewards_account = Account.from_key(env["DEV_REWARDS_KEY"]).address
            epochs_log = (tmp_path / "epochs.log").read_text()
            assert f"publishing as {rewards_account}" in epochs_log, epochs_log

            conn = await asyncpg.connect(pg_dsn)
            try:
                await wait_for(
                    partial(
                        conn.fetchval, "SELECT count(*) FROM packets WHERE device_id = $1", identity.device_id
                    ),
                    30,
                    "the device's packet stored",
                )
            finally:
                await conn.close()

            # The attacker (profile simulator): `mixed` registered on chain, its logins created on the
            # running broker with the admin init made, then reconciled — compose's own script.
            (sh, flag, script) = compose["services"]["attacker"]["entrypoint"]
            script = re.sub(r"/state|/tmp", lambda m: str(state if m[0] == "/state" else tmp_path), script)
            attack = await asyncio.to_thread(
                subprocess.run,
                [sh, flag, script],
                env={**run_env, "DEPIN_OPERATOR_KEY_FILE": str(state / "operator.key")},
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
            assert attack.returncode == 0, attack.stdout + attack.stderr
            assert "no differences" in attack.stdout, attack.stdout
            assert "refused:not_authorized" in attack.stdout, attack.stdout
        finally:
            for proc, _, _ in procs:
                if proc.poll() is None:
                    proc.terminate()
            for proc, _, _ in procs:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()


async def ready(port: int, proc: subprocess.Popen[bytes], log: Path, mqtt: bool | None = True) -> bool:
    """/readyz answers 200 (and, for a consumer, says it is connected and subscribed)."""
    if proc.poll() is not None:
        tail = await asyncio.to_thread(log.read_text)
        raise AssertionError(f"consumer exited ({proc.returncode}):\n{tail[-3000:]}")
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
            http.get(f"http://127.0.0.1:{port}/readyz") as r,
        ):
            body: dict[str, Any] = await r.json()
            return r.status == 200 and body.get("mqtt") is mqtt
    except (TimeoutError, aiohttp.ClientError, OSError):
        return False
