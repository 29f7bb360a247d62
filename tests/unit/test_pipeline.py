"""The pure data path: every message gets exactly one outcome, with the right reason, and the stateful
rules (rate limit, motion, value runs, media reuse) see a device across batches through PipelineState."""

from __future__ import annotations

import dataclasses
import math

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.keys import DeviceIdentity, new_identity
from devices.protocol.hwclass import cell_for
from devices.protocol.model import DeviceRecord, Media, Reading, Reason
from devices.protocol.topics import up_topic
from devices.sdk import build_message
from ingest.core import rules
from ingest.core import state as device_state
from ingest.core.geo import EARTH_RADIUS_M
from ingest.core.ratelimit import RateLimit
from ingest.core.rules import FLAG_BAD_VALUES
from ingest.model import AcceptedPacket, RejectedMessage
from ingest.pipeline import Incoming, PipelineConfig, PipelineState, judge, prejudge_batch, sort_batch

NOW = 1_795_000_000_000
CFG = PipelineConfig()
BERLIN = (52.52, 13.405)
WEATHER_CELL = cell_for(*BERLIN, 7)  # a station asserts the res-7 cell it stands in


def _station(hw_class: int = 2, active: bool = True, asserted: int = WEATHER_CELL) -> tuple:
    ident = new_identity()
    rec = DeviceRecord(ident.device_id, ident.pubkey, "0x" + "ab" * 20, hw_class, asserted, active)
    return ident, rec


def _dashcam() -> tuple[DeviceIdentity, DeviceRecord]:
    return _station(hw_class=1, asserted=0)


def _weather(temp: float = 12.5, ts: int = NOW - 1000, lat: float = BERLIN[0]) -> list[Reading]:
    return [Reading(ts, lat, BERLIN[1], {"temperature_c": temp, "humidity_pct": 60.0})]


def _msg(ident: DeviceIdentity, seq: int, kind: str, readings: list[Reading], at: int = NOW) -> Incoming:
    return Incoming(up_topic(ident.device_id), build_message(ident, seq, kind, readings), at)


def test_batch_sorts_each_message_to_one_outcome() -> None:
    good, good_rec = _station()
    revoked, revoked_rec = _station(active=False)
    stranger = new_identity()
    registry = {good_rec.device_id: good_rec, revoked_rec.device_id: revoked_rec}
    batch = [
        _msg(good, 1, "weather", _weather()),
        _msg(revoked, 1, "weather", _weather()),
        _msg(stranger, 1, "weather", _weather()),
        Incoming(up_topic(revoked.device_id), build_message(good, 2, "weather", _weather()), NOW),
        _msg(good, 3, "dashcam", _weather()),
        Incoming(up_topic(good.device_id), b"\xff\x00garbage", NOW),
    ]
    out = sort_batch(batch, registry.get, NOW, CFG)  # no state: a fresh one (backward compatible)
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
    readings = [*_weather(), Reading(NOW - 500, *BERLIN, {"temperature_c": 95.0})]
    out = judge(_msg(ident, 9, "weather", readings), {rec.device_id: rec}.get, NOW, CFG)
    assert isinstance(out, AcceptedPacket)
    assert out.cells == (cell_for(*BERLIN, 7),) * 2  # weather: res 7
    assert out.flags == (0, FLAG_BAD_VALUES)  # 95 °C is stored, flagged, earns nothing
    assert len(out.payload_digest) == 32 and out.message_digest != out.payload_digest


def test_a_station_without_an_asserted_cell_is_stored_but_flagged_off_location() -> None:
    """Why the test above gives its station a cell: a stationary device that asserted nothing could
    claim to cover any cell it likes, so its readings are kept but earn nothing."""
    ident, rec = _station(asserted=0)
    out = judge(_msg(ident, 1, "weather", _weather()), {rec.device_id: rec}.get, NOW, CFG)
    assert isinstance(out, AcceptedPacket) and out.flags == (rules.FLAG_OFF_LOCATION,)


def test_time_rules_use_the_given_clock() -> None:
    ident, rec = _station()
    msg = _msg(ident, 1, "weather", _weather())
    later = judge(msg, {rec.device_id: rec}.get, NOW + 3 * 86_400_000, CFG)
    assert isinstance(later, RejectedMessage) and later.reason == Reason.TOO_LATE
    tight = dataclasses.replace(CFG, max_message_bytes=50)
    small = judge(msg, {rec.device_id: rec}.get, NOW, tight)
    assert isinstance(small, RejectedMessage) and small.reason == Reason.TOO_LARGE


def test_unknown_hardware_class_is_malformed_not_an_exception() -> None:
    ident, rec = _station(hw_class=99)
    out = judge(_msg(ident, 1, "weather", _weather()), {rec.device_id: rec}.get, NOW, CFG)
    assert isinstance(out, RejectedMessage) and out.reason == Reason.MALFORMED


