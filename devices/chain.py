"""Chain I/O for the operator CLI and the service: artifacts, deployment, a nonce-safe signer and thin
clients for DeviceRegistry and RewardDistributor (web3.py 8, AsyncWeb3).

Transactions are always built with explicit nonce/gas/fees and signed locally: web3's
SignAndSendRawMiddleware fetches the pending nonce per transaction, which breaks under concurrent sends.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple, cast

from eth_abi import decode as abi_decode
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils import (
    abi_to_signature,
    event_abi_to_log_topic,
    function_signature_to_4byte_selector,
    get_abi_input_types,
    keccak,
    to_bytes,
    to_checksum_address,
)
from hexbytes import HexBytes
from web3 import AsyncWeb3
from web3.contract import AsyncContract
from web3.exceptions import ContractLogicError, TimeExhausted, TransactionNotFound, Web3RPCError
from web3.logs import DISCARD
from web3.types import TxParams, TxReceipt

from devices.protocol.model import DeviceRecord
from devices.protocol.registry_fold import DEVICE_EVENT_KINDS, HW_CLASS_SET, HwClassInfo, RegistryEvent

log = logging.getLogger(__name__)

ARTIFACTS_DIR = Path(__file__).resolve().parents[1] / "contracts" / "build"
CONTRACT_NAMES = ("DeviceRegistry", "RewardToken", "RewardDistributor")

OPERATOR_ROLE = keccak(text="OPERATOR_ROLE")
MINTER_ROLE = keccak(text="MINTER_ROLE")
REWARDS_ROLE = keccak(text="REWARDS_ROLE")
DEFAULT_ADMIN_ROLE = b"\x00" * 32

STATUS_NONE, STATUS_ACTIVE, STATUS_REVOKED = 0, 1, 2
DEFAULT_BATCH_SIZE = 100


# --------------------------------------------------------------------------------------------- artifacts


def load_artifact(name: str) -> dict[str, Any]:
    path = ARTIFACTS_DIR / f"{name}.json"
    try:
        return cast(dict[str, Any], json.loads(path.read_text()))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} missing: run `npm run build --prefix contracts`") from None


@cache
def _error_selectors() -> dict[bytes, tuple[str, list[str]]]:
    """4-byte selector → (error name, arg types) over all our artifacts, so an error raised by the token
    inside a distributor call is still named."""
    out: dict[bytes, tuple[str, list[str]]] = {
        function_signature_to_4byte_selector("Error(string)"): ("Error", ["string"]),
        function_signature_to_4byte_selector("Panic(uint256)"): ("Panic", ["uint256"]),
    }
    for name in CONTRACT_NAMES:
        for item in load_artifact(name)["abi"]:
            if item["type"] == "error":
                sig = abi_to_signature(item)
                out[function_signature_to_4byte_selector(sig)] = (item["name"], get_abi_input_types(item))
    return out


def decode_revert(data: bytes | str | None) -> tuple[str, tuple[Any, ...]] | None:
    """(error name, args) for revert data, or None if it is empty or unknown."""
    if isinstance(data, str):
        try:
            data = to_bytes(hexstr=data)
        except ValueError:
            return None
    if not data or len(data) < 4:
        return None
    entry = _error_selectors().get(bytes(data[:4]))
    if entry is None:
        return None
    name, types = entry
    try:
        args = abi_decode(types, bytes(data[4:]))
    except Exception:  # malformed args: still worth reporting the name
        return name, ()
    return name, tuple(
        to_checksum_address(a) if t == "address" else a for t, a in zip(types, args, strict=True)
    )


# --------------------------------------------------------------------------------------------- errors


class ChainError(RuntimeError):
    """A transaction or call failed. `error_name`/`error_args` carry the decoded custom error if known."""

    def __init__(
        self,
        message: str,
        *,
        error_name: str | None = None,
        error_args: tuple[Any, ...] = (),
        tx_hash: bytes | None = None,
        receipt: TxReceipt | None = None,
    ) -> None:
        super().__init__(message)
        self.error_name = error_name
        self.error_args = error_args
        self.tx_hash = tx_hash
        self.receipt = receipt


class NonceTooLowError(ChainError):
    """The node already has a transaction with this nonce (mined or pending)."""


def _revert_data_of(exc: BaseException) -> Any:
    data = getattr(exc, "data", None)
    if isinstance(data, dict):
        data = data.get("data")
    if data is None and exc.args and isinstance(exc.args[0], str):
        # eth-tester's TransactionFailed has only a message: "execution reverted: b'<revert bytes>'".
        msg = exc.args[0]
        prefix = "execution reverted: "
        if msg.startswith(prefix + "b'") or msg.startswith(prefix + 'b"'):
            with contextlib.suppress(ValueError, SyntaxError):
                data = ast.literal_eval(msg[len(prefix) :])
    return data


def _revert_error(label: str, exc: BaseException, **kw: Any) -> ChainError:
    decoded = decode_revert(_revert_data_of(exc))
    if decoded is None:
        return ChainError(f"{label} reverted: {exc}", **kw)
    name, args = decoded
    shown = ", ".join(a.hex() if isinstance(a, bytes) else str(a) for a in args)
    return ChainError(f"{label} reverted: {name}({shown})", error_name=name, error_args=args, **kw)


def _is_revert(exc: BaseException) -> bool:
    # Nodes raise ContractLogicError; eth-tester raises its own TransactionFailed (not imported here:
    # eth-tester is an optional dependency).
    return isinstance(exc, ContractLogicError) or type(exc).__name__ == "TransactionFailed"


def _label(fn: Any) -> str:
    name = getattr(fn, "fn_name", None) or getattr(fn, "abi_element_identifier", None) or "constructor"
    return str(name)


# --------------------------------------------------------------------------------------------- deployment


@dataclass
class Deployment:
    chain_id: int
    registry: str
    token: str
    distributor: str
    block: int  # block of the first deploy: where an event mirror starts replaying
    deployer: str

    def save(self, path: Path | str) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path | str) -> Deployment:
        data = json.loads(Path(path).read_text())
        return cls(
            chain_id=int(data["chain_id"]),
            registry=to_checksum_address(data["registry"]),
            token=to_checksum_address(data["token"]),
            distributor=to_checksum_address(data["distributor"]),
            block=int(data["block"]),
            deployer=to_checksum_address(data["deployer"]),
        )


# --------------------------------------------------------------------------------------------- signer


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
        label = _label(fn)
        if gas is None:
            try:
                estimate = await fn.estimate_gas({"from": self.address})
            except Exception as exc:
                if _is_revert(exc):
                    raise _revert_error(label, exc) from exc
                raise
            gas = int(estimate * self.gas_headroom)
        tx: dict[str, Any] = {"from": self.address, "gas": gas, "chainId": await self.chain_id()}
        tx.update(await self._fees())
        return cast(TxParams, tx)

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
            if _is_revert(exc):  # eth-tester executes on submission
                raise _revert_error("transaction", exc, tx_hash=tx_hash) from exc
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
            if _is_revert(exc):
                return _revert_error(label, exc, tx_hash=tx_hash, receipt=receipt)
        return ChainError(
            f"{label} reverted (0x{tx_hash.hex()}, gas used {receipt['gasUsed']})",
            tx_hash=tx_hash,
            receipt=receipt,
        )

    async def send(self, fn: Any, *, gas: int | None = None) -> TxReceipt:
        tx_hash = await self.submit(fn, gas=gas)
        return await self.wait(tx_hash, label=_label(fn))

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


async def deploy_contracts(
    w3: AsyncWeb3[Any], signer: Signer, *, rewards_account: str | None = None
) -> Deployment:
    """Deploy registry, token and distributor with `signer` as admin; wire MINTER_ROLE and REWARDS_ROLE."""
    admin = signer.address
    registry, r0 = await signer.deploy("DeviceRegistry", admin)
    token, _ = await signer.deploy("RewardToken", admin)
    distributor, _ = await signer.deploy("RewardDistributor", admin, token.address)
    await signer.send(token.functions.grantRole(MINTER_ROLE, distributor.address))
    await signer.send(
        distributor.functions.grantRole(REWARDS_ROLE, to_checksum_address(rewards_account or admin))
    )
    return Deployment(
        chain_id=await signer.chain_id(),
        registry=registry.address,
        token=token.address,
        distributor=distributor.address,
        block=int(r0["blockNumber"]),
        deployer=admin,
    )


# --------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True, slots=True)
class DeviceInput:
    device_id: bytes
    pubkey: bytes
    owner: str
    hw_class: int
    asserted_cell: int = 0

    def as_tuple(self) -> tuple[bytes, bytes, ChecksumAddress, int, int]:
        return (
            _b32(self.device_id),
            _b32(self.pubkey),
            to_checksum_address(self.owner),
            self.hw_class,
            self.asserted_cell,
        )


@dataclass
class BatchRegistration:
    receipts: list[TxReceipt] = field(default_factory=list)
    registered: list[bytes] = field(default_factory=list)  # ids newly registered, in chain order
    skipped: int = 0  # inputs already on chain (active or revoked) or repeated in the input


def _b32(value: bytes) -> bytes:
    if len(value) != 32:
        raise ValueError(f"expected 32 bytes, got {len(value)}")
    return bytes(value)


class _Client:
    contract_name: str

    def __init__(self, w3: AsyncWeb3[Any], deployment: Deployment, signer: Signer | None = None) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.signer = signer
        self.contract = w3.eth.contract(
            address=self._address(deployment), abi=load_artifact(self.contract_name)["abi"]
        )

    def _address(self, deployment: Deployment) -> ChecksumAddress:
        raise NotImplementedError

    def _signer(self) -> Signer:
        if self.signer is None:
            raise ChainError(f"{type(self).__name__} is read-only: no signer configured")
        return self.signer

    async def _call(self, fn: Any, block_identifier: Any = "latest") -> Any:
        try:
            return await fn.call(block_identifier=block_identifier)
        except Exception as exc:
            if _is_revert(exc):
                raise _revert_error(_label(fn), exc) from exc
            raise


class RegistryClient(_Client):
    contract_name = "DeviceRegistry"

    def __init__(self, w3: AsyncWeb3[Any], deployment: Deployment, signer: Signer | None = None) -> None:
        super().__init__(w3, deployment, signer)
        self._events_by_topic = {
            bytes(event_abi_to_log_topic(item)): item["name"]
            for item in self.contract.abi
            if item["type"] == "event"
            and (item["name"] in DEVICE_EVENT_KINDS or item["name"] == HW_CLASS_SET)
        }

    def _address(self, deployment: Deployment) -> ChecksumAddress:
        return to_checksum_address(deployment.registry)

    async def register(
        self, device_id: bytes, pubkey: bytes, owner: str, hw_class: int, asserted_cell: int = 0
    ) -> TxReceipt:
        fn = self.contract.functions.register(
            _b32(device_id), _b32(pubkey), to_checksum_address(owner), hw_class, asserted_cell
        )
        return await self._signer().send(fn)

    async def register_batch(
        self, items: Sequence[DeviceInput], *, chunk_size: int = DEFAULT_BATCH_SIZE
    ) -> BatchRegistration:
        """Register in chunks of `chunk_size` per tx. All chunks are submitted before waiting (pipelined
        nonces), so a large fleet costs a few blocks, not one block per chunk. Re-running after a failure
        is safe: the contract skips ids that already exist."""
        signer = self._signer()
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        chunks = [items[i : i + chunk_size] for i in range(0, len(items), chunk_size)]
        hashes: list[bytes] = []
        failure: BaseException | None = None
        for chunk in chunks:
            fn = self.contract.functions.registerBatch([d.as_tuple() for d in chunk])
            try:
                hashes.append(await signer.submit(fn))
            except Exception as exc:  # wait for what was already sent before reporting
                failure = exc
                break
        result = BatchRegistration()
        for h in hashes:
            try:
                receipt = await signer.wait(h, label="registerBatch")
            except ChainError as exc:
                failure = failure or exc
                continue
            result.receipts.append(receipt)
            for ev in self.contract.events.DeviceRegistered().process_receipt(receipt, errors=DISCARD):
                result.registered.append(bytes(ev["args"]["deviceId"]))
        if failure is not None:
            raise failure
        result.skipped = len(items) - len(result.registered)
        return result

    async def revoke(self, device_id: bytes) -> TxReceipt:
        return await self._signer().send(self.contract.functions.revoke(_b32(device_id)))

    async def rotate_key(self, device_id: bytes, new_pubkey: bytes) -> TxReceipt:
        return await self._signer().send(self.contract.functions.rotateKey(_b32(device_id), _b32(new_pubkey)))

    async def set_location(self, device_id: bytes, cell: int) -> TxReceipt:
        return await self._signer().send(self.contract.functions.setLocation(_b32(device_id), cell))

    async def transfer(self, device_id: bytes, new_owner: str) -> TxReceipt:
        fn = self.contract.functions.transfer(_b32(device_id), to_checksum_address(new_owner))
        return await self._signer().send(fn)

    async def set_hw_class(
        self, class_id: int, name: str, max_speed_kmh: int, h3_res: int, enabled: bool = True
    ) -> TxReceipt:
        fn = self.contract.functions.setHwClass(class_id, name, max_speed_kmh, h3_res, enabled)
        return await self._signer().send(fn)

    async def get_hw_class(self, class_id: int) -> HwClassInfo | None:
        name, max_speed, res, enabled = await self._call(self.contract.functions.getHwClass(class_id))
        if not name and not enabled:
            return None
        return HwClassInfo(class_id, name, int(max_speed), int(res), bool(enabled))

    async def get_device(self, device_id: bytes, *, block_identifier: Any = "latest") -> DeviceRecord | None:
        """One contract read (the mirror's on-demand fallback). None if the id was never registered."""
        pubkey, owner, hw_class, cell, status, registered_at = await self._call(
            self.contract.functions.getDevice(_b32(device_id)), block_identifier
        )
        if status == STATUS_NONE:
            return None
        return DeviceRecord(
            device_id=bytes(device_id),
            pubkey=bytes(pubkey),
            owner=to_checksum_address(owner),
            hw_class=int(hw_class),
            asserted_cell=int(cell),
            active=status == STATUS_ACTIVE,
            registered_block=int(registered_at),
        )

    async def fetch_events(
        self, from_block: int, to_block: int, *, max_range: int = 5_000
    ) -> list[RegistryEvent]:
        """All registry events in [from_block, to_block], in chain order (block, log index). One
        eth_getLogs per `max_range` blocks (providers cap the range)."""
        out: list[RegistryEvent] = []
        # Hex strings, not HexBytes: eth-tester's log filter silently matches nothing for bytes topics.
        topics = ["0x" + t.hex() for t in self._events_by_topic]
        start = from_block
        while start <= to_block:
            end = min(to_block, start + max_range - 1)
            logs = await self.w3.eth.get_logs(
                {"address": self.contract.address, "fromBlock": start, "toBlock": end, "topics": [topics]}
            )
            for lg in logs:
                out.append(self._decode(lg))
            start = end + 1
        out.sort(key=lambda e: e.position)
        return out

    def _decode(self, lg: Any) -> RegistryEvent:
        kind = self._events_by_topic[bytes(lg["topics"][0])]
        ev = getattr(self.contract.events, kind)().process_log(lg)
        fields = {k: (bytes(v) if isinstance(v, bytes | bytearray) else v) for k, v in ev["args"].items()}
        device_id = fields.get("deviceId", b"") if kind != HW_CLASS_SET else b""
        return RegistryEvent(
            kind=kind,
            device_id=bytes(device_id),
            block_number=int(lg["blockNumber"]),
            block_hash=bytes(lg["blockHash"]),
            log_index=int(lg["logIndex"]),
            tx_hash=bytes(lg["transactionHash"]),
            fields=fields,
        )


# --------------------------------------------------------------------------------------------- rewards


class DistributorClient(_Client):
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
        return self.contract.functions.publishEpoch(epoch, _b32(root), total)

    async def publish_epoch(self, epoch: int, root: bytes, total: int) -> TxReceipt:
        return await self._signer().send(self.publish_epoch_fn(epoch, root, total))

    async def root_of(self, epoch: int) -> bytes:
        """The epoch's root, or 32 zero bytes if it was not published."""
        return bytes(await self._call(self.contract.functions.roots(epoch)))

    async def latest_epoch(self) -> int:
        return int(await self._call(self.contract.functions.latestEpoch()))

    async def claim(
        self, epoch: int, account: str, cumulative: int, proof: Sequence[bytes]
    ) -> tuple[TxReceipt, int]:
        """Claim for `account` (anyone may submit). Returns the receipt and the amount newly paid."""
        fn = self.contract.functions.claim(
            epoch, to_checksum_address(account), cumulative, [_b32(p) for p in proof]
        )
        receipt = await self._signer().send(fn)
        paid = sum(
            int(ev["args"]["amount"])
            for ev in self.contract.events.Claimed().process_receipt(receipt, errors=DISCARD)
        )
        return receipt, paid

    async def claimed(self, account: str) -> int:
        return int(await self._call(self.contract.functions.claimed(to_checksum_address(account))))

    async def token_balance(self, account: str) -> int:
        return int(await self._call(self.token.functions.balanceOf(to_checksum_address(account))))


async def transaction_status(w3: AsyncWeb3[Any], tx_hash: bytes) -> TxReceipt | None:
    """The receipt if the tx is mined, None if unknown or pending (for the publisher's restart path)."""
    try:
        return await w3.eth.get_transaction_receipt(HexBytes(tx_hash))
    except TransactionNotFound:
        return None
