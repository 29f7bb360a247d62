"""RewardDistributor (and its RewardToken): epoch roots, claims, balances."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eth_typing import ChecksumAddress
from eth_utils import keccak, to_checksum_address
from web3 import AsyncWeb3
from web3.logs import DISCARD
from web3.types import TxReceipt

from devices.chain.artifacts import load_artifact
from devices.chain.client import ContractClient, b32
from devices.chain.deployment import Deployment
from devices.chain.reverts import is_revert, revert_error
from devices.chain.signer import Signer
from devices.errors import InputError


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

    # --- buyers' money: deposits for API credit, bounties (README "Rewards") ---------------------------

    async def token_allowance(self, owner: str) -> int:
        """What `owner` allowed the distributor to take (deposit, createBounty pull with transferFrom)."""
        fn = self.token.functions.allowance(to_checksum_address(owner), self.contract.address)
        return int(await self._call(fn))

    async def approve(self, amount: int) -> TxReceipt:
        """Allow the distributor to take `amount` of the signer's tokens."""
        return await self._signer().send(self.token.functions.approve(self.contract.address, amount))

    async def _ensure_funds(self, amount: int) -> None:
        """Refuse early, in words, what transferFrom would refuse; approve when the allowance is short."""
        payer = self._signer().address
        balance = await self.token_balance(payer)
        if balance < amount:
            raise InputError(
                f"{payer} holds {balance} base units of the reward token, less than the {amount} to pay in"
            )
        if await self.token_allowance(payer) < amount:
            await self.approve(amount)

    async def deposit(self, account: bytes, amount: int) -> TxReceipt:
        """Credit `amount` of the signer's tokens to `account` (keccak256 of an API key's public id),
        approving the distributor first if its allowance is short."""
        await self._ensure_funds(amount)
        return await self._signer().send(self.contract.functions.deposit(b32(account), amount))

    async def create_bounty(
        self, start_epoch: int, end_epoch: int, cells: Sequence[int], amount: int
    ) -> tuple[TxReceipt, int]:
        """Fund a bounty from the signer's tokens; returns the receipt and the bounty's id."""
        await self._ensure_funds(amount)
        fn = self.contract.functions.createBounty(start_epoch, end_epoch, list(cells), amount)
        receipt = await self._signer().send(fn)
        ids = [
            int(ev["args"]["id"])
            for ev in self.contract.events.BountyCreated().process_receipt(receipt, errors=DISCARD)
        ]
        return receipt, ids[0]

    async def market_events(self, from_block: int, to_block: int, *, max_range: int = 5_000) -> list[Any]:
        """Deposited and BountyCreated events in [from_block, to_block], in chain order (decoded logs:
        `event`, `args`, `transactionHash`, `logIndex`, `blockNumber`)."""
        topics = ["0x" + keccak(text=sig).hex() for sig in (DEPOSITED, BOUNTY_CREATED)]
        out: list[Any] = []
        start = from_block
        while start <= to_block:
            end = min(to_block, start + max_range - 1)
            logs = await self.w3.eth.get_logs(
                {"address": self.contract.address, "fromBlock": start, "toBlock": end, "topics": [topics]}
            )
            for lg in logs:
                topic = bytes(lg["topics"][0])
                event = self.contract.events.Deposited if topic == keccak(text=DEPOSITED) else None
                event = event or self.contract.events.BountyCreated
                out.append(event().process_log(lg))
            start = end + 1
        return sorted(out, key=lambda e: (e["blockNumber"], e["logIndex"]))

    async def funded(self) -> int:
        return int(await self._call(self.contract.functions.funded()))


DEPOSITED = "Deposited(bytes32,address,uint256)"
BOUNTY_CREATED = "BountyCreated(uint256,address,uint64,uint64,uint64[],uint256)"