def test_the_pipeline_judges_with_a_live_class_table() -> None:
    """The service hands the pipeline a read-only view of the registry mirror's class table: a class
    added or changed in it applies to the next message, with the same config and state."""
    from types import MappingProxyType

    from devices.protocol.hwclass import DEFAULT_CLASSES, from_registry

    table = dict(DEFAULT_CLASSES)
    cfg = dataclasses.replace(CFG, classes=MappingProxyType(table))
    ident, rec = _station(hw_class=7, asserted=cell_for(*BERLIN, 10))
    lookup = {rec.device_id: rec}.get
    state = PipelineState()
    out = judge(_msg(ident, 1, "buoy", _weather()), lookup, NOW, cfg, state)
    assert isinstance(out, RejectedMessage) and "hardware class 7 is unknown" in out.detail
    table[7] = from_registry(7, "buoy", 0, 10)
    out = judge(_msg(ident, 2, "buoy", _weather()), lookup, NOW, cfg, state)
    assert isinstance(out, AcceptedPacket)
    assert out.cells == (cell_for(*BERLIN, 10),) and out.flags == (0,)
    table[7] = from_registry(7, "buoy", 0, 9)  # resolution changed on chain: the res-10 cell no longer counts
    out = judge(_msg(ident, 3, "buoy", _weather()), lookup, NOW, cfg, state)
    assert isinstance(out, AcceptedPacket)
    assert out.cells == (cell_for(*BERLIN, 9),) and out.flags == (rules.FLAG_OFF_LOCATION,)


# --- rate limit -------------------------------------------------------------------------------------


def test_one_device_at_ten_times_its_rate_is_limited_and_others_are_not() -> None:
    """docs/RELIABILITY.md A3: 10 packets/s of device time against 1/s (burst 20) for 10 s."""
    flood, flood_rec = _station()
    calm, calm_rec = _station()
    registry = {flood_rec.device_id: flood_rec, calm_rec.device_id: calm_rec}
    batch = []
    for i in range(100):
        ts = NOW - 10_000 + i * 100
        batch.append(_msg(flood, i + 1, "weather", _weather(ts=ts)))
        if i % 10 == 0:
            batch.append(_msg(calm, i + 1, "weather", _weather(ts=ts)))
    out = sort_batch(batch, registry.get, NOW, CFG, PipelineState())
    limited = [r for r in out.rejected if r.reason == Reason.RATE_LIMITED]
    assert {r.device_id for r in limited} == {flood.device_id}
    assert 65 <= len(limited) <= 75  # 100 − (20 burst + ~10 s × 1/s)
    assert sum(p.device_id == calm.device_id for p in out.accepted) == 10
    assert len(out.accepted) + len(out.rejected) == len(batch)


def test_rate_limit_state_carries_across_batches_and_redelivery_is_judged_the_same() -> None:
    ident, rec = _station()
    state = PipelineState()
    cfg = dataclasses.replace(CFG, rate_limit=RateLimit(per_second=1.0, burst=2))
    msgs = [_msg(ident, seq, "weather", _weather()) for seq in (1, 2, 3)]
    first = sort_batch(msgs[:2], {rec.device_id: rec}.get, NOW, cfg, state)
    second = sort_batch(msgs[2:], {rec.device_id: rec}.get, NOW, cfg, state)
    assert len(first.accepted) == 2 and [r.reason for r in second.rejected] == [Reason.RATE_LIMITED]
    again = sort_batch(msgs, {rec.device_id: rec}.get, NOW, cfg, state)  # the broker redelivers all
    assert [p.seq for p in again.accepted] == [1, 2] and [r.seq for r in again.rejected] == [3]


def test_rate_limit_can_be_switched_off() -> None:
    ident, rec = _station()
    cfg = dataclasses.replace(CFG, rate_limit=None)
    batch = [_msg(ident, seq, "weather", _weather()) for seq in range(1, 41)]
    assert len(sort_batch(batch, {rec.device_id: rec}.get, NOW, cfg).accepted) == 40


# --- stateful flags across batches ------------------------------------------------------------------


def _north(metres: float) -> tuple[float, float]:
    return BERLIN[0] + math.degrees(metres / EARTH_RADIUS_M), BERLIN[1]


