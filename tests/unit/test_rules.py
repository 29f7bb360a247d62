"""The pure rules, table by table: rate limit, value bounds, flatline, jumps, motion, location, state."""

from __future__ import annotations

import dataclasses
import math
import random

import h3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.protocol.hwclass import AIR, DASHCAM, DEFAULT_CLASSES, WEATHER, cell_for
from devices.protocol.model import Media, Packet, Reading, Reason
from ingest.core import plausibility, rules
from ingest.core.geo import BPS, EARTH_RADIUS_M, distance_outside_cell_m
from ingest.core.plausibility import QualityLimits, Track, assess, location_trust_bps, too_fast
from ingest.core.ratelimit import RateLimit, TokenBucket, packet_clock_ms
from ingest.core.state import PipelineState

T0 = 1_795_000_000_000
MINUTE = 60_000
HOUR = 3_600_000
LIMITS = QualityLimits()
BERLIN = (52.52, 13.405)
ALL_FLAGS = sum(rules.FLAG_NAMES)


def north(lat: float, lon: float, metres: float) -> tuple[float, float]:
    """The point `metres` due north: on a meridian the great-circle distance is R × Δφ exactly."""
    return lat + math.degrees(metres / EARTH_RADIUS_M), lon


def station_cell(res: int = 7) -> tuple[int, float, float]:
    cell = cell_for(*BERLIN, res)
    lat, lon = h3.cell_to_latlng(h3.int_to_str(cell))
    return cell, lat, lon


def w(ts: int, lat: float = BERLIN[0], lon: float = BERLIN[1], **vals: float) -> Reading:
    return Reading(ts, lat, lon, dict(vals))


# --- rate limit -------------------------------------------------------------------------------------

RL = RateLimit(per_second=1.0, burst=20)


def test_burst_then_limited_at_one_instant() -> None:
    b = TokenBucket()
    assert [b.admit(seq, T0, RL) for seq in range(1, 22)] == [True] * 20 + [False]


@pytest.mark.parametrize(
    ("after_ms", "admitted"),
    [(999, False), (1000, True), (1001, True)],  # 1/s: exactly one token after exactly one second
)
def test_refill_boundary(after_ms: int, admitted: bool) -> None:
    b = TokenBucket()
    for seq in range(1, 21):
        assert b.admit(seq, T0, RL)
    assert b.admit(21, T0 + after_ms, RL) is admitted


def test_refill_is_capped_at_the_burst() -> None:
    b = TokenBucket()
    assert b.admit(1, T0, RL)
    out = [b.admit(seq, T0 + 3600_000, RL) for seq in range(2, 30)]  # an hour idle: 20 again, not 3600
    assert out.count(True) == 20


def test_a_device_at_ten_times_the_rate_is_limited() -> None:
    b = TokenBucket()
    out = [b.admit(seq, T0 + seq * 100, RL) for seq in range(1, 1001)]  # 10 packets/s for 100 s
    assert out[:20] == [True] * 20
    assert 115 <= out.count(True) <= 125  # burst + 1/s × 100 s


def test_backlog_on_the_device_clock_is_not_a_flood() -> None:
    """An outage's backlog arrives at once, but its readings are 1 s apart in device time: all pass."""
    b = TokenBucket()
    clocks = [
        packet_clock_ms(_packet(T0 + i * 1000), T0 + 601_000, 30_000, 2 * 86_400_000) for i in range(600)
    ]
    assert all(b.admit(seq, at, RL) for seq, at in enumerate(clocks, 1))


def test_redelivery_gets_the_same_decision_and_costs_nothing() -> None:
    b = TokenBucket()
    for seq in range(1, 21):
        assert b.admit(seq, T0, RL)
    assert not b.admit(21, T0, RL)
    # Much later (bucket refilled): the limited seq stays limited, admitted seqs stay admitted, for free.
    assert not b.admit(21, T0 + 60_000, RL)
    assert all(b.admit(seq, T0 + 60_000, RL) for seq in range(1, 21))
    assert b.tokens == 0.0 and b.clock_ms == T0  # repeats touched nothing
    assert b.admit(22, T0 + 60_000, RL)


