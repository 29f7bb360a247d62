"""The demo as a user runs it, and the docs' examples run as written against it.

One demo (`depin demo`, the default fleet of 12 devices and seed 7 that the README's examples name)
stays up for the module. Against it: every `sh` example of README.md runs as written; a second,
bounded demo runs at the same time in the same data directory; and SIGTERM stops the demo with every
process it started.

The only rewrites of a README example are the demo's addresses: its API is on a free port instead
of 8080 and its data directory is a temporary one instead of /var/tmp/depin. `curl` fails on an
HTTP error status here (`--fail-with-body`) so a 404 cannot pass, and `depin run` is stopped with
SIGTERM after a few seconds (it must then exit 0).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest
from aiomqtt.exceptions import MqttConnectError

from devices.sdk import BrokerLogin
from tests.docs_runner import document_script, step_results

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
DEMO = [sys.executable, "-m", "ingest.cli", "demo"]
DEMO_ARGS = ["--epochs", "1", "--epoch-seconds", "5", "--api-port", "0"]
README_SKIP = {
    "make test": "the test command itself (CI runs it)",
    "make demo ARGS=": "the same bounded demo is run below (test_a_second_bounded_demo_…)",
    "make demo": "starts the long-running demo this module runs as `depin demo`",
}
SHELL_PRELUDE = """
curl() { command curl --fail-with-body --silent --show-error --max-time 30 "$@"; }
depin() {
  if [ "$1" != run ]; then command depin "$@"; return; fi
  timeout --preserve-status -s TERM 12 "$(type -P depin)" "$@"
}
"""


@dataclass
class Demo:
    proc: subprocess.Popen[str]
    data_dir: Path
    api: str
    run_dir: Path
    log: Path

    def output(self) -> str:
        return self.log.read_text()


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPIN_")}
    env["DEPIN_DATA_DIR"] = str(data_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    with tempfile.TemporaryDirectory(prefix="depin-demo-") as tmp:
        data_dir = Path(tmp) / "data"
        log = Path(tmp) / "demo.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [*DEMO, *DEMO_ARGS],
                cwd=REPO,
                env=_env(data_dir),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        try:
            deadline = time.monotonic() + 240
            while "API stays up at" not in log.read_text():
                assert proc.poll() is None, f"demo exited {proc.returncode}:\n{log.read_text()[-4000:]}"
                assert time.monotonic() < deadline, f"demo not up:\n{log.read_text()[-4000:]}"
                time.sleep(0.2)
            text = log.read_text()
            api = re.search(r"API stays up at (http://\S+)", text)
            run_dir = re.search(r"run directory (\S+)", text)
            assert api and run_dir, text
            yield Demo(proc, data_dir, api[1], Path(run_dir[1]), log)
        finally:
            if proc.poll() is None:  # a test failed before the SIGTERM test: stop it the same way
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _run_doc(doc: Path, demo: Demo, workdir: Path) -> None:
    script, steps, skipped = document_script(doc, README_SKIP)
    assert steps, f"{doc.name}: no runnable example found"
    script = script.replace("http://127.0.0.1:8080", demo.api).replace("/var/tmp/depin", str(demo.data_dir))
    (workdir / ".venv").symlink_to(REPO / ".venv")  # `. .venv/bin/activate` as from the repository
    proc = subprocess.run(
        ["bash", "-c", SHELL_PRELUDE + script],
        cwd=workdir,
        env={**_env(demo.data_dir), "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    results = step_results(proc.stdout + "\n" + proc.stderr)
    failures = []
    for i, step in enumerate(steps):
        rc, out = results.get(i, (None, "(not reached)"))
        if rc is None or (rc != 0) != step.expect_failure:
            failures.append(f"{step.block.where}: `{step.command}` exited {rc}:\n{out[-1500:]}")
    assert not failures, "\n\n".join(failures) + f"\n\nstderr:\n{proc.stderr[-3000:]}"
    assert {why for _, why in skipped} <= set(README_SKIP.values())


def test_readme_examples_run_as_written_against_the_demo(demo: Demo, tmp_path: Path) -> None:
    _run_doc(REPO / "README.md", demo, tmp_path)


def test_provenance_recipe_runs_as_written_against_the_demo(demo: Demo, tmp_path: Path) -> None:
    """docs/PROVENANCE.md: a demo packet's envelope verified with pycose + PyNaCl, then by
    `depin verify-export` against the demo's chain."""
    _run_doc(REPO / "docs" / "PROVENANCE.md", demo, tmp_path)


