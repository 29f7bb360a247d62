"""The pure data path: every message gets exactly one outcome, with the right reason."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from devices.keys import new_identity
from devices.sdk import build_message
from ingest.core.geo import cell_for
from ingest.core.rules import FLAG_BAD_VALUES
from ingest.core.verify import up_topic
from ingest.model import AcceptedPacket, DeviceRecord, Reading, Reason, RejectedMessage
from ingest.pipeline import Incoming, PipelineConfig, judge, sort_batch

NOW = 1_795_000_000_000
CFG = PipelineConfig()


def _station(hw_class: int = 2, active: bool = True) -> tuple:
    ident = new_identity()
    rec = DeviceRecord(ident.device_id, ident.pubkey, "0x" + "ab" * 20, hw_class, 0, active)
    return ident, rec


def _weather(temp: float = 12.5) -> list[Reading]:
    return [Reading(NOW - 1000, 52.52, 13.405, {"temperature_c": temp, "humidity_pct": 60.0})]


def test_batch_sorts_each_message_to_one_outcome() -> None:
    good, good_rec = _station()
    revoked, revoked_rec = _station(active=False)
    stranger = new_identity()
    registry = {good_rec.device_id: good_rec, revoked_rec.device_id: revoked_rec}
    batch = [
        Incoming(up_topic(good.device_id), build_message(good, 1, "weather", _weather()), NOW),
        Incoming(up_topic(revoked.device_id), build_message(revoked, 1, "weather", _weather()), NOW),
        Incoming(up_topic(stranger.device_id), build_message(stranger, 1, "weather", _weather()), NOW),
        Incoming(up_topic(revoked.device_id), build_message(good, 2, "weather", _weather()), NOW),
        Incoming(up_topic(good.device_id), build_message(good, 3, "dashcam", _weather()), NOW),
        Incoming(up_topic(good.device_id), b"\xff\x00garbage", NOW),
    ]
    out = sort_batch(batch, registry.get, NOW, CFG)
    assert len(out.accepted) + len(out.rejected) == len(batch)
    assert [a.seq for a in out.accepted] == [1]
    assert [r.reason for r in out.rejected] == [
        Reason.REVOKED_DEVICE,
        Reason.UNKNOWN_DEVICE,
        Reason.KID_MISMATCH,
        Reason.MALFORMED,
        Reason.MALFORMED,
    ]
    assert out.rejected[3].seq == 3  # a signed packet's seq is kept for the owner to see
    assert out.rejected[4].seq is None and out.rejected[4].device_id == good.device_id


def test_accepted_packet_has_cells_at_the_class_resolution_and_flags() -> None:
    ident, rec = _station()
    readings = [*_weather(), Reading(NOW - 500, 52.52, 13.405, {"temperature_c": 95.0})]
    out = judge(
        Incoming(up_topic(ident.device_id), build_message(ident, 9, "weather", readings), NOW),
        {rec.device_id: rec}.get,
        NOW,
        CFG,
    )
    assert isinstance(out, AcceptedPacket)
    assert out.cells == (cell_for(52.52, 13.405, 7),) * 2  # weather: res 7
    assert out.flags == (0, FLAG_BAD_VALUES)  # 95 °C is stored, flagged, earns nothing
    assert len(out.payload_digest) == 32 and out.message_digest != out.payload_digest


def test_time_rules_use_the_given_clock() -> None:
    ident, rec = _station()
    msg = Incoming(up_topic(ident.device_id), build_message(ident, 1, "weather", _weather()), NOW)
    later = judge(msg, {rec.device_id: rec}.get, NOW + 3 * 86_400_000, CFG)
    assert isinstance(later, RejectedMessage) and later.reason == Reason.TOO_LATE
    tight = dataclasses.replace(CFG, max_message_bytes=50)
    small = judge(msg, {rec.device_id: rec}.get, NOW, tight)
    assert isinstance(small, RejectedMessage) and small.reason == Reason.TOO_LARGE


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=400), topic=st.text(max_size=80))
def test_arbitrary_bytes_never_raise(payload: bytes, topic: str) -> None:
    out = judge(Incoming(topic, payload, NOW), lambda _: None, NOW, CFG)
    assert isinstance(out, RejectedMessage)