def test_seqs_beyond_the_window_are_charged_and_huge_jumps_are_cheap() -> None:
    b = TokenBucket()
    limit = RateLimit(per_second=0.0, burst=3, window=4)
    assert b.admit(1, T0, limit) and b.admit(2**62, T0, limit)  # a 2^62 jump allocates nothing
    assert b.admit(1, T0, limit)  # out of the window: treated as new (charged)
    assert not b.admit(5, T0, limit)
    assert b.admitted.bit_length() <= 4 and b.limited.bit_length() <= 4


def test_an_older_packet_is_judged_as_if_it_had_come_in_order() -> None:
    """N workers may judge a device's packets out of device-time order: a packet 50 s older than the
    20 the bucket just took is what an in-order bucket admits (one packet, then 50 s of refill)."""
    b = TokenBucket()
    assert all(b.admit(seq, T0, RL) for seq in range(1, 21))
    assert b.admit(21, T0 - 50_000, RL)
    assert b.tokens == 0.0 and b.clock_ms == T0
    assert not b.admit(22, T0, RL)  # as in order: 20 at T0 after the refill, the 21st limited
    assert b.admit(23, T0 + 1000, RL)


@given(st.permutations(range(32)))
def test_an_honest_stream_passes_in_any_order(order: list[int]) -> None:
    b = TokenBucket()
    assert all(b.admit(i + 1, T0 + i * 1000, RL) for i in order)


@pytest.mark.parametrize(
    "order",
    [
        [*range(30, 60), *range(30)],  # the second half's batch judged first
        [*range(1, 60, 2), *range(0, 60, 2)],  # round robin over two workers, the odd ones first
    ],
)
def test_a_backlog_split_over_two_workers_passes(order: list[int]) -> None:
    b = TokenBucket()
    assert all(b.admit(i + 1, T0 + i * 1000, RL) for i in order)


def test_walking_back_in_time_buys_nothing() -> None:
    """A device claiming ever older times after spending its burst: each older packet would overdraw
    the packets already admitted after it, so none passes; new time refills as usual."""
    b = TokenBucket()
    assert all(b.admit(seq, T0, RL) for seq in range(1, 21))
    assert not any(b.admit(21 + k, T0 - 1 - k, RL) for k in range(300))
    assert b.admit(1000, T0 + 1000, RL) and not b.admit(1001, T0 + 1000, RL)


@given(st.permutations(range(60)))
@settings(max_examples=50)
def test_a_flood_gets_its_burst_in_any_order(order: list[int]) -> None:
    b = TokenBucket()
    assert sum(b.admit(i + 1, T0 + i, RL) for i in order) == 20  # 60 packets in 60 ms


def test_a_flood_in_any_order_gets_no_more_than_in_order() -> None:
    times = [T0 + i * 100 for i in range(1000)]  # 10 packets/s for 100 s
    in_order = TokenBucket()
    admitted = sum(in_order.admit(i + 1, t, RL) for i, t in enumerate(times))
    shuffled, order = TokenBucket(), random.Random(3).sample(range(1000), 1000)
    assert sum(shuffled.admit(i + 1, times[i], RL) for i in order) <= admitted


def _packet(*ts: int) -> Packet:
    return Packet(1, b"\x01" * 32, 1, "weather", tuple(w(t) for t in ts))


@pytest.mark.parametrize(
    ("newest_ts", "received", "expected"),
    [
        (T0, T0, T0),
        (T0 + 30_000, T0, T0 + 30_000),  # at the skew limit
        (T0 + 10**9, T0, T0 + 30_000),  # a device lying ahead gains at most the skew
        (T0 - 86_400_000, T0, T0 - 86_400_000),
        (0, T0, T0 - 2 * 86_400_000),  # and behind, at most the lateness window
    ],
)
def test_packet_clock_is_clamped(newest_ts: int, received: int, expected: int) -> None:
    assert packet_clock_ms(_packet(0, newest_ts), received, 30_000, 2 * 86_400_000) == expected


