"""The ledger of a simulator run — exactly what it sent and what each message should come to — and its
comparison with what the service stored, rejected and flagged. Pure (no I/O): reconcile.py reads the
service's side from the database, this module says how the two differ.

Outcome classes (README "Outcomes and reason codes"):

    accepted            stored, every reading clean
    flagged:<flag>      stored, at least one reading carries <flag> (others may carry more flags)
    rejected:<reason>   a rejection row with <reason> for that seq, nothing stored under it
    duplicate           a byte-identical re-send: the original is stored once, no rejection row
    refused:<why>       the broker refused the sender's login (a device with no broker login):
                        the service never saw it, so nothing is stored and no rejection row exists

A ledger entry is (device, class, seq range, outcome); messages whose seq the service cannot read
(garbage: `malformed`) are counted per device instead (`unsequenced`). Several entries may name one
(device, seq) — a replayer's `duplicate` of an honest `accepted` packet — and every one must hold.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LEDGER_VERSION = 1

# README's flag table (bit → name); tests/unit/test_sim_ledger.py checks it against ingest.core.rules.
FLAG_BITS: dict[str, int] = {
    "bad_values": 1,
    "implausible_motion": 2,
    "off_location": 4,
    "media_reuse": 8,
    "flatline": 16,
    "value_jump": 32,
}


def flag_names(flags: int) -> list[str]:
    return [name for name, bit in FLAG_BITS.items() if flags & bit]


def check_outcome(outcome: str) -> str:
    kind, _, what = outcome.partition(":")
    if outcome in ("accepted", "duplicate") or (kind == "rejected" and what):
        return outcome
    if kind == "flagged" and what in FLAG_BITS:
        return outcome
    if kind == "refused" and what:
        return outcome
    raise ValueError(
        f"not an outcome class: {outcome!r} (accepted, duplicate, rejected:R, flagged:F, refused:W)"
    )


@dataclass(frozen=True)
class Entry:
    device: str  # hex id (the topic's device)
    cls: str  # honest or the cheater class that sent it
    first: int
    last: int
    outcome: str

    def seqs(self) -> range:
        return range(self.first, self.last + 1)


@dataclass(frozen=True)
class Unsequenced:
    device: str
    cls: str
    count: int
    outcome: str  # rejected:<reason>


@dataclass
class Ledger:
    scenario: str
    started_ms: int
    entries: list[Entry] = field(default_factory=list)
    unsequenced: list[Unsequenced] = field(default_factory=list)
    # device hex → {kind, owner, class} for every device the run drove (also the ones it only attacked)
    devices: dict[str, dict[str, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    sent: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "version": LEDGER_VERSION,
            "scenario": self.scenario,
            "started_ms": self.started_ms,
            "sent": self.sent,
            "devices": self.devices,
            "entries": [
                {"device": e.device, "class": e.cls, "seqs": [e.first, e.last], "outcome": e.outcome}
                for e in self.entries
            ],
            "unsequenced": [
                {"device": u.device, "class": u.cls, "count": u.count, "outcome": u.outcome}
                for u in self.unsequenced
            ],
            "notes": self.notes,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Ledger:
        if data.get("version") != LEDGER_VERSION:
            raise ValueError(f"ledger version {data.get('version')!r}, expected {LEDGER_VERSION}")
        return cls(
            scenario=str(data["scenario"]),
            started_ms=int(data["started_ms"]),
            sent=int(data.get("sent", 0)),
            devices={k: dict(v) for k, v in data.get("devices", {}).items()},
            entries=[
                Entry(
                    e["device"], e["class"], int(e["seqs"][0]), int(e["seqs"][1]), check_outcome(e["outcome"])
                )
                for e in data["entries"]
            ],
            unsequenced=[
                Unsequenced(u["device"], u["class"], int(u["count"]), check_outcome(u["outcome"]))
                for u in data.get("unsequenced", [])
            ],
            notes=list(data.get("notes", [])),
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> Ledger:
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (KeyError, TypeError, IndexError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a simulator ledger ({type(exc).__name__}: {exc})") from None

    def device_ids(self) -> list[bytes]:
        ids = {e.device for e in self.entries} | {u.device for u in self.unsequenced}
        return sorted(bytes.fromhex(d) for d in ids)

    def classes(self) -> dict[str, set[str]]:
        """Each class → the outcomes its entries expect (the test's "every cheater class is judged")."""
        out: dict[str, set[str]] = {}
        for e in self.entries:
            out.setdefault(e.cls, set()).add(e.outcome)
        for u in self.unsequenced:
            out.setdefault(u.cls, set()).add(u.outcome)
        return out


class LedgerBuilder:
    """Collects one outcome per (device, seq, class) as messages are planned; `build` folds runs of
    consecutive seqs with the same class and outcome into ranges."""

    def __init__(self, scenario: str, started_ms: int) -> None:
        self.scenario, self.started_ms = scenario, started_ms
        self._seq: dict[tuple[str, int], dict[str, str]] = {}  # (device, seq) → class → outcome
        self._unseq: Counter[tuple[str, str, str]] = Counter()
        self.devices: dict[str, dict[str, str]] = {}
        self.notes: list[str] = []
        self.sent = 0

    def device(self, device: bytes, *, kind: str, owner: str, cls: str) -> None:
        self.devices[device.hex()] = {"kind": kind, "owner": owner, "class": cls}

    def expect(self, device: bytes, seq: int, cls: str, outcome: str) -> None:
        self._seq.setdefault((device.hex(), seq), {})[cls] = check_outcome(outcome)

    def override(self, device: bytes, seq: int, outcome: str, cls: str) -> None:
        """Another device's attack changes what this packet comes to (a media copier flags its victim's
        frames): every expectation of (device, seq) becomes `outcome`, under the attacker's class."""
        self._seq[(device.hex(), seq)] = {cls: check_outcome(outcome)}

    def expect_unsequenced(self, device: bytes, cls: str, outcome: str) -> None:
        self._unseq[(device.hex(), cls, check_outcome(outcome))] += 1

    def build(self) -> Ledger:
        flat = sorted(
            (dev, cls, seq, outcome) for (dev, seq), by in self._seq.items() for cls, outcome in by.items()
        )
        entries: list[Entry] = []
        for dev, cls, seq, outcome in flat:
            last = entries[-1] if entries else None
            if last and (last.device, last.cls, last.outcome) == (dev, cls, outcome) and last.last + 1 == seq:
                entries[-1] = Entry(dev, cls, last.first, seq, outcome)
            else:
                entries.append(Entry(dev, cls, seq, seq, outcome))
        return Ledger(
            scenario=self.scenario,
            started_ms=self.started_ms,
            entries=entries,
            unsequenced=[Unsequenced(d, c, n, o) for (d, c, o), n in sorted(self._unseq.items())],
            devices=dict(self.devices),
            notes=list(self.notes),
            sent=self.sent,
        )


@dataclass
class Observed:
    """What the service holds for the ledger's devices: stored packets (seq → OR of its readings'
    flags), rejection rows (seq or None, reason), and which seqs/rows are new since the run started
    (the rest were there before and are not this run's to explain)."""

    packets: dict[str, dict[int, int]] = field(default_factory=dict)
    rejections: dict[str, list[tuple[int | None, str]]] = field(default_factory=dict)
    new_packets: dict[str, set[int]] = field(default_factory=dict)


def _expected_seqs(ledger: Ledger) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for e in ledger.entries:
        out.setdefault(e.device, set()).update(e.seqs())
    return out


def compare(ledger: Ledger, seen: Observed) -> list[str]:
    """Every difference between the ledger and the service, one line each (empty: they agree)."""
    diffs: list[str] = []
    for e in ledger.entries:
        stored = seen.packets.get(e.device, {})
        rows = seen.rejections.get(e.device, [])
        bad: list[str] = []
        for seq in e.seqs():
            reasons = sorted(r for s, r in rows if s == seq)
            got = _describe(stored.get(seq), reasons)
            if not _matches(e.outcome, stored.get(seq), reasons):
                bad.append(f"seq {seq}: {got}")
        if bad:
            head = f"{e.device[:16]}… ({e.cls}) seqs {e.first}-{e.last} expected {e.outcome}"
            shown = "; ".join(bad[:5]) + (f"; … {len(bad) - 5} more" if len(bad) > 5 else "")
            diffs.append(f"{head}: {shown}")
    for u in ledger.unsequenced:
        reason = u.outcome.partition(":")[2]
        n = sum(1 for s, r in seen.rejections.get(u.device, []) if s is None and r == reason)
        if n != u.count:
            diffs.append(
                f"{u.device[:16]}… ({u.cls}) expected {u.count} unsequenced {u.outcome}, the service has {n}"
            )
    expected = _expected_seqs(ledger)
    for dev in sorted(set(seen.new_packets) | set(seen.rejections)):
        extra = sorted(seen.new_packets.get(dev, set()) - expected.get(dev, set()))
        if extra:
            diffs.append(f"{dev[:16]}… stored seqs the ledger never sent: {_ranges(extra)}")
        stray = sorted(
            {
                (s, r)
                for s, r in seen.rejections.get(dev, [])
                if s is not None and s not in expected.get(dev, set())
            }
        )
        if stray:
            diffs.append(f"{dev[:16]}… rejections for seqs the ledger never sent: {stray[:5]}")
    return diffs


def _matches(outcome: str, flags: int | None, reasons: list[str]) -> bool:
    kind, _, what = outcome.partition(":")
    if outcome == "accepted":
        return flags == 0 and not reasons
    if outcome == "duplicate":
        return flags is not None and not reasons
    if kind == "flagged":
        return flags is not None and bool(flags & FLAG_BITS[what]) and not reasons
    if kind == "refused":  # never reached the service
        return flags is None and not reasons
    return flags is None and what in reasons  # rejected:<reason>


def _describe(flags: int | None, reasons: list[str]) -> str:
    parts = []
    if flags is None:
        parts.append("not stored")
    elif flags:
        parts.append("stored flagged " + ",".join(flag_names(flags)))
    else:
        parts.append("stored clean")
    if reasons:
        parts.append("rejected " + ",".join(reasons))
    return " + ".join(parts)


def _ranges(seqs: Iterable[int]) -> str:
    out: list[str] = []
    for s in sorted(seqs):
        if out and out[-1].split("-")[-1] == str(s - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{s}"
        else:
            out.append(str(s))
    return ", ".join(out[:10]) + (" …" if len(out) > 10 else "")
