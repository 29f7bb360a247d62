"""Buyers' money in an epoch: prepaid API usage (revenue) and bounties, split into payouts. Pure (no
I/O), integers only, largest-remainder rounding with explicit tie-breaks, independent of input order.

Revenue (README "Rewards", docs/DESIGN.md §6): a prepaid key's spend in epoch n (the value of the
usage units its queries were charged while epoch n ran) is charged within what the key deposited:
charged = min(S + s, D) − min(S, D), with S its spend before epoch n, s its spend in n and D its
deposits as mirrored at the epoch's close (`through_block`): never more than was paid in, never
negative. A key's charge is spread over the (res-7 cell, epoch m of the readings) it used ∝ the spend
there. `revenue_share_bps` of each (cell, m) pool goes to the devices that earned in that cell in
epoch m (rank > 0), ∝ their clean readings there (data-DAO: who collected the data used is paid);
the rest, and a pool with no such device, goes to the treasury.

Bounties: a bounty for cells C and epochs start..end pays in each window epoch its slice
(amount·(i+1)//N − amount·i//N, N epochs) to the epoch's earning devices (rank > 0) whose coverage
cell lies in one of C (the cell or a descendant), ∝ min(clean readings, reading cap). A window epoch
without such a device keeps its slice; at the first epoch closed at or after `end` everything not paid
is refunded to the funder, and the bounty is settled.

Payouts are leaves of the same cumulative tree as the emission (`add_market`): devices' owners, the
treasury address, funders. With no treasury address the treasury's part stays in the contract
(`held`, backed, owed to nobody). Invariant: Σ payouts + held == charged + bounty released.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from eth_utils import keccak

from ingest.core import h3cells
from ingest.core.geo import BPS
from ingest.core.metering import meter_cell
from ingest.core.rewards import DeviceAmount, EpochSplit, largest_remainder

REVENUE = "revenue"
TREASURY = "treasury"
BOUNTY = "bounty"
REFUND = "refund"


@dataclass(frozen=True, slots=True)
class MarketParams:
    revenue_share_bps: int = 7_000  # of revenue, to the collecting devices; the rest to the treasury
    treasury: str = ""  # address; "": the treasury's part is held in the contract
    reading_cap: int = 1_000  # a device's readings counted for a bounty share (RewardParams.reading_cap)

    def __post_init__(self) -> None:
        if not 0 <= self.revenue_share_bps <= BPS:
            raise ValueError(f"revenue_share_bps must be 0..{BPS}, got {self.revenue_share_bps}")
        if self.reading_cap < 1:
            raise ValueError(f"reading_cap must be >= 1, got {self.reading_cap}")


@dataclass(frozen=True, slots=True)
class Spend:
    """What key `key_id` spent in this epoch on (res-7 cell, epoch of the readings), in base units."""

    key_id: str
    cell: int
    epoch: int
    amount: int


@dataclass(frozen=True, slots=True)
class Account:
    """A prepaid key: its deposits (as mirrored at the close) and its spend before this epoch."""

    key_id: str
    deposited: int
    spent_before: int


@dataclass(frozen=True, slots=True)
class Collector:
    """A device that earned (rank > 0) in epoch `epoch` in a coverage cell whose res-7 cell is `cell`."""

    cell: int
    epoch: int
    device_id: bytes
    owner: str
    readings: int


@dataclass(frozen=True, slots=True)
class Bounty:
    id: int
    funder: str
    start_epoch: int
    end_epoch: int
    cells: tuple[int, ...]
    amount: int
    paid_before: int  # paid to devices by earlier epochs


@dataclass(frozen=True, slots=True)
class Payout:
    """One leaf contribution: `kind` (revenue/treasury/bounty/refund), `ref` (key id or bounty id),
    the device (None for the treasury and refunds), the cell (res-7 for revenue, the device's coverage
    cell for a bounty; 0 otherwise), the receiving address and the amount."""

    kind: str
    ref: str
    device_id: bytes | None
    cell: int
    owner: str
    amount: int


@dataclass(frozen=True, slots=True)
class KeyCharge:
    key_id: str
    deposited: int
    spent_before: int
    spent: int
    charged: int


@dataclass(frozen=True, slots=True)
class BountyResult:
    id: int
    funder: str
    slice: int  # this epoch's slice (0 outside the window)
    paid: int  # to devices this epoch
    refund: int  # to the funder this epoch
    settled: bool  # this epoch refunded (or closed) it


@dataclass(frozen=True, slots=True)
class MarketSplit:
    charges: list[KeyCharge]
    bounties: list[BountyResult]
    payouts: list[Payout]  # sorted; zero amounts left out
    revenue: int  # Σ charged
    revenue_share: int  # of it to devices
    treasury: int  # of it to the treasury (held when no address)
    held: int
    bounty_paid: int
    refunded: int

    @property
    def paid(self) -> int:
        return sum(p.amount for p in self.payouts)

    @property
    def released(self) -> int:
        """Buyers' funds this epoch accounts for: what was charged plus bounty slices paid or refunded."""
        return self.revenue + self.bounty_paid + self.refunded

    def owner_amounts(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for p in self.payouts:
            totals[p.owner] = totals.get(p.owner, 0) + p.amount
        return dict(sorted(totals.items()))


@dataclass(frozen=True, slots=True)
class MarketInputs:
    """What the market part of an epoch reads (ingest/adapters/store/market.py): the chain as mirrored
    up to `through_block`, the spends of the epoch, the accounts of the keys that spent, the earlier
    epochs' collectors of the (cell, epoch) pairs used, and the bounties open at the epoch."""

    through_block: int
    accounts: list[Account]
    spends: list[Spend]
    collectors: list[Collector]
    bounties: list[Bounty]


def account_of(key_id: str) -> bytes:
    """The on-chain account of an API key (`deposit(account, amount)`): keccak256 of its public id."""
    return keccak(key_id.encode("utf-8"))


def charge(deposited: int, spent_before: int, spent: int) -> int:
    """What a key's spend this epoch is charged: the part of it still covered by its deposits."""
    if min(deposited, spent_before, spent) < 0:
        raise ValueError("negative deposit or spend")
    return min(spent_before + spent, deposited) - min(spent_before, deposited)


def bounty_slice(amount: int, start: int, end: int, epoch: int) -> int:
    """The bounty's share for window epoch `epoch` (0 outside the window); the slices sum to `amount`."""
    if not start <= epoch <= end:
        return 0
    n, i = end - start + 1, epoch - start
    return amount * (i + 1) // n - amount * i // n


def in_cells(cell: int, cells: Iterable[int]) -> bool:
    """Whether coverage cell `cell` is one of `cells` or lies inside one (a descendant)."""
    res = h3cells.res_of(cell)
    for c in cells:
        r = h3cells.res_of(c)
        if cell == c or (res > r and h3cells.parent(cell, r) == c):
            return True
    return False


def _earners(devices: Iterable[DeviceAmount]) -> list[DeviceAmount]:
    return [d for d in devices if d.rank > 0 and d.readings > 0]


def split_market(
    epoch: int,
    params: MarketParams,
    *,
    accounts: Iterable[Account],
    spends: Iterable[Spend],
    collectors: Iterable[Collector],
    devices: Sequence[DeviceAmount],
    bounties: Iterable[Bounty],
) -> MarketSplit:
    """Revenue and bounty payouts of epoch `epoch`. `devices`: the epoch's own split (its earners are
    the collectors of epoch `epoch` and the bounties' coverage); `collectors`: earners of the earlier
    epochs whose data was used."""
    payouts: list[Payout] = []
    treasury_total = held = 0

    def to_treasury(ref: str, amount: int) -> None:
        nonlocal treasury_total, held
        treasury_total += amount
        if params.treasury:
            payouts.append(Payout(TREASURY, ref, None, 0, params.treasury, amount))
        else:
            held += amount

    # --- revenue
    by_key: dict[str, dict[tuple[int, int], int]] = {}
    for s in spends:
        if s.amount < 0:
            raise ValueError(f"negative spend {s}")
        cells = by_key.setdefault(s.key_id, {})
        cells[(s.cell, s.epoch)] = cells.get((s.cell, s.epoch), 0) + s.amount
    known = {a.key_id: a for a in accounts}
    current = [
        Collector(meter_cell(d.cell), epoch, d.device_id, d.owner, d.readings) for d in _earners(devices)
    ]
    who: dict[tuple[int, int], dict[bytes, tuple[str, int]]] = {}
    for c in [*collectors, *current]:
        if c.readings < 0:
            raise ValueError(f"negative readings {c}")
        if c.readings:
            slot = who.setdefault((c.cell, c.epoch), {})
            owner, n = slot.get(c.device_id, (c.owner, 0))
            slot[c.device_id] = (owner, n + c.readings)
    charges = []
    share_total = 0
    for key_id in sorted(set(by_key) | set(known)):
        acct = known.get(key_id, Account(key_id, 0, 0))
        used = by_key.get(key_id, {})
        spent = sum(used.values())
        charged = charge(acct.deposited, acct.spent_before, spent)
        charges.append(KeyCharge(key_id, acct.deposited, acct.spent_before, spent, charged))
        if charged == 0:
            continue
        pairs = sorted(used)
        pools = largest_remainder(charged, [used[p] for p in pairs], lambda i: i)  # pairs sorted: index order
        for (cell, m), pool in zip(pairs, pools, strict=True):
            share = pool * params.revenue_share_bps // BPS
            got = who.get((cell, m)) if m <= epoch else None
            if share and got:
                ids = sorted(got)
                amounts = largest_remainder(share, [got[i][1] for i in ids], lambda i: i)  # ids sorted
                for device_id, amount in zip(ids, amounts, strict=True):
                    if amount:
                        payouts.append(Payout(REVENUE, key_id, device_id, cell, got[device_id][0], amount))
                share_total += share
            else:
                share = 0
            if pool - share:
                to_treasury(key_id, pool - share)

    # --- bounties
    earners = _earners(devices)
    results = []
    bounty_paid = refunded = 0
    for b in sorted(bounties, key=lambda b: b.id):
        if b.amount < 0 or b.paid_before < 0 or b.paid_before > b.amount:
            raise ValueError(f"bad bounty {b}")
        if epoch < b.start_epoch:
            continue
        # never more than is left (a bounty's earlier payouts are at most its earlier slices)
        part = min(bounty_slice(b.amount, b.start_epoch, b.end_epoch, epoch), b.amount - b.paid_before)
        paid = 0
        covering = sorted(
            (d for d in earners if in_cells(d.cell, b.cells)), key=lambda d: (d.cell, d.device_id)
        )
        if part and covering:
            amounts = largest_remainder(
                part, [min(d.readings, params.reading_cap) for d in covering], lambda i: i
            )
            for d, amount in zip(covering, amounts, strict=True):
                if amount:
                    payouts.append(Payout(BOUNTY, str(b.id), d.device_id, d.cell, d.owner, amount))
            paid = part
        settled = epoch >= b.end_epoch
        refund = b.amount - b.paid_before - paid if settled else 0
        if refund:
            payouts.append(Payout(REFUND, str(b.id), None, 0, b.funder, refund))
        bounty_paid += paid
        refunded += refund
        results.append(BountyResult(b.id, b.funder, part, paid, refund, settled))

    payouts.sort(key=lambda p: (p.kind, p.ref, p.cell, p.device_id or b"", p.owner))
    revenue = sum(c.charged for c in charges)
    return MarketSplit(
        charges=charges,
        bounties=results,
        payouts=[p for p in payouts if p.amount],
        revenue=revenue,
        revenue_share=share_total,
        treasury=treasury_total,
        held=held,
        bounty_paid=bounty_paid,
        refunded=refunded,
    )


def add_market(split: EpochSplit, market: MarketSplit) -> EpochSplit:
    """The epoch's split with the market's payouts added to its owners and to `allocated` (the
    emission's unissued part is unchanged): allocated + unissued == emission + Σ market payouts."""
    owners = dict(split.owner_amounts)
    for owner, amount in market.owner_amounts().items():
        owners[owner] = owners.get(owner, 0) + amount
    return replace(split, owner_amounts=dict(sorted(owners.items())), allocated=split.allocated + market.paid)


def payout_rows(market: MarketSplit) -> list[tuple[str, str, str, int]]:
    """(kind, ref, owner, amount) summed per owner, for the `epoch_payouts` table; a settled bounty
    without refund still gets its 'refund' row of 0 (the row marks it settled)."""
    rows: dict[tuple[str, str, str], int] = {}
    for p in market.payouts:
        rows[(p.kind, p.ref, p.owner)] = rows.get((p.kind, p.ref, p.owner), 0) + p.amount
    for b in market.bounties:
        if b.settled and b.refund == 0:
            rows[(REFUND, str(b.id), b.funder)] = 0
    return [(k, r, o, a) for (k, r, o), a in sorted(rows.items())]
