"""A simulated fleet: dashcams driving loops, weather and air stations standing still, and their signed
messages. No I/O: publish.py sends them to a broker.

Everything is deterministic from the seed — ids, keys, routes, station sites, and (for a given `now_ms`)
every message byte — so a failing test or a benchmark run can be repeated exactly. Ed25519 signatures
are deterministic too, which is what makes whole messages repeatable.

A dashcam's position is a function of the reading's timestamp (distance along its route = phase +
speed × t), so any two of its readings are at most `speed × Δt` apart in a straight line: honest
dashcams never look like teleports, whatever order or spacing the caller picks.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import h3
from nacl.signing import SigningKey

from devices.keys import DeviceIdentity
from devices.protocol.hwclass import AIR, DASHCAM, WEATHER, HwClass, cell_for
from devices.protocol.model import DeviceRecord, Media, Reading
from devices.protocol.topics import up_topic
from devices.sdk import build_message

CLASSES: dict[str, HwClass] = {c.name: c for c in (DASHCAM, WEATHER, AIR)}
SAN_FRANCISCO = (37.7749, -122.4194)
_M_PER_DEG_LAT = 111_320.0


@dataclass
class SimDevice:
    """One simulated device. Mutable: `seq`, position and `last_ts_ms` advance as it sends."""

    identity: DeviceIdentity
    kind: str
    hw_class: int
    owner: str
    lat: float
    lon: float
    asserted_cell: int  # H3 cell at the class resolution for stations, 0 for mobile devices
    seq: int = 0  # last seq sent; the first message carries 1
    heading: float = 0.0  # degrees clockwise from north
    speed_mps: float = 0.0
    # Dashcams only: a closed loop in metres (east, north) around `origin`, and where on it t=0 falls.
    route: tuple[tuple[float, float], ...] = field(default=(), repr=False)
    origin: tuple[float, float] = field(default=SAN_FRANCISCO, repr=False)
    phase_m: float = 0.0
    last_ts_ms: int = 0
    # Dashcams only, opt-in (0 = the old behaviour): drive `drive_s` seconds then stand `stop_s`
    # seconds (lights, deliveries), repeating; and GPS noise of σ `gps_noise_m` per axis (bounded, see
    # `gps_noise`) on every reported position.
    drive_s: float = 0.0
    stop_s: float = 0.0
    gps_noise_m: float = 0.0

    @property
    def device_id(self) -> bytes:
        return self.identity.device_id

    @property
    def pubkey(self) -> bytes:
        return self.identity.pubkey

    @property
    def topic(self) -> str:
        return up_topic(self.identity.device_id)

    @property
    def mobile(self) -> bool:
        return CLASSES[self.kind].mobile


def device_record(dev: SimDevice, *, active: bool = True) -> DeviceRecord:
    """What the registry mirror would hold for `dev` once registered (for chain-less tests)."""
    return DeviceRecord(
        device_id=dev.device_id,
        pubkey=dev.pubkey,
        owner=dev.owner,
        hw_class=dev.hw_class,
        asserted_cell=dev.asserted_cell,
        active=active,
    )


# --- geometry -------------------------------------------------------------------------------------


def offset_latlon(lat: float, lon: float, east_m: float, north_m: float) -> tuple[float, float]:
    """Move a point by metres east/north (equirectangular: exact enough over tens of kilometres)."""
    return (
        lat + north_m / _M_PER_DEG_LAT,
        lon + east_m / (_M_PER_DEG_LAT * math.cos(math.radians(lat))),
    )


def _route_length(route: Sequence[tuple[float, float]]) -> float:
    return sum(math.dist(a, b) for a, b in itertools.pairwise([*route, route[0]]))


def route_position(dev: SimDevice, ts_ms: int) -> tuple[float, float, float]:
    """(lat, lon, heading°) of a dashcam at `ts_ms`; stations are where they are."""
    if not dev.route:
        return dev.lat, dev.lon, dev.heading
    s = (dev.phase_m + distance_driven(ts_ms, dev.speed_mps, dev.drive_s, dev.stop_s)) % _route_length(
        dev.route
    )
    for a, b in itertools.pairwise([*dev.route, dev.route[0]]):
        seg = math.dist(a, b)
        if s <= seg:
            f = s / seg if seg else 0.0
            x, y = a[0] + f * (b[0] - a[0]), a[1] + f * (b[1] - a[1])
            heading = math.degrees(math.atan2(b[0] - a[0], b[1] - a[1])) % 360.0
            lat, lon = offset_latlon(dev.origin[0], dev.origin[1], x, y)
            return lat, lon, heading
        s -= seg
    raise AssertionError("unreachable: s is below the route length")


def distance_driven(ts_ms: int, speed_mps: float, drive_s: float = 0.0, stop_s: float = 0.0) -> float:
    """Metres driven by `ts_ms` at `speed_mps` in cycles of `drive_s` driving then `stop_s` standing
    (`drive_s` 0 or `stop_s` 0: never stops). Never faster than `speed_mps` between any two times."""
    t = ts_ms / 1000.0
    if drive_s <= 0 or stop_s <= 0:
        return speed_mps * t
    cycle = drive_s + stop_s
    full, rest = divmod(t, cycle)
    return speed_mps * (full * drive_s + min(rest, drive_s))


# GPS noise is clamped to ±_NOISE_CLAMP σ per axis: two readings' noise then differs by at most
# 2·√2·clamp·σ, which for σ ≤ 4 m stays inside the motion rule's 25 m of slack (honest never flagged).
_NOISE_CLAMP = 2.0


def gps_noise(device_id: bytes, ts_ms: int, sigma_m: float) -> tuple[float, float]:
    """Deterministic (east, north) noise in metres for one fix of one device."""
    if sigma_m <= 0:
        return 0.0, 0.0
    rng = random.Random(hashlib.sha256(b"gps" + device_id + ts_ms.to_bytes(8, "big")).digest())
    lim = _NOISE_CLAMP * sigma_m
    return (
        max(-lim, min(lim, rng.gauss(0, sigma_m))),
        max(-lim, min(lim, rng.gauss(0, sigma_m))),
    )


def _make_route(rng: random.Random) -> tuple[tuple[float, float], ...]:
    # A lumpy loop 1.5–4 km around the centre: long enough that a dashcam crosses many res-9 cells
    # (edge ~200 m, so one every ~20–40 s at 10 m/s) and never leaves the city.
    n = rng.randint(6, 10)
    radius = rng.uniform(1500.0, 4000.0)
    rotation = rng.uniform(0, 2 * math.pi)
    points = []
    for i in range(n):
        angle = rotation + 2 * math.pi * (i + rng.uniform(-0.25, 0.25)) / n
        r = radius * rng.uniform(0.7, 1.3)
        points.append((r * math.cos(angle), r * math.sin(angle)))
    return tuple(points)


# --- the fleet ------------------------------------------------------------------------------------


def make_fleet(
    n: int,
    owners: Sequence[str],
    *,
    seed: int,
    center: tuple[float, float] = SAN_FRANCISCO,
    dashcam_share: float = 0.3,
    station_radius_m: float = 20_000.0,
    kinds: Sequence[str] | None = None,
) -> list[SimDevice]:
    """`n` devices, owners round-robin; the rest after dashcams split evenly between weather and air
    (`kinds`: exactly these kinds instead, in this order; `n` is then ignored).

    Stations sit near the centre of a cell of their class resolution (that cell is their asserted
    cell; location trust is measured from its centre), each in a cell of its own when space allows.
    """
    if not owners:
        raise ValueError("need at least one owner")
    rng = random.Random(seed)
    if kinds is None:
        n_dash = round(n * dashcam_share)
        kinds = ["dashcam"] * n_dash + [("weather", "air")[i % 2] for i in range(n - n_dash)]
        rng.shuffle(kinds)
    taken: set[int] = set()
    fleet = []
    for i, kind in enumerate(kinds):
        hw = CLASSES[kind]
        # Keys from the seeded RNG, never from os.urandom: the same seed must give the same fleet.
        identity = DeviceIdentity(rng.randbytes(32), SigningKey(rng.randbytes(32)))
        dev = SimDevice(identity, kind, hw.id, owners[i % len(owners)], center[0], center[1], 0)
        if hw.mobile:
            dev.route = _make_route(rng)
            dev.origin = center
            dev.phase_m = rng.uniform(0, _route_length(dev.route))
            dev.speed_mps = round(rng.uniform(8.0, 12.0), 2)
            dev.lat, dev.lon, dev.heading = route_position(dev, 0)
        else:
            for _ in range(50):
                dist = station_radius_m * math.sqrt(rng.random())  # uniform over the disc
                bearing = rng.uniform(0, 2 * math.pi)
                lat, lon = offset_latlon(*center, dist * math.sin(bearing), dist * math.cos(bearing))
                cell = cell_for(lat, lon, hw.h3_res)
                if cell not in taken:
                    break
            taken.add(cell)
            c_lat, c_lon = h3.cell_to_latlng(h3.int_to_str(cell))
            # A few tens of metres off the centre, like a real mast: well inside full location trust.
            dev.lat, dev.lon = offset_latlon(c_lat, c_lon, rng.uniform(-30, 30), rng.uniform(-30, 30))
            dev.asserted_cell = cell_for(dev.lat, dev.lon, hw.h3_res)
        fleet.append(dev)
    return fleet


# --- messages -------------------------------------------------------------------------------------


def media_for(device_id: bytes, seq: int, index: int) -> Media:
    """A dashcam frame reference: sha256 of (device, seq, index), uri a CIDv1 (raw, sha2-256) of it."""
    digest = hashlib.sha256(device_id + seq.to_bytes(8, "big") + index.to_bytes(2, "big")).digest()
    return Media(sha256=digest, uri=f"ipfs://f01551220{digest.hex()}")


def _values(dev: SimDevice, rng: random.Random, station: random.Random, ts_ms: int) -> dict[str, float | int]:
    if dev.kind == "weather":
        day = 2 * math.pi * ((ts_ms / 86_400_000.0) - 0.375)  # warmest mid-afternoon
        temp = 17.5 + station.uniform(-1.5, 1.5) + 5.5 * math.sin(day) + rng.gauss(0, 0.3)
        temp = min(25.0, max(10.0, temp))
        humidity = min(90.0, max(40.0, 65.0 - 3.0 * (temp - 17.5) + rng.gauss(0, 2.0)))
        return {
            "temperature_c": round(temp, 2),
            "humidity_pct": round(humidity, 1),
            # Barometers are quiet (~0.1 hPa); more noise would trip the 0.8 hPa/min jump rule.
            "pressure_hpa": round(1013.0 + station.uniform(-4, 4) + rng.gauss(0, 0.1), 1),
            "wind_mps": round(abs(rng.gauss(3.0, 1.5)), 1),
        }
    if dev.kind == "air":
        # Traffic: particulates peak at the morning and evening rush hours; CO2 is highest before dawn,
        # under the night's shallow boundary layer (UTC hours: the simulator keeps no time zone).
        hour = (ts_ms / 3_600_000.0) % 24.0
        rush = math.exp(-((hour - 8.0) ** 2) / 2.0) + math.exp(-((hour - 18.0) ** 2) / 2.0)
        pm25 = min(35.0, max(2.0, rng.lognormvariate(math.log(10.0 * (1.0 + 0.6 * rush)), 0.4)))
        return {
            "pm25_ugm3": round(pm25, 1),
            "pm10_ugm3": round(pm25 * rng.uniform(1.3, 2.0), 1),
            "co2_ppm": int(rng.gauss(450 + 25 * math.cos(2 * math.pi * (hour - 4.0) / 24.0), 30)),
        }
    speed = dev.speed_mps
    if dev.drive_s > 0 and dev.stop_s > 0 and (ts_ms / 1000.0) % (dev.drive_s + dev.stop_s) >= dev.drive_s:
        speed = 0.0  # standing at a stop
    return {"speed_mps": round(max(0.0, speed + rng.gauss(0, 0.3)), 2) if speed else 0.0}


def readings_for(
    dev: SimDevice,
    seq: int,
    timestamps: Sequence[int],
    *,
    positions: Sequence[tuple[float, float]] | None = None,
) -> list[Reading]:
    """Readings `dev` would take at `timestamps` (at `positions` if given). Pure: does not move `dev`.

    Values are seeded by (device, seq) so a message is reproducible; stations also get a fixed
    per-device bias (their microclimate).
    """
    rng = random.Random(hashlib.sha256(dev.device_id + seq.to_bytes(8, "big")).digest())
    station = random.Random(dev.device_id)
    out = []
    for i, ts in enumerate(timestamps):
        lat, lon, heading = route_position(dev, ts)
        if positions is not None:
            lat, lon = positions[i]
        elif dev.gps_noise_m > 0:
            lat, lon = offset_latlon(lat, lon, *gps_noise(dev.device_id, ts, dev.gps_noise_m))
        vals = _values(dev, rng, station, ts)
        media = None
        if dev.kind == "dashcam":
            vals["heading_deg"] = round(heading, 1)
            media = media_for(dev.device_id, seq, i)
        acc = round(rng.uniform(2.0, 8.0), 1) if dev.mobile else 1.5
        out.append(Reading(ts_ms=ts, lat=round(lat, 7), lon=round(lon, 7), vals=vals, acc=acc, media=media))
    return out


def timestamps_for(dev: SimDevice, now_ms: int, count: int, interval_ms: int) -> list[int]:
    """`count` times ending at `now_ms`, `interval_ms` apart, each after the device's previous reading.

    A fast sender (many packets per second of real time) would otherwise send readings that go back in
    time across packets; pushing them just past the last one keeps a device's readings in order.
    """
    return [max(now_ms - (count - 1 - i) * interval_ms, dev.last_ts_ms + 1 + i) for i in range(count)]


def next_message(dev: SimDevice, now_ms: int, readings_per_packet: int = 1, interval_ms: int = 1000) -> bytes:
    """The device's next signed packet: seq + 1, `readings_per_packet` readings ending near `now_ms`."""
    dev.seq += 1
    ts = timestamps_for(dev, now_ms, readings_per_packet, interval_ms)
    readings = readings_for(dev, dev.seq, ts)
    dev.last_ts_ms = ts[-1]
    last = readings[-1]
    dev.lat, dev.lon = last.lat, last.lon
    if dev.mobile:
        dev.heading = float(last.vals["heading_deg"])
    return build_message(dev.identity, dev.seq, dev.kind, readings)
