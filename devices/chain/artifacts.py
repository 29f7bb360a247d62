"""The compiled contracts (contracts/build, committed and checked against a fresh build) and the role
ids their AccessControl checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

from eth_utils import keccak

ARTIFACTS_DIR = Path(__file__).resolve().parents[2] / "contracts" / "build"
CONTRACT_NAMES = ("DeviceRegistry", "RewardToken", "RewardDistributor")

OPERATOR_ROLE = keccak(text="OPERATOR_ROLE")
MINTER_ROLE = keccak(text="MINTER_ROLE")
REWARDS_ROLE = keccak(text="REWARDS_ROLE")
GUARDIAN_ROLE = keccak(text="GUARDIAN_ROLE")
DEFAULT_ADMIN_ROLE = b"\x00" * 32


def load_artifact(name: str) -> dict[str, Any]:
    path = ARTIFACTS_DIR / f"{name}.json"
    try:
        return cast(dict[str, Any], json.loads(path.read_text()))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} missing: run `npm run build --prefix contracts`") from None
