"""The epoch worker killed at each step of an epoch's lifecycle, as a real process.

`depin run --parts epochs` runs as an OS process with DEPIN_* settings only, on PostgreSQL and anvil;
`DEPIN_TEST_EPOCH_KILL_AT=<point>` makes it SIGKILL itself right after that step (ingest/epochs.py
`_fault_point`): after scoring (nothing stored), after the manifest is stored, after the publish tx is
signed and journaled, after it was broadcast, after its receipt was read (not yet marked). A second
process, without the hook, finishes the epoch. Whatever the point: exactly one EpochPublished per
epoch on chain, and its root is the one scoring computes. A third case takes the RPC down while a
journaled publish waits: every attempt fails and is retried, and once the RPC is back the journaled
tx (the same hash) is published, once.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import AsyncWeb3

from devices.chain.deployment import Deployment, Schedule, deploy_contracts
from devices.chain.distributor import DistributorClient
from devices.chain.signer import Signer
from devices.protocol.model import DeviceRecord, Reading
from ingest.epochs import KILL_AT_ENV, KILL_POINTS
from ingest.model import AcceptedPacket
from ingest.scoring import score_epoch
from ingest.settings import load_settings, read_environment
from tests.fixtures_pg import Store
from tests.procs import REPO, HangingProxy, wait_for

pytestmark = pytest.mark.integration

TOKEN = 10**18
LENGTH_S = 60
CELLS = (0x8928308280FFFFF, 0x8928308280BFFFF, 0x89283082807FFFF)


def dev(n: int) -> bytes:
    return hashlib.sha256(b"fault-device" + bytes([n])).digest()


@dataclass
class Worker:
    """`depin run --parts epochs` with `env`; its output appended to `log`."""

    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, **extra: str) -> None:
        with self.log.open("ab") as out:
            out.write(f"\n--- start {extra} ---\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ingest.cli", "run", "--parts", "epochs"],
                cwd=REPO,
                env={**self.env, **extra},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )

    async def killed(self, timeout: float = 60) -> None:
        """Wait until the process killed itself at its fault point (SIGKILL)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"the worker was not killed in {timeout} s:\n{self.tail()}")
            await asyncio.sleep(0.1)
        assert self.proc.returncode == -signal.SIGKILL, f"exit {self.proc.returncode}:\n{self.tail()}"

    async def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Setup:
    store: Store
    w3: AsyncWeb3[Any]
    deployment: Deployment
    distributor: DistributorClient
    worker: Worker
    values: dict[str, Any]  # the worker's settings, by field name
    proxy: HangingProxy

    async def expected_root(self, epoch: int) -> bytes:
        """What scoring gives for the epoch with the worker's settings (read-only)."""
        config = load_settings(read_environment(**self.values)).epochs
        return (await score_epoch(self.store, config, epoch)).root

    async def published_events(self) -> Counter[int]:
        event = self.distributor.contract.events.EpochPublished()
        logs = await self.w3.eth.get_logs(
            {
                "address": self.deployment.distributor,
                "fromBlock": self.deployment.block,
                "toBlock": "latest",
                "topics": [HexBytes(event.topic)],
            }
        )
        return Counter(int(event.process_log(lg)["args"]["epoch"]) for lg in logs)

    async def status(self, epoch: int) -> str | None:
        row = await self.store.get_epoch(epoch)
        return None if row is None else row.status

    async def finished(self, epoch: int) -> bool:
        return await self.status(epoch) in ("published", "settled")


