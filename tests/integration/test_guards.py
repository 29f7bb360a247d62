"""The contracts' guards against a stolen or mistaken key, each reproduced on anvil (the issue 14 audit):
every test here fails on the contracts before it (unbounded mint, epoch numbers past block time, claims
against any old root, no veto, one-step admin, an uncapped token)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3

from devices.chain.artifacts import DEFAULT_ADMIN_ROLE, MINTER_ROLE
from devices.chain.deployment import Deployment, Schedule, deploy_contracts
from devices.chain.distributor import DistributorClient
from devices.chain.signer import Signer
from devices.errors import ChainError
from ingest.core.merkle import CumulativeMerkleTree
from ingest.rewards_key import schedule_mismatch

pytestmark = pytest.mark.integration

DPR = 10**18
E = 100 * DPR  # the schedule's emission per epoch
LENGTH_MS = 60_000
MakeSigner = Callable[[LocalAccount], Signer]


async def deploy(w3: AsyncWeb3[Any], signer: Signer, *, window_s: int = 0, ended: int = 5) -> Deployment:
    """Contracts whose epochs 1..`ended` have ended by the chain's clock, `E` tokens an epoch."""
    now_ms = (await w3.eth.get_block("latest"))["timestamp"] * 1000
    schedule = Schedule(
        genesis_ms=now_ms - ended * LENGTH_MS - LENGTH_MS // 2,
        epoch_length_ms=LENGTH_MS,
        epoch_emission=E,
        challenge_window_s=window_s,
        supply_cap=10_000 * DPR,
    )
    return await deploy_contracts(w3, signer, schedule, rewards_account=signer.address)


async def mine_after(w3: AsyncWeb3[Any], seconds: float) -> None:
    """Let wall time pass and mine a block, so `latest` reads see the new time."""
    await asyncio.sleep(seconds)
    await w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]


async def supply(d: DistributorClient) -> int:
    return int(await d.token.functions.totalSupply().call())


async def test_a_stolen_rewards_key_cannot_mint_past_the_schedule(
    w3: AsyncWeb3[Any], signer: Signer, accounts: list[LocalAccount]
) -> None:
    """Reproduced before: publishEpoch(n, attacker-only root, 10**30) minted 10**30. Now the cumulative
    total is capped at E x epoch and one publish mints at most E per epoch since the last root."""
    d = DistributorClient(w3, await deploy(w3, signer), signer)
    thief = CumulativeMerkleTree([(accounts[9].address, 10**30)])
    with pytest.raises(ChainError) as err:
        await d.publish_epoch(1, thief.root, 10**30)
    assert err.value.error_name == "CumulativeCapExceeded" and err.value.error_args == (10**30, E)
    # The unissued share of past epochs cannot be minted later either: epoch 2 after nothing mints <= 2E
    # (both epochs' emission), and right after it epoch 3 adds at most E.
    await d.publish_epoch(2, b"\x02" * 32, 2 * E)
    with pytest.raises(ChainError) as err:
        await d.publish_epoch(3, b"\x03" * 32, 3 * E + 1)
    assert err.value.error_name == "CumulativeCapExceeded"
    await d.publish_epoch(3, b"\x03" * 32, 3 * E)
    with pytest.raises(ChainError, match="EpochNotEnded"):  # epoch 6 has not ended by block time
        await d.publish_epoch(6, b"\x06" * 32, 4 * E)
    assert await supply(d) == 3 * E  # the most the key could create: the schedule's emission so far