def test_teleport_between_batches_is_flagged_and_stored() -> None:
    cam, rec = _dashcam()
    state = PipelineState()
    lookup = {rec.device_id: rec}.get

    def drive(seq: int, ts: int, metres: float) -> AcceptedPacket:
        reading = Reading(ts, *_north(metres), {"speed_mps": 10.0})
        out = sort_batch([_msg(cam, seq, "dashcam", [reading])], lookup, NOW, CFG, state)
        assert len(out.accepted) == 1
        return out.accepted[0]

    assert drive(1, NOW - 10_000, 0.0).flags == (0,)
    assert drive(2, NOW - 9_000, 50.0).flags == (0,)  # 180 km/h with GPS slack: fine for a car
    assert drive(3, NOW - 8_000, 20_000.0).flags == (rules.FLAG_IMPLAUSIBLE_MOTION,)  # 20 km in 1 s
    # Without the state the same packet has no history and passes: the state is what catches it.
    alone = judge(_msg(cam, 3, "dashcam", [Reading(NOW - 8_000, *_north(20_000.0), {})]), lookup, NOW, CFG)
    assert isinstance(alone, AcceptedPacket) and alone.flags == (0,)


def test_value_jump_and_flatline_span_batches() -> None:
    ident, rec = _station()
    state = PipelineState()
    lookup = {rec.device_id: rec}.get
    hour = 3_600_000
    now = NOW + 5 * hour

    def send(seq: int, ts: int, temp: float) -> int:
        reading = Reading(ts, *BERLIN, {"temperature_c": temp})
        out = sort_batch([_msg(ident, seq, "weather", [reading], now)], lookup, now, CFG, state)
        return out.accepted[0].flags[0]

    assert send(1, NOW, 12.0) == 0
    assert send(2, NOW + 60_000, 20.0) == rules.FLAG_VALUE_JUMP  # 8 °C in a minute
    assert send(3, NOW + 2 * 60_000, 20.0) == 0
    assert send(4, NOW + 4 * hour + 60_000, 20.0) == 0  # constant for exactly 4 h
    assert send(5, NOW + 4 * hour + 60_001, 20.0) == rules.FLAG_FLATLINE


# --- duplicate vs replay (the store decides; the pipeline gives it the right keys) --------------------


def test_duplicate_and_replay_keys() -> None:
    """(device, seq) is the key; the payload digest tells a duplicate from a replay. A message that
    differs only outside the signed payload (here the unprotected header) is the same packet: the
    signature bytes and the message bytes are never the dedup key (docs/RELIABILITY.md B12)."""
    ident, rec = _station()
    lookup = {rec.device_id: rec}.get
    raw = build_message(ident, 5, "weather", _weather())
    tag = cbor2.loads(raw)
    protected, _, payload, sig = tag.value
    rewrapped = cbor2.dumps(cbor2.CBORTag(18, [protected, {"x": 1}, payload, sig]))
    other = build_message(ident, 5, "weather", _weather(temp=13.0))
    outs = [
        judge(Incoming(up_topic(ident.device_id), m, NOW), lookup, NOW, CFG) for m in (raw, rewrapped, other)
    ]
    assert all(isinstance(o, AcceptedPacket) for o in outs)
    p1, p2, p3 = (o for o in outs if isinstance(o, AcceptedPacket))
    assert (p1.device_id, p1.seq) == (p2.device_id, p2.seq) == (p3.device_id, p3.seq)
    assert p1.payload_digest == p2.payload_digest and p1.message_digest != p2.message_digest  # duplicate
    assert p1.payload_digest != p3.payload_digest  # replay


# --- bounded memory ---------------------------------------------------------------------------------


def test_state_stays_bounded_under_many_devices() -> None:
    state = PipelineState(max_devices=8)
    registry = {}
    batch = []
    for i in range(40):
        cam, rec = _dashcam()
        registry[rec.device_id] = rec
        readings = [
            Reading(NOW - 1000 + j, *BERLIN, {}, media=Media(bytes([i, j]) * 16, "u")) for j in range(3)
        ]
        batch.append(_msg(cam, 1, "dashcam", readings))
    out = sort_batch(batch, registry.get, NOW, CFG, state)
    assert len(out.accepted) == 40
    assert state.devices == 8


def test_a_device_track_holds_only_the_listed_keys() -> None:
    """Arbitrary value keys (up to 64 per reading) never grow a device's state."""
    ident, rec = _station()
    state = PipelineState()
    vals: dict[str, float | int] = {f"k{i}": float(i) for i in range(60)}
    vals.update(temperature_c=10.0, humidity_pct=50.0)
    readings = [Reading(NOW - 1000 + i, *BERLIN, dict(vals)) for i in range(50)]
    sort_batch([_msg(ident, 1, "weather", readings)], {rec.device_id: rec}.get, NOW, CFG, state)
    assert set(state.device(ident.device_id).track.runs) == {"temperature_c", "humidity_pct"}


