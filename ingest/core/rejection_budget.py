"""Which rejections get a row in `rejections`, and which are only counted. Pure (no I/O, no wall clock).

Every rejected message is counted (`depin_rejected_total{reason}`). A row is the durable, per-device
record an owner reads (`GET /v1/devices/{id}/rejections`), and rows cost the database (~420 B each):
one client publishing unsigned garbage wrote ~7,000 rows/s, forever, under the topic's device.

- **Signed rejections are always recorded**: every reason decided after the Ed25519 signature verified
  (`rate_limited`, `bad_values`, `clock_skew`, `too_late`, `replay`, `epoch_closed`) came from the
  device's own key, so only the device can produce them and its owner must be able to see each one.
- **Unsigned rejections are recorded under a budget** (`UNSIGNED`: `too_large`, `malformed`,
  `kid_mismatch`, `unknown_device`, `revoked_device`, `bad_signature` — decided before the signature
  check or by it failing, so anyone able to publish on the topic can produce them): a token bucket per
  topic (`per_topic_per_min` rows a minute, bursts of `per_topic_burst`) and one per worker for all
  topics together (`total_per_min`). What the budget refuses is counted in
  `depin_rejections_unrecorded_total{reason}` and nowhere else. A `malformed` verdict that needs the
  registry (a `kind` that is not the device's class) is reached after the signature check, but the
  reason does not say which; it is budgeted too (the budget only bites when a topic floods).

Buckets are per worker process (as the rate limiter is) and LRU-capped at `max_topics`: an evicted
topic starts again with a full burst, and the total bucket bounds what a flood over many topics
costs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from devices.protocol.model import Reason
from ingest.model import RejectedMessage

UNSIGNED: frozenset[str] = frozenset(
    {
        Reason.TOO_LARGE,
        Reason.MALFORMED,
        Reason.KID_MISMATCH,
        Reason.UNKNOWN_DEVICE,
        Reason.REVOKED_DEVICE,
        Reason.BAD_SIGNATURE,
    }
)


def always_recorded(reason: str) -> bool:
    """True for rejections of messages the device's key signed: recorded whatever the budget says."""
    return reason not in UNSIGNED


@dataclass(frozen=True, slots=True)
class BudgetConfig:
    per_topic_per_min: float = 10.0
    per_topic_burst: float = 20.0
    total_per_min: float = 6000.0  # all topics of one worker: 100 rows/s
    max_topics: int = 100_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at_ms: int


@dataclass
class RejectionBudget:
    """Token buckets on the receive clock (`now_ms`, never run backwards)."""

    config: BudgetConfig = field(default_factory=BudgetConfig)
    _topics: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)
    _total: _Bucket | None = None

    def __len__(self) -> int:
        return len(self._topics)

    @staticmethod
    def _take(bucket: _Bucket, now_ms: int, per_min: float, burst: float) -> bool:
        elapsed = max(0, now_ms - bucket.at_ms)
        bucket.tokens = min(burst, bucket.tokens + elapsed * per_min / 60_000)
        bucket.at_ms = max(bucket.at_ms, now_ms)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return True
        return False

    def admit(self, reason: str, topic: str, now_ms: int) -> bool:
        """Should this rejection get a row? Signed ones always; unsigned ones while the topic's and the
        worker's budgets last (a refused one spends nothing)."""
        if always_recorded(reason):
            return True
        cfg = self.config
        bucket = self._topics.get(topic)
        if bucket is None:
            bucket = self._topics[topic] = _Bucket(cfg.per_topic_burst, now_ms)
            while len(self._topics) > cfg.max_topics:
                self._topics.popitem(last=False)
        else:
            self._topics.move_to_end(topic)
        if self._total is None:
            self._total = _Bucket(cfg.total_per_min, now_ms)
        # Peek the topic's bucket first so a topic over its budget does not drain the total.
        if not self._take(bucket, now_ms, cfg.per_topic_per_min, cfg.per_topic_burst):
            return False
        if not self._take(self._total, now_ms, cfg.total_per_min, cfg.total_per_min):
            bucket.tokens += 1  # not spent: the row was refused by the total
            return False
        return True

    def split(
        self, rejected: Sequence[RejectedMessage], now_ms: int
    ) -> tuple[list[RejectedMessage], list[RejectedMessage]]:
        """(to record, only to count), in input order."""
        recorded: list[RejectedMessage] = []
        counted: list[RejectedMessage] = []
        for r in rejected:
            (recorded if self.admit(r.reason, r.topic, now_ms) else counted).append(r)
        return recorded, counted
