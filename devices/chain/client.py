"""What the registry and distributor clients share: a contract bound to its deployed address, an
optional signer (read-only without one), and calls whose reverts are named."""

from __future__ import annotations

from typing import Any

from eth_typing import ChecksumAddress
from web3 import AsyncWeb3

from devices.chain.artifacts import load_artifact
from devices.chain.deployment import Deployment
from devices.chain.reverts import call_label, is_revert, revert_error
from devices.chain.signer import Signer
from devices.errors import ChainError, InputError


def b32(value: bytes) -> bytes:
    if len(value) != 32:
        raise InputError(f"expected 32 bytes, got {len(value)}")
    return bytes(value)


class ContractClient:
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
            if is_revert(exc):
                raise revert_error(call_label(fn), exc) from exc
            raise
