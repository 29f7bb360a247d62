"""H3 cells, distances, and the integer multipliers that feed the reward split. Pure (no I/O).

Every quality or weight factor is an integer in basis points (`BPS` = 10000 = 1.0). Rewards are paid
in integer token units and must be recomputable bit for bit on any machine, so no float ever reaches
the reward math: floats stop at the distance, and the step from metres to basis points is a threshold
comparison, not arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import h3
from h3.api import basic_int as h3_int

BPS = 10_000

# Mean Earth radius (IUGG), metres. Distances here decide location-trust thresholds of hundreds of
# metres, where the spherical model's error (< 0.5 %) is far below GPS error.
EARTH_RADIUS_M = 6_371_008.8

# Location trust (Helium HIP-98 shape): full trust near the asserted location, a quarter a little
# further out, nothing beyond.
TRUST_FULL_M = 300.0
TRUST_PARTIAL_M = 400.0
TRUST_PARTIAL_BPS = 2_500


def cells_for(points: Iterable[tuple[float, float]], res: int) -> tuple[int, ...]:
    """`cell_for` (`devices.protocol.hwclass`) of each (lat, lon); a point equal to the one before
    reuses its cell (a station's readings all sit at one position)."""
    out = []
    last_lat = last_lon = math.nan  # equal to nothing
    cell = 0
    for lat, lon in points:
        if lat != last_lat or lon != last_lon:
            cell = h3_int.latlng_to_cell(lat, lon, res)
            last_lat, last_lon = lat, lon
        out.append(cell)
    return tuple(out)


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres between two WGS84 points (degrees)."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = phi2 - phi1
    dlmb = math.radians(lon2 - lon1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    # min() guards asin against a rounding overshoot past 1.0 for antipodal points.
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def distance_to_cell_m(lat: float, lon: float, cell: int) -> float:
    """Distance in metres from (lat, lon) to the centre of H3 `cell` (an integer index).

    Location trust uses `distance_outside_cell_m` instead: a device anywhere in its cell is where it
    said it is, and a coarse cell's centre can be a kilometre from an honest station.
    """
    c_lat, c_lon = h3.cell_to_latlng(h3.int_to_str(cell))
    return haversine_m(lat, lon, c_lat, c_lon)


def distance_outside_cell_m(lat: float, lon: float, cell: int) -> float:
    """Metres from (lat, lon) to the nearest point of H3 `cell`: 0 inside it.

    A stationary device asserts a cell, at whatever resolution its owner chose, so anywhere inside it
    is where it said it is; outside, the distance counts from the cell's edge (for a res-12 cell, a
    few metres across, that is HIP-98's distance from the asserted point). Edges are measured in a
    local flat projection around the point, exact to well under a metre at cell sizes up to res 5.
    """
    if h3_int.latlng_to_cell(lat, lon, h3_int.get_resolution(cell)) == cell:
        return 0.0
    cell_str = h3.int_to_str(cell)
    k = math.radians(1.0) * EARTH_RADIUS_M  # metres per degree of latitude
    cos_lat = math.cos(math.radians(lat))

    def local(v_lat: float, v_lon: float) -> tuple[float, float]:
        d_lon = (v_lon - lon + 180.0) % 360.0 - 180.0  # across the antimeridian too
        return d_lon * k * cos_lat, (v_lat - lat) * k

    ring = [local(*v) for v in h3.cell_to_boundary(cell_str)]
    return min(_to_segment(a, b) for a, b in zip(ring, ring[1:] + ring[:1], strict=True))


def _to_segment(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Distance from the origin to segment ab (planar)."""
    (ax, ay), (bx, by) = a, b
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    t = 0.0 if length2 == 0 else max(0.0, min(1.0, -(ax * dx + ay * dy) / length2))
    return math.hypot(ax + t * dx, ay + t * dy)


def location_trust(distance_m: float) -> int:
    """Location trust in basis points for a device measured `distance_m` from where it asserted.

    10000 up to 300 m, 2500 up to 400 m, 0 beyond (both bounds inclusive). A step function rather than
    a ramp, as Helium uses, so a spoofer gains nothing by creeping outwards metre by metre. A NaN
    distance (no usable position) earns 0, because every comparison with NaN is false.
    """
    if distance_m <= TRUST_FULL_M:
        return BPS
    if distance_m <= TRUST_PARTIAL_M:
        return TRUST_PARTIAL_BPS
    return 0


def freshness_bps(last_covered_epoch: int | None, epoch: int, refill_epochs: int) -> int:
    """How much a cell's data is still wanted in `epoch`, in basis points (Hivemapper's tile saturation).

    `last_covered_epoch` is the last epoch *before* `epoch` in which the cell earned coverage; None if it
    never has (full value: new ground pays most). The multiplier is 0 right after coverage and refills
    linearly to 10000 after `refill_epochs`, so fleets are paid to go where data is stale rather than
    to circle the same block. Meant for mobile classes: a stationary station covers its cell every epoch
    and would be held at 1/refill_epochs forever, so callers pass 10000 for stationary cells.

    Raises ValueError if `refill_epochs` < 1 or `last_covered_epoch` is after `epoch` (a caller bug
    that would otherwise silently zero the cell).
    """
    if refill_epochs < 1:
        raise ValueError(f"refill_epochs must be >= 1, got {refill_epochs}")
    if last_covered_epoch is None:
        return BPS
    elapsed = epoch - last_covered_epoch
    if elapsed < 0:
        raise ValueError(f"last covered epoch {last_covered_epoch} is after epoch {epoch}")
    return min(BPS, elapsed * BPS // refill_epochs)


def cell_weight_bps(base_bps: int, boost_bps: int, freshness_bps: int, demand_bps: int) -> int:
    """Cell weight = base × operator boost × freshness × demand, each in basis points, result in bps.

    One floor division of the full product (not one per factor) so rounding happens once and the
    result does not depend on the order of the factors. Boost and demand may exceed 10000 (they are
    multipliers); no factor may be negative, since a negative weight would take emission from others.
    """
    factors = (base_bps, boost_bps, freshness_bps, demand_bps)
    if any(f < 0 for f in factors):
        raise ValueError(f"cell weight factors must be >= 0, got {factors}")
    return base_bps * boost_bps * freshness_bps * demand_bps // BPS**3