@pytest.fixture
async def setup(
    store: Store,
    pg_dsn: str,
    w3: AsyncWeb3[Any],
    signer: Signer,
    accounts: list[LocalAccount],
    anvil_url: str,
    tmp_path: Path,
) -> Any:
    now = time.time_ns() // 1_000_000
    length = LENGTH_S * 1000
    # Epoch 1 ended 30 s ago; epoch 2 ends 30 s from now.
    genesis = now - length - 30_000
    emission = 1_000 * TOKEN
    rewards = accounts[7]
    deployment = await deploy_contracts(
        w3,
        signer,
        Schedule(genesis_ms=genesis, epoch_length_ms=length, epoch_emission=emission),
        rewards_account=rewards.address,
    )
    deployment.save(tmp_path / "deployment.json")
    key_file = tmp_path / "rewards.key"
    key_file.write_text(rewards.key.hex())
    key_file.chmod(0o600)
    await store.upsert_devices(
        [DeviceRecord(dev(d), b"k" * 32, accounts[2 + d].address, 1, 0, True, 10 + d) for d in range(3)],
        block=10,
    )
    packets = []
    for d in range(3):
        ts = genesis + 1_000 + d * 1_000
        digest = hashlib.sha256(dev(d) + b"fault").digest()
        readings = tuple(Reading(ts_ms=ts + i, lat=52.5, lon=13.4, vals={"t": 20.0 + i}) for i in range(12))
        packets.append(
            AcceptedPacket(
                device_id=dev(d),
                seq=1,
                kind="weather",
                payload_digest=digest,
                received_ms=ts,
                readings=readings,
                cells=(CELLS[d],) * len(readings),
                flags=(0,) * len(readings),
                message_digest=hashlib.sha256(b"msg" + digest).digest(),
            )
        )
    assert (await store.write_batch(packets, [])).stored == 3
    host, port = anvil_url.removeprefix("http://").split(":")
    proxy = HangingProxy(host, int(port))  # the worker's RPC: stopped to take the RPC down
    await proxy.start()
    values: dict[str, Any] = {
        "database_url": pg_dsn,
        "chain_rpc_url": proxy.url,
        "deployment_file": tmp_path / "deployment.json",
        "rewards_key_file": key_file,
        "epoch_genesis_ms": genesis,
        "epoch_length_s": LENGTH_S,
        "epoch_emission": emission,
        "epoch_grace_s": 0.5,
        "chain_rpc_timeout_s": 2,
        "rollup_interval_s": 5,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPIN_")}
    env.update({f"DEPIN_{k.upper()}": str(v) for k, v in values.items()})
    env["PYTHONUNBUFFERED"] = "1"
    worker = Worker(env, tmp_path / "worker.log")
    s = Setup(store, w3, deployment, DistributorClient(w3, deployment), worker, values, proxy)
    try:
        yield s
    finally:
        await worker.stop()
        await proxy.stop()


@pytest.mark.parametrize("point", KILL_POINTS)
async def test_a_worker_killed_at_each_step_publishes_each_epoch_once_with_the_same_root(
    setup: Setup, point: str
) -> None:
    expected = await setup.expected_root(1)
    setup.worker.start(**{KILL_AT_ENV: point})
    await setup.worker.killed()
    assert f"{KILL_AT_ENV}={point}: killing this process" in setup.worker.tail()
    # What the kill left behind: the stored state the restart resumes from.
    left = await setup.status(1)
    assert (
        left
        == {
            "scored": None,  # scored in memory only: nothing stored, the close runs again
            "manifest": "closed",
            "signed": "signed",
            "broadcast": "signed",
            "receipt": "signed",
        }[point]
    )
    journal = await setup.store.get_epoch(1)
    setup.worker.start()
    try:
        await wait_for(lambda: setup.finished(1), 60, "epoch 1 published after the restart", every=0.2)
    except AssertionError:
        raise AssertionError(f"not published; worker log:\n{setup.worker.tail()}") from None
    await setup.worker.stop()
    row = await setup.store.get_epoch(1)
    assert row is not None and row.root == expected
    assert await setup.distributor.root_of(1) == expected
    events = await setup.published_events()
    assert events[1] == 1 and all(n == 1 for n in events.values()), events
    if journal is not None and journal.tx_hash is not None:
        assert row.tx_hash == journal.tx_hash  # the journaled tx, never a second one


async def test_rpc_down_while_a_journaled_publish_waits_is_retried_and_published_once(setup: Setup) -> None:
    expected = await setup.expected_root(1)
    setup.worker.start(**{KILL_AT_ENV: "signed"})
    await setup.worker.killed()
    journaled = await setup.store.get_epoch(1)
    assert journaled is not None and journaled.status == "signed" and journaled.tx_hash is not None
    await setup.proxy.stop()  # the RPC is down: connections refused
    setup.worker.start()

    async def failed_twice() -> bool:
        return setup.worker.tail(200).count("publishing epoch 1 failed") >= 2

    await wait_for(failed_twice, 40, "two failed publish attempts", every=0.2)
    assert await setup.status(1) == "signed"
    assert await setup.distributor.root_of(1) == b"\0" * 32  # the tx never reached the node
    await setup.proxy.start()  # back, on the same port
    try:
        await wait_for(lambda: setup.finished(1), 90, "epoch 1 published once the RPC is back", every=0.2)
    except AssertionError:
        raise AssertionError(f"not published; worker log:\n{setup.worker.tail()}") from None
    row = await setup.store.get_epoch(1)
    assert row is not None and row.tx_hash == journaled.tx_hash and row.root == expected
    assert (await setup.published_events())[1] == 1
