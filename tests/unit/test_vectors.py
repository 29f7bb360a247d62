"""Every shared conformance vector (../shared/vectors/wire-v1.json) through the whole pure data path,
`pipeline.judge` with the clock pinned at t0: valid ones accepted (and clean), invalid ones rejected
with exactly their reason, nothing raised. test_codec.py runs the same vectors stage by stage."""

from __future__ import annotations

import dataclasses

import pytest

from devices.protocol import codec
from devices.protocol.hwclass import DEFAULT_CLASSES, cell_for
from devices.protocol.model import DeviceRecord, SignedMessage
from ingest.model import AcceptedPacket, RejectedMessage
from ingest.pipeline import Incoming, PipelineConfig, PipelineState, judge, sort_batch
from tests import vectors

V = vectors.load()
T0 = V["t0_ms"]
CFG = PipelineConfig()


def _registry() -> dict[bytes, DeviceRecord]:
    """The vectors' devices, stationary ones asserting the cell their valid vector reads from."""
    records = vectors.registry()
    for vec in V["valid"]:
        msg = codec.decode(bytes.fromhex(vec["message"]))
        assert isinstance(msg, SignedMessage)
        rec = records[msg.kid]
        hw = DEFAULT_CLASSES[rec.hw_class]
        if not hw.mobile:
            r = msg.packet.readings[0]
            records[msg.kid] = dataclasses.replace(rec, asserted_cell=cell_for(r.lat, r.lon, hw.h3_res))
    return records


REGISTRY = _registry()


def _judge(vector: dict) -> AcceptedPacket | RejectedMessage:
    return judge(Incoming(vector["topic"], bytes.fromhex(vector["message"]), T0), REGISTRY.get, T0, CFG)


@pytest.mark.parametrize("vector", V["valid"], ids=lambda v: v["id"])
def test_valid_vector_accepted_clean(vector: dict) -> None:
    out = _judge(vector)
    assert isinstance(out, AcceptedPacket), out
    assert out.seq == vector["expect"]["seq"]
    assert len(out.readings) == vector["expect"]["readings"]
    assert out.flags == (0,) * len(out.readings)
    assert out.device_id.hex() == V["devices"][vector["device"]]["device_id"]


@pytest.mark.parametrize("vector", V["invalid"], ids=lambda v: v["id"])
def test_invalid_vector_rejected_with_exactly_its_reason(vector: dict) -> None:
    out = _judge(vector)
    assert isinstance(out, RejectedMessage), f"{vector['id']} was accepted"
    assert out.reason == vector["reason"], out.detail
    assert out.detail  # the owner is told why


def test_all_vectors_in_one_batch() -> None:
    """As the consumer sees them: one batch, one shared state, one outcome per message."""
    everything = V["valid"] + V["invalid"]
    batch = [Incoming(v["topic"], bytes.fromhex(v["message"]), T0) for v in everything]
    out = sort_batch(batch, REGISTRY.get, T0, CFG, PipelineState())
    assert len(out.accepted) == len(V["valid"])
    assert [r.reason for r in out.rejected] == [v["reason"] for v in V["invalid"]]
