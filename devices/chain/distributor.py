"""RewardDistributor (and its RewardToken): epoch roots, claims, balances."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eth_typing import ChecksumAddress
from eth_utils import to_checksum_address
from web3 import AsyncWeb3
from web3.logs import DISCARD
from web3.types import TxReceipt

from devices.chain.artifacts import load_artifact
from devices.chain.client import ContractClient, b32
from devices.chain.deployment import Deployment
from devices.chain.reverts import is_revert, revert_error
from devices.chain.signer import Signer


class DistributorClient(ContractClient):
    contract_name = "RewardDistributor"

    def __init__(self, w3: AsyncWeb3[Any], deployment: Deployment, signer: Signer | None = None) -> None:
        super().__init__(w3, deployment, signer)
        self.token = w3.eth.contract(
            address=to_checksum_address(deployment.token), abi=load_artifact("RewardToken")["abi"]
        )

    def _address(self, deployment: Deployment) -> ChecksumAddress:
        return to_checksum_address(deployment.distributor)

    def publish_epoch_fn(self, epoch: int, root: bytes, total: int) -> Any:
        """The unsent call, for the crash-safe publisher: Signer.sign() it, journal, then broadcast()."""
        return self.contract.functions.publishEpoch(epoch, b32(root), total)

    async def publish_epoch(self, epoch: int, root: bytes, total: int) -> TxReceipt:
        return await self._signer().send(self.publish_epoch_fn(epoch, root, total))

    async def check_publish(self, epoch: int, root: bytes, total: int) -> None:
        """Simulate the publish at the pending block as the signer: a ChainError naming the contract's
        error if it would revert now (why a mined publish reverted), nothing if it would succeed."""
        fn = self.publish_epoch_fn(epoch, root, total)
        try:
            await fn.call({"from": self._signer().address}, block_identifier="pending")
        except Exception as exc:
            if is_revert(exc):
                raise revert_error("publishEpoch", exc) from exc
            raise

    async def veto(self, epoch: int) -> TxReceipt:
        """GUARDIAN_ROLE: drop the pending root of `epoch` before its challenge window ends."""
        return await self._signer().send(self.contract.functions.veto(epoch))

    async def claimable_root(self) -> tuple[int, bytes, int]:
        """(epoch, root, cumulative total) that claims are checked against now; epoch 0: none yet."""
        epoch, root, total = await self._call(self.contract.functions.claimableRoot())
        return int(epoch), bytes(root), int(total)

    async def root_of(self, epoch: int) -> bytes:
        """The epoch's root, or 32 zero bytes if it was not published."""
        return bytes(await self._call(self.contract.functions.roots(epoch)))

    async def latest_epoch(self) -> int:
        return int(await self._call(self.contract.functions.latestEpoch()))

    async def claim(
        self, account: str, cumulative: int, proof: Sequence[bytes]
    ) -> tuple[TxReceipt | None, int]:
        """Claim for `account` (anyone may submit) against the claimable root (`claimable_root`): the
        proof must come from that epoch's tree. Returns the receipt and the amount newly paid; when
        `cumulative` is already claimed nothing is sent (a claim would pay 0 and still cost gas):
        (None, 0)."""
        if await self.claimed(account) >= cumulative:
            return None, 0
        fn = self.contract.functions.claim(to_checksum_address(account), cumulative, [b32(p) for p in proof])
        receipt = await self._signer().send(fn)
        paid = sum(
            int(ev["args"]["amount"])
            for ev in self.contract.events.Claimed().process_receipt(receipt, errors=DISCARD)
        )
        return receipt, paid

    async def transfer(self, to: str, amount: int) -> TxReceipt:
        """Send `amount` reward tokens from the signer to `to`."""
        fn = self.token.functions.transfer(to_checksum_address(to), amount)
        return await self._signer().send(fn)

    async def claimed(self, account: str) -> int:
        return int(await self._call(self.contract.functions.claimed(to_checksum_address(account))))

    async def token_balance(self, account: str) -> int:
        return int(await self._call(self.token.functions.balanceOf(to_checksum_address(account))))
