"""Per-device token bucket, run on the device's own signed clock. Pure (no I/O, no wall clock).

Why the device's clock and not the time a message reached the consumer: after a consumer or broker
outage the broker delivers a device's whole backlog at once, and a dashcam that was offline uploads
hours of packets when it reaches Wi-Fi. On the receive clock all of that looks like a flood and would be
rejected; on the device clock a device that sent one packet a second is still sending one packet a
second. The device cannot buy tokens by lying about time: its clock is clamped to
[received − max lateness, received + max future skew] and never runs backwards, so over any stretch of
real time T a device gets at most `rate × (T + max lateness) + burst` packets through — no more than
an honest device that was offline for the whole lateness window may upload in one go.

Redeliveries must not be charged twice or judged differently: a packet the broker delivers again
(after a lost ack) would otherwise drain the bucket and come out `rate_limited` although its first
copy was stored, or the reverse. Each bucket therefore remembers its decision for the last `window`
seqs (an IPsec-style anti-replay window: the top seq plus two bitmaps) and repeats it.
"""

from __future__ import annotations

from dataclasses import dataclass

from devices.protocol.model import Packet


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


@dataclass(slots=True)
class TokenBucket:
    """One device's bucket. `tokens` is None until the first packet (a new device starts full)."""

    tokens: float | None = None
    clock_ms: int = 0
    top_seq: int = -1
    admitted: int = 0  # bit i set: seq top_seq − i was admitted
    limited: int = 0  # bit i set: seq top_seq − i was rate limited

    def admit(self, seq: int, at_ms: int, limit: RateLimit) -> bool:
        """Take one token for packet `seq` at device time `at_ms`; False = rate limited.

        A seq decided before (within the window) gets the same answer and costs nothing.
        """
        prior = self._prior(seq, limit.window)
        if prior is not None:
            return prior
        if self.tokens is None:
            self.tokens, self.clock_ms = limit.burst, at_ms
        elif at_ms > self.clock_ms:
            self.tokens = min(limit.burst, self.tokens + (at_ms - self.clock_ms) * limit.per_second / 1000.0)
            self.clock_ms = at_ms
        ok = self.tokens >= 1.0
        if ok:
            self.tokens -= 1.0
        self._remember(seq, ok, limit.window)
        return ok

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
