"""DeviceRegistry: registrations and their changes, hardware classes, and the event history the
service's mirror and the CLI's listings fold (devices/protocol/registry_fold.py)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_typing import ChecksumAddress
from eth_utils import event_abi_to_log_topic, to_checksum_address
from web3 import AsyncWeb3
from web3.logs import DISCARD
from web3.types import TxReceipt

from devices.chain.client import ContractClient, b32
from devices.chain.deployment import Deployment
from devices.chain.signer import Signer
from devices.errors import ChainError, InputError
from devices.protocol.model import DeviceRecord
from devices.protocol.registry_fold import DEVICE_EVENT_KINDS, HW_CLASS_SET, HwClassInfo, RegistryEvent

STATUS_NONE, STATUS_ACTIVE, STATUS_REVOKED = 0, 1, 2
DEFAULT_BATCH_SIZE = 100


@dataclass(frozen=True, slots=True)
class DeviceInput:
    device_id: bytes
    pubkey: bytes
    owner: str
    hw_class: int
    asserted_cell: int = 0

    def as_tuple(self) -> tuple[bytes, bytes, ChecksumAddress, int, int]:
        return (
            b32(self.device_id),
            b32(self.pubkey),
            to_checksum_address(self.owner),
            self.hw_class,
            self.asserted_cell,
        )


@dataclass
class BatchRegistration:
    receipts: list[TxReceipt] = field(default_factory=list)
    registered: list[bytes] = field(default_factory=list)  # ids newly registered, in chain order
    skipped: int = 0  # inputs already on chain (active or revoked) or repeated in the input


class RegistryClient(ContractClient):
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
            b32(device_id), b32(pubkey), to_checksum_address(owner), hw_class, asserted_cell
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
            raise InputError("chunk_size must be >= 1")
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
        return await self._signer().send(self.contract.functions.revoke(b32(device_id)))

    async def rotate_key(self, device_id: bytes, new_pubkey: bytes) -> TxReceipt:
        return await self._signer().send(self.contract.functions.rotateKey(b32(device_id), b32(new_pubkey)))

    async def set_location(self, device_id: bytes, cell: int) -> TxReceipt:
        return await self._signer().send(self.contract.functions.setLocation(b32(device_id), cell))

    async def transfer(self, device_id: bytes, new_owner: str) -> TxReceipt:
        fn = self.contract.functions.transfer(b32(device_id), to_checksum_address(new_owner))
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
            self.contract.functions.getDevice(b32(device_id)), block_identifier
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
        self,
        from_block: int,
        to_block: int,
        *,
        max_range: int = 5_000,
        kinds: Collection[str] | None = None,
    ) -> list[RegistryEvent]:
        """All registry events in [from_block, to_block] (only those of `kinds` if given, filtered by the
        node), in chain order (block, log index). One eth_getLogs per `max_range` blocks (providers cap
        the range)."""
        out: list[RegistryEvent] = []
        # Hex strings, not HexBytes: eth-tester's log filter silently matches nothing for bytes topics.
        topics = [
            "0x" + t.hex() for t, kind in self._events_by_topic.items() if kinds is None or kind in kinds
        ]
        if not topics:  # an empty topic list would match every log, not none
            return out
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
