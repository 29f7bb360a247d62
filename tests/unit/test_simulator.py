"""The simulated fleet: deterministic, valid on the wire, and moving (or not) the way its class does."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from devices.protocol.codec import decode
from devices.protocol.hwclass import DEFAULT_CLASSES, cell_for
from devices.protocol.model import Rejection, SignedMessage
from devices.protocol.topics import device_from_topic
from ingest.core.geo import distance_to_cell_m, haversine_m
from ingest.core.verify import check_signature
from simulator import cheaters, make_fleet, next_message
from simulator.fleet import SimDevice

OWNERS = ["0x" + "a1" * 20, "0x" + "b2" * 20, "0x" + "c3" * 20]
T0 = 1_700_000_000_000


def signed(message: bytes) -> SignedMessage:
    decoded = decode(message)
    assert not isinstance(decoded, Rejection), decoded
    return decoded


def by_kind(fleet: list[SimDevice], kind: str) -> list[SimDevice]:
    devices = [d for d in fleet if d.kind == kind]
    assert devices, f"fleet has no {kind}"
    return devices


def test_same_seed_same_fleet_and_messages() -> None:
    a, b = make_fleet(12, OWNERS, seed=7), make_fleet(12, OWNERS, seed=7)
    assert [d.device_id for d in a] == [d.device_id for d in b]
    assert [d.pubkey for d in a] == [d.pubkey for d in b]
    assert [next_message(d, T0) for d in a] == [next_message(d, T0) for d in b]
    other = make_fleet(12, OWNERS, seed=8)
    assert {d.device_id for d in a}.isdisjoint(d.device_id for d in other)


def test_fleet_composition_and_owners() -> None:
    fleet = make_fleet(20, OWNERS, seed=1, dashcam_share=0.3)
    kinds = Counter(d.kind for d in fleet)
    assert kinds == {"dashcam": 6, "weather": 7, "air": 7}
    assert [d.owner for d in fleet] == [OWNERS[i % 3] for i in range(20)]
    for d in fleet:
        assert DEFAULT_CLASSES[d.hw_class].name == d.kind
        assert len(d.device_id) == 32 and len(set(d.device_id)) > 1


def test_messages_decode_and_verify() -> None:
    for dev in make_fleet(9, OWNERS, seed=3):
        for readings in (1, 5, 256):
            msg = signed(next_message(dev, T0 + 10_000_000 * dev.seq, readings_per_packet=readings))
            assert len(msg.packet.readings) == readings
            assert msg.kid == msg.packet.dev == dev.device_id == device_from_topic(dev.topic)
            assert msg.packet.kind == dev.kind
            assert check_signature(msg, dev.pubkey) is None


def test_values_are_realistic_per_kind() -> None:
    fleet = make_fleet(30, OWNERS, seed=4)
    for dev in fleet:
        for r in signed(next_message(dev, T0, readings_per_packet=20)).packet.readings:
            v = r.vals
            if dev.kind == "weather":
                assert 10 <= v["temperature_c"] <= 25 and 40 <= v["humidity_pct"] <= 90
                assert 1000 < v["pressure_hpa"] < 1025
            elif dev.kind == "air":
                assert 0 < v["pm25_ugm3"] <= v["pm10_ugm3"] and 300 < v["co2_ppm"] < 700
            else:
                assert 0 <= v["speed_mps"] < 20 and 0 <= v["heading_deg"] <= 360
                assert r.media is not None and r.media.uri.startswith("ipfs://")
    cam = by_kind(fleet, "dashcam")[0]
    frames = [r.media for r in signed(next_message(cam, T0 + 60_000, 10)).packet.readings]
    assert len({m.sha256 for m in frames if m is not None}) == 10


def test_seq_increments_and_time_is_ordered() -> None:
    dev = make_fleet(1, OWNERS, seed=5)[0]
    seqs, stamps = [], []
    for i in range(5):
        # Same `now` every time: a sender faster than the interval must still move forward in time.
        p = signed(next_message(dev, T0 + (i // 3), readings_per_packet=4, interval_ms=1000)).packet
        seqs.append(p.seq)
        stamps += [r.ts_ms for r in p.readings]
    assert seqs == [1, 2, 3, 4, 5]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    p = signed(next_message(dev, T0 + 3_600_000, readings_per_packet=3, interval_ms=500)).packet
    assert [r.ts_ms for r in p.readings] == [T0 + 3_599_000, T0 + 3_599_500, T0 + 3_600_000]


def test_dashcams_move_across_cells_at_road_speed() -> None:
    cam = by_kind(make_fleet(10, OWNERS, seed=6), "dashcam")[0]
    readings = [
        r for i in range(30) for r in signed(next_message(cam, T0 + i * 60_000, 6, 10_000)).packet.readings
    ]
    cells = {cell_for(r.lat, r.lon, DEFAULT_CLASSES[cam.hw_class].h3_res) for r in readings}
    assert len(cells) > 10
    for a, b in itertools.pairwise(readings):
        speed = haversine_m(a.lat, a.lon, b.lat, b.lon) / ((b.ts_ms - a.ts_ms) / 1000)
        assert speed < 15  # straight line ≤ path: never faster than the car itself (8–12 m/s)
    assert cam.asserted_cell == 0


def test_stations_stay_in_their_asserted_cell() -> None:
    fleet = make_fleet(40, OWNERS, seed=7)
    stations = [d for d in fleet if d.kind != "dashcam"]
    for dev in stations:
        res = DEFAULT_CLASSES[dev.hw_class].h3_res
        positions = {
            (r.lat, r.lon)
            for i in range(5)
            for r in signed(next_message(dev, T0 + i * 600_000, 3)).packet.readings
        }
        assert len(positions) == 1
        ((lat, lon),) = positions
        assert cell_for(lat, lon, res) == dev.asserted_cell
        assert distance_to_cell_m(lat, lon, dev.asserted_cell) < 100  # full location trust
    # Spread out: each station in a cell of its own.
    assert len({d.asserted_cell for d in stations}) == len(stations)


def test_cheaters() -> None:
    fleet = make_fleet(10, OWNERS, seed=8)
    cam, station = by_kind(fleet, "dashcam")[0], by_kind(fleet, "weather")[0]
    honest = next_message(station, T0)

    topic, raw = cheaters.forged(station, T0 + 1000)
    msg = signed(raw)
    assert topic == station.topic and msg.kid == station.device_id
    assert check_signature(msg, station.pubkey) is not None and station.seq == 1

    topic, raw = cheaters.unregistered_device(T0)
    msg = signed(raw)
    assert device_from_topic(topic) == msg.kid and msg.kid not in {d.device_id for d in fleet}

    assert cheaters.replay_of(honest) == (station.topic, honest)
    with pytest.raises(ValueError):
        cheaters.replay_of(b"junk")

    _, raw = cheaters.seq_reuse(station, T0 + 5000, seq=1)
    msg = signed(raw)
    assert msg.packet.seq == 1 and raw != honest and check_signature(msg, station.pubkey) is None

    next_message(cam, T0)
    _, raw = cheaters.teleporting(cam, T0 + 1000)
    a, b, c = signed(raw).packet.readings
    assert b.ts_ms - a.ts_ms <= 1000 and haversine_m(a.lat, a.lon, b.lat, b.lon) > 49_000
    assert c.ts_ms - a.ts_ms <= 1000 and haversine_m(a.lat, a.lon, c.lat, c.lon) < 50  # back on its route
    assert check_signature(signed(raw), cam.pubkey) is None

    _, raw = cheaters.spoofing(station, T0 + 10_000)
    (r,) = signed(raw).packet.readings
    assert 4_500 < distance_to_cell_m(r.lat, r.lon, station.asserted_cell) < 5_500


def test_media_copier_sends_the_victims_frames_under_its_own_key() -> None:
    fleet = make_fleet(10, OWNERS, seed=8)
    victim, copier = by_kind(fleet, "dashcam")[:2]
    station = by_kind(fleet, "weather")[0]
    original = next_message(victim, T0, 3)
    topic, raw = cheaters.media_copier(copier, original, T0 + 5000)
    copy = signed(raw)
    assert topic == copier.topic and check_signature(copy, copier.pubkey) is None
    assert [r.media for r in copy.packet.readings] == [r.media for r in signed(original).packet.readings]
    assert [r.ts_ms for r in copy.packet.readings] == sorted(r.ts_ms for r in copy.packet.readings)
    with pytest.raises(ValueError):
        cheaters.media_copier(station, original, T0)  # not a dashcam
    with pytest.raises(ValueError):
        cheaters.media_copier(copier, next_message(station, T0), T0)  # nothing to copy