async def test_per_epoch_cap_keeps_the_backlog_of_unissued_rewards_unminted(
    w3: AsyncWeb3[Any], signer: Signer
) -> None:
    d = DistributorClient(w3, await deploy(w3, signer), signer)
    await d.publish_epoch(1, b"\x01" * 32, E // 10)  # a thin epoch: 90 % of its emission unissued
    with pytest.raises(ChainError) as err:  # epoch 2 may add E, not E + the backlog of epoch 1
        await d.publish_epoch(2, b"\x02" * 32, E // 10 + E + 1)
    assert err.value.error_name == "EpochCapExceeded" and err.value.error_args == (E + 1, E)


async def test_a_huge_epoch_number_is_refused_and_blocks_nothing(w3: AsyncWeb3[Any], signer: Signer) -> None:
    """Reproduced before: publishEpoch(2**64 - 1, ...) succeeded and every later publish reverted."""
    d = DistributorClient(w3, await deploy(w3, signer), signer)
    for mistaken in (2**64 - 1, 1_767_225_600_000):  # the largest, and a millisecond timestamp
        with pytest.raises(ChainError) as err:
            await d.publish_epoch(mistaken, b"\x01" * 32, 1)
        assert err.value.error_name == "EpochNotEnded" and err.value.error_args == (mistaken, 5)
    await d.publish_epoch(1, b"\x01" * 32, 1)
    assert await d.latest_epoch() == 1


async def test_publish_mints_only_the_difference_and_claims_pay_the_cumulative_difference(
    w3: AsyncWeb3[Any], signer: Signer, accounts: list[LocalAccount], make_signer: MakeSigner
) -> None:
    d = DistributorClient(w3, await deploy(w3, signer), signer)
    a, b = accounts[1].address, accounts[2].address
    t1 = CumulativeMerkleTree([(a, 30 * DPR), (b, 10 * DPR)])
    await d.publish_epoch(1, t1.root, 40 * DPR)
    _, paid = await d.claim(a, 30 * DPR, t1.proof(a))
    assert paid == 30 * DPR
    t2 = CumulativeMerkleTree([(a, 80 * DPR), (b, 60 * DPR)])
    await d.publish_epoch(2, t2.root, 140 * DPR)
    assert await supply(d) == 140 * DPR  # 40 + the difference of 100, not 40 + 140
    with pytest.raises(ChainError) as err:  # the cumulative total can never shrink below a root's
        await d.publish_epoch(3, t1.root, 40 * DPR)
    assert err.value.error_name == "TotalBelowAccepted"
    _, paid = await d.claim(a, 80 * DPR, t2.proof(a))
    assert paid == 50 * DPR and await d.token_balance(a) == 80 * DPR
    _, paid = await DistributorClient(w3, d.deployment, make_signer(accounts[2])).claim(
        b, 60 * DPR, t2.proof(b)
    )
    assert paid == 60 * DPR
    assert await d.token_balance(d.deployment.distributor) == 0  # exactly what was owed, all paid


async def test_a_vetoed_root_never_becomes_claimable(
    w3: AsyncWeb3[Any], signer: Signer, accounts: list[LocalAccount], make_signer: MakeSigner
) -> None:
    window = 2
    d = DistributorClient(w3, await deploy(w3, signer, window_s=window), signer)
    owner, thief = accounts[1].address, accounts[9].address
    honest = CumulativeMerkleTree([(owner, 10 * DPR), (accounts[2].address, 5 * DPR)])
    await d.publish_epoch(1, honest.root, 15 * DPR)
    with pytest.raises(ChainError, match="NothingClaimable"):  # pending: not claimable in its window
        await d.claim(owner, 10 * DPR, honest.proof(owner))
    with pytest.raises(ChainError, match="ChallengeWindowOpen"):  # nor replaceable
        await d.publish_epoch(2, b"\x02" * 32, 15 * DPR)
    await mine_after(w3, window + 0.5)
    assert (await d.claimable_root())[:2] == (1, honest.root)

    # A stolen key publishes a root paying only itself; the guardian (the admin here) vetoes it.
    evil = CumulativeMerkleTree([(thief, 15 * DPR + E)])
    await d.publish_epoch(2, evil.root, 15 * DPR + E)
    as_thief = DistributorClient(w3, d.deployment, make_signer(accounts[9]))
    with pytest.raises(ChainError, match="AccessControlUnauthorizedAccount"):
        await as_thief.veto(2)  # vetoing is the guardian's
    await d.veto(2)
    assert await d.root_of(2) == b"\0" * 32
    await mine_after(w3, window + 0.5)
    with pytest.raises(ChainError, match="InvalidProof"):
        await as_thief.claim(thief, 15 * DPR + E, evil.proof(thief))
    assert (await d.claimable_root())[:2] == (1, honest.root)  # claims use the previous accepted root
    _, paid = await d.claim(owner, 10 * DPR, honest.proof(owner))
    assert paid == 10 * DPR
    with pytest.raises(ChainError, match="NotVetoable"):  # an accepted root cannot be vetoed any more
        await d.veto(1)
    # The vetoed epoch number is spent; the next epoch publishes the corrected tree.
    with pytest.raises(ChainError, match="EpochNotAfterLatest"):
        await d.publish_epoch(2, honest.root, 15 * DPR)
    await d.publish_epoch(3, honest.root, 15 * DPR)


async def test_admin_handover_is_two_steps_with_a_delay_and_the_token_is_capped(
    w3: AsyncWeb3[Any], signer: Signer, accounts: list[LocalAccount], make_signer: MakeSigner
) -> None:
    dep = await deploy(w3, signer)
    token = DistributorClient(w3, dep, signer).token
    heir = accounts[4].address
    with pytest.raises(ChainError, match="AccessControlEnforcedDefaultAdminRules"):
        await signer.send(token.functions.grantRole(DEFAULT_ADMIN_ROLE, heir))  # no one-step handover
    await signer.send(token.functions.beginDefaultAdminTransfer(heir))
    heir_signer = make_signer(accounts[4])
    with pytest.raises(ChainError, match="AccessControlEnforcedDefaultAdminDelay"):
        await heir_signer.send(token.functions.acceptDefaultAdminTransfer())  # the delay has not passed
    await signer.send(token.functions.cancelDefaultAdminTransfer())
    # Even an admin that grants itself MINTER_ROLE cannot mint past the cap.
    await signer.send(token.functions.grantRole(MINTER_ROLE, signer.address))
    cap = int(await token.functions.cap().call())
    with pytest.raises(ChainError, match="ERC20ExceededCap"):
        await signer.send(token.functions.mint(signer.address, cap + 1))
    with pytest.raises(ChainError, match="AccessControlInvalidDefaultAdmin"):
        await signer.deploy("RewardToken", "0x" + "00" * 20, 0, cap, signer.address, 0)


async def test_the_service_names_a_schedule_that_differs_from_its_settings(
    w3: AsyncWeb3[Any], signer: Signer
) -> None:
    d = DistributorClient(w3, await deploy(w3, signer), signer)
    genesis = int(await d.contract.functions.genesisMs().call())
    assert await schedule_mismatch(d, genesis, LENGTH_MS, E) is None
    assert await schedule_mismatch(d, genesis, LENGTH_MS, E // 2) is None  # less than allowed: fine
    line = await schedule_mismatch(d, genesis + 1, LENGTH_MS, 2 * E)
    assert line == (
        f"epochs from {genesis} ms every {LENGTH_MS} ms on chain, DEPIN_EPOCH_GENESIS_MS={genesis + 1} "
        f"and DEPIN_EPOCH_LENGTH_S=60 here; at most {E} minted per epoch on chain, "
        f"DEPIN_EPOCH_EMISSION={2 * E} here (the schedule's largest epoch)"
    )
    # The deployment file's record of the schedule's halving against the setting.
    assert (
        await schedule_mismatch(d, genesis, LENGTH_MS, E, halving_epochs=4, recorded_halving_epochs=4) is None
    )
    assert await schedule_mismatch(d, genesis, LENGTH_MS, E, halving_epochs=4) is None  # an old file
    assert await schedule_mismatch(d, genesis, LENGTH_MS, E, recorded_halving_epochs=4) == (
        "the deployment file records an emission halving every 4 epochs (0: flat), "
        "DEPIN_EMISSION_HALVING_EPOCHS=0 here"
    )
