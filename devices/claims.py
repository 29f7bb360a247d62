"""An owner's claim (`depin claim`): the proof for the epoch the distributor accepts claims against
(`claimableRoot()`: the latest root past its challenge window), then one claim transaction, and only
when it pays something — a claim of what is already claimed pays 0 and still costs gas.

Where the proof comes from is a `ProofSource`: the service's public API (`api_proofs`) for the CLI.
The chain checks the proof against the root it holds, so a wrong proof costs a reverted call, never
tokens.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from eth_utils import to_checksum_address
from web3.types import TxReceipt

from devices.chain.distributor import DistributorClient
from devices.errors import InputError


@dataclass(frozen=True, slots=True)
class Proof:
    cumulative: int  # the account's cumulative reward in the epoch's tree
    proof: list[bytes]


# (account, epoch) → the account's proof in that epoch's tree, or None when it is not in it.
ProofSource = Callable[[str, int], Awaitable[Proof | None]]


@dataclass(frozen=True, slots=True)
class ClaimResult:
    account: str
    epoch: int  # the claimable epoch; 0 when no root is claimable yet
    cumulative: int  # the account's cumulative reward there (0: not in the tree)
    claimed_before: int
    paid: int  # newly paid by this claim (0: nothing sent)
    receipt: TxReceipt | None
    transfer: TxReceipt | None = None  # `to`: the payout sent on

    def summary(self) -> str:
        if self.epoch == 0:
            return "nothing to claim: no epoch root is claimable yet"
        if self.cumulative == 0:
            return f"nothing to claim: {self.account} has no reward in epoch {self.epoch}, the claimable one"
        if self.receipt is None:
            return (
                f"nothing new to claim: {self.account} already claimed {self.claimed_before} of its "
                f"cumulative {self.cumulative} (epoch {self.epoch})"
            )
        return (
            f"claimed {self.paid} base units for {self.account} (epoch {self.epoch}, cumulative "
            f"{self.cumulative}, claimed before {self.claimed_before})"
        )


async def claim_rewards(
    client: DistributorClient, account: str, proofs: ProofSource, *, to: str | None = None
) -> ClaimResult:
    """Claim `account`'s rewards up to the claimable root; with `to`, send what was paid on to `to`
    (signed by the client's signer, which must then be `account`)."""
    account = to_checksum_address(account)
    epoch, _, _ = await client.claimable_root()
    before = await client.claimed(account)
    if epoch == 0:
        return ClaimResult(account, 0, 0, before, 0, None)
    proof = await proofs(account, epoch)
    if proof is None:
        return ClaimResult(account, epoch, 0, before, 0, None)
    receipt, paid = await client.claim(account, proof.cumulative, proof.proof)
    transfer = None
    if to is not None and paid:
        transfer = await client.transfer(to, paid)
    return ClaimResult(account, epoch, proof.cumulative, before, paid, receipt, transfer)


def api_proofs(api_url: str, http: aiohttp.ClientSession) -> ProofSource:
    """Proofs from the service's `GET /v1/owners/{address}/proof?epoch=N` (public)."""

    async def fetch(account: str, epoch: int) -> Proof | None:
        url = f"{api_url.rstrip('/')}/v1/owners/{account}/proof"
        async with http.get(url, params={"epoch": str(epoch)}) as resp:
            if resp.status == 404:
                return None
            if resp.status != 200:
                raise InputError(f"{url}: HTTP {resp.status}: {(await resp.text())[:200]}")
            body = await resp.json()
        return Proof(int(body["cumulative"]), [bytes.fromhex(p.removeprefix("0x")) for p in body["proof"]])

    return fetch
