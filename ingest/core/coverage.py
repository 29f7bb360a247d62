"""Coverage of an epoch as the map shows it: which epochs exist, where an epoch's coverage comes from,
the hexagon of a cell, freshness. Pure (no I/O); table-tested in tests/unit/test_coverage.py.

An epoch n ≥ 1 is **closed** once the scheduler stored its result (status closed, published or
settled): its coverage is read from `device_rewards` (one row per covered device and cell) and never
changes again. The epoch holding now is **open**: its coverage so far is counted from `readings`. An
epoch before now that is not stored yet (in its grace period, waiting for the scheduler, or before the
first stored reading) is open too. An epoch after now has not started.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import h3

from ingest.core.schedule import epoch_bounds, epoch_of

# At most this many cells in one coverage answer (the most-read first): ~10 k hexagons are ~5 MB of
# GeoJSON and what a browser still draws smoothly as SVG.
MAX_CELLS = 10_000
# Device ids listed per cell (the most-read first); `devices` still counts them all. 10 is the most a
# cell pays (RewardParams.max_devices_per_cell's default).
MAX_DEVICE_IDS = 10

Source = Literal["closed", "open", "future"]


@dataclass(frozen=True, slots=True)
class EpochSpan:
    """An epoch as the map's picker lists it."""

    epoch: int
    start_ms: int
    end_ms: int
    status: str  # "open", or the stored status: "closed", "published", "settled"
    covered: bool | None = None  # any cell covered (None: not looked up)


def coverage_source(epoch: int, stored: bool, now_ms: int, genesis_ms: int, length_ms: int) -> Source:
    """Where epoch `epoch`'s coverage comes from: its stored result, live readings, or nowhere yet."""
    if stored:
        return "closed"
    current = max(1, epoch_of(now_ms, genesis_ms, length_ms))
    return "open" if epoch <= current else "future"


def open_span(epoch: int, genesis_ms: int, length_ms: int) -> EpochSpan:
    start, end = epoch_bounds(epoch, genesis_ms, length_ms)
    return EpochSpan(epoch, start, end, "open")


def current_epoch(now_ms: int, genesis_ms: int, length_ms: int) -> int:
    """The epoch holding `now_ms` (1 before genesis: readings before it count in epoch 1)."""
    return max(1, epoch_of(now_ms, genesis_ms, length_ms))


def epoch_list(
    stored: list[EpochSpan],
    now_ms: int,
    genesis_ms: int,
    length_ms: int,
    limit: int,
    before: int | None = None,
) -> list[EpochSpan]:
    """The picker's epochs below `before` (None: all), newest first, at most `limit`.

    `stored`: the stored epochs below `before`, newest first. Listed before them: the open epoch and
    the epochs after the newest stored one that are not closed yet (in their grace period, a scheduler
    behind). With nothing stored, only the open epoch: the epochs before the first reading are never
    stored (README "When epochs close"), listing them would only be noise.
    """
    current = current_epoch(now_ms, genesis_ms, length_ms)
    if not stored:
        return [open_span(current, genesis_ms, length_ms)] if before is None or current < before else []
    top = current if before is None else min(current, before - 1)
    newest = stored[0].epoch
    unstored = [open_span(n, genesis_ms, length_ms) for n in range(top, max(newest, top - limit), -1)]
    return (unstored + stored)[:limit]


def as_of(source: Source, end_ms: int, now_ms: int) -> int:
    """The instant freshness is measured from: the epoch's end once it is over, else now."""
    return end_ms if source == "closed" else min(now_ms, end_ms)


def freshness_ms(newest_ms: int | None, as_of_ms: int) -> int | None:
    """Milliseconds from the cell's newest reading to `as_of_ms` (0 for a reading at or after it);
    None when the cell's readings are no longer stored."""
    if newest_ms is None:
        return None
    return max(0, as_of_ms - newest_ms)


def cell_ring(cell: int) -> list[list[float]]:
    """The cell's hexagon (pentagon) as a GeoJSON linear ring: [lon, lat] pairs, counter-clockwise
    (RFC 7946 §3.1.6: exterior rings are counter-clockwise), closed (the first position repeated).

    Degrees are rounded to 6 decimals (~0.1 m, RFC 7946 §11.2): 40 % fewer bytes than full floats.
    A cell crossing the antimeridian would jump from +180 to −180; its western longitudes are moved
    past +180 instead (e.g. −179.9 → 180.1), so the ring stays one small polygon a map draws right.
    """
    boundary = h3.cell_to_boundary(h3.int_to_str(cell))  # (lat, lng) pairs, counter-clockwise
    lons = [lng for _, lng in boundary]
    wrap = max(lons) - min(lons) > 180
    ring = [[round(lng + 360.0 if wrap and lng < 0 else lng, 6), round(lat, 6)] for lat, lng in boundary]
    ring.append(list(ring[0]))
    return ring
