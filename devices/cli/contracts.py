"""`depin contracts deploy`: the three contracts, their roles wired, and the deployment file every other
command reads."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from web3 import AsyncHTTPProvider, AsyncWeb3

from devices.chain.deployment import deploy_contracts
from devices.chain.signer import Signer
from devices.cli.common import chain_command, require_node
from devices.errors import InputError
from devices.inputs import parse_address
from devices.settings import ChainSettings


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = sub.add_parser("contracts", help="contract deployment")
    csub = c.add_subparsers(dest="contracts_command", required=True)
    dep = csub.add_parser("deploy", help="deploy DeviceRegistry, RewardToken, RewardDistributor")
    dep.add_argument("--rpc-url", default=None, help="JSON-RPC URL (default DEPIN_CHAIN_RPC_URL)")
    dep.add_argument(
        "--key-file", type=Path, help="file holding the deployer's hex key (default DEPIN_OPERATOR_KEY_FILE)"
    )
    dep.add_argument("--rewards-account", help="address given REWARDS_ROLE (default: the deployer)")
    dep.add_argument("--out", type=Path, default=Path("deployment.json"), help="deployment file to write")
    dep.add_argument(
        "--force", action="store_true", help="overwrite an existing --out file (its addresses are lost)"
    )
    dep.set_defaults(func=chain_command(lambda a, s: deploy(s, a.out, a.rewards_account, force=a.force)))


async def deploy(
    settings: ChainSettings, out: Path, rewards_account: str | None, *, force: bool = False
) -> int:
    # Checked before anything is sent: the file may be the only record of a live registry's address.
    if not force and await asyncio.to_thread(out.exists):
        raise InputError(
            f"{out} exists: refusing to overwrite a deployment file (its contracts' addresses would be "
            "lost); choose another --out, or pass --force to replace it"
        )
    account = settings.account()
    url = settings.rpc_url
    w3 = AsyncWeb3(AsyncHTTPProvider(url))
    try:
        await require_node(w3, url)
        rewards = parse_address(rewards_account, "rewards account") if rewards_account else None
        deployment = await deploy_contracts(w3, Signer(w3, account), rewards_account=rewards)
    finally:
        await w3.provider.disconnect()
    deployment.save(out)
    print(f"deployed on chain {deployment.chain_id} at block {deployment.block}")
    print(f"  DeviceRegistry     {deployment.registry}")
    print(f"  RewardToken        {deployment.token}")
    print(f"  RewardDistributor  {deployment.distributor}")
    print(f"deployment written to {out}")
    return 0
