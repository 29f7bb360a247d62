"""`bench/api.py --quick --api-procs 2` (50k readings, 1 s per measure) runs to the end and prints every
measure: with 1 and 16 clients on one API process, and with 16 clients on two sharing the port."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
MEASURES = (
    "cell (res 7) + one day, 100 rows",
    "cell (res 7) + one day, 1000 rows",
    "device + one day, 100 rows",
    "bbox ~10 km², one day, 100 rows",
    "aggregate hour × res 7, res-5, week (1 day data)",
    "/v1/stats",
    "/v1/epochs/{n} (summary, closed day)",
    "/v1/epochs (list)",
    "/v1/coverage (closed day)",
)


def test_bench_api_quick() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "api.py"), "--quick", "--api-procs", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert "failed:" not in out and "Traceback" not in done.stderr, out
    rows = [ln for ln in out.splitlines() if "req/s" in ln]
    for label in MEASURES:
        for clients in ("1 client ", "16 clients  p50", "16 clients × 2 API procs"):
            assert any(label in ln and clients in ln for ln in rows), (label, clients, out)
    for needle in (
        "seeded",
        "closed epoch",
        "export CSV",
        "rows/s",
        "with a key",
        "no key",
        "overhead:",
        "indexes",
        "% of the table",
    ):
        assert needle in out, (needle, out)
