"""`depin simulate`'s pure parts: scenarios, honest motion (stops, GPS noise), the plan's ledger, the
ledger comparison, pacing arithmetic."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest

from devices.protocol.codec import decode
from devices.protocol.model import Rejection, SignedMessage
from ingest.core import rules
from ingest.core.plausibility import too_fast
from simulator.fleet import distance_driven, gps_noise, readings_for, route_position
from simulator.ledger import FLAG_BITS, Ledger, LedgerBuilder, Observed, compare
from simulator.pacing import LoadReport, devices_for_rate, due_until, percentile, schedule_ms, sleep_s
from simulator.plan import anchor_route, honest_fleet, make_plan, stream_honest
from simulator.scenario import BUILTINS, CHEATERS, Honest, Scenario, load_scenario, parse, with_overrides

NOW = 1_780_000_000_000


# --- scenarios ----------------------------------------------------------------------------------------


def test_builtins_exist_and_attack_has_every_cheater() -> None:
    assert set(BUILTINS) == {"honest", "mixed", "attack", "load"}
    attack = BUILTINS["attack"]
    assert all(attack.cheater_count(name) >= 1 for name in CHEATERS)
    assert BUILTINS["load"].load.rate > 0


def test_toml_file_round_trip(tmp_path: Path) -> None:
    f = tmp_path / "berlin.toml"
    f.write_text(
        """
