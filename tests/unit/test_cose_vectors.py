"""The project's COSE header vectors (tests/fixtures/cose-headers-v1.json, built independently by
make_cose_vectors.py with cbor2 + PyNaCl) through the whole pure data path, `pipeline.judge` with the
clock pinned at t0: valid ones accepted clean; each invalid one rejected with exactly its reason and a
detail that tells the firmware author what to change."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from devices.protocol.hwclass import WEATHER, cell_for
from devices.protocol.model import DeviceRecord
from ingest.model import AcceptedPacket, RejectedMessage
from ingest.pipeline import Incoming, PipelineConfig, judge

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
V = json.loads((FIXTURES / "cose-headers-v1.json").read_text())
T0 = V["t0_ms"]
CFG = PipelineConfig()


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("make_cose_vectors", FIXTURES / "make_cose_vectors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()
DEV = V["devices"]["weather-9"]
DEVICE_ID = bytes.fromhex(DEV["device_id"])
# A weather station registered at the res-7 cell its readings come from.
REGISTRY = {
    DEVICE_ID: DeviceRecord(
        DEVICE_ID,
        bytes.fromhex(DEV["pubkey"]),
        "0x" + "11" * 20,
        WEATHER.id,
        cell_for(GEN.LAT, GEN.LON, 7),
        True,
    )
}


def _judge(vector: dict[str, Any]) -> AcceptedPacket | RejectedMessage:
    return judge(Incoming(vector["topic"], bytes.fromhex(vector["message"]), T0), REGISTRY.get, T0, CFG)


def test_the_file_is_what_the_generator_writes() -> None:
    assert (FIXTURES / "cose-headers-v1.json").read_text() == GEN.render()


@pytest.mark.parametrize("vector", V["valid"], ids=lambda v: v["id"])
def test_valid_header_variants_accepted_clean(vector: dict[str, Any]) -> None:
    out = _judge(vector)
    assert isinstance(out, AcceptedPacket), out
    assert out.seq == vector["expect"]["seq"] and len(out.readings) == vector["expect"]["readings"]
    assert out.flags == (0,)


@pytest.mark.parametrize("vector", V["invalid"], ids=lambda v: v["id"])
def test_invalid_header_variant_rejected_with_its_reason_and_an_actionable_detail(
    vector: dict[str, Any],
) -> None:
    out = _judge(vector)
    assert isinstance(out, RejectedMessage), f"{vector['id']} was accepted"
    assert out.reason == vector["reason"], out.detail
    assert vector["detail"] in out.detail
    assert "CBORDecode" not in out.detail  # a parser's words are not an answer for the firmware author


def test_every_invalid_variant_has_its_own_detail() -> None:
    details = {o.detail for o in map(_judge, V["invalid"]) if isinstance(o, RejectedMessage)}
    assert len(details) == len(V["invalid"])
