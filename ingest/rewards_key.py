"""The rewards key (REWARDS_ROLE) checked at start: strict format, private file, role on chain.

Every problem is a ValueError whose message is one line naming the setting (`depin run` prints it
and exits 1); the key itself is never part of a message.
"""

from __future__ import annotations

import logging
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from eth_account import Account
from eth_account.signers.local import LocalAccount

if TYPE_CHECKING:
    from devices.chain.distributor import DistributorClient
    from ingest.settings import ChainConfig

log = logging.getLogger(__name__)

KEY_RE = re.compile(r"(?:0x)?[0-9a-fA-F]{64}")


def parse_key(text: str, setting: str) -> LocalAccount:
    """Exactly 64 hex digits, optionally 0x-prefixed, surrounding whitespace ignored. Anything else
    (63 digits, which eth-account would quietly left-pad into another account; a 0X prefix; a
    mnemonic) is refused."""
    value = text.strip()
    if not KEY_RE.fullmatch(value):
        body = value.removeprefix("0x")
        if body and all(c in "0123456789abcdefABCDEF" for c in body):
            found = f"{len(body)} hex digits"
        elif not value:
            found = "nothing"
        else:
            found = f"{len(value)} characters, not all hex digits"
        raise ValueError(
            f"{setting}: not a private key: expected exactly 64 hex digits (optionally 0x-prefixed), "
            f"found {found}"
        )
    try:
        return Account.from_key(value)
    except (ValueError, TypeError):  # zero or not below the curve order
        raise ValueError(f"{setting}: not a valid secp256k1 private key (out of range)") from None


def read_key_file(path: Path) -> LocalAccount:
    """The key in `path`; refused when the file is accessible by group or others (it signs payouts)."""
    setting = "DEPIN_REWARDS_KEY_FILE"
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"{setting}: {path} is not a regular file")
        if mode & 0o077:
            raise ValueError(
                f"{setting}: {path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
                f"run: chmod 600 {path}"
            )
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{setting}: {path} is not text (expected 64 hex digits)") from None
    return parse_key(text, f"{setting} ({path})")


def rewards_account(settings: ChainConfig) -> LocalAccount | None:
    """The account from DEPIN_REWARDS_KEY_FILE or DEPIN_REWARDS_KEY; None when neither is set."""
    if settings.rewards_key_file is not None:
        return read_key_file(settings.rewards_key_file)
    if settings.rewards_key is not None:
        return parse_key(settings.rewards_key.get_secret_value(), "DEPIN_REWARDS_KEY")
    return None


async def check_rewards_role(distributor: DistributorClient, account: LocalAccount, setting: str) -> None:
    """Refuse to start (ValueError) if the account definitely lacks REWARDS_ROLE. If the chain cannot
    be asked now, only warn: publishing then fails and shows in `/readyz` ("epochs")."""
    from devices.chain.artifacts import REWARDS_ROLE

    try:
        has = await distributor.contract.functions.hasRole(REWARDS_ROLE, account.address).call()
    except Exception as exc:
        log.warning("could not check REWARDS_ROLE of %s (%s); publishing will tell", account.address, exc)
        return
    if not has:
        raise ValueError(
            f"{setting}: account {account.address} does not hold REWARDS_ROLE on the distributor "
            f"{distributor.contract.address}; grant it (grantRole) or configure the right key"
        )


async def schedule_mismatch(
    distributor: DistributorClient,
    genesis_ms: int,
    length_ms: int,
    emission: int,
    *,
    halving_epochs: int = 0,
    recorded_halving_epochs: int | None = None,
) -> str | None:
    """How the distributor's on-chain emission schedule disagrees with the service's epoch settings,
    as one line; None when it agrees, or when the chain cannot be asked now. A different genesis or
    length numbers epochs differently (publishes refused or early); a smaller on-chain emission caps
    what an epoch may mint below what the service allocates: `emission` is the schedule's first epoch,
    its largest (flat, or halving every `halving_epochs`), so no later epoch exceeds the cap either.
    `recorded_halving_epochs`: what the deployment file says the schedule was deployed for (None: a
    file written before it was recorded)."""
    c = distributor.contract.functions
    try:
        g = int(await c.genesisMs().call())
        n = int(await c.epochLengthMs().call())
        e = int(await c.epochEmission().call())
    except Exception as exc:
        log.warning("could not read the distributor's emission schedule (%s); publishing will tell", exc)
        return None
    problems = []
    if (g, n) != (genesis_ms, length_ms):
        problems.append(
            f"epochs from {g} ms every {n} ms on chain, DEPIN_EPOCH_GENESIS_MS={genesis_ms} and "
            f"DEPIN_EPOCH_LENGTH_S={length_ms / 1000:g} here"
        )
    if e < emission:
        problems.append(
            f"at most {e} minted per epoch on chain, DEPIN_EPOCH_EMISSION={emission} here (the schedule's "
            "largest epoch)"
        )
    if recorded_halving_epochs is not None and recorded_halving_epochs != halving_epochs:
        problems.append(
            f"the deployment file records an emission halving every {recorded_halving_epochs} epochs "
            f"(0: flat), DEPIN_EMISSION_HALVING_EPOCHS={halving_epochs} here"
        )
    return "; ".join(problems) or None
