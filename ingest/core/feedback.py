"""Owner feedback: what happened to each packet of a committed batch, per device (pure, no I/O).

Published (opt-in, `DEPIN_ACK_FEEDBACK=true`) after the batch's commit on `depin/v1/{device_id_hex}/ack`,
QoS 0, one message per device per batch, compact JSON:

    {"accepted": 2, "seq": {"17": "accepted", "18": "duplicate", "19": "bad_signature"}}

`seq` maps each seq of the batch (a decimal string: JSON keys are strings) to `accepted` (stored now),
`duplicate` (the same bytes were stored before: nothing to resend) or a rejection reason code from the
README's table. Messages whose seq could not be read (`malformed`, `too_large`, …) are listed under
`"unsequenced": [reason, …]`, present only when non-empty. If one seq appears several times in a batch,
the packet outcome wins over a rejection, and `accepted` wins if any copy was stored.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
REPLAY = "replay"

Key = tuple[bytes, int]  # (device id, seq)


@dataclass(slots=True)
class DeviceFeedback:
    seq: dict[int, str] = field(default_factory=dict)
    unsequenced: list[str] = field(default_factory=list)

    def encode(self) -> bytes:
        body: dict[str, object] = {
            "accepted": sum(1 for o in self.seq.values() if o == ACCEPTED),
            "seq": {str(s): o for s, o in sorted(self.seq.items())},
        }
        if self.unsequenced:
            body["unsequenced"] = self.unsequenced
        return json.dumps(body, separators=(",", ":")).encode()


def batch_feedback(
    packets: Iterable[Key],
    rejected: Iterable[tuple[bytes | None, int | None, str]],
    duplicates: Iterable[Key],
    replays: Iterable[Key],
) -> dict[bytes, DeviceFeedback]:
    """Outcomes per device. `packets`: keys of the batch's packets that passed the pipeline (repeats
    included); `rejected`: (device, seq, reason) of the pipeline's rejections; `duplicates` and
    `replays`: what the store reported for `packets`. Rejections without a device id are dropped:
    there is nobody to tell."""
    out: dict[bytes, DeviceFeedback] = {}
    for device, seq, reason in rejected:
        if device is None:
            continue
        fb = out.setdefault(device, DeviceFeedback())
        if seq is None:
            fb.unsequenced.append(reason)
        else:
            fb.seq[seq] = reason
    occurrences = Counter(packets)
    dups, reps = Counter(duplicates), Counter(replays)
    for (device, seq), n in occurrences.items():
        if n > dups[(device, seq)] + reps[(device, seq)]:
            outcome = ACCEPTED  # one copy was stored by this batch
        elif reps[(device, seq)]:
            outcome = REPLAY
        else:
            outcome = DUPLICATE
        out.setdefault(device, DeviceFeedback()).seq[seq] = outcome
    return out


def stored_keys(packets: Iterable[Key], duplicates: Iterable[Key], replays: Iterable[Key]) -> list[Key]:
    """Keys this batch stored for the first time (one per key), for latency metrics."""
    occurrences = Counter(packets)
    occurrences.subtract(duplicates)
    occurrences.subtract(replays)
    return [k for k, n in occurrences.items() if n > 0]
