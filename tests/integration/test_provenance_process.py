"""Provenance end to end, as a buyer and an owner meet it: `depin run` as an OS process (settings from
DEPIN_* only) on real PostgreSQL, Mosquitto and anvil keeps every packet's envelope (GET
/v1/packets/{device_id}/{seq} serves the MQTT payload byte for byte); the buyer exports with
GET /v1/export?include=envelope and checks the NDJSON and CSV files with `depin verify-export` (a
process) against anvil's registry: both pass, and a tampered value, a tampered signature, an unknown
device and a device revoked on chain each fail with their reason named. The owner's views count what
each device sent per epoch and show the revocation."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from operator import itemgetter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from eth_account.signers.local import LocalAccount

from devices.chain.registry import DeviceInput, RegistryClient
from devices.chain.signer import Signer
from devices.keys import new_identity
from devices.protocol.model import Reading
from devices.protocol.topics import up_topic
from devices.sdk import build_message
from simulator.fleet import make_fleet, next_message
from simulator.publish import publish_raw, unique_client_id
from tests.fixtures_keys import bearer
from tests.procs import REPO, ConsumerProcess, consumer_env, table_counts, wait_for

pytestmark = pytest.mark.integration
LENGTH_S = 60


async def _get(url: str, key: str | None = None) -> Any:
    async with aiohttp.ClientSession(headers=bearer(key) if key else None) as http, http.get(url) as r:
        assert r.status == 200, (url, r.status, await r.text())
        return await r.json()


async def _verify_export(path: Path, anvil_url: str, deployment: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ingest.cli", "verify-export", str(path),
        "--rpc-url", anvil_url, "--deployment", str(deployment),
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def _get_text(url: str, key: str) -> str:
    async with aiohttp.ClientSession(headers=bearer(key)) as http, http.get(url) as r:
        assert r.status == 200, (url, r.status, await r.text())
        return await r.text()


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


async def test_envelopes_kept_by_depin_run_verify_against_the_chain(
    pg_dsn: str,
    mosquitto: Any,
    w3: Any,
    deployment: Any,
    signer: Signer,
    accounts: list[LocalAccount],
    anvil_url: str,
    tmp_path: Path,
    api_key: str,
) -> None:
    owner = accounts[3].address
    fleet = make_fleet(3, [owner], seed=21)
    registry = RegistryClient(w3, deployment, signer)
    await registry.register_batch(
        [DeviceInput(d.device_id, d.pubkey, d.owner, d.hw_class, d.asserted_cell) for d in fleet]
    )
    dep_file = tmp_path / "deployment.json"
    deployment.save(dep_file)
    now = time.time_ns() // 1_000_000
    genesis = now - 5 * LENGTH_S * 1000 - LENGTH_S * 500  # `now` mid-epoch 6: one epoch for all
    env = consumer_env(
        database_url=pg_dsn,
        mqtt_host=mosquitto.host,
        mqtt_port=mosquitto.port,
        client_id=unique_client_id("svc"),
        group=unique_client_id("g"),
        chain_rpc_url=anvil_url,
        deployment_file=dep_file,
        epoch_genesis_ms=genesis,
        epoch_length_s=LENGTH_S,
    )
    proc = ConsumerProcess(env, tmp_path / "depin-run.log", parts="consume,follow,api")
    try:
        await proc.start()
        sent = {
            (d.device_id, i + 1): next_message(d, now + i * 1000, readings_per_packet=2)
            for i in range(3)
            for d in fleet
        }
        forged = bytearray(next_message(fleet[0], now + 5_000))
        forged[-1] ^= 1
        items = [(up_topic(dev), msg) for (dev, _), msg in sent.items()] + [(fleet[0].topic, bytes(forged))]
        await publish_raw(mosquitto.host, mosquitto.port, items)

        async def stored() -> bool:
            c = await table_counts(pg_dsn)
            return c.packets == len(sent) and sum(c.rejections.values()) == 1

        await wait_for(stored, 20, "every packet stored and the forgery rejected")

        # Each packet as GET /v1/packets/{device_id}/{seq} serves it: the MQTT payload, byte for byte.
        by_packet: list[dict[str, Any]] = []
        for (dev, seq), msg in sent.items():
            body = await _get(f"{proc.url}/v1/packets/{dev.hex()}/{seq}", api_key)  # keyed: scope read
            assert base64.b64decode(body["envelope"]) == msg
            assert len(body["readings"]) == 2
            by_packet += [{**r, "envelope": body["envelope"]} for r in body["readings"]]

        # The buyer's export: /v1/export with include=envelope (keyed), NDJSON and CSV, one file each.
        ndjson, csv_lines = "", []
        for d in fleet:
            query = f"device={d.device_id.hex()}&from={now - 60_000}&to={now + 3_600_000}&include=envelope"
            ndjson += await _get_text(f"{proc.url}/v1/export?format=ndjson&{query}", api_key)
            table = (await _get_text(f"{proc.url}/v1/export?format=csv&{query}", api_key)).splitlines()
            csv_lines += table if not csv_lines else table[1:]  # one header
        rows = [json.loads(line) for line in ndjson.splitlines()]
        # Same readings, same envelopes (acc/alt are `real`: their JSON digits differ between the two).
        key = itemgetter("device_id", "seq", "idx", "envelope")
        assert sorted(map(key, rows)) == sorted(map(key, by_packet))
        good = tmp_path / "good.ndjson"
        good.write_text(ndjson)
        code, out = await _verify_export(good, anvil_url, dep_file)
        assert code == 0 and f"rows {len(rows)} · packets {len(sent)} · verified {len(rows)}" in out, out
        good_csv = tmp_path / "good.csv"
        good_csv.write_text("\n".join(csv_lines) + "\n")
        assert csv_lines[0].endswith(",envelope") and len(csv_lines) == len(rows) + 1
        code, out = await _verify_export(good_csv, anvil_url, dep_file)
        assert code == 0 and f"rows {len(rows)} · packets {len(sent)} · verified {len(rows)}" in out, out

        # The owner's view: per-epoch counts, the forged message counted against device 0.
        view = await _get(f"{proc.url}/v1/devices/{fleet[0].device_id.hex()}")
        assert view["status"] == "active" and view["owner"] == owner and view["kind"] == fleet[0].kind
        assert sum(e["packets"] for e in view["epochs"]) == 3
        assert sum(e["readings"] for e in view["epochs"]) == 6
        assert sum(e["rejected"] for e in view["epochs"]) == 1
        assert view["epochs"][0]["epoch"] == (now - genesis) // (LENGTH_S * 1000) + 1
        fleet_page = await _get(f"{proc.url}/v1/owners/{owner}/devices")
        assert sorted(d["device_id"] for d in fleet_page["devices"]) == sorted(
            d.device_id.hex() for d in fleet
        )

        # Tampered value, tampered signature, a device the registry does not know: each named.
        tampered = [dict(r) for r in rows]
        tampered[0]["vals"] = {
            k: (v + 1 if isinstance(v, (int, float)) else v) for k, v in rows[0]["vals"].items()
        }
        raw = bytearray(base64.b64decode(rows[2]["envelope"]))
        raw[-1] ^= 1
        tampered[2]["envelope"] = tampered[3]["envelope"] = base64.b64encode(bytes(raw)).decode()
        stranger = new_identity()
        msg = build_message(stranger, 1, "weather", [Reading(now, 52.52, 13.4, {"temperature_c": 9.5})])
        tampered.append(
            {"device_id": stranger.device_id.hex(), "seq": 1, "idx": 0, "ts": now, "lat": 52.52, "lon": 13.4,
             "vals": {"temperature_c": 9.5}, "envelope": base64.b64encode(msg).decode()}
        )  # fmt: skip
        code, out = await _verify_export(_write(tmp_path / "bad.ndjson", tampered), anvil_url, dep_file)
        assert code == 1, out
        assert "failures: bad_signature 2, unknown_device 1, value_mismatch 1" in out, out
        assert f"verified {len(rows) - 3}" in out, out

        # Revoked on chain: its rows fail; the owner's view shows it once the follower has the event.
        revoked = fleet[1].device_id
        await registry.revoke(revoked)
        code, out = await _verify_export(good, anvil_url, dep_file)
        assert code == 1 and "failures: revoked_device 6" in out, out

        async def shows_revoked() -> bool:
            return (await _get(f"{proc.url}/v1/devices/{revoked.hex()}"))["status"] == "revoked"

        await wait_for(shows_revoked, 15, "the owner's view to show the revocation")
    finally:
        await proc.stop()
