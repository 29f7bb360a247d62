"""The walkthroughs in docs/ run as written (README.md's examples run in test_demo.py, against a demo).

docs/OPERATORS.md runs against a fresh anvil, as it says: its transcript's commands run in order in
one shell, in an empty directory; a command whose shown output has `error:` must fail, every other
one must succeed. The only rewrite is the node's address (a free port instead of 48545).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ingest.dev.chain import start_anvil
from tests.docs_runner import blocks, document_script, step_results

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
DOC_NODE = "http://127.0.0.1:48545"
# Every document in docs/ with runnable examples, and what it runs against.
RUNS_AGAINST = {"OPERATORS.md": "anvil", "PROVENANCE.md": "demo (test_demo.py)"}


def test_every_doc_with_examples_is_run() -> None:
    runnable = {
        doc.name
        for doc in (REPO / "docs").glob("*.md")
        if any(b.lang in ("sh", "console") for b in blocks(doc))
    }
    assert runnable <= set(RUNS_AGAINST), f"add {sorted(runnable - set(RUNS_AGAINST))} to RUNS_AGAINST"


async def test_operators_walkthrough_runs_as_written(tmp_path: Path) -> None:
    script, steps, skipped = document_script(REPO / "docs" / "OPERATORS.md", {})
    assert len(steps) >= 15 and not skipped
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPIN_")}
    env["PATH"] = f"{REPO / '.venv' / 'bin'}:{env['PATH']}"
    async with start_anvil(log_path=tmp_path / "anvil.log") as url:
        proc = subprocess.run(  # noqa: ASYNC221 - the walkthrough is one blocking shell session
            ["bash", "-c", script.replace(DOC_NODE, url)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    results = step_results(proc.stdout)
    failures = []
    for i, step in enumerate(steps):
        rc, out = results.get(i, (None, "(not reached)"))
        if rc is None or (rc != 0) != step.expect_failure:
            want = "to fail" if step.expect_failure else "to succeed"
            failures.append(
                f"{step.block.where}: `{step.command}` exited {rc}, expected {want}:\n{out[-1500:]}"
            )
    assert not failures, "\n\n".join(failures)
