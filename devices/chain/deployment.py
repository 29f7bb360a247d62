"""The deployment file (which contracts, on which chain, from which block) and the deploy that writes it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from eth_utils import to_checksum_address
from web3 import AsyncWeb3

from devices.chain.artifacts import MINTER_ROLE, REWARDS_ROLE
from devices.chain.signer import Signer


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
