"""The deployment file (which contracts, on which chain, from which block) and the deploy that writes it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from eth_utils import to_checksum_address
from web3 import AsyncWeb3

from devices.chain.artifacts import GUARDIAN_ROLE, MINTER_ROLE, REWARDS_ROLE
from devices.chain.signer import Signer
from devices.errors import InputError

TOKEN = 10**18
ADMIN_DELAY_S = 2 * 86_400  # a stolen admin key must wait this long, in the open, to take the admin role


@dataclass(frozen=True, slots=True)
class Schedule:
    """What the contracts enforce on chain, fixed at deploy: the service's epoch numbering (genesis and
    length, so block time bounds the epoch a publish may name), the most one epoch may mint, the veto
    window for a new root, the token's hard cap and the delay of an admin handover. And the service's
    emission schedule, which the contract does not know but caps: `epoch_emission` for epochs 1..N, half
    for the next N, …; 0 = flat (DEPIN_EMISSION_HALVING_EPOCHS)."""

    genesis_ms: int
    epoch_length_ms: int
    epoch_emission: int
    challenge_window_s: int = 0
    supply_cap: int = 10**9 * TOKEN
    admin_delay_s: int = ADMIN_DELAY_S
    # Minted once at deploy to the deployer, within the cap (0: none): on a devnet, buyers' tokens to
    # deposit for API credit and bounties come from here (README "Rewards", buyers' revenue).
    premine: int = 0
    emission_halving_epochs: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schedule:
        fields = {f for f in cls.__dataclass_fields__}
        return cls(**{k: int(v) for k, v in data.items() if k in fields})


@dataclass
class Deployment:
    chain_id: int
    registry: str
    token: str
    distributor: str
    block: int  # block of the first deploy: where an event mirror starts replaying
    deployer: str
    premine: int = 0  # base units minted to the deployer at deploy (Schedule.premine)
    schedule: Schedule | None = None  # as deployed; None in files written before it was recorded

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
            premine=int(data.get("premine", 0)),
            schedule=Schedule.from_dict(data["schedule"]) if data.get("schedule") else None,
        )


async def deploy_contracts(
    w3: AsyncWeb3[Any],
    signer: Signer,
    schedule: Schedule,
    *,
    rewards_account: str,
    guardian: str | None = None,
) -> Deployment:
    """Deploy registry, token and distributor with `signer` as admin; MINTER_ROLE to the distributor,
    REWARDS_ROLE to `rewards_account` (the service's hot key: pass another account than the deployer's),
    GUARDIAN_ROLE (veto of a pending root) to `guardian`, by default the admin."""
    admin = signer.address
    if int(rewards_account, 16) == 0:
        raise InputError("the rewards account must not be the zero address")
    s = schedule
    registry, r0 = await signer.deploy("DeviceRegistry", admin, s.admin_delay_s)
    token, _ = await signer.deploy("RewardToken", admin, s.admin_delay_s, s.supply_cap, admin, s.premine)
    distributor, _ = await signer.deploy(
        "RewardDistributor",
        admin,
        s.admin_delay_s,
        token.address,
        s.genesis_ms,
        s.epoch_length_ms,
        s.epoch_emission,
        s.challenge_window_s,
    )
    await signer.send(token.functions.grantRole(MINTER_ROLE, distributor.address))
    await signer.send(distributor.functions.grantRole(REWARDS_ROLE, to_checksum_address(rewards_account)))
    await signer.send(distributor.functions.grantRole(GUARDIAN_ROLE, to_checksum_address(guardian or admin)))
    return Deployment(
        chain_id=await signer.chain_id(),
        registry=registry.address,
        token=token.address,
        distributor=distributor.address,
        block=int(r0["blockNumber"]),
        deployer=admin,
        premine=s.premine,
        schedule=schedule,
    )
