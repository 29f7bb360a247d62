"""What the pipeline remembers between batches, bounded in memory. Pure (no I/O), but mutable.

The consumer creates one `PipelineState` and passes it to every `sort_batch`; only the pipeline
changes it. It holds, per device, the rate-limit bucket and the motion/value track, and a recent-media
index (sha256 → first device that sent it). Both maps are LRU-capped: a device evicted (or a process
restarted) starts again with a full bucket and no history, which costs at most one burst and one
unchecked first reading — never a wrong flag.

Memory (tracemalloc, CPython 3.11: a weather track with 5 value runs, a bucket whose seq window is
full): ~1.0 KB per device and ~0.2 KB per media hash, so the default caps bound the state near
100 MB + 40 MB however many devices or hashes arrive. With N consumers on a shared subscription each
keeps its own state and sees about 1/N of each device's packets: checks still hold pairwise (no
false flags), but the effective rate limit is N × the configured one, a teleport or jump between two
packets that went to different workers is missed, and media reuse is caught only within one worker
(a database-wide check would be the store's).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from ingest.core.plausibility import Track
from ingest.core.ratelimit import TokenBucket


@dataclass(slots=True)
class DeviceState:
    bucket: TokenBucket = field(default_factory=TokenBucket)
    track: Track = field(default_factory=Track)


class PipelineState:
    def __init__(self, max_devices: int = 100_000, max_media: int = 200_000) -> None:
        if max_devices < 1 or max_media < 1:
            raise ValueError("state caps must be >= 1")
        self.max_devices = max_devices
        self.max_media = max_media
        self._devices: OrderedDict[bytes, DeviceState] = OrderedDict()
        self._media: OrderedDict[bytes, bytes] = OrderedDict()

    def device(self, device_id: bytes) -> DeviceState:
        """The state of a verified device (created on first use; least recently used evicted)."""
        st = self._devices.get(device_id)
        if st is None:
            st = self._devices[device_id] = DeviceState()
            if len(self._devices) > self.max_devices:
                self._devices.popitem(last=False)
        else:
            self._devices.move_to_end(device_id)
        return st

    def media_owner(self, sha256: bytes, device_id: bytes) -> bytes:
        """The first device seen with this media hash; records `device_id` if the hash is new.

        Oldest-first eviction (not LRU): a copier re-sending a hash must not keep it alive forever.
        """
        owner = self._media.get(sha256)
        if owner is None:
            self._media[sha256] = owner = device_id
            if len(self._media) > self.max_media:
                self._media.popitem(last=False)
        return owner

    @property
    def devices(self) -> int:
        return len(self._devices)

    @property
    def media(self) -> int:
        return len(self._media)
