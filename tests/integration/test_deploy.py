"""deploy/depin.service checked offline by systemd itself (`systemd-analyze verify`): every directive
parses, and the unit restarts the service when it fails, runs as its own user, hardened."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import REPO

pytestmark = pytest.mark.integration

UNIT = REPO / "deploy" / "depin.service"
INSTALLED = "/opt/depin/.venv/bin/depin"


def verify(unit_text: str, tmp_path: Path) -> str:
    """`systemd-analyze verify` of the unit with ExecStart pointed at this checkout's `depin` (verify
    insists the binary exists); returns what it printed (nothing when the unit is clean)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        why = "systemd-analyze is not installed (apt-get install systemd): the unit was not verified"
        if os.environ.get("CI"):  # in CI a missing tool fails the run rather than passing untested
            pytest.fail(why)
        pytest.skip(why)
    depin = Path(sys.executable).with_name("depin")
    assert depin.exists(), depin
    path = tmp_path / "depin.service"
    path.write_text(unit_text.replace(INSTALLED, str(depin)))
    proc = subprocess.run(
        [analyze, "verify", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 or out, "verify failed silently"
    return out if proc.returncode == 0 else out or f"exit {proc.returncode}"


def test_the_unit_verifies_clean(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED} run\n" in text
    assert verify(text, tmp_path) == ""
    directives = {line.strip() for line in text.splitlines()}
    for expected in (
        "EnvironmentFile=/etc/depin/depin.env",
        "Restart=on-failure",
        "RestartSec=5",
        "User=depin",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=depin",
        "UMask=0077",
    ):
        assert expected in directives, expected


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check can fail: a typo in a directive and a bad value are reported."""
    text = UNIT.read_text().replace("Restart=on-failure", "Restart=sometimes")
    text = text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")
    out = verify(text, tmp_path)
    assert "sometimes" in out and "NoNewPrivilege" in out, out
