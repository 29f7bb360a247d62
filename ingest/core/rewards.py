"""Epoch reward split: emission → cells → devices → owners, in integer token units. Pure (no I/O).

The split is published on chain and must be recomputable by anyone from the stored inputs, so:
- every amount is an int and every weight an int in basis points (10000 = 1.0); no floats;
- rounding is largest remainder with an explicit tie-break at each level, so amounts sum exactly to
  what was allocated and nothing depends on dict or input order;
- whatever coverage did not earn is reported as `unissued`, never dropped silently.

Rules (docs/DESIGN.md §6, docs/RELIABILITY.md D20): the emission splits across covered cells in proportion to
cell weight; inside a cell at most K devices earn and at most one per owner (the Sybil caps), ranked by
quality then registration age; shares are proportional to quality × min(readings, cap).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

from ingest.core.geo import BPS
from ingest.model import CoverageRow

DIGEST_DOMAIN = "depin-ingest/epoch-inputs/v1"


@dataclass(frozen=True, slots=True)
class RewardParams:
    """Parameters of one epoch's split. Validated on construction: a bad value is a config error."""

    emission: int  # token base units for this epoch (see emission_for_epoch)
    max_devices_per_cell: int = 10  # K: WeatherXM's cell cap
    one_per_owner_per_cell: bool = True  # Sybil rule: an owner's extra devices in a cell earn nothing
    reading_cap: int = 1000  # readings beyond this per device per cell add nothing (no spam premium)
    refill_epochs: int = 7  # freshness refill period; used by whoever computes cell weights

    def __post_init__(self) -> None:
        if self.emission < 0:
            raise ValueError(f"emission must be >= 0, got {self.emission}")
        if self.max_devices_per_cell < 1:
            raise ValueError(f"max_devices_per_cell must be >= 1, got {self.max_devices_per_cell}")
        if self.reading_cap < 1:
            raise ValueError(f"reading_cap must be >= 1, got {self.reading_cap}")
        if self.refill_epochs < 1:
            raise ValueError(f"refill_epochs must be >= 1, got {self.refill_epochs}")


@dataclass(frozen=True, slots=True)
class FixedEmission:
    """The same emission every epoch."""

    per_epoch: int


@dataclass(frozen=True, slots=True)
class HalvingEmission:
    """`initial` for the first `halving_epochs` epochs (from epoch 0), then half, then a quarter, …

    Halving by integer shift keeps it exact; it reaches 0 after log2(initial) halvings.
    """

    initial: int
    halving_epochs: int


EmissionSchedule = FixedEmission | HalvingEmission


