"""Media reuse (docs/RELIABILITY.md D19): the same media hash from two devices flags both devices' readings.

The decision needs every hash ever stored, so the store makes it in the batch's transaction (table
`media`: the first use of each hash), which holds across batches, workers and restarts. What is pure
is the batch's side of it: the first use of each hash in the batch, and the hashes the batch alone
already shows coming from two devices.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple


class MediaUse(NamedTuple):
    """One reading that carries media: where to find it again (the readings key) and who sent it."""

    sha256: bytes
    device_id: bytes
    ts_ms: int
    seq: int
    idx: int


def first_uses(uses: Iterable[MediaUse]) -> tuple[list[MediaUse], set[bytes]]:
    """The first use of each hash (in the order given) and the hashes used by more than one device.

    The same device sending a hash again (a retried frame under a new seq) is not reuse.
    """
    first: dict[bytes, MediaUse] = {}
    reused: set[bytes] = set()
    for use in uses:
        seen = first.setdefault(use.sha256, use)
        if seen.device_id != use.device_id:
            reused.add(use.sha256)
    return list(first.values()), reused