# --- value bounds -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "key", "value", "flagged"),
    [
        ("weather", "temperature_c", -40.0, False),
        ("weather", "temperature_c", -40.01, True),
        ("weather", "temperature_c", 60.0, False),
        ("weather", "temperature_c", 60.01, True),
        ("weather", "humidity_pct", 0.0, False),  # physically possible: not WeatherXM's 10..99 band
        ("weather", "humidity_pct", 5.0, False),
        ("weather", "humidity_pct", 100.0, False),
        ("weather", "humidity_pct", 100.1, True),
        ("weather", "humidity_pct", -0.1, True),
        ("weather", "pressure_hpa", 300.0, False),
        ("weather", "pressure_hpa", 299.9, True),
        ("weather", "pressure_hpa", 1100.0, False),
        ("weather", "pressure_hpa", 1100.1, True),
        ("weather", "wind_mps", -1, True),
        ("weather", "wind_mps", 50, False),  # WeatherXM OBC: 0..50 m/s
        ("weather", "wind_mps", 50.1, True),
        ("weather", "wind_dir_deg", 360, False),
        ("weather", "wind_dir_deg", 360.1, True),
        ("weather", "illuminance_lux", 400_000, False),  # WeatherXM OBC: 0..400 000 lux
        ("weather", "illuminance_lux", 400_001, True),
        ("weather", "uv_index", 21, True),
        ("weather", "something_else", 1e12, False),  # keys without bounds are not range-checked
        ("air", "pm25_ugm3", 1000, False),
        ("air", "pm25_ugm3", 1001, True),
        ("air", "co2_ppm", 249, True),
        ("air", "co2_ppm", 420, False),
        ("dashcam", "speed_mps", 100.0, False),
        ("dashcam", "speed_mps", 100.5, True),
        ("dashcam", "heading_deg", 360.5, True),
        ("unknown-kind", "temperature_c", 1000, False),
    ],
)
def test_value_bounds(kind: str, key: str, value: float, flagged: bool) -> None:
    got = rules.value_flags(kind, w(T0, **{key: value}))
    assert got == (rules.FLAG_BAD_VALUES if flagged else 0)


# --- flatline and jumps -----------------------------------------------------------------------------


def _weather_flags(readings: list[Reading], track: Track | None = None) -> tuple[int, ...]:
    cell, lat, lon = station_cell()
    placed = [Reading(r.ts_ms, lat, lon, r.vals) for r in readings]
    return assess(placed, WEATHER, cell, track if track is not None else Track(), LIMITS)


