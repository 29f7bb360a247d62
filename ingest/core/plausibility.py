"""Reading-level plausibility: where a device says it is and how its values move. Pure (no I/O).

Every check here keeps the reading and sets a flag (rules.FLAG_*): the reading is signed, so it is
stored and shown to its owner, but a flagged reading earns nothing (the store counts it as flagged,
which also lowers the device's quality in the reward split).

Some checks compare a reading with the device's previous one, also across packets, through a `Track`
the caller keeps per device (see ingest.core.state). Motion and jumps compare in both directions of
time (physics is symmetric), so a packet that arrives late is still checked against the newest known
reading; a flatline run only grows in time order.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

import h3

from devices.protocol.hwclass import HwClass
from devices.protocol.model import Reading
from ingest.core import rules
from ingest.core.geo import BPS, distance_outside_cell_m, haversine_m, location_trust

MINUTE_MS = 60_000
HOUR_MS = 3_600_000

# Weather quality limits are WeatherXM's published QoD v1 self-quality checks ("Out-of-Bounds (OBC)
# and Self Quality Checks (SQC)", docs.weatherxm.com/weather-and-science/quality-mechanisms/
# obc-sqc-documentation): Table 6 for constancy, Table 9 (stations reporting every minute or less
# often) for jumps. Air quality has no such reference; its limits are ours and say so.


@dataclass(frozen=True, slots=True)
class Constancy:
    """How long a value may stay exactly the same before the sensor is taken to be stuck."""

    limit_ms: int
    nonzero_only: bool = False  # exactly 0 may stay as long as it likes (calm air, a dark night)


@dataclass(frozen=True, slots=True)
class StepLimit:
    """The largest believable change between consecutive readings: `per_minute` for each minute of the
    gap (a shorter gap is allowed one minute's worth), never more than `cap`."""

    per_minute: float
    cap: float

    def allowed(self, dt_ms: int) -> float:
        return min(self.cap, self.per_minute * max(abs(dt_ms), MINUTE_MS) / MINUTE_MS)


# WeatherXM Table 6: temperature 240 min, humidity 360 min, pressure 120 min, wind speed 360 min when
# not 0, illuminance 120 min when not 0. Left out: WeatherXM's conditional cases (constant zero wind or
# a constant vane only count when warm and dry), which need other keys' medians.
# Air (ours): CO2 from an NDIR sensor always wanders by a few ppm; particulate counters read whole
# µg/m³ and really do sit at 1–2 in clean air for hours, so they are left out.
CONSTANCY: Mapping[str, Mapping[str, Constancy]] = MappingProxyType(
    {
        "weather": {
            "temperature_c": Constancy(240 * MINUTE_MS),
            "humidity_pct": Constancy(360 * MINUTE_MS),
            "pressure_hpa": Constancy(120 * MINUTE_MS),
            "wind_mps": Constancy(360 * MINUTE_MS, nonzero_only=True),
            "illuminance_lux": Constancy(120 * MINUTE_MS, nonzero_only=True),
        },
        "air": {"co2_ppm": Constancy(6 * HOUR_MS)},
    }
)

# WeatherXM Table 9, per minute / upper limit: temperature 3 / 15 °C, humidity 10 / 80 %, wind speed
# 10 / 15 m/s, pressure 0.8 / 15 hPa, illuminance 97 600 / 146 400 lux. No limit for wind direction
# (WeatherXM has none) or rain. Air quality is left out: a passing smoke plume is a real spike.
MAX_STEP: Mapping[str, Mapping[str, StepLimit]] = MappingProxyType(
    {
        "weather": {
            "temperature_c": StepLimit(3.0, 15.0),
            "humidity_pct": StepLimit(10.0, 80.0),
            "wind_mps": StepLimit(10.0, 15.0),
            "pressure_hpa": StepLimit(0.8, 15.0),
            "illuminance_lux": StepLimit(97_600.0, 146_400.0),
        }
    }
)


class KeyLimits(NamedTuple):
    bounds: tuple[float, float] | None
    constancy: Constancy | None
    step: StepLimit | None


@dataclass(frozen=True, slots=True)
class QualityLimits:
    constancy: Mapping[str, Mapping[str, Constancy]] = field(default_factory=lambda: CONSTANCY)
    max_step: Mapping[str, Mapping[str, StepLimit]] = field(default_factory=lambda: MAX_STEP)
    # A "step" is two readings at most this far apart: WeatherXM's upper limits are for consecutive
    # hourly values; after a longer silence there is no previous value to compare with.
    step_window_ms: int = HOUR_MS
    # GPS jitter allowance subtracted from every distance before the speed test, so that two fixes a
    # few milliseconds apart do not read as hundreds of km/h (consumer GPS: ~5 m open sky, ~25 m in
    # street canyons). Not taken from the reading's own `acc`: the device chooses that number.
    motion_slack_m: float = 25.0
    # kind → key → everything checked for it (bounds, constancy, step), built once from the fields
    # above and rules.VALUE_BOUNDS: one lookup per value instead of three.
    by_kind: Mapping[str, Mapping[str, KeyLimits]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        table: dict[str, dict[str, KeyLimits]] = {}
        for kind in {*rules.VALUE_BOUNDS, *self.constancy, *self.max_step}:
            bounds = rules.VALUE_BOUNDS.get(kind, {})
            stuck, steps = self.constancy.get(kind, {}), self.max_step.get(kind, {})
            table[kind] = {
                key: KeyLimits(bounds.get(key), stuck.get(key), steps.get(key))
                for key in {*bounds, *stuck, *steps}
            }
        object.__setattr__(self, "by_kind", MappingProxyType(table))


@dataclass(slots=True)
class Fix:
    ts_ms: int
    lat: float
    lon: float


@dataclass(slots=True)
class Run:
    """The latest value of one quantity and since when it has been exactly that."""

    value: float | int
    since_ms: int
    last_ms: int


@dataclass(slots=True)
class Track:
    """What one device's readings so far imply: its newest position and its value runs.

    Bounded: one Fix, and one Run per key listed in the limits for its kind (never per arbitrary key).
    """

    fix: Fix | None = None
    runs: dict[str, Run] = field(default_factory=dict)
    # The last location-trust verdict (lat, lon, asserted cell, class resolution, trusted): a station
    # sends the same position every time, and the H3 lookups behind the verdict are the costliest part
    # of a reading. The resolution is part of the key: the class's can change on chain.
    trust_memo: tuple[float, float, int, int, bool] | None = None


def too_fast(distance_m: float, dt_ms: int, max_speed_kmh: float, slack_m: float) -> bool:
    """True if covering `distance_m` (minus the jitter slack) in `dt_ms` is above `max_speed_kmh`.

    Exactly the maximum passes. Multiplied out instead of divided so that dt = 0 needs no special
    case: any real displacement in no time is too fast.
    """
    excess_m = distance_m - slack_m
    if not excess_m > 0:
        return False
    # m/ms × 3600 = km/h
    return excess_m * 3600.0 > max_speed_kmh * abs(dt_ms)


def location_trust_bps(lat: float, lon: float, asserted_cell: int, h3_res: int | None = None) -> int:
    """Location trust (bps) of a stationary device at (lat, lon) against the cell it asserted on chain.

    A device with no asserted cell (0), or one the chain holds that is not a valid H3 index, gets 0:
    a stationary device that can be anywhere must not cover any cell it likes. With `h3_res` (its
    class's resolution) a cell of any other resolution is no valid cell either: a coarse cell (res 3
    is ~69 km across) would make a station "inside" it anywhere in a region.
    """
    if not _valid_cell(asserted_cell) or (h3_res is not None and cell_res(asserted_cell) != h3_res):
        return 0
    return location_trust(distance_outside_cell_m(lat, lon, asserted_cell))


def cell_res(cell: int) -> int:
    """The resolution field of an H3 index (bits 52-55), as DeviceRegistry reads it."""
    return (cell >> 52) & 0xF


@functools.lru_cache(maxsize=65_536)
def _valid_cell(cell: int) -> bool:
    # Cached: checked for every reading of a stationary device, and a device's cell rarely changes.
    return 0 < cell < 1 << 64 and h3.is_valid_cell(h3.int_to_str(cell))


_NO_LIMITS: Mapping[str, Any] = MappingProxyType({})


def _value_flags(
    table: Mapping[str, KeyLimits], r: Reading, runs: dict[str, Run], limits: QualityLimits
) -> int:
    """bad_values (as rules.value_flags), flatline and value_jump of one reading; advances `runs`.

    One pass over the values, one lookup per value (`table` is limits.by_kind[kind]) and
    StepLimit.allowed written out: this runs for every reading stored."""
    ts = r.ts_ms
    flags = 0
    for key, value in r.vals.items():
        spec = table.get(key)
        if spec is None:
            continue
        lo_hi, stuck, step = spec
        if lo_hi is not None and not lo_hi[0] <= value <= lo_hi[1]:
            # Flagged; an impossible value must not become the reference of a run either.
            flags |= rules.FLAG_BAD_VALUES
            continue
        if stuck is None and step is None:
            continue
        if not math.isfinite(value):
            continue  # the pipeline rejects these; judged alone, NaN must not become a reference either
        run = runs.get(key)
        if run is None:
            runs[key] = Run(value, ts, ts)
            continue
        dt = ts - run.last_ms
        if step is not None and abs(dt) <= limits.step_window_ms:
            allowed = min(step.cap, step.per_minute * max(abs(dt), MINUTE_MS) / MINUTE_MS)
            if abs(value - run.value) > allowed:
                flags |= rules.FLAG_VALUE_JUMP
        if dt < 0:
            continue  # out of order: compared, but a run only grows forwards in time
        if value == run.value:
            if (
                stuck is not None
                and not (stuck.nonzero_only and value == 0)
                and ts - run.since_ms > stuck.limit_ms
            ):
                flags |= rules.FLAG_FLATLINE
            run.last_ms = ts
        else:
            runs[key] = Run(value, ts, ts)
    return flags


def assess(
    readings: Sequence[Reading], hw: HwClass, asserted_cell: int, track: Track, limits: QualityLimits
) -> tuple[int, ...]:
    """Flags for each reading of one accepted packet (time-ordered); advances `track`.

    - bad_values: a value outside the kind's physical bounds (rules.VALUE_BOUNDS).
    - implausible_motion (mobile classes): faster than the class maximum from the previous reading,
      within the packet and across packets.
    - off_location (stationary classes): location trust below full (more than 300 m outside the
      asserted cell, or no valid asserted cell: none, not an H3 cell, or not at the class's
      resolution). The 0.25 band of HIP-98 also earns nothing: the reward split is per reading,
      flagged or clean, and rounding partial trust down never pays a spoofer.
    - flatline / value_jump: see CONSTANCY and MAX_STEP.
    """
    out = []
    newest = track.fix
    prev: Fix | None = None  # the previous reading of this packet
    table = limits.by_kind.get(hw.name, _NO_LIMITS)
    for r in readings:
        flags = _value_flags(table, r, track.runs, limits)  # bad_values, flatline, value_jump
        if not (-90.0 <= r.lat <= 90.0 and -180.0 <= r.lon <= 180.0):  # also false for NaN
            # The pipeline rejects such packets before this point (and geo.haversine_m raises for
            # |lat| > 90); judged alone, a position that is not on Earth is no fix.
            out.append(flags | rules.FLAG_BAD_VALUES)
            continue
        here = Fix(r.ts_ms, r.lat, r.lon)
        if hw.mobile:
            ref = prev if prev is not None else newest
            if ref is not None and too_fast(
                haversine_m(ref.lat, ref.lon, r.lat, r.lon),
                r.ts_ms - ref.ts_ms,
                hw.max_speed_kmh,
                limits.motion_slack_m,
            ):
                flags |= rules.FLAG_IMPLAUSIBLE_MOTION
        else:
            memo = track.trust_memo
            if (
                memo is None
                or memo[0] != r.lat
                or memo[1] != r.lon
                or memo[2] != asserted_cell
                or memo[3] != hw.h3_res
            ):
                memo = track.trust_memo = (
                    r.lat,
                    r.lon,
                    asserted_cell,
                    hw.h3_res,
                    location_trust_bps(r.lat, r.lon, asserted_cell, hw.h3_res) == BPS,
                )
            if not memo[4]:
                flags |= rules.FLAG_OFF_LOCATION
        prev = here
        if newest is None or r.ts_ms >= newest.ts_ms:
            newest = here
        out.append(flags)
    track.fix = newest
    return tuple(out)
