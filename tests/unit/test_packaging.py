"""What the distribution carries (pyproject.toml): every package of the source tree, and the contract
artifacts as the package `depin_contracts` (contracts/build), read by devices/chain/artifacts.py through
importlib.resources. The wheel itself is built and installed in tests/integration/test_wheel.py."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from setuptools import find_packages

from devices.chain import artifacts

REPO = Path(__file__).resolve().parents[2]


def tool_setuptools() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_the_package_list_is_the_source_tree_plus_the_artifacts() -> None:
    """The list is explicit (a mapped package cannot be found): a new subpackage must be added to it."""
    config = tool_setuptools()
    tree = find_packages(where=str(REPO), include=["ingest*", "devices*", "simulator*"])
    assert sorted(config["packages"]) == sorted([*tree, "depin_contracts"])
    assert config["package-dir"] == {"depin_contracts": "contracts/build"}
    assert config["package-data"]["depin_contracts"] == ["*.json"]


def test_every_artifact_loads_from_the_package() -> None:
    for name in artifacts.CONTRACT_NAMES:
        art = artifacts.load_artifact(name)
        assert art["abi"] and art["bytecode"].startswith("0x"), name
    # Served from contracts/build in this (editable) checkout: the committed files, not a copy.
    from importlib import resources

    assert Path(str(resources.files("depin_contracts"))) == REPO / "contracts" / "build"


def test_a_missing_artifact_says_what_to_do() -> None:
    with pytest.raises(
        FileNotFoundError, match=r"Nope\.json missing from package 'depin_contracts'.*npm run"
    ):
        artifacts.load_artifact("Nope")


def test_a_missing_package_says_what_to_do() -> None:
    with pytest.raises(FileNotFoundError, match=r"not installed \(no package 'no_such_pkg'\).*reinstall"):
        artifacts.load_artifact("DeviceRegistry", package="no_such_pkg")
