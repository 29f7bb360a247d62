"""Score one epoch from what is stored: coverage (SQL), cell factors (previous rewards, metered usage,
signed boosts), the pure split, the cumulative tree and the manifest. Used by `Epochs.close` to store
the result and by `depin epoch verify` to recompute it; both must get the same bytes.

The manifest carries every input of the split (docs/DESIGN.md §6), so the split can be recomputed from
the manifest alone (`recompute_from_manifest`), and from the database (`score_epoch`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ingest.adapters.store.rows import CellReward, DeviceReward, OwnerReward
from ingest.core import boosts as bst
from ingest.core import manifest as mf
from ingest.core import market as mk
from ingest.core.cellweights import DemandParams, cell_factors, stationary_cells
from ingest.core.merkle import CumulativeMerkleTree
from ingest.core.rewards import (
    CellFactors,
    EmissionSchedule,
    EpochSplit,
    FixedEmission,
    HalvingEmission,
    RewardParams,
    cumulative,
    emission_for_epoch,
    merge_coverage,
    merged_digest,
    split_merged,
)
from ingest.core.schedule import epoch_bounds
from ingest.model import CoverageRow
from ingest.parts import Parts

log = logging.getLogger(__name__)

ZERO_ROOT = b"\x00" * 32
MANIFEST_VERSION = 2


class ScoringStore(Protocol):
    async def epoch_coverage(self, start_ms: int, end_ms: int) -> list[CoverageRow]: ...
    async def cumulative_by_owner(self, before_epoch: int) -> dict[str, int]: ...
    async def stationary_classes(self) -> set[int]: ...
    async def last_paid(self, epoch: int, lookback: int) -> dict[int, int]: ...
    async def usage_by_cell(self, first_epoch: int, last_epoch: int) -> dict[int, int]: ...
    async def boosts(self, epoch: int) -> list[bst.Boost]: ...
    async def market_synced_block(self) -> int | None: ...
    async def market_inputs(self, epoch: int, through_block: int) -> mk.MarketInputs: ...


@dataclass(frozen=True, slots=True)
class ScoringConfig:
    genesis_ms: int
    length_ms: int
    emission: int
    max_devices_per_cell: int = 10
    reading_cap: int = 1000
    refill_epochs: int = 1  # 1: freshness off (every earlier coverage has refilled)
    cell_readings_target: int = 1
    demand_epochs: int = 7
    demand_units: int = 1_000
    demand_cap_bps: int = 30_000
    boost_signers: tuple[str, ...] = ()
    # Buyers' revenue and bounties (ingest/core/market.py); None: not part of the epoch (no manifest key)
    market: mk.MarketParams | None = None
    # DEPIN_EMISSION_HALVING_EPOCHS: `emission` for epochs 1..N, half for the next N, …; 0 = flat.
    emission_halving_epochs: int = 0

    @property
    def demand(self) -> DemandParams:
        return DemandParams(self.demand_epochs, self.demand_units, self.demand_cap_bps)

    def emission_schedule(self) -> EmissionSchedule:
        if self.emission_halving_epochs > 0:
            return HalvingEmission(self.emission, self.emission_halving_epochs)
        return FixedEmission(self.emission)

    def params(self, epoch: int | None = None) -> RewardParams:
        """The split's parameters; with `epoch`, its emission under the schedule (epoch 1 is the
        schedule's first)."""
        emission = self.emission if epoch is None else emission_for_epoch(self.emission_schedule(), epoch - 1)
        return RewardParams(
            emission=emission,
            max_devices_per_cell=self.max_devices_per_cell,
            reading_cap=self.reading_cap,
            refill_epochs=self.refill_epochs,
            cell_readings_target=self.cell_readings_target,
        )


@dataclass(frozen=True, slots=True)
class Inputs:
    """Everything the split of one epoch depends on besides the parameters."""

    rows: list[CoverageRow]
    stationary_classes: set[int]
    last_paid: dict[int, int]
    usage7: dict[int, int]
    boosts: list[bst.Boost]  # valid and in force, one per cell
    market: mk.MarketInputs | None = None