@pytest.mark.parametrize("seq", [0, 2**40, 2**63 - 1])
def test_seq_extremes_cost_no_memory(seq: int) -> None:
    ident, rec = _station()
    state = PipelineState()
    lookup = {rec.device_id: rec}.get
    sort_batch(
        [_msg(ident, 0, "weather", _weather()), _msg(ident, seq, "weather", _weather())],
        lookup,
        NOW,
        CFG,
        state,
    )
    bucket = state.device(ident.device_id).bucket
    window = RateLimit().window
    assert bucket.admitted.bit_length() <= window and bucket.limited.bit_length() <= window


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(payload=st.binary(max_size=400), topic=st.text(max_size=80))
def test_arbitrary_bytes_never_raise(payload: bytes, topic: str) -> None:
    out = judge(Incoming(topic, payload, NOW), lambda _: None, NOW, CFG)
    assert isinstance(out, RejectedMessage)


# --- shared state: prejudge in the worker, finish in the batch's transaction (docs/DESIGN.md §2) ------


def _mixed_batch() -> tuple[list[Incoming], dict[bytes, DeviceRecord]]:
    """A flood, a teleport, a jump and a flatline, with a malformed message and a forgery among them."""
    flood, flood_rec = _station()
    cam, cam_rec = _dashcam()
    st, st_rec = _station()
    registry = {r.device_id: r for r in (flood_rec, cam_rec, st_rec)}
    hour = 3_600_000
    batch = [_msg(flood, i + 1, "weather", _weather(ts=NOW - 10_000 + i)) for i in range(30)]
    batch += [
        _msg(cam, 1, "dashcam", [Reading(NOW - 9_000, *_north(0.0), {"speed_mps": 10.0})]),
        _msg(cam, 2, "dashcam", [Reading(NOW - 8_000, *_north(20_000.0), {"speed_mps": 10.0})]),
        Incoming(up_topic(cam.device_id), b"\xa1not cose", NOW),
        _msg(new_identity(), 7, "weather", _weather()),  # unregistered
    ]
    times = [NOW - 5 * hour, NOW - 4 * hour, NOW - 3 * hour, NOW - 2 * hour, NOW - 61_000]
    batch += [
        _msg(st, seq, "weather", [Reading(ts, *BERLIN, {"temperature_c": 20.0})])
        for seq, ts in enumerate(times, 1)
    ]
    batch.append(_msg(st, 6, "weather", [Reading(NOW - 1000, *BERLIN, {"temperature_c": 35.0})]))
    return batch, registry


def test_prejudge_then_finish_against_shared_states_is_judge() -> None:
    """What the worker does alone (prejudge) and what the batch's transaction does against the
    devices' state rows (finish, from states decoded from their stored bytes) give exactly what one
    worker's `sort_batch` gives, batch after batch."""
    batch, registry = _mixed_batch()
    one = PipelineState()
    rows: dict[bytes, bytes] = {}  # what device_state would hold
    flags = []
    for part in (batch[:13], batch[13:30], batch[30:], batch):  # the last: everything redelivered
        want = sort_batch(part, registry.get, NOW, CFG, one)
        rejected, pending = prejudge_batch(part, registry.get, NOW, CFG)
        states = {d: device_state.decode(rows.get(d)) for d in pending.devices}
        got = pending.finish(states)
        rows.update({d: device_state.encode(s) for d, s in states.items()})
        assert got.accepted == want.accepted
        assert sorted(r.message_digest for r in rejected + got.rejected) == sorted(
            r.message_digest for r in want.rejected
        )
        assert all(r.reason not in {Reason.RATE_LIMITED} for r in rejected)  # only finish charges
        flags += [f for p in want.accepted for f in p.flags]
    assert any(f & rules.FLAG_IMPLAUSIBLE_MOTION for f in flags)
    assert any(f & rules.FLAG_FLATLINE for f in flags) and any(f & rules.FLAG_VALUE_JUMP for f in flags)


def test_device_state_encoding_round_trips() -> None:
    batch, registry = _mixed_batch()
    state = PipelineState()
    sort_batch(batch, registry.get, NOW, CFG, state)
    for device_id in registry:
        s = state.device(device_id)
        assert device_state.decode(device_state.encode(s)) == s
    assert device_state.decode(b"") == device_state.DeviceState()
    assert device_state.decode(None) == device_state.DeviceState()


def test_a_state_row_from_before_the_ordered_bucket_still_decodes() -> None:
    """Rows written by migration 023's first code have 8 fields: the bucket goes on from its tokens and
    clock (the packets before stay decided by seq)."""
    old = b'[0.5,1000,7,"7f","0",null,{},null]'
    s = device_state.decode(old)
    assert (s.bucket.tokens, s.bucket.clock_ms, s.bucket.recent, s.bucket.base) == (0.5, 1000, [], None)
    assert s.bucket.admit(7, 1000, RateLimit())  # decided before: repeated
    assert not s.bucket.admit(8, 1000, RateLimit())  # half a token left
    assert s.bucket.admit(9, 3000, RateLimit()) and s.bucket.base == (0.5, 1000)
    assert device_state.decode(device_state.encode(s)) == s
