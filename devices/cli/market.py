"""Buyers' commands (README "Rewards", buyers' revenue and bounties): `depin credit deposit` prepays an
API key's metered usage, `depin bounty create` funds a pool for cells and epochs, `depin bounty list`
shows the bounties on chain. Tokens go to the RewardDistributor, which pays them out through the epoch
roots (`depin claim`); the payer's key signs and pays the gas, and the distributor is approved first
when its allowance is short."""

from __future__ import annotations

import argparse
import re

from eth_utils import keccak

from devices.chain.distributor import DistributorClient
from devices.cli.common import chain_command, chain_options, open_chain, tx_line
from devices.errors import InputError
from devices.inputs import parse_cell
from devices.settings import ChainSettings

KEY_ID_RE = re.compile(r"dpk_[a-z2-7]{8}")  # an API key's public id (ingest/core/apikeys.py)


def key_account(key_id: str) -> bytes:
    """The on-chain account of an API key: keccak256 of its public id (what the service credits)."""
    if not KEY_ID_RE.fullmatch(key_id):
        raise InputError(
            f"--key-id {key_id!r} is not an API key id (dpk_ and 8 characters: `depin api-key list` shows it)"
        )
    return keccak(key_id.encode("ascii"))


def _amount(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InputError(f"--amount {text!r} is not a whole number of token base units") from None
    if value <= 0:
        raise InputError("--amount must be more than 0 base units")
    return value


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = sub.add_parser("credit", help="prepaid credit of an API key")
    csub = c.add_subparsers(dest="credit_command", required=True)
    d = csub.add_parser(
        "deposit",
        parents=[chain_options()],
        help="deposit tokens on chain for an API key's metered usage "
        "(sign with the payer's --key-file, else the operator key)",
    )
    d.add_argument(
        "--key-id", required=True, help="the API key's public id (dpk_…, from `depin api-key list`)"
    )
    d.add_argument("--amount", required=True, help="token base units")
    d.set_defaults(func=chain_command(_deposit))

    b = sub.add_parser("bounty", help="bounties: a pool for the devices covering cells in an epoch window")
    bsub = b.add_subparsers(dest="bounty_command", required=True)
    cr = bsub.add_parser(
        "create",
        parents=[chain_options()],
        help="fund a bounty (sign with the funder's --key-file, else the operator key)",
    )
    cr.add_argument("--cells", required=True, help="comma list of H3 cells (hex), 1 to 64")
    cr.add_argument("--from-epoch", type=int, required=True, help="first epoch of the window")
    cr.add_argument("--to-epoch", type=int, required=True, help="last epoch of the window (not over yet)")
    cr.add_argument("--amount", required=True, help="token base units, shared evenly by the window's epochs")
    cr.set_defaults(func=chain_command(_create))
    ls = bsub.add_parser("list", parents=[chain_options(signer=False)], help="the bounties on chain")
    ls.set_defaults(func=chain_command(_list), key_file=None)


async def _deposit(args: argparse.Namespace, settings: ChainSettings) -> int:
    account = key_account(args.key_id)
    amount = _amount(args.amount)
    async with open_chain(settings, signing=True) as chain:
        client = DistributorClient(chain.w3, chain.deployment, chain.signer)
        receipt = await client.deposit(account, amount)
        print(f"deposited {amount} base units for API key {args.key_id} (account 0x{account.hex()})")
        print(f"  {tx_line(receipt)}")
        print("  the service credits it once the deposit is confirmed; GET /v1/usage shows the credit")
    return 0


async def _create(args: argparse.Namespace, settings: ChainSettings) -> int:
    cells = [parse_cell(c) for c in args.cells.split(",") if c.strip()]
    if not 1 <= len(cells) <= 64:
        raise InputError(f"--cells names 1 to 64 cells, not {len(cells)}")
    if args.from_epoch < 1 or args.to_epoch < args.from_epoch:
        raise InputError("--from-epoch must be 1 or more and --to-epoch at or after it")
    amount = _amount(args.amount)
    async with open_chain(settings, signing=True) as chain:
        client = DistributorClient(chain.w3, chain.deployment, chain.signer)
        receipt, bounty_id = await client.create_bounty(args.from_epoch, args.to_epoch, cells, amount)
        print(
            f"bounty {bounty_id}: {amount} base units for {len(cells)} cells, epochs "
            f"{args.from_epoch}..{args.to_epoch}; what no device earns returns to "
            f"{chain.signer.address} after the window (`depin claim`)"
        )
        print(f"  {tx_line(receipt)}")
    return 0


async def _list(args: argparse.Namespace, settings: ChainSettings) -> int:
    async with open_chain(settings, signing=False) as chain:
        client = DistributorClient(chain.w3, chain.deployment)
        latest = await chain.w3.eth.block_number
        events = await client.market_events(chain.deployment.block, latest)
        bounties = [e for e in events if e["event"] == "BountyCreated"]
        if not bounties:
            print("no bounties")
        for e in bounties:
            a = e["args"]
            cells = ",".join(f"{int(c):x}" for c in a["cells"])
            print(
                f"bounty {a['id']}  funder {a['funder']}  epochs {a['startEpoch']}..{a['endEpoch']}  "
                f"amount {a['amount']}  cells {cells}  block {e['blockNumber']}"
            )
    return 0