@dataclass(frozen=True, slots=True)
class Scored:
    epoch: int
    start_ms: int
    end_ms: int
    params: RewardParams
    split: EpochSplit
    digest: bytes
    root: bytes
    header: dict[str, Any]  # the manifest without its lists: what `epochs.manifest` stores
    device_rows: list[DeviceReward]
    owner_rows: list[OwnerReward]
    cell_rows: list[CellReward]
    market: mk.MarketSplit | None = None
    payouts: list[tuple[str, str, str, int]] = field(default_factory=list)  # epoch_payouts rows

    @property
    def manifest(self) -> dict[str, Any]:
        """The whole manifest: the header and its lists, one entry per row (as the export assembles
        it from the stored rows, with the same entry functions). Built on each call."""
        return {
            **self.header,
            "cell_factors": [mf.cell_entry(*c[:9]) for c in self.cell_rows],
            "last_paid": [
                mf.last_paid_entry(c.cell, c.last_paid) for c in self.cell_rows if c.last_paid is not None
            ],
            "devices": [
                mf.device_entry(
                    d.device_id,
                    d.owner,
                    d.hw_class,  # type: ignore[arg-type]  # always set by build()
                    d.registered_block,  # type: ignore[arg-type]
                    d.cell,
                    d.readings,
                    d.flagged,
                    d.quality,
                    d.rank,
                    d.amount,
                )
                for d in self.device_rows
            ],
            "owners": [mf.owner_entry(o, a, c) for o, a, c, _ in self.owner_rows],
        }


async def gather(
    store: ScoringStore, config: ScoringConfig, epoch: int, *, through_block: int | None = None
) -> Inputs:
    """The epoch's inputs as stored now. Boosts failing verification are left out (and logged). With
    the market on, the chain's deposits and bounties count up to `through_block` (default: as far as
    the mirror has read)."""
    start_ms, end_ms = epoch_bounds(epoch, config.genesis_ms, config.length_ms)
    rows = await store.epoch_coverage(start_ms, end_ms)
    stored = await store.boosts(epoch)
    good = [b for b in stored if bst.valid(b, config.boost_signers)]
    for b in stored:
        if b not in good:
            log.warning(
                "boost of cell %s by %s ignored: not signed by a DEPIN_BOOST_SIGNERS key",
                hex(b.cell),
                b.signer,
            )
    return Inputs(
        rows=rows,
        stationary_classes=await store.stationary_classes(),
        last_paid=await store.last_paid(epoch, config.refill_epochs),
        usage7=await store.usage_by_cell(max(0, epoch - config.demand.epochs + 1), epoch),
        boosts=list(bst.boosts_for_epoch(good, epoch).values()),
        market=await _market_inputs(store, config, epoch, through_block),
    )


async def _market_inputs(
    store: ScoringStore, config: ScoringConfig, epoch: int, through_block: int | None
) -> mk.MarketInputs | None:
    if config.market is None:
        return None
    if through_block is None:
        through_block = await store.market_synced_block() or 0
    return await store.market_inputs(epoch, through_block)


def split_inputs(
    inputs: Inputs, config: ScoringConfig, epoch: int, parts: Parts | None = None
) -> tuple[RewardParams, EpochSplit, bytes]:
    """The pure part: factors, split, digest."""
    part = parts or Parts()
    params = config.params(epoch)
    covered = {r.cell for r in inputs.rows}
    with part("factors"):
        factors = _factors(inputs, config, epoch, covered)
    with part("merge"):  # once for both (split_epoch and inputs_digest would each merge the rows)
        merged = merge_coverage(inputs.rows)
    with part("split"):
        split = split_merged(merged, params, cell_factors=factors)
    with part("digest"):
        by_cell = [(c.cell, c.boost, c.freshness, c.demand) for c in split.cell_results]
        digest = merged_digest(merged, params, by_cell, epoch)
    return params, split, digest


def _factors(inputs: Inputs, config: ScoringConfig, epoch: int, covered: set[int]) -> dict[int, CellFactors]:
    return cell_factors(
        covered,
        epoch,
        last_paid={c: e for c, e in inputs.last_paid.items() if c in covered},
        stationary=stationary_cells(inputs.rows, inputs.stationary_classes),
        usage7=inputs.usage7,
        boosts={b.cell: b.factor_bps for b in inputs.boosts},
        refill_epochs=config.refill_epochs,
        demand=config.demand,
    )


async def score_epoch(
    store: ScoringStore, config: ScoringConfig, epoch: int, parts: Parts | None = None
) -> Scored:
    """`parts` (optional) records the time and peak memory of each part."""
    part = parts or Parts()
    with part("gather"):
        inputs = await gather(store, config, epoch)
        previous = await store.cumulative_by_owner(epoch)
    return build(inputs, config, epoch, previous, part)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The split allocates ~10 objects per (device, cell) and creates no cycles; the cyclic collector
    scanning the growing heap meanwhile took a third of the time (50 k rows: 1.39 → 0.93 s)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def build(
    inputs: Inputs, config: ScoringConfig, epoch: int, previous: Mapping[str, int], parts: Parts | None = None
) -> Scored:
    with _gc_paused():
        return _build(inputs, config, epoch, previous, parts or Parts())


