"""`depin demo`: the whole path on one machine, with real parts.

Embedded PostgreSQL, a broker (Mosquitto if installed, else in-process amqtt), a local chain (anvil
from contracts/node_modules if present, else in-process eth-tester); deploy the contracts, register a
simulated fleet on chain, stream signed readings (and a few cheaters) over MQTT, close each epoch,
publish its Merkle root, claim one owner's reward, and print a summary. The API stays up unless
`--exit` is given.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from eth_account import Account
from web3 import AsyncHTTPProvider, AsyncWeb3

from devices.chain import DeviceInput, DistributorClient, RegistryClient, Signer, deploy_contracts
from ingest.adapters.broker import start_broker
from ingest.adapters.db import dsn_with_database, embedded_postgres
from ingest.adapters.localchain import anvil_path, dev_accounts, start_anvil, start_eth_tester
from ingest.adapters.mqtt import MqttConfig
from ingest.core.schedule import epoch_bounds
from ingest.service import build_node, open_store, serve_api
from ingest.settings import Settings
from simulator import cheaters
from simulator.fleet import make_fleet, next_message, publish_raw, stream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoOptions:
    devices: int = 12
    epochs: int = 1
    epoch_seconds: float = 20.0
    exit: bool = False
    summary: Path | None = None
    seed: int = 7
    owners: int = 3
    api_port: int = 8080


def say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@asynccontextmanager
async def _fresh_database(data_dir: Path, name: str) -> AsyncIterator[str]:
    """A fresh database on the embedded server: the demo's chain is new each run, so is its data."""
    async with embedded_postgres(data_dir / "pg") as admin_dsn:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        yield dsn_with_database(admin_dsn, name)


@asynccontextmanager
async def _chain() -> AsyncIterator[tuple[AsyncWeb3, list[Any], str]]:
    if anvil_path() is not None:
        async with start_anvil() as url:
            yield AsyncWeb3(AsyncHTTPProvider(url)), dev_accounts(), f"anvil {url}"
    else:
        async with start_eth_tester() as (w3, accounts):
            yield w3, accounts, "eth-tester (in-process)"


async def run_demo(opts: DemoOptions, base: Settings | None = None) -> dict[str, Any]:
    base = base or Settings()
    data_dir = base.data_dir / "demo"
    started = time.monotonic()
    async with AsyncExitStack() as stack:
        dsn = await stack.enter_async_context(_fresh_database(data_dir, "depin_demo"))
        say(f"PostgreSQL up ({dsn})")
        broker = await stack.enter_async_context(start_broker(data_dir / "mqtt"))
        say(f"MQTT broker up: {broker.kind} on {broker.host}:{broker.port}")
        w3, accounts, chain_desc = await stack.enter_async_context(_chain())
        operator, rewards_acct = accounts[0], accounts[1]
        say(f"chain up: {chain_desc}")
        op_signer = Signer(w3, operator)
        deployment = await deploy_contracts(w3, op_signer, rewards_account=rewards_acct.address)
        say(f"contracts deployed: registry {deployment.registry}, distributor {deployment.distributor}")

        owners = [Account.create() for _ in range(opts.owners)]
        fleet = make_fleet(opts.devices, [o.address for o in owners], seed=opts.seed)
        registry = RegistryClient(w3, deployment, op_signer)
        await registry.register_batch(
            [
                DeviceInput(d.identity.device_id, d.identity.pubkey, d.owner, d.hw_class, d.asserted_cell)
                for d in fleet
            ]
        )
        say(f"registered {len(fleet)} devices on chain for {len(owners)} owners")

        genesis_ms = time.time_ns() // 1_000_000
        settings = base.model_copy(
            update={
                "database_url": dsn,
                "epoch_genesis_ms": genesis_ms,
                "epoch_length_s": opts.epoch_seconds,
                "registry_poll_s": 0.5,
                "api_port": opts.api_port,
            }
        )
        store = await stack.enter_async_context(open_store(settings))
        mqtt = MqttConfig(
            host=broker.host,
            port=broker.port,
            client_id="depin-demo-ingest",
            shared=broker.shared_subscriptions,
            mqtt5=broker.shared_subscriptions,
        )
        node = build_node(settings, store, w3, deployment, rewards=rewards_acct, mqtt=mqtt)
        await node.follower.load()
        await node.follower.sync_once()
        say(f"registry mirror in sync: {len(node.mirror.devices)} devices at block {node.mirror.block}")
        tasks = [asyncio.create_task(node.follower.run()), asyncio.create_task(node.consumer.run())]
        stack.callback(lambda: [t.cancel() for t in tasks])
        await asyncio.wait_for(node.consumer.connected.wait(), 30)
        api_url = await stack.enter_async_context(serve_api(node.app(), settings.api_host, opts.api_port))
        say(f"API up at {api_url}")

        sent = 0
        epochs: list[dict[str, Any]] = []
        for epoch in range(1, opts.epochs + 1):
            _, end_ms = epoch_bounds(epoch, genesis_ms, int(opts.epoch_seconds * 1000))
            sent += await _stream_epoch(fleet, broker.host, broker.port, end_ms)
            # A few cheaters each epoch: they must all be rejected with a reason.
            now = time.time_ns() // 1_000_000
            honest = next_message(fleet[-1], now)
            bad = [
                cheaters.forged(fleet[0], now),
                cheaters.unregistered_device(now),
                (fleet[-1].topic, honest),
                cheaters.replay_of(honest),
            ]
            await publish_raw(broker.host, broker.port, bad, mqtt5=broker.shared_subscriptions)
            sent += len(bad)
            await _drain(node, sent)
            row = await node.epochs.close_and_publish(epoch)
            epochs.append(row)
            say(f"epoch {epoch} closed and published: root {row['root']} tx {row['tx_hash']}")

        claim = await _claim_one(w3, deployment, api_url, owners, epochs[-1]["epoch"], operator)
        counts = await store.counts()
        summary = {
            "devices": len(fleet),
            "owners": len(owners),
            "broker": broker.kind,
            "chain": chain_desc,
            "sent": sent,
            "packets_accepted": counts["packets"],
            "readings_stored": counts["readings"],
            "rejected": counts["rejections"],
            "duplicates": node.consumer.stats.duplicates,
            "cells_covered": epochs[-1]["manifest"]["cells"],
            "epochs": [
                {
                    "epoch": e["epoch"],
                    "root": e["root"],
                    "tx": e["tx_hash"],
                    "allocated": str(e["allocated"]),
                    "unissued": str(e["unissued"]),
                }
                for e in epochs
            ],
            "claim": claim,
            "api": api_url,
            "seconds": round(time.monotonic() - started, 1),
        }
        _print_summary(summary)
        if opts.summary is not None:
            opts.summary.write_text(json.dumps(summary, indent=2) + "\n")
        if not opts.exit:
            say(f"API stays up at {api_url} (try {api_url}/v1/epochs/1) — Ctrl-C to stop")
            await asyncio.Event().wait()
        return summary


