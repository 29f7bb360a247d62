"""`depin contracts deploy`: the three contracts, their roles wired, and the deployment file every other
command reads."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from eth_account import Account
from web3 import AsyncHTTPProvider, AsyncWeb3

from devices.chain.deployment import ADMIN_DELAY_S, TOKEN, Schedule, deploy_contracts
from devices.chain.signer import Signer
from devices.cli.common import chain_command, require_node
from devices.errors import InputError
from devices.inputs import parse_address
from devices.settings import ChainSettings, read_key

# The service's defaults (ingest/settings.py: DEPIN_EPOCH_GENESIS_MS, _LENGTH_S, _EMISSION): the contract
# numbers epochs the same way, so a deploy for other settings must pass them.
DEFAULT_GENESIS_MS = 1_767_225_600_000
DEFAULT_LENGTH_S = 86_400
DEFAULT_EMISSION = 10_000 * TOKEN
DEFAULT_CHALLENGE_WINDOW_S = 3_600


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = sub.add_parser("contracts", help="contract deployment")
    csub = c.add_subparsers(dest="contracts_command", required=True)
    dep = csub.add_parser("deploy", help="deploy DeviceRegistry, RewardToken, RewardDistributor")
    dep.add_argument("--rpc-url", default=None, help="JSON-RPC URL (default DEPIN_CHAIN_RPC_URL)")
    dep.add_argument(
        "--key-file", type=Path, help="file holding the deployer's hex key (default DEPIN_OPERATOR_KEY_FILE)"
    )
    dep.add_argument(
        "--rewards-account",
        help="address given REWARDS_ROLE (default: the key in --rewards-key-file, created if missing)",
    )
    dep.add_argument(
        "--rewards-key-file",
        type=Path,
        help="the service's publishing key (DEPIN_REWARDS_KEY_FILE): created (mode 0600) if missing; "
        "default rewards.key beside --out",
    )
    dep.add_argument(
        "--guardian", help="address given GUARDIAN_ROLE: vetoes a pending root (default: the deployer)"
    )
    # The schedule the contract enforces: the service's own epoch settings.
    dep.add_argument("--genesis-ms", type=int, default=DEFAULT_GENESIS_MS, help="DEPIN_EPOCH_GENESIS_MS")
    dep.add_argument("--epoch-length-s", type=int, default=DEFAULT_LENGTH_S, help="DEPIN_EPOCH_LENGTH_S")
    dep.add_argument("--epoch-emission", type=int, default=DEFAULT_EMISSION, help="DEPIN_EPOCH_EMISSION")
    dep.add_argument(
        "--challenge-window-s",
        type=int,
        default=DEFAULT_CHALLENGE_WINDOW_S,
        help="seconds a new root waits, vetoable, before it is claimable (less than an epoch)",
    )
    dep.add_argument(
        "--emission-halving-epochs",
        type=int,
        default=0,
        help="DEPIN_EMISSION_HALVING_EPOCHS: the service's schedule halves every N epochs (0: flat); "
        "recorded in the deployment file",
    )
    dep.add_argument("--admin-delay-s", type=int, default=ADMIN_DELAY_S, help="delay of an admin handover")
    dep.add_argument(
        "--premine",
        type=int,
        default=0,
        help="token base units minted to the deployer at deploy, within the cap (default 0; on a devnet, "
        "what buyers deposit for API credit and bounties)",
    )
    dep.add_argument("--out", type=Path, default=Path("deployment.json"), help="deployment file to write")
    dep.add_argument(
        "--force", action="store_true", help="overwrite an existing --out file (its addresses are lost)"
    )
    dep.set_defaults(func=chain_command(lambda a, s: deploy(s, a)))


def _rewards_account(args: argparse.Namespace) -> tuple[str, Path | None]:
    """The REWARDS_ROLE holder: never the deployer by default, since that key is hot on the service host.
    Also the key file created for it, if one was (removed again if the deploy fails)."""
    if args.rewards_account:
        return parse_address(args.rewards_account, "rewards account"), None
    path: Path = args.rewards_key_file or args.out.parent / "rewards.key"
    created = None
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(Account.create().key.hex() + "\n")
        created = path
    return str(Account.from_key(read_key(path)).address), created


async def deploy(settings: ChainSettings, args: argparse.Namespace) -> int:
    out: Path = args.out
    force: bool = args.force
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
        schedule = Schedule(
            genesis_ms=args.genesis_ms,
            epoch_length_ms=args.epoch_length_s * 1000,
            epoch_emission=args.epoch_emission,
            challenge_window_s=args.challenge_window_s,
            admin_delay_s=args.admin_delay_s,
            premine=args.premine,
            emission_halving_epochs=args.emission_halving_epochs,
        )
        if args.emission_halving_epochs < 0:
            raise InputError("--emission-halving-epochs must be 0 (flat) or more")
        guardian = parse_address(args.guardian, "guardian") if args.guardian else None
        rewards, created = await asyncio.to_thread(_rewards_account, args)
        try:
            deployment = await deploy_contracts(
                w3, Signer(w3, account), schedule, rewards_account=rewards, guardian=guardian
            )
        except BaseException:
            if created is not None:
                created.unlink()  # the deployment is not saved either: nothing uses this key
            raise
        if created is not None:
            print(f"new rewards key written to {created} (set DEPIN_REWARDS_KEY_FILE to it; fund it for gas)")
    finally:
        await w3.provider.disconnect()
    deployment.save(out)
    print(f"deployed on chain {deployment.chain_id} at block {deployment.block}")
    print(f"  DeviceRegistry     {deployment.registry}")
    print(f"  RewardToken        {deployment.token}")
    print(f"  RewardDistributor  {deployment.distributor}")
    print(f"  rewards account    {rewards}")
    print(f"deployment written to {out}")
    return 0
