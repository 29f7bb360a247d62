"""`/readyz` tells the truth (docs/RELIABILITY.md G35): `depin run` as an OS process on real
Mosquitto, PostgreSQL and anvil. The broker refusing the service, the chain RPC hanging and an epoch
that cannot be published each make `/readyz` 503 naming it, with a metric; each recovers by itself.
A process that runs only the API is not unready for parts it does not run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3

from devices.chain.artifacts import REWARDS_ROLE
from devices.chain.deployment import Deployment, Schedule, deploy_contracts
from devices.chain.distributor import DistributorClient
from devices.chain.registry import DeviceInput, RegistryClient
from devices.chain.signer import Signer
from ingest import metrics
from ingest.dev.broker import start_mosquitto
from ingest.registry import RegistryFollower, RegistryMirror, chain_provider
from simulator.fleet import make_fleet, next_message
from simulator.publish import unique_client_id
from tests.fixtures_pg import Store
from tests.procs import ConsumerProcess, HangingProxy, consumer_env, publish_resilient, wait_for

pytestmark = pytest.mark.integration

LENGTH_S = 3


async def test_readyz_names_the_broker_the_hung_rpc_and_an_unpublishable_epoch(
    pg_dsn: str,
    w3: Any,
    deployment: Any,
    signer: Signer,
    accounts: list[LocalAccount],
    anvil_url: str,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    # The distributor numbers epochs as the service does (`depin run` refuses another schedule).
    genesis = time.time_ns() // 1_000_000
    deployment = await deploy_contracts(
        w3, signer, Schedule(genesis, LENGTH_S * 1000, 10_000 * 10**18), rewards_account=signer.address
    )
    fleet = make_fleet(3, [a.address for a in accounts[2:4]], seed=5, dashcam_share=0.0)
    await RegistryClient(w3, deployment, signer).register_batch(
        [DeviceInput(d.device_id, d.pubkey, d.owner, d.hw_class, d.asserted_cell) for d in fleet]
    )
    rewards = accounts[8]
    distributor = DistributorClient(w3, deployment, signer)
    await signer.send(distributor.contract.functions.grantRole(REWARDS_ROLE, rewards.address))
    key_file = tmp_path / "rewards.key"
    key_file.write_text(rewards.key.hex())
    key_file.chmod(0o600)
    deployment.save(tmp_path / "deployment.json")
    host, port = anvil_url.removeprefix("http://").rsplit(":", 1)
    rpc = HangingProxy(host, int(port))
    await rpc.start()

    async with start_mosquitto(tmp_path / "broker") as broker:
        env = consumer_env(
            database_url=pg_dsn,
            mqtt_host=broker.host,
            mqtt_port=broker.port,
            client_id=unique_client_id("ready"),
            group=unique_client_id("g"),
            chain_rpc_url=rpc.url,
            deployment_file=tmp_path / "deployment.json",
            rewards_key_file=key_file,
            epoch_genesis_ms=genesis,
            epoch_length_s=LENGTH_S,
            epoch_grace_s=0.5,
            chain_rpc_timeout_s=1,
            ready_mqtt_grace_s=1,
            ready_chain_stale_s=5,
        )
        svc = ConsumerProcess(env, tmp_path / "svc.log", parts="consume,follow,epochs,api")
        # Only the API, with a broker port that refuses and an RPC that is not there: still ready.
        api_env = {**env, "DEPIN_MQTT_PORT": "9", "DEPIN_CHAIN_RPC_URL": "http://127.0.0.1:9"}
        api = ConsumerProcess(api_env, tmp_path / "api.log", parts="api", wait_for_mqtt=False)

        async def status(p: ConsumerProcess, code: int, failing: list[str] | None = None) -> Any:
            st, report = await p.readyz()
            ok = st == code and (failing is None or report["failing"] == failing)
            return report if ok else None

        try:
            await svc.start()
            await api.start()
            await wait_for(lambda: status(svc, 200, []), 30, "the service to be ready")
            report = await wait_for(lambda: status(api, 200, []), 10, "the API-only process to be ready")
            assert report["parts"] == ["api"] and "mqtt" not in report and "chain_rpc" not in report

            # 1) An epoch that cannot be published: the key lost REWARDS_ROLE after the start. The
            #    contract's refusal is final for that epoch (marked 'refused', not retried): /readyz
            #    keeps naming it until a later epoch is published.
            await signer.send(distributor.contract.functions.revokeRole(REWARDS_ROLE, rewards.address))
            now = time.time_ns() // 1_000_000
            await publish_resilient(
                broker.host, broker.port, [(d.topic, next_message(d, now - 200)) for d in fleet]
            )
            report = await wait_for(lambda: status(svc, 503, ["epochs"]), 30, "/readyz to name the epochs")
            assert "publishing epoch" in report["epoch_error"] and report["epochs_failing"] is True
            metrics = await svc.metrics()
            assert metrics["depin_epoch_publish_failing"] == 1.0
            assert time.time() - metrics["depin_epoch_last_error_timestamp_seconds"] < 30
            assert metrics["depin_epochs_refused_total"] >= 1
            await signer.send(distributor.contract.functions.grantRole(REWARDS_ROLE, rewards.address))
            await wait_for(lambda: status(svc, 200, []), 30, "/readyz 200 once the role is back")

            async def published() -> bool:
                return (await svc.metrics()).get("depin_epochs_published_total", 0) >= 1

            await wait_for(published, 30, "the epoch to be published")
            assert (await svc.metrics())["depin_epoch_publish_failing"] == 0.0

            # 2) The broker goes away (connection refused while it is down).
            await broker.stop()
            t0 = time.monotonic()
            report = await wait_for(lambda: status(svc, 503, ["mqtt"]), 20, "/readyz to name mqtt")
            assert report["mqtt"] is False and report["mqtt_down_s"] >= 1
            assert (await svc.metrics())["depin_mqtt_connected"] == 0.0
            print(f"\nbroker down: /readyz 503 [mqtt] after {time.monotonic() - t0:.1f} s")
            await broker.start()
            await wait_for(lambda: status(svc, 200, []), 30, "/readyz 200 once the broker is back")
            assert (await svc.metrics())["depin_mqtt_connected"] == 1.0

            # 3) The chain RPC hangs: requests are taken and never answered.
            rpc.hang()
            t0 = time.monotonic()

            async def chain_failing() -> Any:
                st, report = await svc.readyz()
                return report if st == 503 and "chain" in report["failing"] else None

            report = await wait_for(chain_failing, 20, "/readyz to name the chain")
            print(f"RPC hung: /readyz 503 {report['failing']} after {time.monotonic() - t0:.1f} s")
            metrics = await svc.metrics()
            assert metrics["depin_chain_rpc_up"] == 0.0
            assert metrics["depin_chain_rpc_timeouts_total"] >= 1
            assert "Timeout" in report["chain_error"], report
            rpc.release()
            await wait_for(lambda: status(svc, 200, []), 30, "/readyz 200 once the RPC answers")
            assert (await svc.metrics())["depin_chain_rpc_up"] == 1.0
            # The API-only process was never concerned.
            assert (await api.readyz())[0] == 200
            assert await svc.stop() == 0, svc.log_tail()
            assert await api.stop() == 0, api.log_tail()
            print(f"readiness faults: {time.monotonic() - started:.1f} s")
        finally:
            svc.kill()
            api.kill()
            await rpc.stop()


async def test_an_on_demand_read_that_times_out_counts_as_the_rpc_down(
    store: Store, deployment: Deployment, anvil_url: str
) -> None:
    """Before RPC requests had a timeout, a hanging RPC made on-demand reads time out while
    `depin_chain_rpc_up` stayed 1."""
    host, port = anvil_url.removeprefix("http://").rsplit(":", 1)
    rpc = HangingProxy(host, int(port))
    await rpc.start()
    w3 = AsyncWeb3(chain_provider(rpc.url, timeout_s=5))
    follower = RegistryFollower(
        RegistryClient(w3, deployment), store, RegistryMirror(), start_block=deployment.block,
        prefetch_timeout_s=0.5,
    )  # fmt: skip
    try:
        await follower.load()
        await follower.sync_once()
        assert follower.rpc_up and metrics.CHAIN_UP._value.get() == 1
        timeouts = metrics.CHAIN_RPC_TIMEOUTS._value.get()
        rpc.hang()
        await follower.prefetch({b"\x42" * 32})
        assert follower.reads["timeout"] == 1
        assert not follower.rpc_up and metrics.CHAIN_UP._value.get() == 0
        assert metrics.CHAIN_RPC_TIMEOUTS._value.get() == timeouts + 1
        assert "timed out" in (follower.last_error or "")
        rpc.release()
        await follower.sync_once()
        assert follower.rpc_up and metrics.CHAIN_UP._value.get() == 1
    finally:
        await w3.provider.disconnect()
        await rpc.stop()