def emission_for_epoch(schedule: EmissionSchedule, epoch: int) -> int:
    """Token base units emitted in `epoch` under `schedule`."""
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if isinstance(schedule, FixedEmission):
        if schedule.per_epoch < 0:
            raise ValueError(f"emission must be >= 0, got {schedule.per_epoch}")
        return schedule.per_epoch
    if schedule.initial < 0 or schedule.halving_epochs < 1:
        raise ValueError(f"invalid halving schedule {schedule}")
    return schedule.initial >> (epoch // schedule.halving_epochs)


@dataclass(frozen=True, slots=True)
class DeviceAmount:
    """What one device earned for its coverage of one cell (a mobile device may appear once per cell)."""

    device_id: bytes
    owner: str
    cell: int
    readings: int
    amount: int


@dataclass(frozen=True, slots=True)
class EpochSplit:
    """The result of one epoch's split.

    `device_amounts` lists every (device, cell) in the input, including those that earned 0, sorted by
    (cell, device_id), so the manifest shows who was covered but not paid. `owner_amounts` holds only
    owners with a positive amount. `cells` counts distinct covered cells (cells with any row).
    Invariants: Σ device amounts == Σ owner amounts == allocated; allocated + unissued == emission.
    """

    device_amounts: list[DeviceAmount]
    owner_amounts: dict[str, int]
    allocated: int
    unissued: int
    cells: int


def largest_remainder(total: int, weights: Sequence[int], tie_key: Callable[[int], object]) -> list[int]:
    """Split `total` into ints proportional to `weights`, summing exactly to `total`.

    Each index gets floor(total × w / W); the leftover units (fewer than len(weights)) go one each to
    the largest remainders, ties broken by ascending `tie_key(index)`. A zero weight always gets 0:
    the leftover is Σ remainders / W and each remainder is < W, so there are always more positive
    remainders than leftover units. Raises ValueError if a weight is negative or all are zero.
    """
    if total < 0 or any(w < 0 for w in weights):
        raise ValueError("largest_remainder needs a non-negative total and weights")
    weight_sum = sum(weights)
    if weight_sum == 0:
        raise ValueError("largest_remainder needs at least one positive weight")
    shares = [total * w // weight_sum for w in weights]
    remainders = [total * w % weight_sum for w in weights]
    leftover = total - sum(shares)
    order = sorted(range(len(weights)), key=lambda i: (-remainders[i], tie_key(i)))
    for i in order[:leftover]:
        shares[i] += 1
    return shares


def _merge_rows(rows: Iterable[CoverageRow]) -> dict[tuple[int, bytes], CoverageRow]:
    """Rows keyed by (cell, device_id); two rows for one pair are summed (partial aggregates).

    Two rows for one device must agree on who owns it and when it was registered: disagreement means
    the inputs are inconsistent, and guessing would make the result depend on input order.
    """
    merged: dict[tuple[int, bytes], CoverageRow] = {}
    for row in rows:
        if row.readings < 0 or row.flagged < 0:
            raise ValueError(f"negative counts in {row}")
        key = (row.cell, row.device_id)
        prev = merged.get(key)
        if prev is None:
            merged[key] = row
            continue
        if (prev.owner, prev.hw_class, prev.registered_block) != (
            row.owner,
            row.hw_class,
            row.registered_block,
        ):
            raise ValueError(f"conflicting rows for device {row.device_id.hex()} in cell {row.cell}")
        merged[key] = CoverageRow(
            device_id=row.device_id,
            owner=row.owner,
            hw_class=row.hw_class,
            cell=row.cell,
            readings=prev.readings + row.readings,
            flagged=prev.flagged + row.flagged,
            registered_block=row.registered_block,
        )
    _check_device_metadata(merged.values())
    return merged


def _check_device_metadata(rows: Iterable[CoverageRow]) -> None:
    """One device, one owner and one registration across all its cells; one spelling per address.

    Two spellings of one address (checksummed and lower-case) would dodge the one-per-owner rule and
    become two Merkle leaves for one account, so they are refused rather than silently merged.
    """
    seen: dict[bytes, tuple[str, int, int]] = {}
    spellings: dict[str, str] = {}
    for row in rows:
        meta = (row.owner, row.hw_class, row.registered_block)
        if seen.setdefault(row.device_id, meta) != meta:
            raise ValueError(f"device {row.device_id.hex()} has conflicting owner/class/registration")
        if spellings.setdefault(row.owner.lower(), row.owner) != row.owner:
            raise ValueError(f"owner {row.owner} appears in two spellings")


def default_quality(rows: Iterable[CoverageRow]) -> dict[bytes, int]:
    """Each device's epoch quality in bps from its flagged share, over all its cells.

    quality = 10000 × clean / (clean + flagged): the share of clean readings. Computed per device (not
    per cell) because quality is a property of the device in the epoch: a dashcam that teleports in
    one cell is not trusted in the next. A device with no readings at all has quality 0.
    """
    clean: dict[bytes, int] = {}
    total: dict[bytes, int] = {}
    for row in rows:
        clean[row.device_id] = clean.get(row.device_id, 0) + row.readings
        total[row.device_id] = total.get(row.device_id, 0) + row.readings + row.flagged
    return {d: (BPS * clean[d] // total[d] if total[d] else 0) for d in clean}


def _effective_inputs(
    merged: Mapping[tuple[int, bytes], CoverageRow],
    cell_weights: Mapping[int, int] | None,
    device_quality: Mapping[bytes, int] | None,
) -> tuple[dict[int, int], dict[bytes, int]]:
    """The cell weights and device qualities the split actually uses, with defaults filled in.

    A cell missing from `cell_weights` weighs 10000; a device missing from `device_quality` gets its
    flagged-share default. Shared by split_epoch and inputs_digest so the digest commits to exactly
    what was computed with.
    """
    weights = {}
    for cell in sorted({c for c, _ in merged}):
        w = BPS if cell_weights is None else cell_weights.get(cell, BPS)
        if w < 0:
            raise ValueError(f"cell {cell} has negative weight {w}")
        weights[cell] = w
    quality = default_quality(merged.values())
    if device_quality is not None:
        for device_id in quality:
            if device_id in device_quality:
                quality[device_id] = device_quality[device_id]
    for device_id, q in quality.items():
        if not 0 <= q <= BPS:
            raise ValueError(f"device {device_id.hex()} quality {q} outside 0..{BPS}")
    return weights, dict(sorted(quality.items()))


def _rank_key(row: CoverageRow, quality: Mapping[bytes, int]) -> tuple[int, int, bytes]:
    """Better first: higher quality, then older registration (lower block), then device_id bytes.

    The last key only exists to make the order total; it favours no one in particular.
    """
    return (-quality[row.device_id], row.registered_block, row.device_id)


def select_earners(
    rows: Sequence[CoverageRow], quality: Mapping[bytes, int], params: RewardParams
) -> list[CoverageRow]:
    """The rows of one cell that earn, best first: one per owner (if enabled), then the top K.

    Rows that cannot earn (quality 0 or no clean readings) are dropped before ranking, so they take
    neither an owner's slot nor one of the K: otherwise an owner could park zero-reading devices in a
    cell to push out honest stations.
    """
    eligible = sorted(
        (r for r in rows if quality[r.device_id] > 0 and r.readings > 0), key=lambda r: _rank_key(r, quality)
    )
    if params.one_per_owner_per_cell:
        owners: set[str] = set()
        best: list[CoverageRow] = []
        for row in eligible:  # sorted best first, so the first row per owner is that owner's best
            if row.owner not in owners:
                owners.add(row.owner)
                best.append(row)
        eligible = best
    return eligible[: params.max_devices_per_cell]


def split_epoch(
    rows: Sequence[CoverageRow],
    params: RewardParams,
    *,
    cell_weights: Mapping[int, int] | None = None,
    device_quality: Mapping[bytes, int] | None = None,
) -> EpochSplit:
    """Split `params.emission` over the epoch's coverage rows. See the module docstring for the rules.

    `cell_weights` (bps; missing cells 10000) and `device_quality` (bps 0..10000; missing devices get
    10000 × clean / (clean + flagged)) come from geo.cell_weight_bps and the plausibility rules.
    Level 1: the emission splits over every covered cell by weight (ties: lower cell id first). A cell
    with no earning device keeps its share out of `allocated`: it is unissued, visibly. Level 2: a
    cell's share splits over its earners by quality × min(readings, cap) (ties: rank order).
    The result does not depend on the order of `rows`.
    """
    merged = _merge_rows(rows)
    weights, quality = _effective_inputs(merged, cell_weights, device_quality)
    by_cell: dict[int, list[CoverageRow]] = {cell: [] for cell in weights}
    for (cell, _), row in sorted(merged.items()):
        by_cell[cell].append(row)

    amounts: dict[tuple[int, bytes], int] = dict.fromkeys(merged, 0)
    cell_ids = list(weights)  # ascending
    if params.emission > 0 and sum(weights.values()) > 0:
        cell_weights_list = [weights[c] for c in cell_ids]
        cell_shares = largest_remainder(params.emission, cell_weights_list, lambda i: cell_ids[i])
        for cell, share in zip(cell_ids, cell_shares, strict=True):
            earners = select_earners(by_cell[cell], quality, params)
            if share == 0 or not earners:
                continue  # the share (if any) stays unissued
            device_weights = [quality[r.device_id] * min(r.readings, params.reading_cap) for r in earners]
            # earners are in rank order, so the index is the rank-order tie-break
            device_shares = largest_remainder(share, device_weights, lambda i: i)
            for row, amount in zip(earners, device_shares, strict=True):
                amounts[(cell, row.device_id)] = amount

    device_amounts = [
        DeviceAmount(row.device_id, row.owner, row.cell, row.readings, amounts[key])
        for key, row in sorted(merged.items())
    ]
    allocated = sum(amounts.values())
    return EpochSplit(
        device_amounts=device_amounts,
        owner_amounts=rollup_owners(device_amounts),
        allocated=allocated,
        unissued=params.emission - allocated,
        cells=len(weights),
    )


def rollup_owners(device_amounts: Iterable[DeviceAmount]) -> dict[str, int]:
    """Sum device amounts per owner (owners are paid, not devices). Owners with 0 are left out so the
    settlement tree gains no empty leaves; keys are sorted so iteration order is reproducible."""
    totals: dict[str, int] = {}
    for da in device_amounts:
        if da.amount < 0:
            raise ValueError(f"negative amount for device {da.device_id.hex()}")
        if da.amount:
            totals[da.owner] = totals.get(da.owner, 0) + da.amount
    return dict(sorted(totals.items()))


def cumulative(previous: Mapping[str, int], this_epoch: Mapping[str, int]) -> dict[str, int]:
    """Every owner's cumulative total after this epoch (what the Merkle tree commits to).

    Owners absent this epoch keep their previous total: the tree holds every owner ever paid, so a
    claim with an old proof and a claim with a new one both pay out exactly the difference. Refuses
    negative amounts and two spellings of one address (either would corrupt on-chain claims).
    """
    out = dict(previous)
    for owner, amount in this_epoch.items():
        if amount < 0:
            raise ValueError(f"negative amount {amount} for {owner}")
        out[owner] = out.get(owner, 0) + amount
    spellings: dict[str, str] = {}
    for owner, total in out.items():
        if total < 0:
            raise ValueError(f"negative cumulative total {total} for {owner}")
        if spellings.setdefault(owner.lower(), owner) != owner:
            raise ValueError(f"owner {owner} appears in two spellings")
    return dict(sorted(out.items()))


def inputs_digest(
    rows: Sequence[CoverageRow],
    params: RewardParams,
    cell_weights: Mapping[int, int] | None,
    epoch: int,
    *,
    device_quality: Mapping[bytes, int] | None = None,
) -> bytes:
    """sha256 of a canonical encoding of everything split_epoch's result depends on, plus the epoch.

    Encodes the *effective* inputs (rows merged and sorted, defaults filled in, weights only for covered
    cells) as sorted-key compact JSON, so equal computations give equal digests regardless of row
    order or whether a default was passed explicitly. Pass the same `device_quality` as to split_epoch:
    it changes the result, so it must change the digest.
    """
    merged = _merge_rows(rows)
    weights, quality = _effective_inputs(merged, cell_weights, device_quality)
    doc = {
        "domain": DIGEST_DOMAIN,
        "epoch": epoch,
        "params": asdict(params),
        "rows": [
            [r.cell, r.device_id.hex(), r.owner, r.hw_class, r.readings, r.flagged, r.registered_block]
            for _, r in sorted(merged.items())
        ],
        "cell_weights": [[cell, w] for cell, w in weights.items()],
        "device_quality": [[d.hex(), q] for d, q in quality.items()],
    }
    encoded = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(encoded.encode("ascii")).digest()
