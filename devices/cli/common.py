"""What every chain command shares: its connection options, opening the chain (the cheap checks first),
and `run_command`, which leaves every failure a user can cause as one `DepinError` line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from eth_utils import to_checksum_address
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import Web3Exception, Web3RPCError
from web3.types import TxReceipt

from devices.chain.artifacts import (
    DEFAULT_ADMIN_ROLE,
    GUARDIAN_ROLE,
    MINTER_ROLE,
    OPERATOR_ROLE,
    REWARDS_ROLE,
)
from devices.chain.deployment import Deployment
from devices.chain.registry import RegistryClient
from devices.chain.signer import Signer
from devices.errors import ChainError, DepinError, SettingsError
from devices.protocol.model import DeviceRecord
from devices.protocol.registry_fold import HW_CLASS_SET, HwClassInfo, apply_hw_class_events
from devices.settings import ChainSettings

ROLE_NAMES = {
    OPERATOR_ROLE: "OPERATOR_ROLE",
    MINTER_ROLE: "MINTER_ROLE",
    REWARDS_ROLE: "REWARDS_ROLE",
    GUARDIAN_ROLE: "GUARDIAN_ROLE",
    DEFAULT_ADMIN_ROLE: "DEFAULT_ADMIN_ROLE",
}

# The argparse handler of one command: its parsed arguments → exit code.
Handler = Callable[[argparse.Namespace], int]


# --------------------------------------------------------------------------------------------- options


def chain_options(*, signer: bool = True) -> argparse.ArgumentParser:
    """The connection options every `depin device …` and `depin hw …` command takes (argparse parent);
    `signer=False`: without --key-file, for a command that only reads the chain."""
    o = argparse.ArgumentParser(add_help=False)
    g = o.add_argument_group("chain connection")
    g.add_argument("--rpc-url", help="JSON-RPC URL (default DEPIN_CHAIN_RPC_URL, else http://127.0.0.1:8545)")
    g.add_argument(
        "--deployment",
        type=Path,
        help="deployment file (default DEPIN_DEPLOYMENT_FILE, else deployment.json)",
    )
    if not signer:
        return o
    g.add_argument(
        "--key-file",
        type=Path,
        help="signer's hex private key (default DEPIN_OPERATOR_KEY_FILE, else DEPIN_OPERATOR_KEY)",
    )
    return o


def chain_command(make: Callable[[argparse.Namespace, ChainSettings], Awaitable[int]]) -> Handler:
    """The handler of a command that talks to the chain: settings from the options and the environment,
    then `make(args, settings)` under run_command. `make` parses the command's own arguments before it
    builds the coroutine (which connects), so bad input fails fast and sends nothing."""

    def handler(args: argparse.Namespace) -> int:
        settings = ChainSettings.resolve(
            rpc_url=args.rpc_url, deployment_file=getattr(args, "deployment", None), key_file=args.key_file
        )
        return run_command(settings, lambda: make(args, settings))

    return handler


# --------------------------------------------------------------------------------------------- failures


def run_command(settings: ChainSettings, command: Callable[[], Awaitable[int]]) -> int:
    """Run one command's coroutine; what the user can cause leaves as a DepinError line."""
    return asyncio.run(_guarded(settings, command))


