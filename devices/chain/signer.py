"""One account's transactions: a local nonce behind a lock, explicit gas and fees, local signing, and
receipts whose reverts are named (reverts.py).

Transactions are always built with explicit nonce/gas/fees and signed locally: web3's
SignAndSendRawMiddleware fetches the pending nonce per transaction, which breaks under concurrent sends.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, NamedTuple, cast

from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils import keccak, to_checksum_address
from hexbytes import HexBytes
from web3 import AsyncWeb3
from web3.contract import AsyncContract
from web3.exceptions import MethodUnavailable, TimeExhausted, TransactionNotFound, Web3RPCError
from web3.types import TxParams, TxReceipt

from devices.chain.artifacts import load_artifact
from devices.chain.reverts import call_label, is_revert, revert_error
from devices.errors import ChainError, NonceTooLowError

log = logging.getLogger(__name__)


class SignedTx(NamedTuple):
    raw_tx: bytes
    tx_hash: bytes
    nonce: int


class Signer:
    """One account's transactions: local nonce behind a lock, explicit gas and fees, local signing."""

    def __init__(
        self,
        w3: AsyncWeb3[Any],
        account: LocalAccount,
        *,
        gas_headroom: float = 1.2,
        receipt_timeout: float = 120.0,
        poll_latency: float = 0.05,
    ) -> None:
        self.w3 = w3
        self.account = account
        self.gas_headroom = gas_headroom
        self.receipt_timeout = receipt_timeout
        self.poll_latency = poll_latency
        self._lock = asyncio.Lock()
        self._nonce: int | None = None
        self._chain_id: int | None = None

    @property
    def address(self) -> ChecksumAddress:
        return self.account.address

    async def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = await self.w3.eth.chain_id
        return self._chain_id

    async def _fetch_nonce(self) -> int:
        return await self.w3.eth.get_transaction_count(self.address, "pending")

    async def resync_nonce(self) -> int:
        async with self._lock:
            self._nonce = await self._fetch_nonce()
            return self._nonce

    async def _fees(self) -> dict[str, int]:
        block = await self.w3.eth.get_block("latest")
        base = block.get("baseFeePerGas")
        if base is None:  # pre-London chain
            return {"gasPrice": int(await self.w3.eth.gas_price)}
        try:
            tip = int(await self.w3.eth.max_priority_fee)
        except (Web3RPCError, ValueError):
            tip = 10**9
        # 2× base fee survives six full blocks of base-fee growth before the tx would stall.
        return {"maxFeePerGas": 2 * int(base) + tip, "maxPriorityFeePerGas": tip}

    async def _prepare(self, fn: Any, gas: int | None) -> TxParams:
        """Gas and fees, no nonce yet: estimating first means a reverting call never consumes a nonce."""
        label = call_label(fn)
        if gas is None:
            try:
                estimate = await self._estimate(fn)
            except Exception as exc:
                if is_revert(exc):
                    raise revert_error(label, exc) from exc
                raise
            gas = int(estimate * self.gas_headroom)
        tx: dict[str, Any] = {"from": self.address, "gas": gas, "chainId": await self.chain_id()}
        tx.update(await self._fees())
        return cast(TxParams, tx)

    async def _estimate(self, fn: Any) -> int:
        """At the pending block, where the tx will land: its time, not the latest block's (on an idle dev
        chain that can be minutes old, and the distributor checks block time). eth-tester takes no block
        argument (and estimates on its pending block anyway)."""
        try:
            return int(await fn.estimate_gas({"from": self.address}, block_identifier="pending"))
        except MethodUnavailable:
            return int(await fn.estimate_gas({"from": self.address}))

    async def _sign_with_nonce(self, fn: Any, base: TxParams) -> SignedTx:
        # Caller holds the lock.
        if self._nonce is None:
            self._nonce = await self._fetch_nonce()
        params = cast(TxParams, {**base, "nonce": self._nonce})
        tx = await fn.build_transaction(params)
        signed = self.account.sign_transaction(tx)
        return SignedTx(bytes(signed.raw_transaction), bytes(signed.hash), self._nonce)

    async def sign(self, fn: Any, *, gas: int | None = None) -> SignedTx:
        """Sign without broadcasting and consume the nonce: the caller journals the result, then calls
        broadcast() (again after a crash) — the same bytes, never a re-sign with a new nonce."""
        base = await self._prepare(fn, gas)
        async with self._lock:
            signed = await self._sign_with_nonce(fn, base)
            self._nonce = signed.nonce + 1
            return signed

    async def broadcast(self, raw_tx: bytes) -> bytes:
        """Send pre-signed bytes; idempotent for a tx the node already has. Returns the tx hash."""
        tx_hash = keccak(raw_tx)
        try:
            return bytes(await self.w3.eth.send_raw_transaction(raw_tx))
        except Exception as exc:
            msg = str(exc).lower()
            if "already known" in msg or "already imported" in msg or "already exists" in msg:
                return tx_hash
            if "nonce too low" in msg or "nonce is too low" in msg:
                # Either this exact tx was already mined (a rebroadcast after a crash: fine) or another tx
                # took the nonce (the caller must not assume its tx will ever be mined).
                if await self._known(tx_hash):
                    return tx_hash
                self._nonce = None
                raise NonceTooLowError(f"nonce too low for {tx_hash.hex()}: {exc}", tx_hash=tx_hash) from exc
            if is_revert(exc):  # eth-tester executes on submission
                raise revert_error("transaction", exc, tx_hash=tx_hash) from exc
            raise

    async def _known(self, tx_hash: bytes) -> bool:
        try:
            await self.w3.eth.get_transaction(HexBytes(tx_hash))
        except TransactionNotFound:
            return False
        return True

    async def submit(self, fn: Any, *, gas: int | None = None) -> bytes:
        """Sign and broadcast under the lock, so nonces reach the node in order and a failed broadcast
        does not leave a gap. Resyncs and retries once on "nonce too low" (another process used it)."""
        base = await self._prepare(fn, gas)
        async with self._lock:
            for attempt in (1, 2):
                signed = await self._sign_with_nonce(fn, base)
                try:
                    tx_hash = await self.broadcast(signed.raw_tx)
                except NonceTooLowError:
                    if attempt == 2:
                        raise
                    log.warning("nonce too low, resyncing", extra={"nonce": signed.nonce})
                    self._nonce = await self._fetch_nonce()
                    continue
                except BaseException:
                    self._nonce = None  # unknown whether the node took it: ask again next time
                    raise
                self._nonce = signed.nonce + 1
                return tx_hash
        raise AssertionError("unreachable")

    async def wait(self, tx_hash: bytes, *, label: str = "transaction") -> TxReceipt:
        """Receipt of a mined tx; ChainError if it reverted (decoded by replaying the call)."""
        try:
            receipt = await self.w3.eth.wait_for_transaction_receipt(
                HexBytes(tx_hash), timeout=self.receipt_timeout, poll_latency=self.poll_latency
            )
        except TimeExhausted as exc:
            raise ChainError(f"{label}: no receipt for 0x{tx_hash.hex()}", tx_hash=tx_hash) from exc
        if receipt["status"] != 1:
            raise await self._explain_failure(label, tx_hash, receipt)
        return receipt

    async def _explain_failure(self, label: str, tx_hash: bytes, receipt: TxReceipt) -> ChainError:
        try:
            tx = await self.w3.eth.get_transaction(HexBytes(tx_hash))
            call: dict[str, Any] = {"from": tx["from"], "data": tx["input"], "value": tx["value"]}
            if tx.get("to"):
                call["to"] = tx["to"]
            # Replayed on the parent block: close enough to name the error in nearly every case.
            await self.w3.eth.call(cast(TxParams, call), block_identifier=receipt["blockNumber"] - 1)
        except Exception as exc:
            if is_revert(exc):
                return revert_error(label, exc, tx_hash=tx_hash, receipt=receipt)
        return ChainError(
            f"{label} reverted (0x{tx_hash.hex()}, gas used {receipt['gasUsed']})",
            tx_hash=tx_hash,
            receipt=receipt,
        )

    async def send(self, fn: Any, *, gas: int | None = None) -> TxReceipt:
        tx_hash = await self.submit(fn, gas=gas)
        return await self.wait(tx_hash, label=call_label(fn))

    async def send_value(self, to: str, wei: int) -> TxReceipt:
        """A plain ETH transfer (e.g. gas money for an owner who will claim with its own key)."""
        async with self._lock:
            if self._nonce is None:
                self._nonce = await self._fetch_nonce()
            tx: dict[str, Any] = {
                "to": to_checksum_address(to),
                "value": wei,
                "gas": 21_000,
                "nonce": self._nonce,
                "chainId": await self.chain_id(),
            }
            tx.update(await self._fees())
            signed = self.account.sign_transaction(tx)
            tx_hash = await self.broadcast(bytes(signed.raw_transaction))
            self._nonce += 1
        return await self.wait(tx_hash, label="transfer")

    async def deploy(self, name: str, *args: Any) -> tuple[AsyncContract, TxReceipt]:
        art = load_artifact(name)
        factory = self.w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
        receipt = await self.send(factory.constructor(*args))
        address = receipt["contractAddress"]
        if address is None:
            raise ChainError(f"deploy {name}: receipt has no contract address", receipt=receipt)
        return self.w3.eth.contract(address=address, abi=art["abi"]), receipt


async def transaction_status(w3: AsyncWeb3[Any], tx_hash: bytes) -> TxReceipt | None:
    """The receipt if the tx is mined, None if unknown or pending (for the publisher's restart path)."""
    try:
        return await w3.eth.get_transaction_receipt(HexBytes(tx_hash))
    except TransactionNotFound:
        return None
