"""`pip install .` (not editable) gives a working install: the wheel, built offline from exactly the files
deploy/Dockerfile copies into the image, carries the contract ABIs (package `depin_contracts`, mapped from
contracts/build), the migrations and the map's static files, and a process that imports the installed
copy (not this checkout) loads every artifact and finds the migrations and static files beside it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from devices.chain.artifacts import CONTRACT_NAMES
from tests.procs import REPO

pytestmark = pytest.mark.integration

DOCKERFILE = REPO / "deploy" / "Dockerfile"
PIP = [sys.executable, "-m", "pip"]


def dockerfile_sources() -> list[str]:
    """What the depin image copies before `pip install .` (its first stage's COPY lines)."""
    stage = DOCKERFILE.read_text().split("\nFROM ", 2)[1]
    sources = []
    for line in re.findall(r"^COPY (.+)$", stage, re.MULTILINE):
        sources += line.split()[:-1]
    return sources


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the Dockerfile's sources (so the checkout gets no build/ dir), with
    this venv's setuptools, no index, no isolation: offline."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for source in dockerfile_sources():
        origin = REPO / source
        if origin.is_dir():
            shutil.copytree(
                origin, src / source, ignore=shutil.ignore_patterns("__pycache__", "node_modules")
            )
        else:
            (src / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, src / source)
    dist = tmp / "dist"
    proc = subprocess.run(
        [*PIP, "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = dist.glob("depin_ingest-*.whl")
    return built


def test_the_wheel_carries_the_abis_migrations_and_static_files(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for contract in CONTRACT_NAMES:
        assert f"depin_contracts/{contract}.json" in names, contract
    assert "depin_contracts/__init__.py" in names
    migrations = {p.name for p in (REPO / "ingest" / "adapters" / "migrations").glob("*.sql")}
    assert migrations and {f"ingest/adapters/migrations/{m}" for m in migrations} <= names
    static = {p.name for p in (REPO / "ingest" / "api" / "static").iterdir() if p.is_file()}
    assert static and {f"ingest/api/static/{s}" for s in static} <= names
    # Only what the packages hold: no tests, no checkout leftovers.
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {
        "depin_contracts",
        "devices",
        "ingest",
        "simulator",
        wheel.name.split("-py3")[0] + ".dist-info",
    }


def test_an_installed_wheel_loads_its_artifacts(wheel: Path, tmp_path: Path) -> None:
    """Installed into a target directory (no dependencies: this venv's are used) and imported from there
    by a process whose working directory is not the checkout."""
    target = tmp_path / "target"
    subprocess.run(
        [*PIP, "install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    probe = """
import json, sys
from importlib import resources
from devices.chain import artifacts
from ingest.adapters.db import MIGRATIONS_DIR
from ingest.api.map import STATIC_DIR
out = {
    "artifacts_module": artifacts.__file__,
    "package": str(resources.files("depin_contracts")),
    "abis": {n: len(artifacts.load_artifact(n)["abi"]) for n in artifacts.CONTRACT_NAMES},
    "migrations": MIGRATIONS_DIR.is_dir() and str(MIGRATIONS_DIR),
    "n_migrations": len(list(MIGRATIONS_DIR.glob("*.sql"))),
    "static": str(STATIC_DIR),
    "map_js": (STATIC_DIR / "map.js").is_file(),
}
print(json.dumps(out))
"""
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for key in ("artifacts_module", "package", "migrations", "static"):
        assert out[key].startswith(str(target)), (key, out[key])  # the installed copy, not the checkout
    assert all(n > 0 for n in out["abis"].values()) and set(out["abis"]) == set(CONTRACT_NAMES)
    assert out["n_migrations"] == len(list((REPO / "ingest" / "adapters" / "migrations").glob("*.sql")))
    assert out["map_js"]


def test_the_image_installs_the_package_not_editable() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"pip install --no-cache-dir \. ", text), "the image installs the wheel"
    assert "pip install --no-cache-dir -e" not in text
    assert "contracts/build" in dockerfile_sources()
