"""`bench/api.py --quick` (50k readings, 1 s per measure) runs to the end and prints every measure."""

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
    "aggregate hour × res 7, res-5 region",
    "/v1/stats",
    "/v1/epochs (list)",
    "/v1/coverage (seeded day)",
)


def test_bench_api_quick() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "api.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert "failed:" not in out and "Traceback" not in done.stderr, out
    for label in MEASURES:
        for clients in ("1 client ", "16 clients"):
            assert any(label in ln and clients in ln and "req/s" in ln for ln in out.splitlines()), (
                label,
                out,
            )
    for needle in (
        "seeded",
        "export CSV",
        "rows/s",
        "with a key",
        "no key",
        "overhead:",
        "indexes",
        "% of the table",
    ):
        assert needle in out, (needle, out)
