"""A scenario turned into the exact messages a run sends, the devices it registers, and its ledger.
Pure (no I/O): deterministic from the scenario's seed and `now_ms`; run.py registers and publishes.

Honest devices cover the scenario's `duration_s` of device time ending at `now_ms`: dashcams send
`dashcam_readings_per_packet` 1 Hz samples per packet with frame hashes, stations one reading every
`station_interval_s`. Cheaters come after the honest stream (some capture its packets), each class as
its `cheaters.<name>` count says; README "Simulator" lists them with the outcome each should earn.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import h3
from eth_account import Account
from nacl.signing import SigningKey

from devices.keys import DeviceIdentity
from devices.protocol.hwclass import cell_for
from devices.protocol.model import DeviceRecord
from devices.sdk import build_message
from simulator import cheaters
from simulator.fleet import (
    CLASSES,
    SimDevice,
    make_fleet,
    next_message,
    offset_latlon,
    readings_for,
    route_position,
)
from simulator.ledger import Ledger, LedgerBuilder
from simulator.scenario import CHEATERS, Scenario

HONEST = "honest"
REFUSED = "refused:not_authorized"  # the broker's CONNACK for a login it does not know


@dataclass(frozen=True)
class Item:
    """One message: its topic, bytes, and whose broker login sends it (hex id; a secured broker lets a
    device publish on its own topic only, so a forger uses its victim's leaked login)."""

    topic: str
    payload: bytes
    login: str


@dataclass
class Plan:
    register: list[SimDevice] = field(default_factory=list)
    # Devices that try to register with a coarse cell: the registry must refuse them (InvalidCell),
    # then they are registered with no cell at all.
    coarse: list[tuple[SimDevice, int]] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    ledger: Ledger | None = None
    honest: list[SimDevice] = field(default_factory=list)
    # Devices (hex) that have no broker login in reality: on a secured broker they are refused at
    # connect (the ledger expects `refused:not_authorized`), so nothing of theirs reaches the service.
    no_login: set[str] = field(default_factory=set)

    def owners(self) -> set[str]:
        return {d.owner for d in self.register}

    def login_devices(self) -> list[SimDevice]:
        """The generated devices an operator would give a broker login: every one registered on chain
        (the coarse-cell asserters end up registered too, with no cell)."""
        return [*self.register, *(d for d, _ in self.coarse)]


def owner_addresses(seed: int, n: int, label: bytes = b"owner") -> list[str]:
    """Deterministic owner addresses (the owners need never sign: rewards are claimed by address)."""
    return [
        Account.from_key(
            hashlib.sha256(label + seed.to_bytes(8, "big") + i.to_bytes(4, "big")).digest()
        ).address
        for i in range(n)
    ]


def _identity(rng: random.Random) -> DeviceIdentity:
    return DeviceIdentity(rng.randbytes(32), SigningKey(rng.randbytes(32)))


def _station(
    rng: random.Random, kind: str, owner: str, center: tuple[float, float], radius_m: float
) -> SimDevice:
    hw = CLASSES[kind]
    dist = radius_m * math.sqrt(rng.random())
    bearing = rng.uniform(0, 2 * math.pi)
    lat, lon = offset_latlon(*center, dist * math.sin(bearing), dist * math.cos(bearing))
    cell = cell_for(lat, lon, hw.h3_res)
    c_lat, c_lon = h3.cell_to_latlng(h3.int_to_str(cell))
    lat, lon = offset_latlon(c_lat, c_lon, rng.uniform(-30, 30), rng.uniform(-30, 30))
    return SimDevice(_identity(rng), kind, hw.id, owner, lat, lon, cell_for(lat, lon, hw.h3_res))


def honest_fleet(s: Scenario) -> list[SimDevice]:
    h = s.honest
    kinds = ["dashcam"] * h.dashcams + ["weather"] * h.weather + ["air"] * h.air
    fleet = make_fleet(
        len(kinds),
        owner_addresses(s.seed, s.owners),
        seed=s.seed,
        center=s.region.center,
        station_radius_m=s.region.radius_m,
        kinds=kinds,
    )
    for dev in fleet:
        if dev.mobile:
            dev.drive_s, dev.stop_s, dev.gps_noise_m = h.drive_s, h.stop_s, h.gps_noise_m
    return fleet


def device_from_record(
    identity: DeviceIdentity, record: DeviceRecord | None, center: tuple[float, float], seed: int
) -> SimDevice:
    """A device driven from its credential file: a station stands at its asserted cell's centre (a
    dashcam drives a loop around the region's centre, see `anchor_route`). Its seqs start at the wall
    clock in ms (see `make_plan`), so every run continues above the last one and above the firmware's.
    `record` None: not registered (driven as a weather station at the centre)."""
    if record is None:
        dev = make_fleet(1, ["0x" + "00" * 20], seed=seed, center=center, kinds=["weather"])[0]
        return replace(dev, identity=identity)
    kind = next((c.name for c in CLASSES.values() if c.id == record.hw_class), None)
    if kind is None:
        raise ValueError(
            f"device {identity.hex_id}: hardware class {record.hw_class} is not one the simulator has"
        )
    template = make_fleet(1, [record.owner], seed=seed, center=center, kinds=[kind])[0]
    dev = replace(template, identity=identity, owner=record.owner, asserted_cell=record.asserted_cell)
    if not dev.mobile:
        if not record.asserted_cell:
            raise ValueError(f"device {identity.hex_id}: a {kind} station with no asserted cell")
        dev.lat, dev.lon = h3.cell_to_latlng(h3.int_to_str(record.asserted_cell))
    return dev


def stream_honest(
    dev: SimDevice, s: Scenario, now_ms: int, *, start_seq: int | None = None
) -> list[tuple[int, bytes]]:
    """(seq, message) of one honest device over the scenario's duration ending at `now_ms`."""
    h = s.honest
    if start_seq is not None:
        dev.seq = start_seq - 1
    start = now_ms - int(h.duration_s * 1000)
    # A duration shorter than one packet's span still sends one packet, ending now (a dashcam's then
    # holds one 1 Hz sample per second of the duration).
    rpp = min(h.dashcam_readings_per_packet, max(1, int(h.duration_s))) if dev.mobile else 1
    step = rpp * 1000 if dev.mobile else int(h.station_interval_s * 1000)
    times = list(range(start + step, now_ms + 1, step)) or [now_ms]
    return [(dev.seq + 1, next_message(dev, t, rpp, 1000)) for t in times]


def anchor_route(dev: SimDevice, lat: float, lon: float, at_ms: int) -> None:
    """Move a dashcam's loop so that it passes (lat, lon) at `at_ms`: a real device driven from its
    credential file continues from where its last stored reading left it, instead of jumping to a
    route kilometres away (which the motion rule would rightly flag)."""
    if not dev.mobile:
        return
    for _ in range(6):  # the loop's longitude scale depends on the origin's latitude: converge on it
        here_lat, here_lon, _ = route_position(dev, at_ms)
        dev.origin = (dev.origin[0] + lat - here_lat, dev.origin[1] + lon - here_lon)
    dev.lat, dev.lon, dev.heading = route_position(dev, at_ms)


def make_plan(
    s: Scenario,
    now_ms: int,
    *,
    cred_devices: Sequence[SimDevice] = (),
    cred_expect: Mapping[str, tuple[str, str]] | None = None,
    broker_logins: bool = False,
) -> Plan:
    """Everything a run of `s` sends at `now_ms`. `cred_devices`: real devices to drive as honest ones
    (not registered again); `cred_expect`: hex id → (class, outcome) for those the registry does not
    hold as active (not registered: unknown_device; revoked: revoked_device), driven all the same.
    `broker_logins`: the run creates broker logins for the devices it registers (a secured broker), so
    an `unregistered` cheater, which no operator gave a login, is refused by the broker itself."""
    cred_expect = cred_expect or {}
    rng = random.Random(f"cheaters-{s.seed}")
    book = LedgerBuilder(s.name, now_ms)
    plan = Plan()
    fleet = honest_fleet(s)
    plan.register += fleet
    honest = [*fleet, *cred_devices]
    sent: dict[str, list[tuple[int, bytes]]] = {}
    for dev in honest:
        cls, result = cred_expect.get(dev.identity.hex_id, (HONEST, "accepted"))
        book.device(dev.device_id, kind=dev.kind, owner=dev.owner, cls=cls)
        start_seq = now_ms if dev in cred_devices else None
        msgs = stream_honest(dev, s, now_ms, start_seq=start_seq)
        if cls == HONEST:
            sent[dev.identity.hex_id] = msgs
        for seq, msg in msgs:
            book.expect(dev.device_id, seq, cls, result)
            plan.items.append(Item(dev.topic, msg, dev.identity.hex_id))
    plan.honest = [d for d in honest if d.identity.hex_id not in cred_expect]
    honest = plan.honest
    cheat_owner = owner_addresses(s.seed, 1, b"cheater")[0]
    center, radius = s.region.center, s.region.radius_m

    def add(
        dev: SimDevice,
        cls: str,
        seq: int | None,
        msg: bytes,
        outcome: str,
        *,
        topic_dev: SimDevice | None = None,
    ) -> None:
        target = topic_dev or dev
        if seq is None:
            book.expect_unsequenced(target.device_id, cls, outcome)
        else:
            book.expect(target.device_id, seq, cls, outcome)
        plan.items.append(Item(target.topic, msg, target.identity.hex_id))

    def new_dev(kind: str, cls: str, owner: str = cheat_owner, *, register: bool = True) -> SimDevice:
        if CLASSES[kind].mobile:
            dev = make_fleet(1, [owner], seed=rng.randrange(2**32), center=center, kinds=[kind])[0]
            dev.drive_s, dev.stop_s, dev.gps_noise_m = s.honest.drive_s, s.honest.stop_s, s.honest.gps_noise_m
        else:
            dev = _station(rng, kind, owner, center, radius)
        book.device(dev.device_id, kind=kind, owner=owner, cls=cls)
        if register:
            plan.register.append(dev)
        return dev

    def honest_packets(dev: SimDevice, cls: str, times: Sequence[int]) -> None:
        for t in times:
            seq = dev.seq + 1
            add(dev, cls, seq, next_message(dev, t, 1 if not dev.mobile else 2, 1000), "accepted")

    outcome = {name: c.outcome for name, c in CHEATERS.items()}
    dashcams = [d for d in honest if d.kind == "dashcam"]

    for _ in range(s.cheater_count("gps_spoofer")):
        dev = new_dev("dashcam", "gps_spoofer")
        honest_packets(dev, "gps_spoofer", [now_ms - 30_000, now_ms - 25_000])
        for t in (now_ms - 15_000, now_ms - 5_000):
            _, msg = cheaters.teleporting(dev, t)
            add(dev, "gps_spoofer", dev.seq, msg, outcome["gps_spoofer"])

    for _ in range(s.cheater_count("moved_station")):
        dev = new_dev("weather", "moved_station")
        for t in (now_ms - 20_000, now_ms - 10_000, now_ms):
            _, msg = cheaters.spoofing(dev, t)
            add(dev, "moved_station", dev.seq, msg, outcome["moved_station"])

    for i in range(s.cheater_count("replayer")):
        victims = [d for d in honest if sent.get(d.identity.hex_id)]
        if not victims:
            raise ValueError("the replayer needs honest devices to capture packets from")
        victim = victims[i % len(victims)]
        for seq, msg in sent[victim.identity.hex_id][:2]:
            _, same = cheaters.replay_of(msg)
            add(victim, "replayer", seq, same, outcome["replayer"])

    for i in range(s.cheater_count("forger")):
        victims = [d for d in honest if d not in cred_devices] or list(honest)
        if not victims:
            raise ValueError("the forger needs honest devices to forge")
        victim = victims[i % len(victims)]
        _, msg = cheaters.forged(victim, now_ms)
        add(victim, "forger", victim.seq + 1, msg, outcome["forger"])
        victim.seq += 1  # never sent by the victim: the next forgery (another forger) takes the next seq

    for _ in range(s.cheater_count("unregistered")):
        dev = new_dev("weather", "unregistered", register=False)
        expected = outcome["unregistered"]
        if broker_logins:
            plan.no_login.add(dev.identity.hex_id)
            expected = REFUSED
        for t in (now_ms - 10_000, now_ms):
            seq = dev.seq + 1
            add(dev, "unregistered", seq, next_message(dev, t), expected)

    for _ in range(s.cheater_count("clock_skewed")):
        dev = new_dev("air", "clock_skewed")
        for t in (now_ms + 300_000, now_ms + 310_000):
            seq = dev.seq + 1
            add(dev, "clock_skewed", seq, next_message(dev, t), outcome["clock_skewed"])

    for _ in range(s.cheater_count("flatliner")):
        dev = new_dev("weather", "flatliner")
        # 3 h of readings every 5 min, every value the same: past the 2 h pressure limit.
        times = [now_ms - 60_000 - (36 - k) * 300_000 for k in range(37)]
        dev.seq += 1
        first = readings_for(dev, dev.seq, times[:1])[0]
        readings = [first._replace(ts_ms=t) for t in times]
        dev.last_ts_ms = times[-1]
        add(
            dev,
            "flatliner",
            dev.seq,
            build_message(dev.identity, dev.seq, dev.kind, readings),
            outcome["flatliner"],
        )

    for i in range(s.cheater_count("media_copier")):
        if not dashcams or not sent.get(dashcams[i % len(dashcams)].identity.hex_id):
            raise ValueError("the media copier needs an honest dashcam to copy frames from")
        victim = dashcams[i % len(dashcams)]
        v_seq, v_msg = sent[victim.identity.hex_id][-1]
        dev = new_dev("dashcam", "media_copier")
        _, msg = cheaters.media_copier(dev, v_msg, now_ms)
        add(dev, "media_copier", dev.seq, msg, outcome["media_copier"])
        book.override(victim.device_id, v_seq, "flagged:media_reuse", "media_copier-victim")

    n_sybil = s.cheater_count("sybil")
    if n_sybil:
        sybil_owner = owner_addresses(s.seed, 1, b"sybil")[0]
        anchor = _station(rng, "weather", sybil_owner, center, radius)
        for _ in range(n_sybil):
            dev = new_dev("weather", "sybil", sybil_owner)
            dev.lat, dev.lon = offset_latlon(
                anchor.lat, anchor.lon, rng.uniform(-20, 20), rng.uniform(-20, 20)
            )
            dev.asserted_cell = anchor.asserted_cell
            for seq, msg in stream_honest(dev, s, now_ms):
                add(dev, "sybil", seq, msg, outcome["sybil"])

    for _ in range(s.cheater_count("flooder")):
        dev = new_dev("air", "flooder")
        for k in range(s.rate_burst * 2):
            seq = dev.seq + 1
            result = "accepted" if k < s.rate_burst else outcome["flooder"]
            add(dev, "flooder", seq, next_message(dev, now_ms), result)

    for _ in range(s.cheater_count("malformed")):
        dev = new_dev("air", "malformed")
        honest_packets(dev, "malformed", [now_ms - 10_000])
        for k in range(3):
            garbage = b"\xa2\x01garbage-" + bytes([k]) + rng.randbytes(8)
            add(dev, "malformed", None, garbage, outcome["malformed"])

    for _ in range(s.cheater_count("coarse_cell")):
        dev = new_dev("weather", "coarse_cell", register=False)
        coarse = h3.str_to_int(h3.cell_to_parent(h3.int_to_str(dev.asserted_cell), 5))
        plan.coarse.append((dev, coarse))
        dev.asserted_cell = 0  # what the registry ends up holding: no cell, so off_location
        for t in (now_ms - 20_000, now_ms - 10_000, now_ms):
            seq = dev.seq + 1
            add(dev, "coarse_cell", seq, next_message(dev, t), outcome["coarse_cell"])

    book.sent = len(plan.items)
    plan.ledger = book.build()
    return plan
