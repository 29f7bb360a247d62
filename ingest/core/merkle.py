"""OpenZeppelin StandardMerkleTree for leaves ("address", "uint256") — PURE, no I/O.

Matches @openzeppelin/merkle-tree 1.0.8 byte for byte (roots and proofs) and `MerkleProof.verifyCalldata`:

- leaf  = keccak256(keccak256(abi.encode(address, uint256)))  (double hash: a leaf can never be
  mistaken for an inner node, unlike Uniswap's packed single-hash leaf — do not mix the two);
- inner = keccak256(min(a, b) ‖ max(a, b))  (sorted pairs, so proofs need no left/right flags);
- layout: leaves sorted by hash, stored reversed at the end of a 2n−1 array, node i = hash(2i+1, 2i+2).

Amounts are cumulative per owner across all epochs (see docs/DESIGN.md §6).
"""

from __future__ import annotations

from collections.abc import Sequence

from eth_utils import keccak, to_canonical_address, to_checksum_address

LEAF_TYPES = ("address", "uint256")
_UINT256_MAX = 2**256 - 1
_ADDRESS_PAD = bytes(12)


def leaf_hash(address: str, amount: int) -> bytes:
    if not 0 <= amount <= _UINT256_MAX:
        raise ValueError(f"amount out of uint256 range: {amount}")
    # abi.encode(address, uint256) is two 32-byte words: the address left-padded, the amount big-endian
    # (the same bytes as eth_abi's `encode`, tested; written out, 2,000 leaves take 5× less time).
    return keccak(keccak(_ADDRESS_PAD + to_canonical_address(address) + amount.to_bytes(32, "big")))


def _hash_pair(a: bytes, b: bytes) -> bytes:
    return keccak(a + b) if a <= b else keccak(b + a)


class CumulativeMerkleTree:
    """A tree over (owner address, cumulative amount). One entry per address."""

    def __init__(self, entries: Sequence[tuple[str, int]]) -> None:
        if not entries:
            raise ValueError(
                "cannot build a Merkle tree with no entries (an epoch with no rewards has no root)"
            )
        self.entries: tuple[tuple[str, int], ...] = tuple(
            (to_checksum_address(a), int(v)) for a, v in entries
        )
        seen: set[str] = set()
        for addr, _ in self.entries:
            if addr in seen:
                # Two leaves for one owner would let them claim the larger one; roll up before building.
                raise ValueError(f"duplicate address in Merkle entries: {addr}")
            seen.add(addr)
        hashed = sorted((leaf_hash(a, v), a) for a, v in self.entries)
        n = len(hashed)
        tree: list[bytes] = [b""] * (2 * n - 1)
        self._index: dict[str, int] = {}  # by lower-case address: one account, any spelling
        for i, (h, addr) in enumerate(hashed):
            pos = len(tree) - 1 - i
            tree[pos] = h
            self._index[addr.lower()] = pos
        for i in range(n - 2, -1, -1):
            tree[i] = _hash_pair(tree[2 * i + 1], tree[2 * i + 2])
        self._tree = tree

    @property
    def root(self) -> bytes:
        return self._tree[0]

    @property
    def root_hex(self) -> str:
        return "0x" + self.root.hex()

    def __len__(self) -> int:
        return len(self.entries)

    def amount_of(self, address: str) -> int:
        addr = to_checksum_address(address)
        for a, v in self.entries:
            if a == addr:
                return v
        raise KeyError(addr)

    def proof(self, address: str) -> list[bytes]:
        """Sibling hashes from the leaf up to (not including) the root; [] for a single-leaf tree."""
        i = self._index.get(address.lower())
        if i is None:
            raise KeyError(f"{to_checksum_address(address)} is not in the tree")
        out: list[bytes] = []
        while i > 0:
            sibling = i - 1 if i % 2 == 0 else i + 1
            out.append(self._tree[sibling])
            i = (i - 1) // 2
        return out

    @staticmethod
    def verify(root: bytes, address: str, amount: int, proof: Sequence[bytes]) -> bool:
        """Same algorithm as MerkleProof.processProof: fold the sorted pair hash from the leaf."""
        try:
            node = leaf_hash(address, amount)
        except ValueError:
            return False
        for sibling in proof:
            node = _hash_pair(node, bytes(sibling))
        return node == bytes(root)