@pytest.mark.parametrize(
    ("key", "value", "limit_ms"),
    [  # WeatherXM SQC Table 6
        ("temperature_c", 12.5, 240 * MINUTE),
        ("humidity_pct", 70.0, 360 * MINUTE),
        ("pressure_hpa", 1013.2, 120 * MINUTE),
        ("wind_mps", 2.5, 360 * MINUTE),
        ("illuminance_lux", 1200.0, 120 * MINUTE),
    ],
)
def test_flatline_boundary(key: str, value: float, limit_ms: int) -> None:
    ts = [T0, T0 + limit_ms // 2, T0 + limit_ms, T0 + limit_ms + 1, T0 + limit_ms + 60_000]
    flags = _weather_flags([w(t, **{key: value}) for t in ts])
    assert flags == (0, 0, 0, rules.FLAG_FLATLINE, rules.FLAG_FLATLINE)


@pytest.mark.parametrize("key", ["wind_mps", "illuminance_lux"])
def test_zero_may_stay_constant_where_calm_and_dark_are_real(key: str) -> None:
    flags = _weather_flags([w(T0 + i * HOUR, **{key: 0.0}) for i in range(24)])
    assert set(flags) == {0}


def test_flatline_run_restarts_on_any_change_and_spans_packets() -> None:
    track = Track()
    first = _weather_flags([w(T0, temperature_c=10.0), w(T0 + HOUR, temperature_c=10.0)], track)
    changed = _weather_flags([w(T0 + 2 * HOUR, temperature_c=10.1)], track)
    stuck = _weather_flags(
        [w(T0 + 6 * HOUR, temperature_c=10.1), w(T0 + 6 * HOUR + 1, temperature_c=10.1)], track
    )
    assert first == (0, 0) and changed == (0,)
    assert stuck == (0, rules.FLAG_FLATLINE)  # same value for 4 h + 1 ms, across two packets


def test_rain_wind_direction_and_particulates_may_stay_constant() -> None:
    flags = _weather_flags([w(T0 + i * HOUR, wind_dir_deg=270.0, rain_mm=0.0) for i in range(24)])
    assert set(flags) == {0}
    cell = cell_for(*BERLIN, AIR.h3_res)
    lat, lon = h3.cell_to_latlng(h3.int_to_str(cell))
    air = [Reading(T0 + i * HOUR, lat, lon, {"pm25_ugm3": 2, "co2_ppm": 400 + i}) for i in range(24)]
    assert set(assess(air, AIR, cell, Track(), LIMITS)) == {0}


@pytest.mark.parametrize(
    ("key", "a", "b", "dt_ms", "flagged"),
    [  # WeatherXM SQC Table 9: per minute of the gap (at least one minute's worth), capped
        ("temperature_c", 12.5, 15.5, 16_000, False),  # 3 °C within a minute passes
        ("temperature_c", 12.5, 15.51, 16_000, True),
        ("temperature_c", 15.5, 12.49, 60_000, True),  # downwards too
        ("temperature_c", 12.5, 18.5, 120_000, False),  # 2 min: 6 °C
        ("temperature_c", 12.5, 18.51, 120_000, True),
        ("temperature_c", 10.0, 25.0, 30 * MINUTE, False),  # capped at 15 °C …
        ("temperature_c", 10.0, 25.01, 30 * MINUTE, True),
        ("temperature_c", 10.0, 25.01, HOUR, True),  # … up to the step window (inclusive)
        ("temperature_c", 10.0, 40.0, HOUR + 1, False),  # after a longer silence: no comparison
        ("humidity_pct", 50.0, 60.0, 60_000, False),
        ("humidity_pct", 50.0, 60.5, 60_000, True),
        ("humidity_pct", 10.0, 90.0, HOUR, False),  # cap 80 %
        ("humidity_pct", 10.0, 90.5, HOUR, True),
        ("pressure_hpa", 1010.0, 1010.8, 60_000, False),
        ("pressure_hpa", 1010.0, 1010.9, 60_000, True),
        ("pressure_hpa", 1010.0, 1025.0, HOUR, False),  # cap 15 hPa
        ("pressure_hpa", 1010.0, 1025.1, HOUR, True),
        ("wind_mps", 0.0, 10.0, 1000, False),
        ("wind_mps", 0.0, 10.5, 1000, True),
        ("wind_mps", 0.0, 15.0, 10 * MINUTE, False),  # cap 15 m/s
        ("wind_mps", 0.0, 15.5, 10 * MINUTE, True),
        ("illuminance_lux", 0.0, 97_600.0, 60_000, False),
        ("illuminance_lux", 0.0, 97_700.0, 60_000, True),
        ("wind_dir_deg", 0.0, 180.0, 1000, False),  # no limit for the vane
    ],
)
def test_jump_boundary(key: str, a: float, b: float, dt_ms: int, flagged: bool) -> None:
    flags = _weather_flags([w(T0, **{key: a}), w(T0 + dt_ms, **{key: b})])
    assert flags == (0, rules.FLAG_VALUE_JUMP if flagged else 0)


def test_an_impossible_value_is_not_the_reference_for_the_next_step() -> None:
    flags = _weather_flags(
        [w(T0, temperature_c=12.0), w(T0 + 1000, temperature_c=95.0), w(T0 + 2000, temperature_c=12.5)]
    )
    assert flags == (0, rules.FLAG_BAD_VALUES, 0)


def test_a_real_step_change_is_flagged_once() -> None:
    ts = [T0 + i * 60_000 for i in range(4)]
    flags = _weather_flags([w(t, temperature_c=v) for t, v in zip(ts, [12.0, 16.0, 16.1, 16.2], strict=True)])
    assert flags == (0, rules.FLAG_VALUE_JUMP, 0, 0)


def test_a_late_packet_is_jump_checked_but_does_not_move_the_run() -> None:
    track = Track()
    _weather_flags([w(T0 + 10_000, temperature_c=12.0)], track)
    assert _weather_flags([w(T0, temperature_c=16.0)], track) == (rules.FLAG_VALUE_JUMP,)
    assert track.runs["temperature_c"].value == 12.0


# --- motion -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("distance_m", "dt_ms", "slack_m", "fast"),
    [
        (200.0, 3600, 0.0, False),  # 200 m in 3.6 s = 200 km/h: exactly the maximum passes
        (200.001, 3600, 0.0, True),
        (225.0, 3600, 25.0, False),  # the jitter slack comes off first
        (225.01, 3600, 25.0, True),
        (200.001, -3600, 0.0, True),  # symmetric in time
        (25.0, 0, 25.0, False),  # jitter at the same instant
        (25.5, 0, 25.0, True),  # any real displacement in no time
        (0.0, 0, 0.0, False),
        (float("nan"), 1000, 25.0, False),  # no usable position: not this rule's call
    ],
)
def test_too_fast(distance_m: float, dt_ms: int, slack_m: float, fast: bool) -> None:
    assert too_fast(distance_m, dt_ms, DASHCAM.max_speed_kmh, slack_m) is fast


