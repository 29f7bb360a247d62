"""Per-device token bucket, run on the device's own signed clock. Pure (no I/O, no wall clock).

Why the device's clock and not the time a message reached the consumer: after a consumer or broker
outage the broker delivers a device's whole backlog at once, and a dashcam that was offline uploads
hours of packets when it reaches Wi-Fi. On the receive clock all of that looks like a flood and would be
rejected; on the device clock a device that sent one packet a second is still sending one packet a
second. The device cannot buy tokens by lying about time: its clock is clamped to
[received − max lateness, received + max future skew] and never runs backwards, so over any stretch of
real time T a device gets at most `rate × (T + max lateness) + burst` packets through — no more than
an honest device that was offline for the whole lateness window may upload in one go.

Packets judged out of device-time order are judged as if they had come in order. With N workers a
device's packets can be judged in another order than sent (its backlog split over the workers' batches),
and a bucket whose clock only moves forward gives a packet older than the newest one no refill: an
honest backlog judged newest-first would come out `rate_limited`. So the bucket keeps its last
`reorder` decisions in device-time order, each with the tokens left after it, and the bucket before
the oldest of them (`base`): a packet is inserted at its time and the decisions after it are
replayed; it is admitted only if a token is left at its time and no later admitted packet is
overdrawn by it, so the admitted packets always fit an in-order bucket (earlier decisions stand). A
packet older than all of them is charged against `base` without refill, as before: lying about time
buys nothing an in-order bucket would not give.

Redeliveries must not be charged twice or judged differently: a packet the broker delivers again
(after a lost ack) would otherwise drain the bucket and come out `rate_limited` although its first
copy was stored, or the reverse. Each bucket therefore remembers its decision for the last `window`
seqs (an IPsec-style anti-replay window: the top seq plus two bitmaps) and repeats it.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from operator import itemgetter

from devices.protocol.model import Packet

# A new device's bucket is full before its first packet, whenever that is.
_NEVER = -(2**62)
_time = itemgetter(0)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Sustained packets per second of device time, and how many may come at once.

    Default 1 packet/s, burst 20. Real devices send far less: weather stations every 16 s–5 min,
    air sensors every minute, dashcams batch up to 256 samples per packet. 1/s is 16× the fastest
    honest station and still 100× below AWS IoT Core's 100 publishes/s per connection, so a device
    at 10× any realistic rate is limited; the burst absorbs a device flushing its queue after a
    reconnect (and clock jitter) without a rejection.
    """

    per_second: float = 1.0
    burst: float = 20.0
    window: int = 512  # seqs whose decision is remembered, so a redelivery gets the same outcome
    reorder: int = 32  # decisions kept in device-time order, so a late packet is judged as in order


@dataclass(slots=True)
class TokenBucket:
    """One device's bucket. `tokens` is None until the first packet (a new device starts full);
    `tokens`/`clock_ms` are the bucket after the newest packet in device time."""

    tokens: float | None = None
    clock_ms: int = 0
    top_seq: int = -1
    admitted: int = 0  # bit i set: seq top_seq − i was admitted
    limited: int = 0  # bit i set: seq top_seq − i was rate limited
    # The last decisions in device-time order: (device time, admitted, tokens after), and the bucket
    # before the oldest of them (tokens, clock).
    recent: list[tuple[int, bool, float]] = field(default_factory=list)
    base: tuple[float, int] | None = None

    def admit(self, seq: int, at_ms: int, limit: RateLimit) -> bool:
        """Take one token for packet `seq` at device time `at_ms`; False = rate limited.

        A seq decided before (within the window) gets the same answer and costs nothing.
        """
        prior = self._prior(seq, limit.window)
        if prior is not None:
            return prior
        if self.base is None:  # a new device, or a state kept before `recent` existed
            self.base = (limit.burst, _NEVER) if self.tokens is None else (self.tokens, self.clock_ms)
        base_ms = self.base[1]
        recent = self.recent
        # In order (the usual case) the packet goes last: no search.
        i = len(recent) if not recent or at_ms >= recent[-1][0] else bisect_right(recent, at_ms, key=_time)
        tokens, clock = (self.recent[i - 1][2], max(base_ms, self.recent[i - 1][0])) if i else self.base
        replayed = self._replay(at_ms, None, self.recent[i:], tokens, clock, limit)
        ok = replayed[0][1]
        if ok and any(was_ok and after < -1e-9 for _, was_ok, after in replayed[1:]):
            # Admitting it would overdraw a later packet already admitted: in device-time order one
            # of them would not have passed. The earlier decision stands; this one is limited.
            ok = False
            replayed = self._replay(at_ms, False, self.recent[i:], tokens, clock, limit)
        self.recent[i:] = replayed
        if len(self.recent) > limit.reorder:
            dropped = len(self.recent) - limit.reorder
            t, _, after = self.recent[dropped - 1]
            self.base = (after, max(base_ms, t))
            del self.recent[:dropped]
        last_t, _, self.tokens = self.recent[-1]
        self.clock_ms = max(self.base[1], last_t)
        self._remember(seq, ok, limit.window)
        return ok

    @staticmethod
    def _replay(
        at_ms: int,
        decided: bool | None,
        later: list[tuple[int, bool, float]],
        tokens: float,
        clock: int,
        limit: RateLimit,
    ) -> list[tuple[int, bool, float]]:
        """The new packet (admitted if a token is left, unless `decided`) then the `later` decisions
        again, from the bucket (`tokens` at `clock`) just before the new packet's time."""
        out = []
        for j, (t, was_ok, _) in enumerate([(at_ms, False, 0.0), *later]):
            if t > clock:
                tokens = min(limit.burst, tokens + (t - clock) * limit.per_second / 1000.0)
                clock = t
            if j == 0:
                was_ok = tokens >= 1.0 if decided is None else decided
            if was_ok:
                tokens -= 1.0
            out.append((t, was_ok, tokens))
        return out

    def _prior(self, seq: int, window: int) -> bool | None:
        offset = self.top_seq - seq
        if not 0 <= offset < window:
            return None
        if self.admitted >> offset & 1:
            return True
        if self.limited >> offset & 1:
            return False
        return None

    def _remember(self, seq: int, ok: bool, window: int) -> None:
        if seq > self.top_seq:
            shift = seq - self.top_seq
            # Guard the shift: seq may jump by up to 2^63, and a shift that large would allocate it.
            mask = (1 << window) - 1
            self.admitted = (self.admitted << shift) & mask if shift < window else 0
            self.limited = (self.limited << shift) & mask if shift < window else 0
            self.top_seq = seq
        offset = self.top_seq - seq
        if offset < window:
            if ok:
                self.admitted |= 1 << offset
            else:
                self.limited |= 1 << offset


def packet_clock_ms(packet: Packet, received_ms: int, max_future_ms: int, max_lateness_ms: int) -> int:
    """The device time a packet is charged at: its newest reading, clamped to what the service allows."""
    newest = packet.readings[-1].ts_ms
    return max(received_ms - max_lateness_ms, min(newest, received_ms + max_future_ms))