def _build(
    inputs: Inputs, config: ScoringConfig, epoch: int, previous: Mapping[str, int], part: Parts
) -> Scored:
    start_ms, end_ms = epoch_bounds(epoch, config.genesis_ms, config.length_ms)
    params, split, digest = split_inputs(inputs, config, epoch, part)
    market = None
    if config.market is not None:
        with part("market"):
            market = _split_market(inputs.market, config.market, epoch, split)
            split = mk.add_market(split, market)
    with part("tree"):
        totals = cumulative(previous, split.owner_amounts)
        tree = CumulativeMerkleTree(sorted(totals.items())) if totals else None
        root = tree.root if tree else ZERO_ROOT
    with part("rows"):
        return _rows(
            inputs, config, epoch, start_ms, end_ms, params, split, digest, totals, tree, root, market
        )


def _rows(
    inputs: Inputs,
    config: ScoringConfig,
    epoch: int,
    start_ms: int,
    end_ms: int,
    params: RewardParams,
    split: EpochSplit,
    digest: bytes,
    totals: Mapping[str, int],
    tree: CumulativeMerkleTree | None,
    root: bytes,
    market: mk.MarketSplit | None,
) -> Scored:
    """The rows stored (owners with their proofs, devices, cells, payouts) and the manifest's header."""
    owner_rows = [
        OwnerReward(owner, split.owner_amounts.get(owner, 0), total, tree.proof(owner) if tree else [])
        for owner, total in sorted(totals.items())
    ]
    meta = {r.device_id: (r.hw_class, r.registered_block) for r in inputs.rows}
    device_rows = [
        DeviceReward(
            d.device_id,
            d.owner,
            d.cell,
            d.readings,
            d.amount,
            d.flagged,
            d.quality,
            d.rank,
            *meta[d.device_id],
        )
        for d in split.device_amounts
    ]
    # field by field: dataclasses.astuple deep-copies and took ~1 s for 50 k cells
    last_paid = inputs.last_paid
    cell_rows = [
        CellReward(
            c.cell,
            c.base,
            c.boost,
            c.freshness,
            c.demand,
            c.weight,
            c.share,
            c.depth,
            c.paid,
            last_paid.get(c.cell),
        )
        for c in split.cell_results
    ]
    header = _manifest(epoch, start_ms, end_ms, params, config, inputs, split, digest, root)
    payouts: list[tuple[str, str, str, int]] = []
    if market is not None:
        assert config.market is not None and inputs.market is not None
        header["market"] = _market_manifest(config.market, inputs.market, market)
        payouts = mk.payout_rows(market)
    return Scored(
        epoch,
        start_ms,
        end_ms,
        params,
        split,
        digest,
        root,
        header,
        device_rows,
        owner_rows,
        cell_rows,
        market,
        payouts,
    )


def _split_market(
    inputs: mk.MarketInputs | None, params: mk.MarketParams, epoch: int, split: EpochSplit
) -> mk.MarketSplit:
    got = inputs or mk.MarketInputs(0, [], [], [], [])
    return mk.split_market(
        epoch,
        params,
        accounts=got.accounts,
        spends=got.spends,
        collectors=got.collectors,
        devices=split.device_amounts,
        bounties=got.bounties,
    )


