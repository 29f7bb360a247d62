"""`depin claim --key-file owner.key [--to ADDRESS] [--api URL]`: an owner claims its rewards up to the
root the distributor accepts claims against (devices/claims.py), with the proof from the service's
API; nothing is sent when there is nothing new to claim."""

from __future__ import annotations

import argparse

import aiohttp
from eth_utils import is_address, to_checksum_address

from devices.chain.distributor import DistributorClient
from devices.claims import api_proofs, claim_rewards
from devices.cli.common import chain_command, chain_options, open_chain, tx_line
from devices.errors import InputError
from devices.settings import ChainSettings

DEFAULT_API = "http://127.0.0.1:8080"


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "claim",
        parents=[chain_options()],
        help="claim an owner's rewards (sign with the owner's --key-file); nothing is sent if none are new",
    )
    p.add_argument("--to", help="send what the claim paid on to this address (a second transaction)")
    p.add_argument(
        "--api", default=DEFAULT_API, help=f"the service's API, for the proof (default {DEFAULT_API})"
    )
    p.set_defaults(func=chain_command(_claim))


async def _claim(args: argparse.Namespace, settings: ChainSettings) -> int:
    if args.key_file is None:
        raise InputError("give --key-file: the owner's key signs the claim (it pays its own gas)")
    if args.to is not None and not is_address(args.to):
        raise InputError(f"--to {args.to!r} is not an address")
    to = None if args.to is None else to_checksum_address(args.to)
    async with open_chain(settings, signing=True) as chain, aiohttp.ClientSession() as http:
        signer = chain.signer
        client = DistributorClient(chain.w3, chain.deployment, signer)
        result = await claim_rewards(client, signer.address, api_proofs(args.api, http), to=to)
        print(result.summary())
        if result.receipt is not None:
            print(f"  {tx_line(result.receipt)}")
            print(f"  balance {await client.token_balance(signer.address)} base units")
        if result.transfer is not None:
            print(f"sent {result.paid} base units to {to}  {tx_line(result.transfer)}")
    return 0
