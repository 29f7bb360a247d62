"""`depin broker dynsec --live` (as a CLI process) against Mosquitto running deploy/mosquitto.conf:
logins created, updated and removed on the running broker through the dynamic security plugin's
control topic, without a restart; what a live-created device may and may not do; the one-line errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from devices.keys import save_identity
from devices.sdk import BrokerLogin
from ingest.brokerauth import ADMIN_ROLE
from ingest.dev.broker import BrokerInfo
from simulator.fleet import next_message
from tests.fixtures_mqtt import secured_mosquitto
from tests.integration.test_secured_broker import (
    NOT_AUTHORIZED,
    Provisioned,
    connect_code,
    depin,
    listening,
    new_fleet,
    provision,
)
from tests.procs import REPO, wait_for

pytestmark = pytest.mark.integration

ADMIN = "depin-admin"


def depin_rc(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingest.cli", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def live(broker: BrokerInfo, admin_pass: Path, *args: str | Path, user: str = ADMIN) -> str:
    return depin(
        "broker",
        "dynsec",
        "--live",
        "--admin-user",
        user,
        "--admin-password-file",
        admin_pass,
        "--host",
        broker.host,
        "--port",
        str(broker.port),
        *args,
    )


@asynccontextmanager
async def until_kicked(broker: BrokerInfo, login: BrokerLogin) -> AsyncIterator[asyncio.Event]:
    """A connected client; the event is set when the broker disconnects it."""
    kicked = asyncio.Event()
    client = aiomqtt.Client(
        broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5, **login.client_kwargs()
    )
    await client.__aenter__()

    async def watch() -> None:
        try:
            async for _ in client.messages:
                pass
        except aiomqtt.MqttError:
            kicked.set()

    watcher = asyncio.create_task(watch())
    try:
        yield kicked
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        with contextlib.suppress(aiomqtt.MqttError):
            await client.__aexit__(None, None, None)


def with_admin(p: Provisioned, d: Path) -> Path:
    """The operator's bootstrap: an admin account in the file, before the broker starts."""
    admin_pass = d / "admin.pass"
    depin("broker", "dynsec", "--file", p.dynsec, "--admin", ADMIN, "--password-file", admin_pass)
    return admin_pass


async def test_a_device_added_live_publishes_on_its_own_topic_only_and_removal_cuts_it_off(
    tmp_path: Path,
) -> None:
    old, new = new_fleet(2, ["0x" + "a1" * 20])
    p = provision(tmp_path / "auth", [old])
    admin_pass = with_admin(p, tmp_path / "auth")
    doc = json.loads(p.dynsec.read_text())
    assert {r["rolename"] for r in doc["roles"]} >= {ADMIN_ROLE, "depin-service"}
    new_cred = tmp_path / "auth" / "new.json"
    save_identity(new.identity, new_cred)
    async with secured_mosquitto(tmp_path / "broker", p.files()) as broker:
        assert await connect_code(broker, p.service()) == 0
        # The new device has no login yet; the operator adds it to the running broker.
        assert await connect_code(broker, BrokerLogin(new.identity.hex_id, "guess")) == NOT_AUTHORIZED
        out = live(broker, admin_pass, "--cred", new_cred, "--file", p.dynsec)
        assert "1 client(s) created, 0 updated" in out and f"{p.dynsec} updated too" in out, out
        login = BrokerLogin.from_credentials(new_cred)
        async with listening(broker, p.service(), ["depin/v1/+/up"]) as (_, got):
            async with aiomqtt.Client(
                broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5, **login.client_kwargs()
            ) as dev:
                await dev.publish(old.topic, next_message(new, 1_000), qos=1)  # another's topic: dropped
                await dev.publish(new.topic, next_message(new, 2_000), qos=1)

                async def own_arrived() -> bool:
                    return any(t == new.topic for t, _ in got)

                await wait_for(own_arrived, 10, "the live device's packet at the service")
                await asyncio.sleep(0.3)
                assert [t for t, _ in got] == [new.topic]

        # Re-running is idempotent: the client exists and gets its password and role set again. The
        # plugin disconnects it for that (it enforces a changed login at once); it logs in again.
        async with until_kicked(broker, login) as kicked:
            again = live(broker, admin_pass, "--cred", new_cred)
            assert "0 client(s) created, 1 updated" in again, again
            await asyncio.wait_for(kicked.wait(), 10)
        assert await connect_code(broker, login) == 0
        assert await connect_code(broker, p.device(old)) == 0  # the file's devices are untouched

        # Removal disconnects a connected device at once, and it cannot log in again.
        async with until_kicked(broker, login) as kicked:
            out = live(broker, admin_pass, "--remove", new.identity.hex_id, "--file", p.dynsec)
            assert "1 removed" in out, out
            await asyncio.wait_for(kicked.wait(), 10)
        assert await connect_code(broker, login) == NOT_AUTHORIZED
        assert "0 removed" in live(broker, admin_pass, "--remove", new.identity.hex_id)

        # The operator's copy was kept in step: the device was added, then removed.
        names = {c["username"] for c in json.loads(p.dynsec.read_text())["clients"]}
        assert new.identity.hex_id not in names and old.identity.hex_id in names