def _market_manifest(
    params: mk.MarketParams, inputs: mk.MarketInputs, market: mk.MarketSplit
) -> dict[str, Any]:
    """The manifest's `market` key: the market's parameters, every input (the chain as mirrored up to
    `through_block`, spends, accounts, earlier collectors, open bounties) and every payout."""
    results = {b.id: b for b in market.bounties}
    charges = {c.key_id: c for c in market.charges}
    return {
        "params": _strs(dataclasses.asdict(params)),
        "through_block": inputs.through_block,
        "accounts": [
            {
                "key_id": a.key_id,
                "deposited": str(a.deposited),
                "spent_before": str(a.spent_before),
                "spent": str(charges[a.key_id].spent),
                "charged": str(charges[a.key_id].charged),
            }
            for a in sorted(inputs.accounts, key=lambda a: a.key_id)
        ],
        "spends": [
            [s.key_id, hex(s.cell), s.epoch, str(s.amount)]
            for s in sorted(inputs.spends, key=lambda s: (s.key_id, s.cell, s.epoch))
        ],
        "collectors": [
            [hex(c.cell), c.epoch, c.device_id.hex(), c.owner, c.readings]
            for c in sorted(inputs.collectors, key=lambda c: (c.epoch, c.cell, c.device_id))
        ],
        "bounties": [
            {
                "id": b.id,
                "funder": b.funder,
                "start_epoch": b.start_epoch,
                "end_epoch": b.end_epoch,
                "cells": [hex(c) for c in b.cells],
                "amount": str(b.amount),
                "paid_before": str(b.paid_before),
                "slice": str(results[b.id].slice if b.id in results else 0),
                "paid": str(results[b.id].paid if b.id in results else 0),
                "refund": str(results[b.id].refund if b.id in results else 0),
                "settled": results[b.id].settled if b.id in results else False,
            }
            for b in sorted(inputs.bounties, key=lambda b: b.id)
        ],
        "payouts": [
            {
                "kind": p.kind,
                "ref": p.ref,
                "device_id": None if p.device_id is None else p.device_id.hex(),
                "cell": hex(p.cell),
                "owner": p.owner,
                "amount": str(p.amount),
            }
            for p in market.payouts
        ],
        "revenue": str(market.revenue),
        "revenue_share": str(market.revenue_share),
        "treasury": str(market.treasury),
        "held": str(market.held),
        "bounty_paid": str(market.bounty_paid),
        "refunded": str(market.refunded),
    }


def _market_from_manifest(m: Mapping[str, Any]) -> mk.MarketInputs:
    return mk.MarketInputs(
        through_block=int(m["through_block"]),
        accounts=[
            mk.Account(a["key_id"], int(a["deposited"]), int(a["spent_before"])) for a in m["accounts"]
        ],
        spends=[mk.Spend(k, int(c, 16), int(e), int(a)) for k, c, e, a in m["spends"]],
        collectors=[
            mk.Collector(int(c, 16), int(e), bytes.fromhex(d), o, int(n)) for c, e, d, o, n in m["collectors"]
        ],
        bounties=[
            mk.Bounty(
                int(b["id"]),
                b["funder"],
                int(b["start_epoch"]),
                int(b["end_epoch"]),
                tuple(int(c, 16) for c in b["cells"]),
                int(b["amount"]),
                int(b["paid_before"]),
            )
            for b in m["bounties"]
        ],
    )