def _drive(track: Track, *points: tuple[int, float]) -> tuple[int, ...]:
    """Dashcam readings at (ts, metres north of BERLIN)."""
    readings = [Reading(ts, *north(*BERLIN, m), {"speed_mps": 10.0}) for ts, m in points]
    return assess(readings, DASHCAM, 0, track, LIMITS)


def test_teleport_within_a_packet() -> None:
    # 200 km/h = 55.56 m/s; with 25 m of slack, 1 s allows 80.56 m.
    ok = 25.0 + 200 / 3.6
    assert _drive(Track(), (T0, 0.0), (T0 + 1000, ok * 0.999)) == (0, 0)
    assert _drive(Track(), (T0, 0.0), (T0 + 1000, ok * 1.001)) == (0, rules.FLAG_IMPLAUSIBLE_MOTION)
    assert _drive(Track(), (T0, 0.0), (T0 + 500, 50_000.0), (T0 + 1000, 50_010.0)) == (
        0,
        rules.FLAG_IMPLAUSIBLE_MOTION,  # only the jump itself: the device is judged from where it is
        0,
    )


def test_teleport_across_packets_and_out_of_order() -> None:
    track = Track()
    assert _drive(track, (T0, 0.0), (T0 + 1000, 10.0)) == (0, 0)
    assert _drive(track, (T0 + 2000, 50_000.0)) == (rules.FLAG_IMPLAUSIBLE_MOTION,)
    assert _drive(track, (T0 + 3000, 50_010.0)) == (0,)
    # A late packet from far away is compared with the newest fix (backwards in time) …
    assert _drive(track, (T0 + 1500, 0.0)) == (rules.FLAG_IMPLAUSIBLE_MOTION,)
    # … and does not replace it.
    assert track.fix is not None and track.fix.ts_ms == T0 + 3000


def test_a_long_gap_allows_a_long_drive() -> None:
    track = Track()
    _drive(track, (T0, 0.0))
    assert _drive(track, (T0 + HOUR, 150_000.0)) == (0,)  # 150 km in an hour


def test_stationary_classes_are_never_speed_checked() -> None:
    cell, lat, lon = station_cell()
    readings = [Reading(T0, lat, lon, {}), Reading(T0, lat + 1e-3, lon, {})]  # 111 m in no time
    assert assess(readings, WEATHER, cell, Track(), LIMITS) == (0, 0)


# --- location trust ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metres", "trust", "flagged"),
    [(0.0, BPS, False), (298.0, BPS, False), (302.0, 2500, True), (398.0, 2500, True), (402.0, 0, True)],
)
def test_location_trust_of_a_station(metres: float, trust: int, flagged: bool) -> None:
    """A res-15 cell (0.5 m across) stands for an asserted point: HIP-98's distances, to within 1 m."""
    cell, lat, lon = station_cell(res=15)
    here = north(lat, lon, metres)
    assert location_trust_bps(*here, cell) == trust
    assert location_trust_bps(*here, cell, 15) == trust
    point_class = dataclasses.replace(AIR, h3_res=15)  # a class whose stations assert points
    flags = assess([Reading(T0, *here, {})], point_class, cell, Track(), LIMITS)
    assert flags == (rules.FLAG_OFF_LOCATION if flagged else 0,)


