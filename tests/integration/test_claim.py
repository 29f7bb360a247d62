"""`depin claim` and devices/claims.py on anvil: a claim pays the new part of an owner's cumulative
reward against the claimable root, sends nothing when nothing is new (no transaction, no gas), and
`to` sends the payout on; the CLI's own checks and its answer before any root is claimable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3

from devices.chain.deployment import Deployment
from devices.chain.distributor import DistributorClient
from devices.chain.signer import Signer
from devices.claims import Proof, ProofSource, claim_rewards
from ingest.core.merkle import CumulativeMerkleTree
from tests.integration.test_cli import Cli, cli, key_file  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration


def tree_proofs(tree: CumulativeMerkleTree) -> ProofSource:
    async def fetch(account: str, epoch: int) -> Proof | None:
        try:
            return Proof(tree.amount_of(account), tree.proof(account))
        except KeyError:
            return None

    return fetch


async def test_a_claim_pays_the_new_part_once(
    w3: AsyncWeb3[Any],
    deployment: Deployment,
    signer: Signer,
    make_signer: Callable[[LocalAccount], Signer],
    accounts: list[LocalAccount],
) -> None:
    owner, other, friend, stranger = accounts[3], accounts[4], accounts[5], accounts[6]
    publisher = DistributorClient(w3, deployment, signer)
    first = CumulativeMerkleTree([(owner.address, 100), (other.address, 50)])
    await publisher.publish_epoch(1, first.root, 150)
    client = DistributorClient(w3, deployment, make_signer(owner))

    paid = await claim_rewards(client, owner.address, tree_proofs(first))
    assert (paid.epoch, paid.cumulative, paid.claimed_before, paid.paid) == (1, 100, 0, 100)
    assert paid.receipt is not None and "claimed 100 base units" in paid.summary()
    nonce = await w3.eth.get_transaction_count(owner.address)
    again = await claim_rewards(client, owner.address, tree_proofs(first))
    assert (again.paid, again.receipt) == (0, None) and "nothing new to claim" in again.summary()
    assert await w3.eth.get_transaction_count(owner.address) == nonce  # nothing sent, no gas

    second = CumulativeMerkleTree([(owner.address, 160), (other.address, 50)])
    await publisher.publish_epoch(2, second.root, 210)
    moved = await claim_rewards(client, owner.address, tree_proofs(second), to=friend.address)
    assert (moved.epoch, moved.claimed_before, moved.paid) == (2, 100, 60) and moved.transfer is not None
    assert await client.token_balance(friend.address) == 60
    assert await client.token_balance(owner.address) == 100

    none = await claim_rewards(client, stranger.address, tree_proofs(second))
    assert (none.cumulative, none.receipt) == (0, None) and "no reward in epoch 2" in none.summary()


async def test_depin_claim_checks_its_input_and_says_when_nothing_is_claimable(
    cli: Cli,  # noqa: F811
    accounts: list[LocalAccount],
) -> None:
    owner_key = cli.key_file(accounts[3])
    await cli.fails("claim", match="give --key-file")  # never the operator's key by default
    await cli.fails("claim", "--key-file", str(owner_key), "--to", "0x12", match="not an address")
    out = await cli.ok("claim", "--key-file", str(owner_key))
    assert "nothing to claim: no epoch root is claimable yet" in out