def _strs(d: Mapping[str, Any]) -> dict[str, Any]:
    # ints as strings: token amounts exceed JSON's safe integers, and one rule for all is simplest
    return {k: str(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in d.items()}


def _manifest(
    epoch: int,
    start_ms: int,
    end_ms: int,
    params: RewardParams,
    config: ScoringConfig,
    inputs: Inputs,
    split: EpochSplit,
    digest: bytes,
    root: bytes,
) -> dict[str, Any]:
    """The manifest's top level (its header). Its lists (`ingest.core.manifest.LISTS`: cell factors,
    last paid epochs, devices, owners) are the rows of `Scored` and are stored as rows."""
    return {
        "version": MANIFEST_VERSION,
        "epoch": epoch,
        "start_ms": start_ms,
        "end_ms": end_ms,
        "params": _strs(dataclasses.asdict(params)),
        "demand": _strs(dataclasses.asdict(config.demand)),
        "boost_signers": list(config.boost_signers),
        "inputs_digest": digest.hex(),
        "cells": split.cells,
        "allocated": str(split.allocated),
        "unissued": str(split.unissued),
        "root": "0x" + root.hex(),
        # The inputs beyond coverage, as read: enough to recompute every factor (with `last_paid`,
        # per covered cell: a column of the cells' rows).
        "stationary_classes": sorted(inputs.stationary_classes),
        "usage": [[hex(c), str(u)] for c, u in sorted(inputs.usage7.items())],
        "boosts": [bst.to_json(b) for b in inputs.boosts],
    }


def inputs_from_manifest(manifest: Mapping[str, Any]) -> Inputs:
    """The inputs a manifest states (for a recomputation that trusts no database)."""
    rows = [
        CoverageRow(
            bytes.fromhex(d["device_id"]),
            d["owner"],
            int(d["hw_class"]),
            int(d["cell"], 16),
            int(d["readings"]),
            int(d["flagged"]),
            int(d["registered_block"]),
        )
        for d in manifest["devices"]
    ]
    return Inputs(
        rows=rows,
        stationary_classes={int(c) for c in manifest["stationary_classes"]},
        last_paid={int(c, 16): int(e) for c, e in manifest["last_paid"]},
        usage7={int(c, 16): int(u) for c, u in manifest["usage"]},
        boosts=[bst.from_json(b) for b in manifest["boosts"]],
        market=_market_from_manifest(manifest["market"]) if "market" in manifest else None,
    )


def first_difference(expected: Any, got: Any, path: str = "") -> str | None:
    """Where two JSON documents first differ (a JSON path and both values), or None if equal."""
    if isinstance(expected, dict) and isinstance(got, dict):
        for key in sorted(set(expected) | set(got)):
            if key not in got or key not in expected:
                return f"{path}.{key}: {'missing' if key not in got else 'unexpected'}"
            found = first_difference(expected[key], got[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(expected, list) and isinstance(got, list):
        for i, (a, b) in enumerate(zip(expected, got, strict=False)):
            found = first_difference(a, b, f"{path}[{i}]")
            if found:
                return found
        if len(expected) != len(got):
            return f"{path}: {len(expected)} items recomputed, {len(got)} stored"
        return None
    if expected != got:
        return f"{path}: recomputed {expected!r}, stored {got!r}"
    return None


def config_from_manifest(manifest: Mapping[str, Any]) -> ScoringConfig:
    """The scoring settings an epoch was closed with, as its manifest states them (settings may have
    changed since: a recomputation uses the epoch's own)."""
    p, d = manifest["params"], manifest["demand"]
    length = int(manifest["end_ms"]) - int(manifest["start_ms"])
    return ScoringConfig(
        genesis_ms=int(manifest["start_ms"]) - (int(manifest["epoch"]) - 1) * length,
        length_ms=length,
        emission=int(p["emission"]),
        max_devices_per_cell=int(p["max_devices_per_cell"]),
        reading_cap=int(p["reading_cap"]),
        refill_epochs=int(p["refill_epochs"]),
        cell_readings_target=int(p["cell_readings_target"]),
        demand_epochs=int(d["epochs"]),
        demand_units=int(d["units"]),
        demand_cap_bps=int(d["cap_bps"]),
        boost_signers=tuple(manifest["boost_signers"]),
        market=_market_params(manifest["market"]["params"]) if "market" in manifest else None,
    )


def _market_params(p: Mapping[str, Any]) -> mk.MarketParams:
    return mk.MarketParams(
        revenue_share_bps=int(p["revenue_share_bps"]),
        treasury=str(p["treasury"]),
        reading_cap=int(p["reading_cap"]),
    )


def previous_from_manifest(manifest: Mapping[str, Any]) -> dict[str, int]:
    """Every owner's cumulative total before the epoch: the tree lists every owner ever paid."""
    return {o["owner"]: int(o["cumulative"]) - int(o["amount"]) for o in manifest["owners"]}


async def verify_epoch(
    store: ScoringStore, epoch: int, manifest: Mapping[str, Any], root_on_chain: bytes | None = None
) -> str | None:
    """None if epoch `epoch` checks out, else the first difference found, in this order: the manifest
    against a recomputation from its own inputs (is it consistent?), against a recomputation from the
    stored readings, usage and boosts (does it tell the truth?), and its root against the chain's."""
    if manifest.get("version") != MANIFEST_VERSION:
        return f"manifest version {manifest.get('version')!r}: this command checks version {MANIFEST_VERSION}"
    config = config_from_manifest(manifest)
    previous = previous_from_manifest(manifest)
    stated = inputs_from_manifest(manifest)
    for b in stated.boosts:
        if not bst.valid(b, config.boost_signers):
            return (
                f"boost of cell {hex(b.cell)} in the manifest: not signed by {b.signer} or not a listed one"
            )
    own = build(stated, config, epoch, previous)
    diff = first_difference(own.manifest, manifest)
    if diff:
        return f"the manifest does not follow from its own inputs: {diff}"
    through = int(manifest["market"]["through_block"]) if "market" in manifest else None
    again = build(
        await gather(store, config, epoch, through_block=through),
        config,
        epoch,
        await store.cumulative_by_owner(epoch),
    )
    diff = first_difference(again.manifest, manifest)
    if diff:
        return f"the stored data gives another result: {diff}"
    if root_on_chain is not None and root_on_chain != again.root:
        return f"root on chain 0x{root_on_chain.hex()}, recomputed 0x{again.root.hex()}"
    return None
