"""`depin demo`: the whole path on one machine, with real parts.

Embedded PostgreSQL, a broker (Mosquitto with deploy/mosquitto.conf — no anonymous clients, each
device confined to its own topics by the dynamic security plugin, logins written as `depin broker
dynsec` writes them — if installed, else the in-process amqtt broker, which is anonymous), a local
chain (anvil from contracts/node_modules if present, else in-process eth-tester); deploy the
contracts, register a simulated fleet on chain, stream signed readings (and a few cheaters) over MQTT
while the service's own parts run (consumer, registry follower, epoch scheduler that closes each
epoch and publishes its Merkle root by itself), claim one owner's reward, and print a summary. The
API stays up unless `--exit` is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import signal
import socket
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from eth_account import Account
from web3 import AsyncHTTPProvider, AsyncWeb3

from devices.chain.deployment import Schedule, deploy_contracts
from devices.chain.distributor import DistributorClient
from devices.chain.registry import DeviceInput, RegistryClient
from devices.chain.signer import Signer
from devices.claims import api_proofs, claim_rewards
from devices.keys import DeviceIdentity, new_identity, save_identity
from devices.sdk import BrokerLogin
from ingest.adapters.db import embedded_postgres, recreate_database
from ingest.adapters.mqtt import MqttConfig
from ingest.adapters.store.keys import KeyStore
from ingest.adapters.store.rows import EpochRow
from ingest.api.shapes import hex0x
from ingest.brokerauth import AccountChanges, update_dynsec_file
from ingest.core.apikeys import PUBLIC, access_rule
from ingest.core.schedule import epoch_bounds
from ingest.dev.broker import BrokerInfo, SecuredFiles, start_broker
from ingest.dev.chain import anvil_path, dev_accounts, start_anvil, start_eth_tester
from ingest.dev.rundir import demo_env, run_directory, write_env
from ingest.service import build_node, distributor_mirror, open_stores, serve_api
from ingest.settings import Environment, load_settings, read_environment
from simulator import cheaters
from simulator.fleet import SimDevice, make_fleet, next_message
from simulator.publish import connected_publisher

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
    api_port: int | None = None  # None: 8080, or a free port when 8080 is taken (another demo)
    data_dir: Path | None = None  # None: a fresh run directory, removed at exit


DEFAULT_API_PORT = 8080
DEMO_PREMINE = 1_000_000 * 10**18  # base units minted to the operator at deploy
SERVICE_USER = "depin-ingest"


@dataclass(frozen=True)
class DemoLogins:
    """Broker logins for the demo's clients, as `depin broker dynsec` provisions them: the service's
    account and one per device (username = device id hex). `None` logins on the anonymous amqtt broker."""

    dynsec_file: Path
    service_password_file: Path
    devices: dict[str, BrokerLogin]  # topic id (hex) → login

    def service(self) -> BrokerLogin:
        return BrokerLogin(SERVICE_USER, self.service_password_file.read_text().strip())


def provision_logins(auth_dir: Path, identities: list[DeviceIdentity]) -> DemoLogins:
    """Credential files for the fleet (and the stranger), then the dynamic security file and the
    service's password file, exactly as `depin broker dynsec --cred … --user depin-ingest` writes them."""
    auth_dir.mkdir(parents=True, exist_ok=True)
    creds = []
    for i, identity in enumerate(identities):
        creds.append(auth_dir / f"dev-{i}.json")
        save_identity(identity, creds[-1])
    dynsec, svc = auth_dir / "dynamic-security.json", auth_dir / "svc.pass"
    accounts, _ = update_dynsec_file(dynsec, AccountChanges(tuple(creds), SERVICE_USER, svc))
    devices = {
        a.username: BrokerLogin(a.username, a.password) for a in accounts if a.username != SERVICE_USER
    }
    return DemoLogins(dynsec, svc, devices)


def say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def demo_owners(seed: int, n: int) -> list[Any]:
    """The demo's owner accounts, from the seed: the same seed gives the same addresses (and the same
    fleet), so the README's examples name real owners and devices. Throw-away demo keys only."""
    return [
        Account.from_key(hashlib.sha256(f"depin-demo-owner/{seed}/{i}".encode()).digest()) for i in range(n)
    ]


def _api_port(wanted: int | None) -> int:
    """The port asked for; by default 8080, or a free one when 8080 is taken (say, by another demo)."""
    if wanted is not None:
        return wanted
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", DEFAULT_API_PORT))
        except OSError:
            return 0
    return DEFAULT_API_PORT


