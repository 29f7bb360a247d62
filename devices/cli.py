"""Operator and owner commands behind `depin contracts …` and `depin device …`."""

from __future__ import annotations

import os
from pathlib import Path

from eth_account import Account
from web3 import AsyncHTTPProvider, AsyncWeb3

from devices.chain import Signer, deploy_contracts
from devices.keys import load_identity, new_identity, save_identity


def read_key(path: Path) -> str:
    """A hex private key from a file (one line). Never printed, never logged."""
    try:
        key = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read key file {path}: {exc.strerror}") from exc
    if not key:
        raise ValueError(f"key file {path} is empty")
    return key


async def deploy(rpc_url: str | None, key_file: Path, out: Path, rewards_account: str | None) -> int:
    url = rpc_url or os.environ.get("DEPIN_CHAIN_RPC_URL", "http://127.0.0.1:8545")
    account = Account.from_key(read_key(key_file))
    w3 = AsyncWeb3(AsyncHTTPProvider(url))
    try:
        if not await w3.is_connected():
            raise ValueError(f"no JSON-RPC node answers at {url}")
        deployment = await deploy_contracts(w3, Signer(w3, account), rewards_account=rewards_account)
    finally:
        await w3.provider.disconnect()
    deployment.save(out)
    print(f"deployed on chain {deployment.chain_id} at block {deployment.block}")
    print(f"  DeviceRegistry     {deployment.registry}")
    print(f"  RewardToken        {deployment.token}")
    print(f"  RewardDistributor  {deployment.distributor}")
    print(f"deployment written to {out}")
    return 0


def device_new(out: Path, show_secret: bool) -> int:
    if out.exists():
        raise ValueError(f"{out} exists: refusing to overwrite a device's credentials")
    identity = new_identity()
    save_identity(identity, out)
    print(f"device_id {identity.hex_id}")
    print(f"pubkey    {identity.pubkey.hex()}")
    print(f"credentials written to {out} (mode 0600)")
    if show_secret:
        print(f"seed      {bytes(load_identity(out).signing_key).hex()}")
    return 0