async def _guarded(settings: ChainSettings, command: Callable[[], Awaitable[int]]) -> int:
    try:
        return await command()
    except BrokenPipeError:  # our stdout closed (`… | head`), not the node's connection
        raise
    except (ChainError, Web3Exception, aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
        raise explain(settings, exc) from None


def explain(settings: ChainSettings, exc: BaseException) -> DepinError:
    """A chain-side failure as one line: the contract's error in words, the node's refusal, or which node
    failed to answer."""
    if isinstance(exc, ChainError):
        return ChainError(explain_chain_error(exc))
    if isinstance(exc, Web3RPCError):
        return ChainError(explain_rpc_error(exc))
    if isinstance(exc, Web3Exception):
        return ChainError(str(exc))
    return ChainError(f"the JSON-RPC node at {settings.rpc_url} failed: {exc or type(exc).__name__}")


def explain_chain_error(exc: ChainError) -> str:
    """The contract's custom error in words, with what to do about it."""
    name, args = exc.error_name, exc.error_args
    if name == "AccessControlUnauthorizedAccount" and len(args) == 2:
        return missing_role(str(args[0]), bytes(args[1]))
    if name == "NotDeviceOwner" and len(args) == 2:
        return f"{args[1]} is not the owner of device {bytes(args[0]).hex()}: sign with the owner's key"
    if name == "NotOwnerOrOperator" and len(args) == 2:
        return f"{args[1]} is neither the owner of device {bytes(args[0]).hex()} nor an operator"
    if name == "AlreadyRegistered" and args:
        return f"device {bytes(args[0]).hex()} is already registered"
    if name == "UnknownDevice" and args:
        return f"device {bytes(args[0]).hex()} is not registered"
    if name == "DeviceNotActive" and args:
        return f"device {bytes(args[0]).hex()} is revoked"
    if name == "UnknownHwClass" and args:
        return f"hardware class {args[0]} is unknown or disabled (see `depin hw list`)"
    if name == "MobileClassCell" and args:
        return f"hardware class {args[0]} is mobile: its devices have no asserted cell"
    if name == "InvalidCell" and len(args) == 2:
        cell = f"{int(args[0]):x}"
        return f"cell {cell} is not a valid resolution-{args[1]} H3 cell (the class's resolution)"
    if name == "InvalidH3Res" and args:
        return f"H3 resolution {args[0]} is out of range (0..15)"
    if name == "ZeroPubkey":
        return "the pubkey is all zeros"
    if name == "ZeroAddress":
        return "the zero address is not allowed here"
    if name == "ZeroAmount":
        return "the amount must be more than 0"
    if name == "BadBountyWindow" and len(args) == 3:
        return (
            f"bounty epochs {args[0]}..{args[1]} refused: the window must start at epoch 1 or later, end "
            f"at or after its start, span at most 1000 epochs and not be over (epochs up to {args[2]} "
            "have ended)"
        )
    if name == "BadBountyCells" and args:
        return f"a bounty names 1 to 64 cells, not {args[0]}"
    if name == "ERC20InsufficientBalance" and len(args) == 3:
        return f"{args[0]} holds {args[1]} base units of the reward token, less than the {args[2]} to pay in"
    if name == "ERC20InsufficientAllowance" and len(args) == 3:
        return (
            f"the distributor may take {args[1]} base units of the payer's tokens, less than {args[2]}: "
            "approve more"
        )
    return str(exc)


def missing_role(account: str, role: bytes) -> str:
    role_name = ROLE_NAMES.get(role, "0x" + role.hex())
    if role == OPERATOR_ROLE:
        return (
            f"{account} does not hold {role_name}: this needs an operator's key "
            "(--key-file or DEPIN_OPERATOR_KEY_FILE)"
        )
    return f"{account} does not hold {role_name}: sign with an account that does"


def explain_rpc_error(exc: Web3RPCError) -> str:
    msg = exc.message if isinstance(exc.message, str) else str(exc)
    if "insufficient funds" in msg.lower():
        return "the signing account has too little ETH to pay for gas"
    return f"the node refused the request: {msg}"


# --------------------------------------------------------------------------------------------- the chain


@dataclass
class Chain:
    """An open connection: the registry client (with a signer when the command sends transactions)."""

    w3: AsyncWeb3[Any]
    deployment: Deployment
    registry: RegistryClient
    settings: ChainSettings

    @property
    def signer(self) -> Signer:
        if self.registry.signer is None:  # a command that sends must open the chain with signing=True
            raise ChainError("this command opened the chain read-only: it cannot sign")
        return self.registry.signer


def load_deployment(path: Path) -> Deployment:
    try:
        return Deployment.load(path)
    except FileNotFoundError:
        raise SettingsError(
            f"deployment file {path} not found: pass --deployment FILE or set DEPIN_DEPLOYMENT_FILE "
            "(it is written by `depin contracts deploy`)"
        ) from None
    except OSError as exc:
        raise SettingsError(f"cannot read deployment file {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise SettingsError(f"{path} is not a deployment file ({type(exc).__name__}: {exc})") from None


async def require_node(w3: AsyncWeb3[Any], url: str) -> None:
    if not await w3.is_connected():
        raise ChainError(f"no JSON-RPC node answers at {url} (set --rpc-url or DEPIN_CHAIN_RPC_URL)")


@contextlib.asynccontextmanager
async def open_chain(settings: ChainSettings, *, signing: bool) -> AsyncIterator[Chain]:
    """Check everything cheap first (deployment file, key), then that the node answers, is the chain the
    deployment was made on, and has the registry's code: a stale file after a chain reset is common."""
    deployment = load_deployment(settings.deployment_file)
    account = settings.account() if signing else None
    url = settings.rpc_url
    try:
        w3 = AsyncWeb3(AsyncHTTPProvider(url, request_kwargs={"timeout": aiohttp.ClientTimeout(total=60)}))
    except Exception as exc:  # web3 rejects some malformed URLs at construction
        raise SettingsError(f"bad JSON-RPC URL {url!r}: {exc}") from None
    try:
        await require_node(w3, url)
        chain_id = await w3.eth.chain_id
        if chain_id != deployment.chain_id:
            raise ChainError(
                f"{settings.deployment_file} is for chain {deployment.chain_id} but {url} is chain {chain_id}"
            )
        if not await w3.eth.get_code(to_checksum_address(deployment.registry)):
            raise ChainError(
                f"no DeviceRegistry at {deployment.registry} on {url}: "
                f"{settings.deployment_file} is stale (was the chain reset?)"
            )
        signer = Signer(w3, account) if account is not None else None
        yield Chain(w3, deployment, RegistryClient(w3, deployment, signer), settings)
    finally:
        await w3.provider.disconnect()


def tx_line(receipt: TxReceipt) -> str:
    return (
        f"tx 0x{bytes(receipt['transactionHash']).hex()} block {receipt['blockNumber']} "
        f"gas {receipt['gasUsed']:,}"
    )


async def fetch_hw_classes(chain: Chain) -> dict[int, HwClassInfo]:
    """The hardware-class table from HwClassSet events (the registry cannot enumerate its classes),
    fetched and folded as the service's follower does."""
    latest = await chain.w3.eth.block_number
    events = await chain.registry.fetch_events(chain.deployment.block, latest, kinds={HW_CLASS_SET})
    classes: dict[int, HwClassInfo] = {}
    apply_hw_class_events(classes, events)
    return classes


async def device_or_fail(chain: Chain, device_id: bytes) -> DeviceRecord:
    rec = await chain.registry.get_device(device_id)
    if rec is None:
        raise ChainError(f"device {device_id.hex()} is not registered")
    return rec
