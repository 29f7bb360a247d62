"""What a signed packet may claim: value sanity, time window, per-kind bounds. Pure (no I/O).

Packet-level problems (coordinates that are not on Earth, non-finite numbers, timestamps outside the
window) reject the whole packet. Reading-level implausibility (a temperature of 90 °C, a teleport, a
station far from its asserted cell) keeps the reading but sets a flag: flagged readings are stored,
visible to the owner, and earn nothing. The flags that need history live in ingest.core.plausibility.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from devices.protocol.model import Packet, Reading, Reason, Rejection

# Reading flags (bit set, stored in readings.flags). 0 = clean.
FLAG_BAD_VALUES = 1 << 0
FLAG_IMPLAUSIBLE_MOTION = 1 << 1
FLAG_OFF_LOCATION = 1 << 2
FLAG_MEDIA_REUSE = 1 << 3
FLAG_FLATLINE = 1 << 4
FLAG_VALUE_JUMP = 1 << 5

FLAG_NAMES = {
    FLAG_BAD_VALUES: Reason.BAD_VALUES,
    FLAG_IMPLAUSIBLE_MOTION: Reason.IMPLAUSIBLE_MOTION,
    FLAG_OFF_LOCATION: Reason.OFF_LOCATION,
    FLAG_MEDIA_REUSE: Reason.MEDIA_REUSE,
    FLAG_FLATLINE: Reason.FLATLINE,
    FLAG_VALUE_JUMP: Reason.VALUE_JUMP,
}

# Physical bounds per kind and value key (inclusive); keys not listed are not range-checked.
# Weather: WeatherXM's published out-of-bounds limits (QoD v1 OBC, Table 2, the WS1000 sensor spec:
# temperature -40..60 °C, pressure 300..1100 hPa, wind speed 0..50 m/s, illuminance 0..400 000 lux,
# wind direction 0..359°, which we take as 0..360 because other vanes report north as 360).
# Humidity deviates on purpose: WeatherXM's 10..99 % is what its own sensor can report; physically it
# is 0..100 % (docs/RELIABILITY.md D18), fog holds 100 % for hours and desert air goes below 10 %, so the band
# would take pay from honest stations of other makes. A sensor stuck at saturation is a flatline.
# Rain per reading and UV index have no WeatherXM bound (it checks a rain *rate* on an accumulating
# counter); ours are generous sanity caps, not a published reference.
# Air: the measuring range of common PM (Plantower/Sensirion, ≤ 1000 µg/m³) and NDIR CO2 sensors.
# Dashcam: speed up to 100 m/s (faster than any class maximum), heading in degrees.
VALUE_BOUNDS: dict[str, dict[str, tuple[float, float]]] = {
    "weather": {
        "temperature_c": (-40.0, 60.0),
        "humidity_pct": (0.0, 100.0),
        "pressure_hpa": (300.0, 1100.0),
        "wind_mps": (0.0, 50.0),
        "wind_dir_deg": (0.0, 360.0),
        "rain_mm": (0.0, 500.0),
        "illuminance_lux": (0.0, 400_000.0),
        "uv_index": (0.0, 20.0),
    },
    "air": {"pm25_ugm3": (0.0, 1000.0), "pm10_ugm3": (0.0, 2000.0), "co2_ppm": (250.0, 10000.0)},
    "dashcam": {"speed_mps": (0.0, 100.0), "heading_deg": (0.0, 360.0)},
}


@dataclass(frozen=True, slots=True)
class TimeLimits:
    max_future_ms: int = 30_000
    max_lateness_ms: int = 2 * 86_400_000  # two default epochs


def check_coordinates(packet: Packet) -> Rejection | None:
    inf = math.inf
    for i, r in enumerate(packet.readings):
        if not (-90.0 <= r.lat <= 90.0 and -180.0 <= r.lon <= 180.0):  # also false for NaN
            if not (math.isfinite(r.lat) and math.isfinite(r.lon)):
                return Rejection(Reason.BAD_VALUES, f"readings[{i}]: coordinates must be finite")
            return Rejection(Reason.BAD_VALUES, f"readings[{i}]: lat/lon out of range ({r.lat}, {r.lon})")
        if r.acc is not None and not 0.0 <= r.acc < inf:  # false for NaN, inf and negatives
            return Rejection(Reason.BAD_VALUES, f"readings[{i}]: acc must be a finite distance >= 0")
        if r.alt is not None and not -inf < r.alt < inf:
            return Rejection(Reason.BAD_VALUES, f"readings[{i}]: alt must be finite")
        # One C-level sum instead of a test per value: a NaN or infinity anywhere makes the sum
        # non-finite (total - total is then NaN). Finite values that overflow the sum are found finite
        # by the loop, which only runs in that rare case.
        total = sum(r.vals.values())
        if total - total != 0:
            for key, value in r.vals.items():
                if isinstance(value, float) and not math.isfinite(value):
                    return Rejection(Reason.BAD_VALUES, f"readings[{i}].vals.{key} must be finite")
    return None


def check_time(packet: Packet, now_ms: int, limits: TimeLimits) -> Rejection | None:
    newest, oldest = packet.readings[-1].ts_ms, packet.readings[0].ts_ms
    if newest > now_ms + limits.max_future_ms:
        return Rejection(Reason.CLOCK_SKEW, f"reading {newest - now_ms} ms in the future")
    if oldest < now_ms - limits.max_lateness_ms:
        return Rejection(Reason.TOO_LATE, f"reading {now_ms - oldest} ms old, limit {limits.max_lateness_ms}")
    return None


def check_packet(packet: Packet, now_ms: int, limits: TimeLimits) -> Rejection | None:
    """Packet-level rules, in order; None = acceptable."""
    return check_coordinates(packet) or check_time(packet, now_ms, limits)


def out_of_bounds(kind: str, key: str, value: float) -> bool:
    lo_hi = VALUE_BOUNDS.get(kind, {}).get(key)
    return lo_hi is not None and not lo_hi[0] <= value <= lo_hi[1]


def value_flags(kind: str, reading: Reading) -> int:
    """FLAG_BAD_VALUES if any value is outside the kind's physical bounds, else 0."""
    bounds = VALUE_BOUNDS.get(kind)
    if bounds:
        for key, value in reading.vals.items():  # a plain loop: this runs for every reading
            lo_hi = bounds.get(key)
            if lo_hi is not None and not lo_hi[0] <= value <= lo_hi[1]:
                return FLAG_BAD_VALUES
    return 0


def flag_reasons(flags: int) -> list[Reason]:
    """The reason codes of a reading's flag bits, lowest bit first (unknown bits are ignored)."""
    return [reason for bit, reason in FLAG_NAMES.items() if flags & bit]
