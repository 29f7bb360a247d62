"""ingest.core.merkle against @openzeppelin/merkle-tree vectors (tests/fixtures/merkle_vectors.json,
regenerate with `node contracts/scripts/merkle_vectors.mjs`), plus properties of verify()."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from eth_utils import to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.core.merkle import CumulativeMerkleTree, leaf_hash

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "merkle_vectors.json").read_text())
CASES: list[dict[str, Any]] = VECTORS["cases"]


def _tree(case: dict[str, Any]) -> CumulativeMerkleTree:
    return CumulativeMerkleTree([(a, int(v)) for a, v in case["entries"]])


def test_vectors_cover_the_required_shapes() -> None:
    sizes = sorted(len(c["entries"]) for c in CASES)
    assert sizes == [1, 2, 5, 33]
    amounts = {int(v) for c in CASES for _, v in c["entries"]}
    assert {0, 2**200, 2**256 - 1} <= amounts


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_root_matches_openzeppelin(case: dict[str, Any]) -> None:
    tree = _tree(case)
    assert tree.root_hex == case["root"]
    assert tree.root == bytes.fromhex(case["root"][2:])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_every_proof_matches_openzeppelin(case: dict[str, Any]) -> None:
    tree = _tree(case)
    assert len(case["proofs"]) == len(case["entries"])
    for p in case["proofs"]:
        expected = [bytes.fromhex(h[2:]) for h in p["proof"]]
        assert tree.proof(p["address"]) == expected, p["address"]
        assert CumulativeMerkleTree.verify(tree.root, p["address"], int(p["amount"]), expected)


def test_single_leaf_root_is_the_leaf() -> None:
    addr = "0x" + "ab" * 20
    tree = CumulativeMerkleTree([(addr, 7)])
    assert tree.root == leaf_hash(addr, 7)
    assert tree.proof(addr) == []
    assert CumulativeMerkleTree.verify(tree.root, addr, 7, [])


def test_empty_tree_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no entries"):
        CumulativeMerkleTree([])


def test_duplicate_address_rejected() -> None:
    addr = "0x" + "cd" * 20
    with pytest.raises(ValueError, match="duplicate"):
        CumulativeMerkleTree([(addr, 1), (addr.upper().replace("0X", "0x"), 2)])


def test_amount_out_of_range() -> None:
    with pytest.raises(ValueError):
        leaf_hash("0x" + "01" * 20, 2**256)
    with pytest.raises(ValueError):
        leaf_hash("0x" + "01" * 20, -1)


def test_unknown_address_has_no_proof() -> None:
    tree = CumulativeMerkleTree([("0x" + "01" * 20, 1), ("0x" + "02" * 20, 2)])
    with pytest.raises(KeyError):
        tree.proof("0x" + "03" * 20)


def test_order_of_entries_does_not_matter() -> None:
    case = CASES[-1]
    entries = [(a, int(v)) for a, v in case["entries"]]
    assert CumulativeMerkleTree(list(reversed(entries))).root == CumulativeMerkleTree(entries).root


_addresses = st.binary(min_size=20, max_size=20).map(to_checksum_address)
_amounts = st.integers(min_value=0, max_value=2**256 - 1)
_entries = st.dictionaries(_addresses, _amounts, min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(entries=_entries, data=st.data())
def test_verify_accepts_members_and_rejects_tampering(entries: dict[str, int], data: st.DataObject) -> None:
    tree = CumulativeMerkleTree(list(entries.items()))
    addr = data.draw(st.sampled_from(sorted(entries)))
    amount = entries[addr]
    proof = tree.proof(addr)
    assert CumulativeMerkleTree.verify(tree.root, addr, amount, proof)
    # A different amount, another address's proof context, or a flipped proof byte must not verify.
    other_amount = data.draw(_amounts.filter(lambda v: v != amount))
    assert not CumulativeMerkleTree.verify(tree.root, addr, other_amount, proof)
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        bad = [*proof]
        bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
        assert not CumulativeMerkleTree.verify(tree.root, addr, amount, bad)
        assert not CumulativeMerkleTree.verify(tree.root, addr, amount, proof[:-1])
    else:
        assert len(entries) == 1 and tree.root == leaf_hash(addr, amount)


@settings(max_examples=300)
@given(st.binary(min_size=20, max_size=20), st.integers(0, 2**256 - 1))
def test_leaf_is_abi_encode_written_out(address: bytes, amount: int) -> None:
    """The leaf's preimage written out is eth_abi's encoding of (address, uint256), byte for byte."""
    from eth_abi import encode
    from eth_utils import keccak, to_checksum_address

    addr = to_checksum_address(address)
    assert leaf_hash(addr, amount) == keccak(keccak(encode(["address", "uint256"], [address, amount])))
    assert leaf_hash(addr.lower(), amount) == leaf_hash(addr, amount)