async def _stream_epoch(fleet: list, host: str, port: int, end_ms: int) -> int:
    """Stream at 1 packet/s per device until the epoch's end (the last second is left for delivery)."""
    sent = 0
    while time.time_ns() // 1_000_000 < end_ms - 1000:
        tick = time.monotonic()
        stats = await stream(fleet, host, port, packets_per_device=1)
        sent += stats.sent
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    return sent


async def _drain(node: Any, sent: int, timeout_s: float = 30) -> None:
    """Wait until the consumer has handled every message the simulator sent."""
    deadline = time.monotonic() + timeout_s
    while node.consumer.stats.received < sent and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


async def _claim_one(
    w3: AsyncWeb3, deployment: Any, api_url: str, owners: list[Any], epoch: int, funder: Any
) -> dict[str, Any]:
    """The first owner fetches its proof from the API and claims on chain with its own key."""
    owner = owners[0]
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{api_url}/v1/owners/{owner.address}/proof", params={"epoch": str(epoch)}) as resp,
    ):
        resp.raise_for_status()
        proof = await resp.json()
    await Signer(w3, funder).send_value(owner.address, 10**17)  # gas money for the owner's claim
    client = DistributorClient(w3, deployment, Signer(w3, owner))
    _, paid = await client.claim(
        epoch,
        owner.address,
        int(proof["cumulative"]),
        [bytes.fromhex(p.removeprefix("0x")) for p in proof["proof"]],
    )
    balance = await client.token_balance(owner.address)
    say(f"owner {owner.address} claimed {paid} base units (balance {balance})")
    return {
        "owner": owner.address,
        "epoch": epoch,
        "claimed": str(paid),
        "expected": proof["cumulative"],
        "balance": str(balance),
    }


def _print_summary(s: dict[str, Any]) -> None:
    print("\n=== depin demo summary ===")
    print(f"devices {s['devices']} ({s['owners']} owners) · broker {s['broker']} · chain {s['chain']}")
    print(
        f"messages sent {s['sent']} · packets accepted {s['packets_accepted']}"
        f" · readings {s['readings_stored']}"
    )
    print(
        "rejected by reason: " + (", ".join(f"{k} {v}" for k, v in sorted(s["rejected"].items())) or "none")
    )
    print(f"duplicates absorbed {s['duplicates']} · cells covered (last epoch) {s['cells_covered']}")
    for e in s["epochs"]:
        print(f"epoch {e['epoch']}: root {e['root']} tx {e['tx']} allocated {e['allocated']}")
    c = s["claim"]
    print(f"claim: {c['owner']} received {c['claimed']} (manifest cumulative {c['expected']})")
    print(f"API: {s['api']}  ({s['seconds']} s)")
