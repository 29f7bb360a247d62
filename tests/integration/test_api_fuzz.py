"""Schemathesis (`st run --checks all`) against the API's own /openapi.json, on a real store with data.

Every check passes or the test fails: no 5xx, every status and body as documented, schema-violating
input refused with 4xx, valid input accepted. Bounded (examples per operation, one worker) to stay
well under a minute. The hooks (tests/st_hooks.py) generate the custom formats and keep positive
readings queries within the rules OpenAPI 3.0 cannot express.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from devices.keys import new_identity
from devices.protocol.model import DeviceRecord, Reading
from devices.protocol.topics import up_topic
from devices.sdk import build_message
from ingest.adapters.store.rows import CellReward, DeviceReward, OwnerReward
from ingest.api.app import ApiLimits, create_app
from ingest.pipeline import Incoming, PipelineConfig, PipelineState, sort_batch
from ingest.service import serve_api
from tests.fixtures_pg import Store

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
OWNER = "0x4D41e538832E12538616605D02f8a448CB18A25e"


async def _ready() -> dict[str, Any]:
    return {"ready": True, "failing": []}


@pytest.fixture
async def api_with_data(store: Store) -> AsyncIterator[tuple[str, bytes, bytes]]:
    """A station with a day of readings (a forged packet rejected), a closed epoch paying its owner;
    keys required (the test's schemathesis sends `api_key` on every request and checks that keyed
    operations refuse requests without it: `ignored_auth`)."""
    now = time.time_ns() // 1_000_000
    ident = new_identity()
    registry = {ident.device_id: DeviceRecord(ident.device_id, ident.pubkey, OWNER, 2, 0, True)}
    msgs = [
        Incoming(
            up_topic(ident.device_id),
            build_message(
                ident,
                seq,
                "weather",
                [Reading(now - 3_600_000 + seq * 60_000, 52.52, 13.4, {"temperature_c": 9.5})],
            ),
            now,
        )
        for seq in range(1, 21)
    ]
    msgs.append(
        Incoming(up_topic(ident.device_id), msgs[0].payload[:-1] + bytes([msgs[0].payload[-1] ^ 1]), now)
    )
    out = sort_batch(msgs, registry.get, now, PipelineConfig(), PipelineState())
    await store.write_batch(out.accepted, out.rejected)
    await store.save_epoch_result(
        1,
        now - 86_400_000,
        now,
        10**22,
        10**22,
        0,
        b"\x11" * 32,
        b"\x22" * 32,
        {  # as ingest/epochs.py writes it (the header: GET /v1/epochs/1/manifest; the lists are the rows)
            "epoch": 1,
            "start_ms": now - 86_400_000,
            "end_ms": now,
            "params": {"emission": str(10**22)},
            "inputs_digest": "22" * 32,
            "cells": 1,
            "allocated": str(10**22),
            "unissued": "0",
            "root": "0x" + "11" * 32,
            "devices": [
                {
                    "device_id": ident.device_id.hex(),
                    "owner": OWNER,
                    "cell": hex(0x872830828FFFFFF),
                    "readings": 20,
                    "amount": str(10**22),
                }
            ],
            "owners": [{"owner": OWNER, "amount": str(10**22), "cumulative": str(10**22)}],
        },
        [DeviceReward(ident.device_id, OWNER, 0x872830828FFFFFF, 20, 10**22, 0, 10_000, 1, 2, 7)],
        [OwnerReward(OWNER, 10**22, 10**22, [])],
        [CellReward(0x872830828FFFFFF, 10_000, 10_000, 10_000, 10_000, 10_000, 10**22, 10_000, 10**22, 1)],
    )
    limits = ApiLimits(max_rows=1000, slots=2, busy_timeout_s=5.0, statement_timeout_ms=5000)
    async with serve_api(create_app(store, _ready, limits=limits), "127.0.0.1", 0) as url:
        yield url, ident.device_id, limits.cursor_key


async def test_schemathesis_all_checks_pass(
    api_with_data: tuple[str, bytes, bytes], api_key: str, tmp_path: Path
) -> None:
    url, device, key = api_with_data
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.st_hooks",
        "DEPIN_TEST_CURSOR_KEY": key.hex(),
        "DEPIN_TEST_DEVICE": device.hex(),
        "PYTHONPATH": str(REPO),
    }
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("st")),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {api_key}",
        "--max-examples",
        os.environ.get("DEPIN_FUZZ_EXAMPLES", "25"),
        "--workers",
        "1",
        "--seed",
        os.environ.get("DEPIN_FUZZ_SEED", "11"),  # fixed: the same cases every run (set it to explore)
        "--no-color",
        "--request-timeout",
        "10",
        cwd=tmp_path,  # schemathesis keeps a .schemathesis/ cache in its working directory
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode(errors="replace")
    summary = [
        line for line in text.splitlines() if re.search(r"test cases|passed|failed|Checks|errors", line)
    ]
    print(f"\nschemathesis in {time.monotonic() - started:.1f} s:\n" + "\n".join(summary[-12:]))
    assert proc.returncode == 0, text[-6000:]
    assert "No issues found" in text or "passed" in text, text[-3000:]
