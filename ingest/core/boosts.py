"""Operator boosts of a cell's weight, signed so anyone can check them. Pure (no I/O).

A boost multiplies one cell's weight by `factor_bps` for epochs `from_epoch..to_epoch` (inclusive).
The operator signs a canonical JSON of it with EIP-191 (`personal_sign`, what a wallet shows as text),
the row is stored with its signer and signature, verified again whenever it is read, and carried into
the epoch's manifest as stored, so anyone can recover the signer from the manifest alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ingest.core.geo import BPS

if TYPE_CHECKING:
    from eth_account.messages import SignableMessage

BOOST_DOMAIN = "depin-ingest/boost/v1"
MAX_BOOST_BPS = 10 * BPS  # a boost is a nudge: one cell taking the whole emission is not one


@dataclass(frozen=True, slots=True)
class Boost:
    cell: int
    factor_bps: int
    from_epoch: int
    to_epoch: int
    set_at_ms: int  # when it was signed: of two boosts of one cell for one epoch, the later wins
    signer: str = ""
    signature: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.factor_bps <= MAX_BOOST_BPS:
            raise ValueError(f"boost factor must be 0..{MAX_BOOST_BPS} bps, got {self.factor_bps}")
        if not 1 <= self.from_epoch <= self.to_epoch:
            raise ValueError(f"boost epochs must be 1 <= from <= to, got {self.from_epoch}..{self.to_epoch}")

    def covers(self, epoch: int) -> bool:
        return self.from_epoch <= epoch <= self.to_epoch


def message(b: Boost) -> str:
    """The canonical text that is signed: sorted-key compact JSON, the cell as hex."""
    doc = {
        "domain": BOOST_DOMAIN,
        "cell": hex(b.cell),
        "factor_bps": b.factor_bps,
        "from_epoch": b.from_epoch,
        "to_epoch": b.to_epoch,
        "set_at_ms": b.set_at_ms,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def _signable(b: Boost) -> SignableMessage:
    """`message(b)` as EIP-191 signs it. eth_account is imported here, not with the module: it takes
    ~0.4 s of CPU to import, and this module is imported by every process that opens the store
    (the consumer's workers, the API; `ingest.adapters.store` → epochs), most of which never check a
    boost (README "Performance": it was what the live end-to-end figure lost)."""
    from eth_account.messages import encode_defunct

    return encode_defunct(text=message(b))


def sign(b: Boost, private_key: str | bytes) -> Boost:
    """`b` with the signer's address and its EIP-191 signature."""
    from eth_account import Account

    signed = Account.sign_message(_signable(b), private_key)
    address = Account.from_key(private_key).address
    return Boost(
        b.cell, b.factor_bps, b.from_epoch, b.to_epoch, b.set_at_ms, address, bytes(signed.signature)
    )


def recover(b: Boost) -> str | None:
    """The address that signed `b`, or None if the signature is malformed."""
    from eth_account import Account

    try:
        return str(Account.recover_message(_signable(b), signature=b.signature))
    except Exception:  # eth_keys raises several types for bad bytes; any of them means "not signed"
        return None


def valid(b: Boost, signers: Iterable[str]) -> bool:
    """Signed by the address it names, and that address is one of `signers` (case-insensitive)."""
    by = recover(b)
    allowed = {s.lower() for s in signers}
    return by is not None and by.lower() == b.signer.lower() and by.lower() in allowed


def boosts_for_epoch(boosts: Iterable[Boost], epoch: int) -> dict[int, Boost]:
    """The boost in force per cell in `epoch`: the latest signed (then the higher signature bytes, an
    arbitrary but total order). Pass only valid boosts."""
    chosen: dict[int, Boost] = {}
    for b in boosts:
        if not b.covers(epoch):
            continue
        prev = chosen.get(b.cell)
        if prev is None or (b.set_at_ms, b.signature) > (prev.set_at_ms, prev.signature):
            chosen[b.cell] = b
    return dict(sorted(chosen.items()))


def to_json(b: Boost) -> dict[str, object]:
    return {
        "cell": hex(b.cell),
        "factor_bps": b.factor_bps,
        "from_epoch": b.from_epoch,
        "to_epoch": b.to_epoch,
        "set_at_ms": b.set_at_ms,
        "signer": b.signer,
        "signature": "0x" + b.signature.hex(),
    }


def from_json(doc: Mapping[str, object]) -> Boost:
    sig = str(doc["signature"])
    return Boost(
        int(str(doc["cell"]), 16),
        int(str(doc["factor_bps"])),
        int(str(doc["from_epoch"])),
        int(str(doc["to_epoch"])),
        int(str(doc["set_at_ms"])),
        str(doc["signer"]),
        bytes.fromhex(sig.removeprefix("0x")),
    )
