"""Scenarios for `depin simulate`: who sends what, from where, how often. Pure (no I/O but reading a
TOML file).

A scenario is a TOML file or a built-in (`honest`, `mixed`, `attack`, `load`):

    name = "my-city"
    seed = 7
    owners = 3

    [region]                      # a named one ("san-francisco", "berlin", "lagos") or a centre
    center = [52.52, 13.405]
    radius_m = 15000              # stations within this distance of the centre

    [honest]
    dashcams = 4                  # drive loops at 8–12 m/s, stopping `stop_s` every `drive_s`
    weather = 3
    air = 3
    duration_s = 60               # simulated time each device covers, ending now
    dashcam_readings_per_packet = 5   # 1 Hz samples, batched
    station_interval_s = 10       # one reading per packet every 10 s of device time
    gps_noise_m = 3.0
    drive_s = 40
    stop_s = 15

    [cheaters]                    # each a count (0: off); see CHEATERS for what each does
    gps_spoofer = 1
    forger = 2

    [load]                        # only for `--load`-style runs (the built-in `load`)
    rate = 200                    # packets/s
    seconds = 10
    connections = 4
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

REGIONS: dict[str, tuple[float, float]] = {
    "san-francisco": (37.7749, -122.4194),
    "berlin": (52.52, 13.405),
    "lagos": (6.5244, 3.3792),
}


@dataclass(frozen=True)
class Cheater:
    """One cheater class: what it does and the outcome the service gives its packets."""

    name: str
    does: str
    outcome: str  # the ledger's outcome class: accepted | duplicate | rejected:<reason> | flagged:<flag>


# Every cheater class the simulator has, and how the service is expected to answer it (README
# "Outcomes and reason codes"). The outcome is what its cheating packets get; the honest packets some
# of them send first are `accepted`.
CHEATERS: dict[str, Cheater] = {
    c.name: c
    for c in (
        Cheater("gps_spoofer", "a dashcam that teleports 50 km within 0.5 s", "flagged:implausible_motion"),
        Cheater(
            "moved_station", "a station reporting from 5 km outside its asserted cell", "flagged:off_location"
        ),
        Cheater(
            "replayer", "re-sends other devices' captured packets byte for byte", "duplicate"
        ),  # absorbed: no second row, not a rejection
        Cheater(
            "forger", "signs packets for a registered device with the wrong key", "rejected:bad_signature"
        ),
        Cheater(
            "unregistered", "a correctly signed device the registry has never seen", "rejected:unknown_device"
        ),
        Cheater("clock_skewed", "a station whose clock runs 5 min ahead", "rejected:clock_skew"),
        Cheater("flatliner", "a weather station whose values never change for 3 h", "flagged:flatline"),
        Cheater("media_copier", "a dashcam re-sending another dashcam's frames", "flagged:media_reuse"),
        Cheater(
            "sybil", "one owner's many stations parked in one cell", "accepted"
        ),  # stored clean; capped when scored (one slot per owner per cell)
        Cheater("flooder", "a station sending far above its rate limit", "rejected:rate_limited"),
        Cheater("malformed", "garbage bytes on a registered device's topic", "rejected:malformed"),
        Cheater(
            "coarse_cell",
            "a station asserting a coarse (res 5) cell; the registry refuses it",
            "flagged:off_location",
        ),
    )
}


@dataclass(frozen=True)
class Region:
    center: tuple[float, float] = REGIONS["san-francisco"]
    radius_m: float = 20_000.0


@dataclass(frozen=True)
class Honest:
    dashcams: int = 0
    weather: int = 0
    air: int = 0
    duration_s: float = 60.0
    dashcam_readings_per_packet: int = 5
    station_interval_s: float = 10.0
    gps_noise_m: float = 3.0
    drive_s: float = 40.0
    stop_s: float = 15.0

    @property
    def devices(self) -> int:
        return self.dashcams + self.weather + self.air


@dataclass(frozen=True)
class Load:
    rate: float = 0.0  # packets/s; 0 = no load phase
    seconds: float = 10.0
    connections: int = 4


@dataclass(frozen=True)
class Scenario:
    name: str
    seed: int = 7
    owners: int = 3
    region: Region = Region()
    honest: Honest = Honest()
    cheaters: dict[str, int] = field(default_factory=dict)
    load: Load = Load()
    # The per-device token bucket's burst the service runs (DEPIN default 20): how many of the
    # flooder's packets are expected through.
    rate_burst: int = 20

    def cheater_count(self, name: str) -> int:
        return self.cheaters.get(name, 0)


ALL_ONE = {name: 1 for name in CHEATERS}

BUILTINS: dict[str, Scenario] = {
    "honest": Scenario("honest", honest=Honest(dashcams=4, weather=4, air=4)),
    "mixed": Scenario(
        "mixed",
        honest=Honest(dashcams=4, weather=4, air=4),
        cheaters={"gps_spoofer": 1, "forger": 1, "unregistered": 1, "replayer": 1, "moved_station": 1},
    ),
    "attack": Scenario(
        "attack",
        owners=3,
        # Stations every 5 s: 12 readings a minute, past the cell's depth target (10), so an honest
        # station earns its cell's whole share and bounds what a Sybil owner's one slot can take.
        honest=Honest(dashcams=3, weather=3, air=3, station_interval_s=5.0),
        cheaters={**ALL_ONE, "sybil": 4},
    ),
    "load": Scenario(
        "load",
        honest=Honest(dashcams=0, weather=0, air=0),
        load=Load(rate=200.0, seconds=10.0, connections=4),
    ),
}


def builtin(name: str) -> Scenario:
    try:
        return BUILTINS[name]
    except KeyError:
        raise ValueError(f"no built-in scenario {name!r}; choose from {', '.join(BUILTINS)}") from None


def _section(cls: type[Any], data: dict[str, Any], where: str) -> Any:
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    return cls(**data)


def parse(data: dict[str, Any], *, default_name: str = "scenario") -> Scenario:
    """A scenario from a TOML document's table; unknown keys and cheaters are errors (a typo would
    otherwise silently turn an attack off)."""
    top = {"name", "seed", "owners", "region", "honest", "cheaters", "load", "rate_burst"}
    unknown = set(data) - top
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)}; known: {sorted(top)}")
    region_data = dict(data.get("region", {}))
    named = region_data.pop("name", None)
    center = REGIONS.get(named, None) if named else None
    if named and center is None:
        raise ValueError(f"region: unknown name {named!r}; known: {', '.join(REGIONS)}")
    if "center" in region_data:
        lat, lon = region_data["center"]
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise ValueError(f"region.center: {lat}, {lon} is not a latitude, longitude")
        center = (float(lat), float(lon))
        del region_data["center"]
    region = _section(Region, region_data, "region")
    if center is not None:
        region = replace(region, center=center)
    cheaters = dict(data.get("cheaters", {}))
    bad = set(cheaters) - set(CHEATERS)
    if bad:
        raise ValueError(f"cheaters: unknown class(es) {sorted(bad)}; known: {', '.join(CHEATERS)}")
    for name, count in cheaters.items():
        if not isinstance(count, int) or count < 0:
            raise ValueError(f"cheaters.{name}: a count ≥ 0, not {count!r}")
    honest = _section(Honest, data.get("honest", {}), "honest")
    for f in ("dashcams", "weather", "air", "dashcam_readings_per_packet"):
        if getattr(honest, f) < 0:
            raise ValueError(f"honest.{f}: must be ≥ 0")
    if not 1 <= honest.dashcam_readings_per_packet <= 256:
        raise ValueError("honest.dashcam_readings_per_packet: 1..256 (the wire format's limit)")
    if honest.station_interval_s <= 0 or honest.duration_s <= 0:
        raise ValueError("honest.station_interval_s and honest.duration_s must be > 0")
    if honest.gps_noise_m > 4.0:
        raise ValueError("honest.gps_noise_m: at most 4 m (more would trip the motion rule's 25 m slack)")
    load = _section(Load, data.get("load", {}), "load")
    if load.rate < 0 or load.seconds <= 0 or load.connections < 1:
        raise ValueError("load: rate ≥ 0, seconds > 0, connections ≥ 1")
    owners = int(data.get("owners", 3))
    if owners < 1:
        raise ValueError("owners: at least 1")
    return Scenario(
        name=str(data.get("name", default_name)),
        seed=int(data.get("seed", 7)),
        owners=owners,
        region=region,
        honest=honest,
        cheaters=cheaters,
        load=load,
        rate_burst=int(data.get("rate_burst", 20)),
    )


def load_scenario(spec: str) -> Scenario:
    """A built-in's name or a TOML file's path."""
    if spec in BUILTINS:
        return BUILTINS[spec]
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"{spec}: neither a built-in scenario ({', '.join(BUILTINS)}) nor a file")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not TOML ({exc})") from None
    try:
        return parse(data, default_name=path.stem)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def with_overrides(s: Scenario, cheaters: dict[str, int]) -> Scenario:
    """The scenario with some cheater counts replaced (the `--<cheater> N` switches)."""
    bad = set(cheaters) - set(CHEATERS)
    if bad:
        raise ValueError(f"unknown cheater class(es) {sorted(bad)}")
    return replace(s, cheaters={**s.cheaters, **cheaters})