seed = 3
owners = 2
[region]
name = "berlin"
radius_m = 5000
[honest]
dashcams = 2
weather = 1
gps_noise_m = 2.5
[cheaters]
gps_spoofer = 2
forger = 1
"""
    )
    s = load_scenario(str(f))
    assert s.name == "berlin" and s.seed == 3 and s.owners == 2
    assert s.region.center == (52.52, 13.405) and s.region.radius_m == 5000
    assert s.honest.dashcams == 2 and s.honest.gps_noise_m == 2.5
    assert s.cheaters == {"gps_spoofer": 2, "forger": 1}
    assert with_overrides(s, {"forger": 0}).cheaters == {"gps_spoofer": 2, "forger": 0}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"cheaters": {"gps_spoofr": 1}}, "unknown class"),
        ({"honest": {"dashcam": 1}}, "unknown key"),
        ({"colour": 1}, "unknown key"),
        ({"region": {"name": "atlantis"}}, "unknown name"),
        ({"region": {"center": [95, 0]}}, "not a latitude"),
        ({"honest": {"gps_noise_m": 10}}, "at most 4 m"),
        ({"cheaters": {"forger": -1}}, "count"),
        ({"honest": {"dashcam_readings_per_packet": 300}}, "1..256"),
    ],
)
def test_bad_scenarios_are_refused(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(doc)


def test_unknown_scenario_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="neither a built-in"):
        load_scenario(str(tmp_path / "nope.toml"))


# --- honest motion ------------------------------------------------------------------------------------


def test_stops_never_exceed_the_speed_and_do_stand_still() -> None:
    speed, drive, stop = 10.0, 40.0, 15.0
    ts = list(range(0, 200_000, 500))
    d = [distance_driven(t, speed, drive, stop) for t in ts]
    steps = [b - a for a, b in itertools.pairwise(d)]
    assert all(0 <= s <= speed * 0.5 + 1e-9 for s in steps)
    assert sum(1 for s in steps if s == 0) >= 50  # it stands at stops
    assert distance_driven(55_000, speed, drive, stop) == pytest.approx(400.0)  # one full cycle
    assert distance_driven(10_000, speed) == pytest.approx(100.0)  # no stops: the old motion


def test_gps_noise_is_deterministic_bounded_and_within_the_motion_slack() -> None:
    dev = b"\x01" * 32
    assert gps_noise(dev, 5, 3.0) == gps_noise(dev, 5, 3.0)
    assert gps_noise(dev, 5, 0.0) == (0.0, 0.0)
    pts = [gps_noise(dev, t, 4.0) for t in range(2000)]
    assert all(abs(x) <= 8.0 and abs(y) <= 8.0 for x, y in pts)
    worst = max(math.dist(a, b) for a, b in itertools.combinations(pts[:200], 2))
    assert worst < 25.0  # the motion rule's slack


def test_honest_dashcams_with_stops_and_noise_are_never_too_fast() -> None:
    s = Scenario("t", honest=Honest(dashcams=3, duration_s=300, gps_noise_m=4.0, drive_s=20, stop_s=10))
    fleet = honest_fleet(s)
    for dev in fleet:
        readings = []
        for _, msg in stream_honest(dev, s, NOW):
            decoded = decode(msg)
            assert isinstance(decoded, SignedMessage)
            readings += decoded.packet.readings
            assert all(r.media is not None for r in decoded.packet.readings)  # frame hashes
        assert len(readings) == 300  # 1 Hz over the duration
        for a, b in itertools.pairwise(readings):
            d = _metres(a.lat, a.lon, b.lat, b.lon)
            assert not too_fast(d, b.ts_ms - a.ts_ms, 200.0, 25.0), (d, b.ts_ms - a.ts_ms)
        speeds = [r.vals["speed_mps"] for r in readings]
        assert 0.0 in speeds and max(speeds) > 5  # stops and driving


def _metres(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    k = 111_320.0
    return math.hypot((lat2 - lat1) * k, (lon2 - lon1) * k * math.cos(math.radians(lat1)))


# --- the plan and its ledger --------------------------------------------------------------------------


def test_attack_plan_is_deterministic_and_covers_every_class() -> None:
    a = make_plan(BUILTINS["attack"], NOW)
    b = make_plan(BUILTINS["attack"], NOW)
    assert [i.payload for i in a.items] == [i.payload for i in b.items]
    assert a.ledger is not None
    classes = a.ledger.classes()
    for name, c in CHEATERS.items():
        assert c.outcome in classes[name]
    assert a.ledger.sent == len(a.items)
    # The unregistered device and the coarse-cell asserter are not in the batch registration.
    unregistered = {d for d, i in a.ledger.devices.items() if i["class"] == "unregistered"}
    assert unregistered and not unregistered & {d.identity.hex_id for d in a.register}
    assert len(a.coarse) == 1 and a.coarse[0][0].asserted_cell == 0
    # Garbage is garbage.
    garbage = [i for i in a.items if isinstance(decode(i.payload), Rejection)]
    assert len(garbage) == 3


def test_flooder_expects_exactly_the_burst_through() -> None:
    s = with_overrides(Scenario("f"), {"flooder": 1})
    ledger = make_plan(s, NOW).ledger
    assert ledger is not None
    assert [(e.first, e.last, e.outcome) for e in ledger.entries] == [
        (1, 20, "accepted"),
        (21, 40, "rejected:rate_limited"),
    ]


def test_media_copier_flags_its_victims_packet_too() -> None:
    s = Scenario("m", honest=Honest(dashcams=1), cheaters={"media_copier": 1})
    ledger = make_plan(s, NOW).ledger
    assert ledger is not None
    victim = [e for e in ledger.entries if e.cls == "media_copier-victim"]
    assert len(victim) == 1 and victim[0].outcome == "flagged:media_reuse"
    honest = [e for e in ledger.entries if e.cls == "honest"]
    assert victim[0].first not in honest[0].seqs()


def test_cheaters_that_need_honest_devices_say_so() -> None:
    with pytest.raises(ValueError, match="honest dashcam"):
        make_plan(Scenario("x", cheaters={"media_copier": 1}), NOW)


# --- comparison ---------------------------------------------------------------------------------------


def test_flag_bits_match_the_service() -> None:
    assert {name: bit for bit, name in ((b, str(r)) for b, r in rules.FLAG_NAMES.items())} == FLAG_BITS


def _ledger() -> Ledger:
    book = LedgerBuilder("t", NOW)
    a, b = b"\xaa" * 32, b"\xbb" * 32
    for seq in (1, 2, 3):
        book.expect(a, seq, "honest", "accepted")
    book.expect(a, 1, "replayer", "duplicate")
    book.expect(b, 1, "gps_spoofer", "flagged:implausible_motion")
    book.expect(b, 2, "forger", "rejected:bad_signature")
    book.expect_unsequenced(b, "malformed", "rejected:malformed")
    return book.build()


def _agreeing() -> Observed:
    a, b = "aa" * 32, "bb" * 32
    return Observed(
        packets={a: {1: 0, 2: 0, 3: 0}, b: {1: 2 | 4}},
        rejections={b: [(2, "bad_signature"), (None, "malformed")]},
        new_packets={a: {1, 2, 3}, b: {1}},
    )


def test_ledger_folds_ranges_and_round_trips(tmp_path: Path) -> None:
    ledger = _ledger()
    honest = [e for e in ledger.entries if e.cls == "honest"]
    assert [(e.first, e.last) for e in honest] == [(1, 3)]
    ledger.save(tmp_path / "l.json")
    assert Ledger.load(tmp_path / "l.json") == ledger


def test_compare_agrees() -> None:
    assert compare(_ledger(), _agreeing()) == []


def test_compare_names_every_kind_of_difference() -> None:
    seen = _agreeing()
    a, b = "aa" * 32, "bb" * 32
    seen.packets[a][2] = 8  # flagged media_reuse where clean was expected
    del seen.packets[a][3]  # lost
    seen.packets[b][1] = 0  # the spoofer not flagged
    seen.rejections[b] = [(2, "rate_limited")]  # wrong reason, and the malformed row missing
    seen.packets[a][9] = 0  # a seq the run never sent
    seen.new_packets[a].add(9)
    diffs = compare(_ledger(), seen)
    text = "\n".join(diffs)
    assert "seq 2: stored flagged media_reuse" in text
    assert "seq 3: not stored" in text
    assert "expected flagged:implausible_motion" in text and "seq 1: stored clean" in text
    assert "expected rejected:bad_signature" in text and "rejected rate_limited" in text
    assert "expected 1 unsequenced rejected:malformed, the service has 0" in text
    assert "stored seqs the ledger never sent: 9" in text


def test_a_rejection_of_a_stored_seq_is_a_difference() -> None:
    seen = _agreeing()
    seen.rejections["aa" * 32] = [(1, "replay")]
    diffs = compare(_ledger(), seen)
    assert any("expected duplicate" in d for d in diffs) and any("expected accepted" in d for d in diffs)


def test_bad_ledgers_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "x.json"
    entry = {"device": "aa", "class": "c", "seqs": [1, 1], "outcome": "flagged:purple"}
    f.write_text(json.dumps({"version": 1, "scenario": "x", "started_ms": 1, "entries": [entry]}))
    with pytest.raises(ValueError, match="not an outcome class"):
        Ledger.load(f)
    f.write_text("{}")
    with pytest.raises(ValueError, match="version"):
        Ledger.load(f)


def test_a_refused_login_expects_nothing_at_the_service() -> None:
    book = LedgerBuilder("x", NOW)
    dev = bytes.fromhex("bb" * 32)
    book.expect(dev, 1, "unregistered", "refused:not_authorized")
    ledger = book.build()
    assert compare(ledger, Observed()) == []
    stored = Observed(packets={"bb" * 32: {1: 0}}, new_packets={"bb" * 32: {1}})
    assert any("expected refused:not_authorized: seq 1: stored clean" in d for d in compare(ledger, stored))
    rejected = Observed(rejections={"bb" * 32: [(1, "unknown_device")]})
    assert any("rejected unknown_device" in d for d in compare(ledger, rejected))


def test_with_broker_logins_the_unregistered_device_has_none_and_is_expected_refused() -> None:
    s = with_overrides(BUILTINS["mixed"], {"coarse_cell": 1})
    plan = make_plan(s, NOW, broker_logins=True)
    assert plan.ledger is not None
    (stranger,) = [h for h, i in plan.ledger.devices.items() if i["class"] == "unregistered"]
    assert plan.no_login == {stranger}
    assert plan.ledger.classes()["unregistered"] == {"refused:not_authorized"}
    logins = {d.identity.hex_id for d in plan.login_devices()}
    assert stranger not in logins
    # Every registered device gets a login, the coarse-cell asserter (registered with no cell) too.
    assert logins == {d.identity.hex_id for d in plan.register} | {d.identity.hex_id for d, _ in plan.coarse}
    assert len(plan.coarse) == 1
    # Without broker logins the run is what it was: the service rejects the stranger.
    plain = make_plan(s, NOW)
    assert plain.no_login == set() and plain.ledger is not None
    assert plain.ledger.classes()["unregistered"] == {"rejected:unknown_device"}


# --- pacing -------------------------------------------------------------------------------------------


def test_schedule_and_due() -> None:
    times = schedule_ms(1000.0, 200.0, 5)
    assert times == [1000.0, 1005.0, 1010.0, 1015.0, 1020.0]
    assert due_until(times, 0, 999.9) == 0
    assert due_until(times, 0, 1010.0) == 3
    assert due_until(times, 3, 5000.0) == 5
    assert sleep_s(times, 3, 1012.0) == pytest.approx(0.003)
    assert sleep_s(times, 3, 1020.0) == 0.0
    assert sleep_s(schedule_ms(0, 0.1, 2), 1, 0.0) == 0.005  # capped: re-checked, never overslept
    with pytest.raises(ValueError):
        schedule_ms(0, 0, 1)


def test_a_late_pacer_catches_up_to_the_target_rate() -> None:
    """Simulated: wake-ups come 7 ms late whatever was asked; the absolute schedule still sends
    `rate × seconds` messages in `seconds`."""
    times = schedule_ms(0.0, 500.0, 2500)
    now, sent, wakeups = 0.0, 0, 0
    while sent < len(times):
        sent = due_until(times, sent, now)
        now += sleep_s(times, sent, now) * 1000 + 7.0
        wakeups += 1
    assert now <= 5000.0 + 20
    assert wakeups < 2500  # batches of due messages, not one wake-up each


def test_percentiles_and_report() -> None:
    vals = sorted(float(x) for x in range(1, 101))
    assert percentile(vals, 50) == 50.0
    assert percentile(vals, 99) == 99.0
    assert percentile(vals, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)
    r = LoadReport(100.0, 500, 5.0, 3, (10.0, 20.0, 30.0))
    assert r.achieved_rate == 100.0
    assert r.summary()["p50_ms"] == 20.0 and r.summary()["max_ms"] == 30.0
    assert devices_for_rate(200.0) == 250


def test_a_short_duration_still_sends_one_packet_ending_now() -> None:
    s = Scenario("t", honest=Honest(dashcams=1, weather=1, duration_s=1.0))
    for dev in honest_fleet(s):
        msgs = stream_honest(dev, s, NOW)
        assert len(msgs) == 1
        decoded = decode(msgs[0][1])
        assert isinstance(decoded, SignedMessage)
        assert [r.ts_ms for r in decoded.packet.readings] == [NOW]


def test_a_credential_dashcam_continues_from_its_last_position() -> None:
    dev = honest_fleet(Scenario("t", honest=Honest(dashcams=1)))[0]
    anchor_route(dev, 52.5, 13.4, NOW)
    lat, lon, _ = route_position(dev, NOW)
    assert _metres(lat, lon, 52.5, 13.4) < 0.01
    msgs = stream_honest(dev, Scenario("t", honest=Honest(dashcams=1, duration_s=10)), NOW + 10_000)
    first = decode(msgs[0][1])
    assert isinstance(first, SignedMessage)
    r = first.packet.readings[0]
    assert _metres(r.lat, r.lon, 52.5, 13.4) <= 12.0 * (r.ts_ms - NOW) / 1000 + 17.0  # speed + noise


def test_air_stations_follow_the_day() -> None:
    """Particulates higher at rush hour than at 3 am, CO2 higher before dawn than in the afternoon
    (means over many readings: each one is noisy)."""
    dev = honest_fleet(Scenario("t", honest=Honest(air=1)))[0]
    day = (NOW // 86_400_000) * 86_400_000

    def mean(hour: float, key: str) -> float:
        vals = [readings_for(dev, seq, [int(day + hour * 3_600_000)])[0].vals[key] for seq in range(400)]
        return sum(float(v) for v in vals) / len(vals)

    assert mean(8, "pm25_ugm3") > mean(3, "pm25_ugm3") * 1.3
    assert mean(4, "co2_ppm") > mean(16, "co2_ppm") + 30


def test_a_secured_load_run_raises_the_open_files_limit_or_says_what_to_raise() -> None:
    import resource

    from simulator.run import _enough_descriptors

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        _enough_descriptors(300)  # a connection per load device: raised up to the hard limit
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 300
        if hard != resource.RLIM_INFINITY:
            with pytest.raises(ValueError, match=r"hard limit is \d+: lower --rate"):
                _enough_descriptors(hard + 1)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
