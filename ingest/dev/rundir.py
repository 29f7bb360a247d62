"""The demo's run directory and the settings files that point a shell at it.

Each demo run keeps its database, broker data, chain log and files in a fresh `run-…` directory under
`$DEPIN_DATA_DIR/demo`, removed at exit; `current.env` beside the runs holds the settings of the
newest live run. A demo killed with SIGKILL skips its clean-up: the next demo removes its directory
once neither it nor its PostgreSQL runs any more.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def run_directory(base: Path, given: Path | None) -> Iterator[Path]:
    """Where this run keeps its database, broker and files. A fresh `run-…` directory per run (two
    demos at once never share one) that is removed at exit, unless `given` names one to use and keep.
    `current.env` beside the runs holds the settings of the newest live run (see `write_env`)."""
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given.resolve()
        return
    root = base / "demo"
    root.mkdir(parents=True, exist_ok=True)
    _prune_dead_runs(root)
    path = Path(tempfile.mkdtemp(prefix=time.strftime("run-%Y%m%d-%H%M%S-"), dir=root)).resolve()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        current = root / "current.env"
        with contextlib.suppress(OSError):
            if f"# run {path}\n" in current.read_text():
                # Hand the pointer to another demo still running, if any, rather than leave it dangling.
                live = sorted(_live_runs(root), key=lambda env: env.stat().st_mtime)
                if live:
                    _replace_file(current, live[-1].read_text())
                else:
                    current.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run_pid(env_file: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in env_file.read_text().splitlines():
            if line.startswith("# pid "):
                return int(line.split()[2])
    return None


def _live_runs(root: Path) -> list[Path]:
    return [
        env for env in root.glob("run-*/demo.env") if (pid := _run_pid(env)) is not None and _pid_alive(pid)
    ]


def _prune_dead_runs(root: Path) -> None:
    """Remove run directories left by a demo that was killed (SIGKILL skips the clean-up), once
    neither that demo nor its PostgreSQL runs any more."""
    for run in root.glob("run-*"):
        pid = _run_pid(run / "demo.env")
        pg = run / "pg" / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            if pg.exists() and _pid_alive(int(pg.read_text().split()[0])):
                continue
        if pid is not None and not _pid_alive(pid):
            shutil.rmtree(run, ignore_errors=True)


def _replace_file(path: Path, text: str) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_env(run_dir: Path, values: dict[str, str]) -> Path:
    """`demo.env` in the run directory and a copy as `current.env` beside the runs: `. FILE` gives a
    shell the demo's settings, so `depin …` commands and `depin run` reach its chain, database and
    broker."""
    lines = [
        f"# depin demo settings; use with: . {run_dir.parent / 'current.env'}",
        f"# run {run_dir}",
        f"# pid {os.getpid()}",
    ]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in values.items()]
    text = "\n".join(lines) + "\n"
    (run_dir / "demo.env").write_text(text)
    current = run_dir.parent / "current.env"
    _replace_file(current, text)
    return current


def demo_env(
    run_dir: Path,
    dsn: str,
    broker: Any,
    rpc_url: str | None,
    operator: Any,
    service_login: tuple[str, Path] | None,
    api_key: str | None = None,
) -> dict[str, str]:
    """The settings a shell needs to use this demo's parts (the operator key is anvil's public dev key;
    the broker login, (username, password file), is the service's account; None on an anonymous
    broker). `api_key`: the demo buyer's key, as DEPIN_API_KEY (for curl; not a service setting)."""
    key_file = run_dir / "operator.key"
    key_file.write_text(operator.key.hex() + "\n")
    key_file.chmod(0o600)
    env = {
        "DEPIN_DATA_DIR": str(run_dir),
        "DEPIN_DATABASE_URL": dsn,
        "DEPIN_MQTT_HOST": broker.host,
        "DEPIN_MQTT_PORT": str(broker.port),
        "DEPIN_DEPLOYMENT_FILE": str(run_dir / "deployment.json"),
        "DEPIN_OPERATOR_KEY_FILE": str(key_file),
    }
    if service_login is not None:
        env["DEPIN_MQTT_USERNAME"] = service_login[0]
        env["DEPIN_MQTT_PASSWORD_FILE"] = str(service_login[1])
    if api_key is not None:
        env["DEPIN_API_KEY"] = api_key
    if rpc_url is not None:  # the in-process EVM has no URL another process could reach
        env["DEPIN_CHAIN_RPC_URL"] = rpc_url
    return env