@pytest.mark.parametrize("res", [7, 8, 9])
def test_anywhere_inside_the_asserted_cell_is_trusted(res: int) -> None:
    """A station asserts the cell it stands in; its corners are as much "there" as its centre."""
    cell = cell_for(*BERLIN, res)
    corners = h3.cell_to_boundary(h3.int_to_str(cell))
    c_lat, c_lon = h3.cell_to_latlng(h3.int_to_str(cell))
    for v_lat, v_lon in corners:  # 1 % of the way in from each corner
        here = (v_lat + (c_lat - v_lat) * 0.01, v_lon + (c_lon - v_lon) * 0.01)
        assert distance_outside_cell_m(*here, cell) == 0.0
        assert location_trust_bps(*here, cell) == BPS


@pytest.mark.parametrize(("outside_m", "trust"), [(298.0, BPS), (302.0, 2500), (398.0, 2500), (402.0, 0)])
def test_outside_a_coarse_cell_distance_counts_from_its_edge(outside_m: float, trust: int) -> None:
    cell = cell_for(*BERLIN, 7)
    c_lat, c_lon = h3.cell_to_latlng(h3.int_to_str(cell))
    (a_lat, a_lon), (b_lat, b_lon) = h3.cell_to_boundary(h3.int_to_str(cell))[:2]
    m_lat, m_lon = (a_lat + b_lat) / 2, (a_lon + b_lon) / 2  # the middle of one edge
    # Step `outside_m` further out, straight away from the centre (locally flat: 1 km scale).
    k_lat = math.radians(1.0) * EARTH_RADIUS_M
    k_lon = k_lat * math.cos(math.radians(m_lat))
    dx, dy = (m_lon - c_lon) * k_lon, (m_lat - c_lat) * k_lat
    norm = math.hypot(dx, dy)
    here = (m_lat + dy / norm * outside_m / k_lat, m_lon + dx / norm * outside_m / k_lon)
    assert abs(distance_outside_cell_m(*here, cell) - outside_m) < 1.0
    assert location_trust_bps(*here, cell) == trust


@pytest.mark.parametrize("asserted", [0, 12345, (1 << 64) - 1, 1 << 64, -5])
def test_no_or_invalid_asserted_cell_means_no_trust(asserted: int) -> None:
    assert location_trust_bps(*BERLIN, asserted) == 0
    assert assess([w(T0)], WEATHER, asserted, Track(), LIMITS) == (rules.FLAG_OFF_LOCATION,)


@pytest.mark.parametrize("res", [0, 3, 5, 6, 8, 9, 15])
def test_an_asserted_cell_of_another_resolution_than_the_class_is_no_cell(res: int) -> None:
    """The issue's case: a weather station asserting a res-3 cell (~69 km) sends readings 50 km from
    its real place. Anywhere inside that cell would be "where it said": so a cell that is not at the
    class's resolution is no valid asserted cell (trust 0, flagged), even right at its centre."""
    cell = cell_for(*BERLIN, res)
    c_lat, c_lon = h3.cell_to_latlng(h3.int_to_str(cell))
    for here in ((c_lat, c_lon), BERLIN, north(*BERLIN, 50_000.0 if res <= 3 else 0.0)):
        assert location_trust_bps(*here, cell, WEATHER.h3_res) == 0
        assert assess([w(T0, *here)], WEATHER, cell, Track(), LIMITS) == (rules.FLAG_OFF_LOCATION,)
    # At the class's resolution the same place is trusted.
    own = cell_for(*BERLIN, WEATHER.h3_res)
    assert assess([w(T0)], WEATHER, own, Track(), LIMITS) == (0,)


def test_a_class_resolution_change_is_judged_again_with_the_same_position_and_cell() -> None:
    """The chain's class table can change a class's resolution: the remembered verdict must not
    outlive it (the station's res-7 cell is no longer its class's cell at res 8)."""
    cell = cell_for(*BERLIN, 7)
    track = Track()
    assert assess([w(T0)], WEATHER, cell, track, LIMITS) == (0,)
    finer = dataclasses.replace(WEATHER, h3_res=8)
    assert assess([w(T0 + MINUTE)], finer, cell, track, LIMITS) == (rules.FLAG_OFF_LOCATION,)
    assert assess([w(T0 + 2 * MINUTE)], finer, cell_for(*BERLIN, 8), track, LIMITS) == (0,)