def test_the_summary_names_a_device_an_owner_and_urls_that_answer(demo: Demo) -> None:
    text = demo.output()
    assert re.search(r"a device: [0-9a-f]{64} · an owner: 0x[0-9a-fA-F]{40}", text), text
    lines = re.findall(r"curl -s (?:-H \"(Authorization: Bearer dpk_[a-z2-7]{52})\" )?'(http://[^']+)'", text)
    urls = [url for _, url in lines]
    assert len(urls) >= 5 and all(u.startswith(demo.api) for u in urls), urls
    assert any(header for header, _ in lines), "no keyed example (the buyer's key) in the summary"
    env_file = demo.data_dir / "demo" / "current.env"
    assert f"# run {demo.run_dir}\n" in env_file.read_text()
    assert "export DEPIN_API_KEY=dpk_" in env_file.read_text()
    for header, url in lines:
        auth = ["-H", header] if header else []
        subprocess.run(
            ["curl", "--fail-with-body", "-s", "-o", "/dev/null", *auth, url], check=True, timeout=30
        )


def test_a_second_bounded_demo_runs_alongside_in_the_same_data_dir(demo: Demo, tmp_path: Path) -> None:
    """Two demos at once: each has its own run directory, database, broker, chain and API port."""
    summary_path = tmp_path / "summary.json"
    proc = subprocess.run(
        [
            *DEMO,
            "--devices",
            "8",
            "--epochs",
            "2",
            "--epoch-seconds",
            "4",
            "--exit",
            "--summary",
            str(summary_path),
        ],
        cwd=REPO,
        env=_env(demo.data_dir),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "=== depin demo summary ===" in proc.stdout
    s = json.loads(summary_path.read_text())
    assert s["devices"] == 8 and s["broker"] == "mosquitto" and s["chain"].startswith("anvil")
    assert s["api"] != demo.api
    # Every message sent has exactly one outcome: stored, rejected with a reason, or a duplicate.
    assert s["sent"] == s["packets_accepted"] + sum(s["rejected"].values()) + s["duplicates"]
    assert s["rejected"] == {"bad_signature": 2, "unknown_device": 2}
    assert s["duplicates"] == 2
    assert s["packets_accepted"] > 8 * 2  # about one packet per device per second
    assert len(s["epochs"]) == 2 and all(e["root"].startswith("0x") and e["tx"] for e in s["epochs"])
    assert s["cells_covered"] >= 1
    assert int(s["claim"]["claimed"]) == int(s["claim"]["expected"]) > 0
    assert int(s["claim"]["balance"]) == int(s["claim"]["claimed"])
    # Its run directory is gone; the long-running demo's is untouched and still pointed at.
    runs = sorted(p.name for p in (demo.data_dir / "demo").iterdir() if p.name.startswith("run-"))
    assert runs == [demo.run_dir.name]
    assert f"# run {demo.run_dir}\n" in (demo.data_dir / "demo" / "current.env").read_text()
    subprocess.run(["curl", "--fail-with-body", "-s", f"{demo.api}/readyz"], check=True, timeout=30)


def test_the_demos_broker_is_secured(demo: Demo) -> None:
    """The demo's Mosquitto runs deploy/mosquitto.conf: anonymous clients are refused, the service's
    login from the demo's settings works, and a device (its credential file in the run's auth/) may
    not join the service's share group nor read another device's uplink."""
    env = dict(re.findall(r"export (\w+)=(\S+)", (demo.run_dir / "demo.env").read_text()))
    port = int(env["DEPIN_MQTT_PORT"])
    service_password = Path(env["DEPIN_MQTT_PASSWORD_FILE"]).read_text().strip()
    device = BrokerLogin.from_credentials(demo.run_dir / "auth" / "dev-0.json")
    assert "secured (deploy/mosquitto.conf: dynamic security" in demo.output()

    async def check() -> None:
        v5 = aiomqtt.ProtocolVersion.V5
        with pytest.raises(MqttConnectError):
            async with aiomqtt.Client("127.0.0.1", port, protocol=v5):
                pass
        async with aiomqtt.Client(
            "127.0.0.1", port, username=env["DEPIN_MQTT_USERNAME"], password=service_password, protocol=v5
        ):
            pass
        async with aiomqtt.Client("127.0.0.1", port, protocol=v5, **device.client_kwargs()) as client:
            for f in ("$share/ingest/depin/v1/+/up", "depin/v1/+/up"):
                codes = await client.subscribe(f, qos=1)
                assert [int(getattr(c, "value", c)) for c in codes] == [0x87], f

    asyncio.run(check())


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_stops_the_demo_and_every_process_it_started(demo: Demo) -> None:
    """Runs last: it ends the module's demo."""
    children = _children(demo.proc.pid)
    names = {Path(f"/proc/{c}/exe").resolve().name for c in children if _alive(c)}
    assert {"mosquitto", "anvil"} <= names, names
    postmaster = int((demo.run_dir / "pg" / "postmaster.pid").read_text().split()[0])
    assert _alive(postmaster)
    demo.proc.send_signal(signal.SIGTERM)
    assert demo.proc.wait(timeout=60) == 0, demo.output()[-3000:]
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in [*children, postmaster]) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in [*children, postmaster] if _alive(p)]
    assert not left, f"still running after SIGTERM: {left}"
    assert not demo.run_dir.exists(), "the run directory is removed at exit"
    assert not (demo.data_dir / "demo" / "current.env").exists()
