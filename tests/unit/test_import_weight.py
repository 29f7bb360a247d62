"""What the store, the consumer and the API import stays light: no Ethereum signing stack.

`eth_account` (with eth_keys, py_ecc's BLS tables) costs ~0.4 CPU-seconds to import. Imported at the top
of `ingest/core/boosts.py` it reached every process that opens the store, bench/ingest.py's spawned
publishers among them, whose start-up counts in the live end-to-end figure: that alone was the
−14 % measured there (README "Performance"). The boost signature code imports it when it runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("eth_account", "eth_keys", "py_ecc", "web3")


def test_store_consumer_and_api_do_not_import_the_signing_stack() -> None:
    code = (
        "import sys\n"
        "import ingest.adapters.store, ingest.consumer, ingest.api.app, ingest.rollups, ingest.core.boosts\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"imported at start-up: {out}"


def test_boost_signatures_still_work_with_the_lazy_import() -> None:
    from ingest.core import boosts

    key = "0x" + "11" * 32
    b = boosts.sign(
        boosts.Boost(cell=0x8928308280FFFFF, factor_bps=15_000, from_epoch=1, to_epoch=2, set_at_ms=1), key
    )
    assert boosts.recover(b) == b.signer
    assert boosts.valid(b, [b.signer.lower()])
    assert boosts.recover(boosts.Boost(1, 10_000, 1, 1, 1, b.signer, b"\x00" * 65)) != b.signer
