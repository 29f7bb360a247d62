"""`depin simulate --register` on the shipped, secured broker (deploy/mosquitto.conf: dynamic security,
no anonymous clients) against `depin run` as an OS process: the generated devices get their broker
logins live through the admin account before publishing, each publishes over its own login, the
unregistered cheater (no login) is refused by the broker, and `depin simulate reconcile` finds no
difference. The saved credential files then drive the same devices again with `--cred`."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from eth_account.signers.local import LocalAccount

from ingest.adapters.mqtt import MqttConfig, drop_session
from simulator.ledger import Ledger
from simulator.plan import REFUSED
from tests.fixtures_mqtt import secured_mosquitto
from tests.integration.test_dynsec_live import with_admin
from tests.integration.test_secured_broker import SERVICE, provision, service_env
from tests.procs import ConsumerProcess, depin_cli

pytestmark = pytest.mark.integration


async def _stored(dsn: str, device_hex: str) -> tuple[list[int], int, int]:
    """(seqs stored, readings stored, rejection rows) of one device."""
    conn = await asyncpg.connect(dsn)
    try:
        dev = bytes.fromhex(device_hex)
        seqs = await conn.fetch("SELECT seq FROM packets WHERE device_id = $1 ORDER BY seq", dev)
        readings = await conn.fetchval("SELECT count(*) FROM readings WHERE device_id = $1", dev)
        rejections = await conn.fetchval("SELECT count(*) FROM rejections WHERE device_id = $1", dev)
    finally:
        await conn.close()
    return [r["seq"] for r in seqs], int(readings), int(rejections)


async def test_simulate_mixed_registers_logs_in_and_reconciles_on_the_secured_broker(
    pg_dsn: str,
    anvil_url: str,
    deployment: Any,
    accounts: list[LocalAccount],
    tmp_path: Path,
) -> None:
    deployment.save(tmp_path / "deployment.json")
    operator_key = tmp_path / "operator.key"
    operator_key.write_text(accounts[0].key.hex())
    operator_key.chmod(0o600)
    p = provision(tmp_path / "auth", [])  # only the service account: the run's devices come live
    admin_pass = with_admin(p, tmp_path / "auth")
    creds_dir = tmp_path / "creds"
    async with secured_mosquitto(tmp_path / "broker", p.files()) as broker:
        env = service_env(broker, p, pg_dsn, anvil_url, tmp_path / "deployment.json")
        env["DEPIN_ACK_FEEDBACK"] = "true"  # the load run's latencies
        proc = ConsumerProcess(env, tmp_path / "depin-run.log", parts="consume,follow,api")
        sim_env = {**env, "DEPIN_OPERATOR_KEY_FILE": str(operator_key)}
        del sim_env["DEPIN_MQTT_USERNAME"], sim_env["DEPIN_MQTT_PASSWORD_FILE"]  # no shared login
        ledger_file = tmp_path / "ledger.json"
        try:
            await proc.start()
            sim = await asyncio.to_thread(
                depin_cli,
                sim_env,
                "simulate",
                "--scenario",
                "mixed",
                "--register",
                "--broker-admin-user",
                "depin-admin",
                "--broker-admin-password-file",
                admin_pass,
                "--save-creds",
                creds_dir,
                "--ledger",
                ledger_file,
            )
            assert sim.returncode == 0, sim.stdout + sim.stderr + proc.log_tail(40)
            assert "broker logins created live for 14 devices" in sim.stdout, sim.stdout
            assert "(2 more refused at login)" in sim.stdout, sim.stdout
            ledger = Ledger.load(ledger_file)
            assert ledger.classes()["unregistered"] == {REFUSED}
            rec = await asyncio.to_thread(
                depin_cli, sim_env, "simulate", "reconcile", ledger_file, "--wait", "20"
            )
            assert rec.returncode == 0, rec.stdout + rec.stderr + "\n" + proc.log_tail(40)
            assert "no differences" in rec.stdout

            honest = [d for d, i in ledger.devices.items() if i["class"] == "honest"]
            assert len(honest) == 12
            first: dict[str, list[int]] = {}
            for dev in honest:
                # Every seq the device sent is stored with its readings (a forger's extra seq, signed
                # with another key, is the rejection reconcile already accounted for).
                sent = {s for e in ledger.entries if e.device == dev and e.cls == "honest" for s in e.seqs()}
                seqs, readings, _ = await _stored(pg_dsn, dev)
                assert set(seqs) == sent and readings >= len(sent), (dev, seqs, readings)
                first[dev] = seqs
            (stranger,) = [d for d, i in ledger.devices.items() if i["class"] == "unregistered"]
            assert await _stored(pg_dsn, stranger) == ([], 0, 0)  # the broker kept it from the service

            # Saved credentials: 0600, with the login the run made; the honest ones drive again with
            # --cred (no admin, no registration), continuing above their seqs of the first run.
            files = sorted(creds_dir.glob("honest-*.json"))
            assert len(files) == 12
            for f in files:
                assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
                assert json.loads(f.read_text())["mqtt_password"]
            again_file = tmp_path / "again.json"
            # Reconcile counts as this run's whatever arrived from 5 s before its start on: let the
            # first run's packets fall out of that window.
            await asyncio.sleep(5.5)
            again = await asyncio.to_thread(
                depin_cli,
                sim_env,
                "simulate",
                "--no-fleet",
                "--duration",
                "10",
                "--cred",
                *files,
                "--ledger",
                again_file,
            )
            assert again.returncode == 0, again.stdout + again.stderr
            rec = await asyncio.to_thread(
                depin_cli, sim_env, "simulate", "reconcile", again_file, "--wait", "20"
            )
            assert rec.returncode == 0, rec.stdout + rec.stderr + "\n" + proc.log_tail(40)
            second = Ledger.load(again_file)
            assert {e.device for e in second.entries} == set(honest)
            for dev in honest:
                seqs, _, _ = await _stored(pg_dsn, dev)
                new = [s for s in seqs if s not in first[dev]]
                assert new and min(new) > max(first[dev]), (dev, first[dev], new)

            # Load on the secured broker: every load device registered, given a login live and a
            # connection of its own (reading its own …/ack), all packets committed and reconciled.
            await asyncio.sleep(5.5)
            load_file = tmp_path / "load.json"
            load = await asyncio.to_thread(
                depin_cli,
                sim_env,
                "simulate",
                "--scenario",
                "load",
                "--rate",
                "40",
                "--seconds",
                "2",
                "--register",
                "--broker-admin-user",
                "depin-admin",
                "--broker-admin-password-file",
                admin_pass,
                "--ledger",
                load_file,
                timeout=180,
            )
            assert load.returncode == 0, load.stdout + load.stderr + proc.log_tail(40)
            assert "broker logins created live for 50 load devices" in load.stdout + load.stderr
            report = json.loads(next(line for line in load.stdout.splitlines() if line.startswith("{")))
            assert report["sent"] == 80 and report["committed"] == 80, report
            rec = await asyncio.to_thread(
                depin_cli, sim_env, "simulate", "reconcile", load_file, "--wait", "20"
            )
            assert rec.returncode == 0, rec.stdout + rec.stderr + "\n" + proc.log_tail(40)
            assert await proc.stop() == 0, proc.log_tail()
        finally:
            proc.kill()
            await drop_session(
                broker.host,
                broker.port,
                env["DEPIN_MQTT_CLIENT_ID"],
                login=MqttConfig(username=SERVICE, password=p.service_pass.read_text().strip()),
            )