def test_location_verdict_is_remembered_only_for_the_same_position_and_cell() -> None:
    cell = cell_for(*BERLIN, WEATHER.h3_res)
    elsewhere = cell_for(0.0, 0.0, WEATHER.h3_res)
    far = north(*BERLIN, 5_000.0)
    track = Track()
    assert assess([w(T0)], WEATHER, cell, track, LIMITS) == (0,)
    # Same position, new asserted cell (set-location on chain): judged again.
    assert assess([w(T0 + MINUTE)], WEATHER, elsewhere, track, LIMITS) == (rules.FLAG_OFF_LOCATION,)
    assert assess([w(T0 + 2 * MINUTE)], WEATHER, cell, track, LIMITS) == (0,)
    # Same cell, the station moved away and back within one packet.
    readings = [w(T0 + 3 * MINUTE, *far), w(T0 + 4 * MINUTE), w(T0 + 5 * MINUTE, *far)]
    assert assess(readings, WEATHER, cell, track, LIMITS) == (
        rules.FLAG_OFF_LOCATION,
        0,
        rules.FLAG_OFF_LOCATION,
    )


def test_quality_limits_table_follows_custom_limits() -> None:
    stuck = plausibility.Constancy(2 * MINUTE)
    limits = QualityLimits(constancy={"air": {"pm25_ugm3": stuck}}, max_step={})
    assert limits.by_kind["air"]["pm25_ugm3"] == (rules.VALUE_BOUNDS["air"]["pm25_ugm3"], stuck, None)
    assert "temperature_c" in limits.by_kind["weather"]  # bounds alone still listed
    assert limits.by_kind["weather"]["temperature_c"].constancy is None
    cell, lat, lon = station_cell(AIR.h3_res)
    readings = [Reading(T0 + i * MINUTE, lat, lon, {"pm25_ugm3": 7.0}) for i in range(4)]
    assert assess(readings, AIR, cell, Track(), limits) == (0, 0, 0, rules.FLAG_FLATLINE)
    assert assess(readings, AIR, cell, Track(), LIMITS) == (0, 0, 0, 0)  # PM has no default limit


def test_mobile_devices_are_not_judged_by_an_asserted_cell() -> None:
    far = cell_for(0.0, 0.0, 9)
    assert assess([w(T0)], DASHCAM, far, Track(), LIMITS) == (0,)


# --- flags and state --------------------------------------------------------------------------------


def test_flag_bits_are_distinct_and_named() -> None:
    bits = list(rules.FLAG_NAMES)
    assert len(set(bits)) == len(bits) and all(b & (b - 1) == 0 for b in bits)
    assert rules.flag_reasons(rules.FLAG_BAD_VALUES | rules.FLAG_MEDIA_REUSE | 1 << 30) == [
        Reason.BAD_VALUES,
        Reason.MEDIA_REUSE,
    ]
    assert {r.value for r in rules.FLAG_NAMES.values()} == {
        "bad_values",
        "implausible_motion",
        "off_location",
        "media_reuse",
        "flatline",
        "value_jump",
    }


def test_device_state_is_lru_capped() -> None:
    state = PipelineState(max_devices=2)
    a, b, c = (bytes([i]) * 32 for i in (1, 2, 3))
    sa = state.device(a)
    state.device(b)
    assert state.device(a) is sa  # a is now the most recent
    state.device(c)  # evicts b
    assert state.devices == 2 and state.device(a) is sa
    assert state.device(b) is not None and state.devices == 2


