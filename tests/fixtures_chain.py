"""Chain fixtures: one anvil per test session (from contracts/node_modules), fresh contracts per test.

anvil is a hard requirement of the integration suite: if it is missing the fixture fails (never skips),
so a CI run without `npm ci --prefix contracts` cannot pass by silently testing nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from web3 import AsyncHTTPProvider, AsyncWeb3

from devices.chain.deployment import Deployment, Schedule, deploy_contracts
from devices.chain.signer import Signer
from ingest.dev.chain import anvil_path, dev_accounts, start_anvil

__all__ = ["TEST_SCHEDULE", "accounts", "anvil_url", "deployer", "deployment", "make_signer", "signer", "w3"]


@pytest.fixture(scope="session")
async def anvil_url() -> AsyncIterator[str]:
    if anvil_path() is None:
        pytest.fail(
            "anvil not found in contracts/node_modules: run `npm ci --prefix contracts`", pytrace=False
        )
    async with start_anvil() as url:
        yield url


@pytest.fixture(scope="session")
def accounts() -> list[LocalAccount]:
    """anvil's ten funded dev accounts; [0] deploys and operates, the others are owners/strangers."""
    return dev_accounts(10)


@pytest.fixture(scope="session")
def deployer(accounts: list[LocalAccount]) -> LocalAccount:
    return accounts[0]


@pytest.fixture
async def w3(anvil_url: str) -> AsyncIterator[AsyncWeb3[Any]]:
    w3 = AsyncWeb3(AsyncHTTPProvider(anvil_url))
    try:
        yield w3
    finally:
        await w3.provider.disconnect()


@pytest.fixture
def make_signer(w3: AsyncWeb3[Any]) -> Callable[[LocalAccount], Signer]:
    """A new Signer per account per test; each fetches its pending nonce on first use."""

    def make(account: LocalAccount) -> Signer:
        return Signer(w3, account, poll_latency=0.01)

    return make


@pytest.fixture
def signer(make_signer: Callable[[LocalAccount], Signer], deployer: LocalAccount) -> Signer:
    return make_signer(deployer)


# Permissive for tests that are not about the schedule: 1-second epochs from 1970 (any epoch number a
# test uses has ended), 10,000 tokens an epoch, no challenge window. tests/integration/test_guards.py
# deploys its own tight schedules.
TEST_SCHEDULE = Schedule(genesis_ms=0, epoch_length_ms=1_000, epoch_emission=10_000 * 10**18)


@pytest.fixture
async def deployment(w3: AsyncWeb3[Any], signer: Signer) -> Deployment:
    """Fresh contracts for every test (~0.1 s on anvil): no state leaks between tests. The deployer
    also holds REWARDS_ROLE here, so tests publish with `signer` (deployments default to another key)."""
    return await deploy_contracts(w3, signer, TEST_SCHEDULE, rewards_account=signer.address)
