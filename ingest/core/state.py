"""What the pipeline remembers between batches, bounded in memory. Pure (no I/O), but mutable.

The consumer creates one `PipelineState` and passes it to every `sort_batch`; only the pipeline
changes it. It holds, per device, the rate-limit bucket and the motion/value track, LRU-capped: a
device evicted (or a process restarted) starts again with a full bucket and no history, which costs
at most one burst and one unchecked first reading — never a wrong flag. (Media reuse needs every hash
ever stored: the store decides it, see `ingest/core/media.py`.)

Memory (tracemalloc, CPython 3.11): ~1.0 KB per device for a weather track with 5 value runs and a
full seq window, plus ~3.9 KB for the bucket's 32 ordered decisions (ingest/core/ratelimit.py), so the
default cap of 20,000 devices bounds the state near 100 MB however many devices arrive. With N
consumers on a shared subscription each keeps its own state and sees about 1/N of each device's
packets: checks still hold pairwise (no false flags), but the effective rate limit is N × the
configured one, and a teleport or jump between two packets that went to different workers is missed.
So `depin run` keeps no state between batches (`Consumer(shared_state=True)`): each
batch's transaction locks the state rows of its devices (table `device_state`, migration 023), judges
the stateful rules against them and writes them back (`encode`/`decode` below), which is exact
whatever the number of workers (docs/DESIGN.md §2).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import orjson

from ingest.core.plausibility import Fix, Run, Track
from ingest.core.ratelimit import TokenBucket


@dataclass(slots=True)
class DeviceState:
    bucket: TokenBucket = field(default_factory=TokenBucket)
    track: Track = field(default_factory=Track)


class PipelineState:
    def __init__(self, max_devices: int = 20_000) -> None:
        if max_devices < 1:
            raise ValueError("the device cap must be >= 1")
        self.max_devices = max_devices
        self._devices: OrderedDict[bytes, DeviceState] = OrderedDict()

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

    @property
    def devices(self) -> int:
        return len(self._devices)


def encode(st: DeviceState) -> bytes:
    """One device's state as stored in `device_state.state` (JSON; the seq bitmaps as hex)."""
    b, t = st.bucket, st.track
    fix = t.fix
    return orjson.dumps(
        [
            b.tokens,
            b.clock_ms,
            b.top_seq,
            f"{b.admitted:x}",
            f"{b.limited:x}",
            None if fix is None else [fix.ts_ms, fix.lat, fix.lon],
            {k: [r.value, r.since_ms, r.last_ms] for k, r in t.runs.items()},
            t.trust_memo,
            [[ts, int(ok), after] for ts, ok, after in b.recent],
            None if b.base is None else list(b.base),
        ]
    )


def decode(raw: bytes | None) -> DeviceState:
    """The state `encode` wrote; empty or None (a row just created) is a new device's state."""
    if not raw:
        return DeviceState()
    tokens, clock_ms, top_seq, admitted, limited, fix, runs, memo, *bucket_order = orjson.loads(raw)
    # Rows written before the bucket kept its decisions in order (8 fields) have none: `base` is then
    # taken from tokens and clock at the next packet.
    recent, base = bucket_order or ([], None)
    return DeviceState(
        TokenBucket(
            tokens,
            clock_ms,
            top_seq,
            int(admitted, 16),
            int(limited, 16),
            [(ts, bool(ok), after) for ts, ok, after in recent],
            None if base is None else (base[0], base[1]),
        ),
        Track(
            None if fix is None else Fix(*fix),
            {k: Run(*r) for k, r in runs.items()},
            None if memo is None else tuple(memo),
        ),
    )
