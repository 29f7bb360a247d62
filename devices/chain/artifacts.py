"""The compiled contracts (contracts/build, committed and checked against a fresh build) and the role
ids their AccessControl checks.

The artifacts are read as package data of `depin_contracts`, the name pyproject.toml gives the directory
contracts/build: an editable install finds them in the checkout, a wheel (`pip install .`, the image)
carries them, so nothing depends on where the sources lie."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, cast

from eth_utils import keccak

ARTIFACTS_PACKAGE = "depin_contracts"  # pyproject.toml: package-dir depin_contracts = contracts/build
CONTRACT_NAMES = ("DeviceRegistry", "RewardToken", "RewardDistributor")

OPERATOR_ROLE = keccak(text="OPERATOR_ROLE")
MINTER_ROLE = keccak(text="MINTER_ROLE")
REWARDS_ROLE = keccak(text="REWARDS_ROLE")
GUARDIAN_ROLE = keccak(text="GUARDIAN_ROLE")
DEFAULT_ADMIN_ROLE = b"\x00" * 32


class ArtifactMissing(FileNotFoundError):
    """A contract's artifact is not installed: the package lacks its data or the build was not run."""


def load_artifact(name: str, package: str = ARTIFACTS_PACKAGE) -> dict[str, Any]:
    """The artifact `<name>.json` (abi, bytecode, …) of package `package`, as JSON."""
    try:
        root = resources.files(package)
    except ModuleNotFoundError:
        raise ArtifactMissing(
            f"the contract artifacts are not installed (no package {package!r}): reinstall depin-ingest "
            "(`pip install .` or `pip install -e .` from a checkout with contracts/build/)"
        ) from None
    path = root.joinpath(f"{name}.json")
    try:
        return cast(dict[str, Any], json.loads(path.read_text()))
    except FileNotFoundError:
        raise ArtifactMissing(
            f"contract artifact {name}.json missing from package {package!r} ({root}): run "
            "`npm run build --prefix contracts` in the checkout, then reinstall depin-ingest"
        ) from None
