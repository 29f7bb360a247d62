"""The demo in its bounded form, as a user runs it: `depin demo … --exit --summary FILE`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_bounded_demo_runs_and_its_summary_adds_up() -> None:
    with tempfile.TemporaryDirectory(prefix="depin-demo-") as tmp:
        summary_path = Path(tmp) / "summary.json"
        env = {**os.environ, "DEPIN_DATA_DIR": str(Path(tmp) / "data")}
        env.pop("DEPIN_DATABASE_URL", None)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "ingest.cli",
                "demo",
                "--devices",
                "6",
                "--epochs",
                "2",
                "--epoch-seconds",
                "4",
                "--exit",
                "--summary",
                str(summary_path),
                "--api-port",
                "0",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "=== depin demo summary ===" in proc.stdout
        s = json.loads(summary_path.read_text())
    assert s["devices"] == 6 and s["broker"] == "mosquitto" and s["chain"].startswith("anvil")
    # Every message sent has exactly one outcome: stored, rejected with a reason, or a duplicate.
    assert s["sent"] == s["packets_accepted"] + sum(s["rejected"].values()) + s["duplicates"]
    assert s["rejected"] == {"bad_signature": 2, "unknown_device": 2}
    assert s["duplicates"] == 2
    assert s["packets_accepted"] > 6 * 2  # about one packet per device per second
    assert len(s["epochs"]) == 2 and all(e["root"].startswith("0x") and e["tx"] for e in s["epochs"])
    assert s["cells_covered"] >= 1
    assert int(s["claim"]["claimed"]) == int(s["claim"]["expected"]) > 0
    assert int(s["claim"]["balance"]) == int(s["claim"]["claimed"])