@asynccontextmanager
async def _fresh_database(data_dir: Path, name: str) -> AsyncIterator[str]:
    """A fresh database on the run's embedded server: the demo's chain is new each run, so is its data
    (with `--data-dir` the server is reused, the database is not)."""
    async with embedded_postgres(data_dir / "pg") as admin_dsn:
        yield await recreate_database(admin_dsn, name)


@asynccontextmanager
async def _chain(run_dir: Path) -> AsyncIterator[tuple[AsyncWeb3, list[Any], str, str | None]]:
    """(web3, funded accounts, description, RPC URL or None for the in-process EVM)."""
    if anvil_path() is not None:
        async with start_anvil(log_path=run_dir / "anvil.log") as url:
            yield AsyncWeb3(AsyncHTTPProvider(url)), dev_accounts(), f"anvil {url}", url
    else:
        async with start_eth_tester() as (w3, accounts):
            yield w3, accounts, "eth-tester (in-process)", None


async def run_demo(opts: DemoOptions, base: Environment | None = None) -> dict[str, Any]:
    """The demo until done (`--exit`) or stopped. SIGTERM, like Ctrl-C, unwinds every part in order,
    so the database, broker and chain it started stop with it."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    if main is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, main.cancel)
    base = base or read_environment()
    with run_directory(base.data_dir, opts.data_dir) as run_dir:
        return await _run_demo(opts, base, run_dir)


async def _run_demo(opts: DemoOptions, base: Environment, run_dir: Path) -> dict[str, Any]:
    started = time.monotonic()
    say(f"run directory {run_dir}")
    async with AsyncExitStack() as stack:
        dsn = await stack.enter_async_context(_fresh_database(run_dir, "depin_demo"))
        say(f"PostgreSQL up ({dsn})")
        owners = demo_owners(opts.seed, opts.owners)
        fleet = make_fleet(opts.devices, [o.address for o in owners], seed=opts.seed)
        # A device provisioned on the broker but never registered on chain: its packets are
        # `unknown_device`. Everyone else on the broker is a registered device or the service.
        stranger = new_identity()
        logins = provision_logins(run_dir / "auth", [d.identity for d in fleet] + [stranger])
        broker = await stack.enter_async_context(
            start_broker(run_dir / "mqtt", secured=SecuredFiles(logins.dynsec_file))
        )
        secured = broker.kind == "mosquitto"
        say(
            f"MQTT broker up: {broker.kind} on {broker.host}:{broker.port}, "
            + (
                f"secured (deploy/mosquitto.conf: dynamic security, {len(logins.devices)} device logins "
                f"and the service's, {SERVICE_USER})"
                if secured
                else "ANONYMOUS (amqtt has no per-topic ACLs: any local client may read and publish anything)"
            )
        )
        w3, accounts, chain_desc, rpc_url = await stack.enter_async_context(_chain(run_dir))
        operator, rewards_acct = accounts[0], accounts[1]
        say(f"chain up: {chain_desc}")
        op_signer = Signer(w3, operator)
        # The contract numbers epochs like the service (genesis, length) and caps each epoch's mint.
        genesis_ms = time.time_ns() // 1_000_000
        schedule = Schedule(
            genesis_ms=genesis_ms,
            epoch_length_ms=int(opts.epoch_seconds * 1000),
            epoch_emission=base.epoch_emission,
            # Tokens for the buyer side (README "Try the buyer side"): the operator, whose key the env
            # file names, deposits API credit and funds bounties with them.
            premine=DEMO_PREMINE,
        )
        deployment = await deploy_contracts(w3, op_signer, schedule, rewards_account=rewards_acct.address)
        deployment.save(run_dir / "deployment.json")
        say(f"contracts deployed: registry {deployment.registry}, distributor {deployment.distributor}")

        registry = RegistryClient(w3, deployment, op_signer)
        await registry.register_batch(
            [
                DeviceInput(d.identity.device_id, d.identity.pubkey, d.owner, d.hw_class, d.asserted_cell)
                for d in fleet
            ]
        )
        say(f"registered {len(fleet)} devices on chain for {len(owners)} owners")

        mqtt = MqttConfig(
            host=broker.host,
            port=broker.port,
            client_id=SERVICE_USER,  # the broker uses the username as client id (use_username_as_clientid)
            shared=broker.shared_subscriptions,
            mqtt5=broker.shared_subscriptions,
            username=SERVICE_USER if secured else None,
            password=logins.service().password if secured else None,
        )
        env = base.model_copy(
            update={
                "database_url": dsn,
                "epoch_genesis_ms": genesis_ms,
                "epoch_length_s": opts.epoch_seconds,
                "epoch_grace_s": 1.0,  # the demo drains its own traffic before each epoch's end
                "registry_poll_s": 0.5,
                "distributor_poll_s": 0.5,
            }
        )
        settings = load_settings(env, mqtt=mqtt)
        stores = await stack.enter_async_context(open_stores(settings))
        store = stores.ingest
        node = build_node(settings, store, w3, deployment, rewards=rewards_acct, stores=stores)
        # A buyer's key (read, export) for the API's data endpoints: printed in the summary, written to
        # current.env as DEPIN_API_KEY.
        api_key, _ = await KeyStore(stores.api.pool).create("demo buyer", ("read", "export"))
        await node.follower.load()
        await node.follower.sync_once()
        say(f"registry mirror in sync: {len(node.mirror.devices)} devices at block {node.mirror.block}")
        # The service's own parts, as `depin run` runs them: the epoch scheduler closes and publishes
        # each epoch by itself once its end plus the grace period has passed.
        tasks = [
            asyncio.create_task(node.follower.run(), name="follower"),
            asyncio.create_task(node.consumer.run(), name="consumer"),
            asyncio.create_task(node.epochs.run(), name="epochs"),
            # The distributor's logs into the database: claims and roots (GET /v1/owners/{address}/
            # rewards), buyers' deposits (a key's credit) and bounties (GET /v1/bounties).
            asyncio.create_task(
                distributor_mirror(node, stores.epochs.pool).run(), name="distributor-mirror"
            ),
        ]
        stack.callback(lambda: [t.cancel() for t in tasks])
        await asyncio.wait_for(node.consumer.connected.wait(), 30)
        api_url = await stack.enter_async_context(
            serve_api(node.app(), settings.api.host, _api_port(opts.api_port))
        )
        say(f"API up at {api_url}")
        service_login = (SERVICE_USER, logins.service_password_file) if secured else None
        env_file = write_env(
            run_dir, demo_env(run_dir, dsn, broker, rpc_url, operator, service_login, api_key)
        )
        say(f"settings for `depin` commands against this demo: . {env_file}")

        # One connection per device, each logged in as that device: on the secured broker a device may
        # publish on its own topic only.
        clients = {}
        for dev in fleet:
            clients[dev.identity.hex_id] = await stack.enter_async_context(
                _publisher(broker, logins.devices[dev.identity.hex_id] if secured else None)
            )
        clients[stranger.hex_id] = await stack.enter_async_context(
            _publisher(broker, logins.devices[stranger.hex_id] if secured else None)
        )
        sent = 0
        epochs: list[EpochRow] = []
        for epoch in range(1, opts.epochs + 1):
            _, end_ms = epoch_bounds(epoch, genesis_ms, int(opts.epoch_seconds * 1000))
            sent += await _stream_epoch(fleet, clients, end_ms)
            # A few cheaters each epoch: they must all be rejected with a reason. Each is sent over the
            # connection of the device whose topic it uses (the forger has fleet[0]'s broker password but
            # not its signing key; the stranger has a broker login but is not registered on chain).
            now = time.time_ns() // 1_000_000
            honest = next_message(fleet[-1], now)
            bad = [
                cheaters.forged(fleet[0], now),
                cheaters.unregistered_device(now, identity=stranger),
                (fleet[-1].topic, honest),
                cheaters.replay_of(honest),
            ]
            for topic, payload in bad:
                await clients[topic.split("/")[2]].publish(topic, payload, qos=1)
            sent += len(bad)
            await _drain(node, sent)
            row = await _published(node, epoch, tasks, timeout_s=opts.epoch_seconds + 60)
            epochs.append(row)
            say(
                f"epoch {epoch} closed and published by the scheduler: "
                f"root {hex0x(row.root)} tx {hex0x(row.tx_hash)}"
            )

        claim = await _claim_one(w3, deployment, api_url, owners, epochs[-1].epoch, operator)
        counts = await stores.api.counts()
        device = fleet[0]
        summary = {
            "devices": len(fleet),
            "owners": len(owners),
            "broker": broker.kind,
            "chain": chain_desc,
            "sent": sent,
            "packets_accepted": counts.packets,
            "readings_stored": counts.readings,
            "rejected": counts.rejections,
            "duplicates": node.consumer.stats.duplicates,
            "cells_covered": epochs[-1].manifest["cells"],
            "epochs": [
                {
                    "epoch": e.epoch,
                    "root": hex0x(e.root),
                    "tx": hex0x(e.tx_hash),
                    "allocated": str(e.allocated),
                    "unissued": str(e.unissued),
                }
                for e in epochs
            ],
            "claim": claim,
            "api": api_url,
            "example_device": device.device_id.hex(),
            "example_owner": owners[0].address,
            "env_file": str(env_file),
            "api_key": api_key,
            "try": [
                f"{api_url}/v1/readings?device={device.device_id.hex()}&limit=2",
                f"{api_url}/v1/usage",
                f"{api_url}/v1/devices/{device.device_id.hex()}/rejections",
                f"{api_url}/v1/epochs/{epochs[-1].epoch}",
                f"{api_url}/v1/epochs/{epochs[-1].epoch}/manifest",
                f"{api_url}/v1/epochs/{epochs[-1].epoch}/manifest/owners?limit=10",
                f"{api_url}/v1/owners/{owners[0].address}/proof",
                f"{api_url}/v1/stats",
                f"{api_url}/readyz",
            ],
            "seconds": round(time.monotonic() - started, 1),
        }
        _print_summary(summary)
        if opts.summary is not None:
            opts.summary.write_text(json.dumps(summary, indent=2) + "\n")
        if not opts.exit:
            say(f"API stays up at {api_url} — Ctrl-C (or SIGTERM) stops the demo and everything it started")
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                say("stopping: API, consumer, chain, broker, PostgreSQL")
                raise
        return summary


@asynccontextmanager
async def _publisher(broker: BrokerInfo, login: BrokerLogin | None) -> AsyncIterator[Any]:
    async with connected_publisher(
        broker.host, broker.port, mqtt5=broker.shared_subscriptions or None, login=login
    ) as client:
        yield client


async def _stream_epoch(fleet: list[SimDevice], clients: dict[str, Any], end_ms: int) -> int:
    """Stream at 1 packet/s per device, each over its own login, until the epoch's end (the last
    second is left for delivery)."""
    sent = 0
    while time.time_ns() // 1_000_000 < end_ms - 1000:
        tick = time.monotonic()
        now = time.time_ns() // 1_000_000
        await asyncio.gather(
            *(clients[d.identity.hex_id].publish(d.topic, next_message(d, now), qos=1) for d in fleet)
        )
        sent += len(fleet)
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    return sent


async def _drain(node: Any, sent: int, timeout_s: float = 30) -> None:
    """Wait until the consumer has handled every message the simulator sent."""
    deadline = time.monotonic() + timeout_s
    while node.consumer.stats.received < sent and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


async def _published(node: Any, epoch: int, tasks: list[asyncio.Task[None]], timeout_s: float) -> EpochRow:
    """Wait for the scheduler to close and publish `epoch` (it does so at its end + grace)."""
    deadline = time.monotonic() + timeout_s
    while True:
        row = await node.epochs.store.get_epoch(epoch)
        if row is not None and row.status in ("published", "settled"):
            return row
        for t in tasks:
            if t.done():
                raise RuntimeError(f"the demo's {t.get_name()} part stopped: {t.exception()!r}")
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"epoch {epoch} was not published within {timeout_s:.0f} s (see the log above)"
            )
        await asyncio.sleep(0.2)


async def _claim_one(
    w3: AsyncWeb3, deployment: Any, api_url: str, owners: list[Any], epoch: int, funder: Any
) -> dict[str, Any]:
    """The first owner claims as `depin claim` does (devices/claims.py): its proof from the API for
    the claimable root, then a claim signed with its own key."""
    owner = owners[0]
    await Signer(w3, funder).send_value(owner.address, 10**17)  # gas money for the owner's claim
    client = DistributorClient(w3, deployment, Signer(w3, owner))
    async with aiohttp.ClientSession() as http:
        result = await claim_rewards(client, owner.address, api_proofs(api_url, http))
    balance = await client.token_balance(owner.address)
    say(f"owner {owner.address} claimed {result.paid} base units (balance {balance})")
    return {
        "owner": owner.address,
        "epoch": result.epoch or epoch,
        "claimed": str(result.paid),
        "expected": str(result.cumulative),
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
    print(f"a device: {s['example_device']} · an owner: {s['example_owner']}")
    print(f"API: {s['api']}  ({s['seconds']} s); try:")
    print(f"buyer API key (scopes read,export; also DEPIN_API_KEY in the env file): {s['api_key']}")
    header = f'-H "Authorization: Bearer {s["api_key"]}" '
    for url in s["try"]:
        print(f"  curl -s {header if access_rule(urlsplit(url).path) != PUBLIC else ''}'{url}'")
    print(f"operator commands against this demo: . {s['env_file']} && depin device list")
