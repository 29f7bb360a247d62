"""The epoch publisher's chain (`ingest.seams.PublishChain`) on the RewardDistributor contract.

Thin on purpose: each method is one read or one transaction step of `devices.chain`, so the order of
steps and what each outcome means stay in ingest/epochs.py, where the unit tests drive them with an
in-memory chain (tests/unit/test_epoch_publish.py) and tests/integration/test_epochs.py with anvil.
"""

from __future__ import annotations

from typing import Any

from hexbytes import HexBytes
from web3.types import TxReceipt

from devices.chain.distributor import DistributorClient
from devices.chain.signer import transaction_status
from devices.errors import ChainError


class DistributorChain:
    def __init__(self, client: DistributorClient) -> None:
        self.client = client  # the full client, for what is not publishing (the start-up role check)

    @property
    def address(self) -> str | None:
        signer = self.client.signer
        return None if signer is None else signer.address

    async def root_of(self, epoch: int) -> bytes:
        return await self.client.root_of(epoch)

    async def sign_publish(self, epoch: int, root: bytes, total: int) -> tuple[bytes, bytes, int]:
        raw, tx_hash, nonce = await self._signer().sign(self.client.publish_epoch_fn(epoch, root, total))
        return raw, tx_hash, nonce

    async def revert_reason(self, epoch: int, root: bytes, total: int) -> ChainError | None:
        try:
            await self.client.check_publish(epoch, root, total)
        except ChainError as exc:
            return exc
        return None

    async def broadcast(self, raw: bytes) -> None:
        await self._signer().broadcast(raw)

    async def receipt(self, tx_hash: bytes) -> TxReceipt | None:
        return await transaction_status(self.client.w3, tx_hash)

    async def head(self) -> int:
        return int(await self.client.w3.eth.block_number)

    async def mined_nonce(self) -> int:
        return await self.client.w3.eth.get_transaction_count(self._signer().address, "latest")

    async def resync_nonce(self) -> None:
        await self._signer().resync_nonce()

    async def published_tx(self, epoch: int) -> tuple[bytes, int] | None:
        event = self.client.contract.events.EpochPublished()
        logs: Any = await self.client.w3.eth.get_logs(
            {
                "address": self.client.contract.address,
                "fromBlock": self.client.deployment.block,
                "toBlock": "latest",
                "topics": [HexBytes(event.topic), HexBytes(epoch.to_bytes(32, "big"))],
            }
        )
        if not logs:
            return None
        return bytes(logs[-1]["transactionHash"]), int(logs[-1]["blockNumber"])

    def _signer(self) -> Any:
        if self.client.signer is None:
            raise ChainError("no key holding REWARDS_ROLE configured (DEPIN_REWARDS_KEY_FILE)")
        return self.client.signer
