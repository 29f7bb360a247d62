"""`depin simulate --scenario attack` against `depin run` as an OS process (every part, settings from
DEPIN_* only, real PostgreSQL, Mosquitto and anvil), then `depin simulate reconcile`: every cheater
class gets the outcome the README gives it, and after the epoch closes no pure cheater earns, every
honest device is paid, and the Sybil owner's parked stations earn no more than one honest station.

The epoch is made long and nearly over: genesis ~4 h back and the epoch ends ~50 s after the test
starts, so the flatliner's 3 h of constant readings and the honest fleet's last minute fall in epoch 1,
which then closes and is published by the process itself.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from eth_account.signers.local import LocalAccount

from devices.chain.artifacts import REWARDS_ROLE
from devices.chain.deployment import Schedule, deploy_contracts
from devices.chain.distributor import DistributorClient
from devices.chain.signer import Signer
from simulator.ledger import Ledger
from simulator.publish import unique_client_id
from simulator.scenario import CHEATERS
from tests.procs import ConsumerProcess, consumer_env, depin_cli, wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
LEAD_S = 50  # the epoch ends this long after the test starts
GRACE_S = 1
# Cheaters none of whose stored readings may earn (the others also send some honest packets first).
EARN_NOTHING = {"moved_station", "coarse_cell", "clock_skewed", "unregistered", "media_copier"}


async def test_attack_scenario_is_judged_as_the_ledger_says_and_no_cheater_earns(
    pg_dsn: str,
    mosquitto: Any,
    w3: Any,
    signer: Signer,
    accounts: list[LocalAccount],
    anvil_url: str,
    tmp_path: Path,
) -> None:
    length_s = 4 * 3600 + LEAD_S
    genesis = time.time_ns() // 1_000_000 + LEAD_S * 1000 - length_s * 1000
    deployment = await deploy_contracts(
        w3, signer, Schedule(genesis, length_s * 1000, 10_000 * 10**18), rewards_account=signer.address
    )
    rewards = accounts[8]
    await signer.send(
        DistributorClient(w3, deployment, signer).contract.functions.grantRole(REWARDS_ROLE, rewards.address)
    )
    key_file = tmp_path / "rewards.key"
    key_file.write_text(rewards.key.hex())
    key_file.chmod(0o600)
    operator_key = tmp_path / "operator.key"
    operator_key.write_text(accounts[0].key.hex())
    operator_key.chmod(0o600)
    deployment.save(tmp_path / "deployment.json")
    env = consumer_env(
        database_url=pg_dsn,
        mqtt_host=mosquitto.host,
        mqtt_port=mosquitto.port,
        client_id=unique_client_id("svc"),
        group=unique_client_id("g"),
        chain_rpc_url=anvil_url,
        deployment_file=tmp_path / "deployment.json",
        rewards_key_file=key_file,
        epoch_genesis_ms=genesis,
        epoch_length_s=length_s,
        epoch_grace_s=GRACE_S,
        ack_feedback=True,
    )
    proc = ConsumerProcess(env, tmp_path / "depin-run.log", parts="consume,follow,epochs,api")
    ledger_file = tmp_path / "ledger.json"
    sim_env = {**env, "DEPIN_OPERATOR_KEY_FILE": str(operator_key)}
    try:
        await proc.start()
        sim = await asyncio.to_thread(
            depin_cli, sim_env, "simulate", "--scenario", "attack", "--register", "--ledger", str(ledger_file)
        )
        assert sim.returncode == 0, sim.stdout + sim.stderr + proc.log_tail(40)
        ledger = Ledger.load(ledger_file)
        # Every cheater class is in the run, each expecting what the README gives it.
        classes = ledger.classes()
        for name, cheater in CHEATERS.items():
            assert cheater.outcome in classes.get(name, set()), (name, classes.get(name))
        assert any("registry refused" in n for n in ledger.notes), ledger.notes

        rec = await asyncio.to_thread(
            depin_cli, sim_env, "simulate", "reconcile", str(ledger_file), "--wait", "20"
        )
        assert rec.returncode == 0, rec.stdout + rec.stderr + "\n" + proc.log_tail(40)
        assert "no differences" in rec.stdout

        # A ledger that claims something the service did not do is caught: exit 1, the seq named.
        data = ledger.to_json()
        flooder = next(e for e in data["entries"] if e["class"] == "flooder" and e["outcome"] == "accepted")
        flooder["outcome"] = "rejected:rate_limited"
        wrong = tmp_path / "wrong.json"
        wrong.write_text(json.dumps(data))
        bad = await asyncio.to_thread(depin_cli, sim_env, "simulate", "reconcile", str(wrong), "--wait", "0")
        assert bad.returncode == 1 and "expected rejected:rate_limited" in bad.stdout, bad.stdout + bad.stderr

        # The epoch closes by itself; then who earned what.
        async def published() -> dict[str, Any] | None:
            async with aiohttp.ClientSession() as http, http.get(f"{proc.url}/v1/epochs/1") as r:
                body: dict[str, Any] = await r.json() if r.status == 200 else {}
            return body if body.get("status") in ("published", "settled") else None

        await wait_for(published, LEAD_S + 60, "epoch 1 published")
        amounts: dict[str, int] = {}
        async with aiohttp.ClientSession() as http:
            for dev in ledger.devices:
                async with http.get(f"{proc.url}/v1/epochs/1/devices/{dev}") as r:
                    amounts[dev] = int((await r.json())["amount"]) if r.status == 200 else 0
        by_class: dict[str, list[int]] = {}
        for dev, info in ledger.devices.items():
            by_class.setdefault(info["class"], []).append(amounts[dev])
        assert by_class["honest"] and all(a > 0 for a in by_class["honest"]), by_class["honest"]
        for name in EARN_NOTHING:
            assert by_class[name] and all(a == 0 for a in by_class[name]), (name, by_class[name])
        honest_stations = [
            amounts[d] for d, i in ledger.devices.items() if i["class"] == "honest" and i["kind"] == "weather"
        ]
        assert sum(by_class["sybil"]) <= max(honest_stations) * 1.01, (by_class["sybil"], honest_stations)

        # Load mode (into epoch 2): the pacer holds the target rate over two connections, every packet's
        # commit feedback comes back with its latency, and its ledger reconciles.
        load_ledger = tmp_path / "load.json"
        load = await asyncio.to_thread(
            depin_cli,
            sim_env,
            "simulate",
            "--scenario",
            "load",
            "--rate",
            "40",
            "--seconds",
            "3",
            "--connections",
            "2",
            "--register",
            "--ledger",
            str(load_ledger),
        )
        assert load.returncode == 0, load.stdout + load.stderr
        report = json.loads(next(line for line in load.stdout.splitlines() if line.startswith("{")))
        assert report["sent"] == 120 and report["committed"] == 120, report
        assert 36 <= report["achieved_rate"] <= 44, report
        assert 0 < report["p50_ms"] <= report["p99_ms"] < 5000, report
        rec = await asyncio.to_thread(
            depin_cli, sim_env, "simulate", "reconcile", str(load_ledger), "--wait", "10"
        )
        assert rec.returncode == 0, rec.stdout + rec.stderr
    finally:
        await proc.stop()
    print(f"\n{sim.stdout}load: {report}")