# --- never raise ------------------------------------------------------------------------------------

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**53), max_value=2**53),
)
keys = st.one_of(
    st.sampled_from([k for bounds in rules.VALUE_BOUNDS.values() for k in bounds]),
    st.text(min_size=1, max_size=64),
)
readings = st.builds(
    Reading,
    ts_ms=st.integers(min_value=0, max_value=2**53),
    lat=st.floats(allow_nan=True, allow_infinity=True),
    lon=st.floats(allow_nan=True, allow_infinity=True),
    vals=st.dictionaries(keys, numbers, max_size=8),
    acc=st.none() | st.floats(allow_nan=True, allow_infinity=True),
    alt=st.none() | st.floats(allow_nan=True, allow_infinity=True),
    media=st.none() | st.builds(Media, st.binary(min_size=32, max_size=32), st.text(max_size=20)),
)
cells = st.one_of(
    st.just(0),
    st.integers(min_value=0, max_value=2**64 - 1),
    st.builds(cell_for, st.floats(-89, 89), st.floats(-179, 179), st.integers(0, 15)),
)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    packets=st.lists(st.lists(readings, min_size=1, max_size=6), min_size=1, max_size=4),
    hw_id=st.sampled_from(sorted(DEFAULT_CLASSES)),
    asserted=cells,
    now=st.integers(min_value=0, max_value=2**53),
    received=st.integers(min_value=0, max_value=2**53),
)
def test_rules_never_raise_on_decoded_packets(
    packets: list[list[Reading]], hw_id: int, asserted: int, now: int, received: int
) -> None:
    """Whatever the decoder lets through, the rules return an outcome (state carried across packets)."""
    hw = DEFAULT_CLASSES[hw_id]
    track, bucket = Track(), TokenBucket()
    for seq, rs in enumerate(packets):
        rs.sort(key=lambda r: r.ts_ms)  # the decoder only passes time-ordered readings
        packet = Packet(1, b"\x01" * 32, seq, hw.name, tuple(rs))
        rules.check_packet(packet, now, rules.TimeLimits())
        bucket.admit(seq, packet_clock_ms(packet, received, 30_000, 2 * 86_400_000), RL)
        flags = assess(packet.readings, hw, asserted, track, LIMITS)
        assert len(flags) == len(rs) and all(0 <= f <= ALL_FLAGS for f in flags)


def test_memory_per_device_is_bounded() -> None:
    """tracemalloc counts allocations (not time): deterministic. The state.py figure is ~1.0 KB."""
    import tracemalloc

    state = PipelineState(max_devices=500)
    cell, lat, lon = station_cell()
    vals = {"temperature_c": 12.5, "humidity_pct": 60.0, "pressure_hpa": 1013.2, "wind_mps": 2.5}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1000):  # twice the cap: the first 500 are evicted
            st_ = state.device(i.to_bytes(32, "big"))
            for seq in (0, 255, RL.window - 1):  # bitmaps as wide as the window
                st_.bucket.admit(seq, T0 + seq * 1000, RL)
            assess([Reading(T0, lat, lon, dict(vals, junk=1.0))], WEATHER, cell, st_.track, LIMITS)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert state.devices == 500
    assert used < 500 * 2048


def test_readme_tables_match_the_code() -> None:
    """The README's reason and flag tables list exactly the codes the code can produce."""
    import re
    from pathlib import Path

    from ingest.pipeline import REJECTION_REASONS

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()

    def table(header: str) -> list[str]:
        block = readme[readme.index(header) :].split("\n\n", 1)[0]
        return [line for line in block.splitlines()[2:] if line.startswith("| `")]

    reasons = {re.match(r"\| `(\w+)` \|", line).group(1) for line in table("| reason | meaning |")}  # type: ignore[union-attr]
    assert reasons == {r.value for r in REJECTION_REASONS} | {Reason.REPLAY.value, Reason.EPOCH_CLOSED.value}
    flags = {
        (m.group(1), int(m.group(2)))
        for line in table("| flag (bit) | meaning |")
        if (m := re.match(r"\| `(\w+)` \((\d+)\) \|", line))
    }
    assert flags == {(reason.value, bit) for bit, reason in rules.FLAG_NAMES.items()}
    # Every code is one or the other, except `duplicate` (a counted outcome, not a rejection).
    assert {r.value for r in Reason} == reasons | {name for name, _ in flags} | {Reason.DUPLICATE.value}


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["weather", "air", "dashcam"]),
    vals=st.dictionaries(
        st.sampled_from(["temperature_c", "humidity_pct", "pressure_hpa", "co2_ppm", "speed_mps", "other"]),
        st.floats(allow_nan=True, allow_infinity=True) | st.integers(-100_000, 100_000),
        max_size=6,
    ),
)
def test_assess_flags_bad_values_exactly_as_the_bounds_rule(kind: str, vals: dict) -> None:
    """assess folds the bounds check into its one pass over the values; it must agree with rules."""
    hw = {"weather": WEATHER, "air": AIR, "dashcam": DASHCAM}[kind]
    reading = Reading(T0, BERLIN[0], BERLIN[1], vals)
    (flags,) = assess([reading], hw, cell_for(*BERLIN, hw.h3_res), Track(), LIMITS)
    assert flags & rules.FLAG_BAD_VALUES == rules.value_flags(kind, reading)