async def test_live_changes_survive_a_broker_restart(tmp_path: Path) -> None:
    """The plugin saves what it accepts to its own file (here: the broker's file is the test's)."""
    (dev,) = new_fleet(1, ["0x" + "a1" * 20])
    p = provision(tmp_path / "auth", [])
    admin_pass = with_admin(p, tmp_path / "auth")
    cred = tmp_path / "auth" / "dev.json"
    save_identity(dev.identity, cred)
    async with secured_mosquitto(tmp_path / "broker", p.files()) as broker:
        live(broker, admin_pass, "--cred", cred)  # no --file: only the broker's own file changes
        saved = {c["username"] for c in json.loads(p.dynsec.read_text())["clients"]}
        assert dev.identity.hex_id in saved
        await broker.restart()
        assert await connect_code(broker, BrokerLogin.from_credentials(cred)) == 0


async def test_live_errors_are_one_line(tmp_path: Path, mosquitto: Any) -> None:
    (dev,) = new_fleet(1, ["0x" + "a1" * 20])
    p = provision(tmp_path / "auth", [dev])
    admin_pass = with_admin(p, tmp_path / "auth")
    wrong = tmp_path / "wrong.pass"
    wrong.write_text("nope\n")
    dev_pass = tmp_path / "dev.pass"
    dev_pass.write_text(p.device(dev).password or "")

    def fails(broker: BrokerInfo, *args: str | Path) -> str:
        proc = depin_rc(
            "broker", "dynsec", "--live", "--host", broker.host, "--port", str(broker.port), *args
        )
        assert proc.returncode == 1, proc
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        return lines[0]

    cred = ["--cred", p.creds[dev.device_id]]
    async with secured_mosquitto(tmp_path / "broker", p.files()) as broker:
        line = fails(broker, "--admin-user", ADMIN, "--admin-password-file", wrong, *cred)
        assert f"refused the admin login '{ADMIN}': Not authorized" in line, line
        assert "check --admin-user / --admin-password-file" in line
        # A device's own login is no admin: the plugin's answers are refused to it.
        line = fails(broker, "--admin-user", dev.identity.hex_id, "--admin-password-file", dev_pass, *cred)
        assert f"give the account role {ADMIN_ROLE}" in line, line
        line = fails(broker, *cred)
        assert "--live needs --admin-user NAME and --admin-password-file FILE" in line, line
    # A broker without the plugin (the session's anonymous Mosquitto): nobody answers.
    line = fails(
        mosquitto, "--admin-user", ADMIN, "--admin-password-file", admin_pass, "--timeout", "1", *cred
    )
    assert "no answer from the dynamic security plugin" in line and "within 1 s" in line, line
