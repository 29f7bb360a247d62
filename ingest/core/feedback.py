"""Owner feedback: what happened to each packet of a committed batch, per device (pure, no I/O).

Published (opt-in, `DEPIN_ACK_FEEDBACK=true`) after the batch's commit on `depin/v1/{device_id_hex}/ack`,
QoS 0, one message per device per batch, compact JSON:

    {"accepted": 3, "flagged": 1, "seq": {"16": "accepted", "17": "flagged", "18": "duplicate",
     "19": "bad_signature"}, "flags": {"17": ["bad_values"]}}

`seq` maps each seq of the batch (a decimal string: JSON keys are strings) to `accepted` (stored now,
every reading clean), `flagged` (stored now, but at least one reading carries a flag: flagged readings
earn nothing; `flags` names the flags of that packet's readings, from the README's flag table),
`duplicate` (the same bytes were stored before: nothing to resend) or a rejection reason code from the
README's table. `accepted` counts the packets stored by this batch (flagged ones included), `flagged`
those of them with a flag. Messages whose seq could not be read (`malformed`, `too_large`, …) are listed under
`"unsequenced": [reason, …]`, present only when non-empty. If one seq appears several times in a batch,
the packet outcome wins over a rejection, and `accepted` wins if any copy was stored.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ingest.core.rules import FLAG_MEDIA_REUSE, flag_reasons
from ingest.model import AcceptedPacket

ACCEPTED = "accepted"
FLAGGED = "flagged"
DUPLICATE = "duplicate"
REPLAY = "replay"
EPOCH_CLOSED = "epoch_closed"

Key = tuple[bytes, int]  # (device id, seq)


@dataclass(slots=True)
class DeviceFeedback:
    seq: dict[int, str] = field(default_factory=dict)
    unsequenced: list[str] = field(default_factory=list)
    flags: dict[int, list[str]] = field(default_factory=dict)  # seq → flag names (flagged packets only)

    def encode(self) -> bytes:
        flagged = sum(1 for o in self.seq.values() if o == FLAGGED)
        body: dict[str, object] = {
            "accepted": sum(1 for o in self.seq.values() if o == ACCEPTED) + flagged,
            "flagged": flagged,
            "seq": {str(s): o for s, o in sorted(self.seq.items())},
        }
        if self.flags:
            body["flags"] = {str(s): names for s, names in sorted(self.flags.items())}
        if self.unsequenced:
            body["unsequenced"] = self.unsequenced
        return json.dumps(body, separators=(",", ":")).encode()


def batch_feedback(
    packets: Iterable[Key],
    rejected: Iterable[tuple[bytes | None, int | None, str]],
    duplicates: Iterable[Key],
    replays: Iterable[Key],
    flags: Mapping[Key, int] | None = None,
    epoch_closed: Iterable[Key] = (),
) -> dict[bytes, DeviceFeedback]:
    """Outcomes per device. `packets`: keys of the batch's packets that passed the pipeline (repeats
    included); `rejected`: (device, seq, reason) of the pipeline's rejections; `duplicates`,
    `replays` and `epoch_closed`: what the store reported for `packets`; `flags`: the OR of the flag
    bits of each packet's stored readings (absent or 0 = clean). Rejections without a device id are
    dropped: there is nobody to tell."""
    flags = flags or {}
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
    dups, reps, closed = Counter(duplicates), Counter(replays), Counter(epoch_closed)
    for (device, seq), n in occurrences.items():
        fb = out.setdefault(device, DeviceFeedback())
        if n > dups[(device, seq)] + reps[(device, seq)] + closed[(device, seq)]:
            # One copy was stored by this batch.
            names = [r.value for r in flag_reasons(flags.get((device, seq), 0))]
            outcome = FLAGGED if names else ACCEPTED
            if names:
                fb.flags[seq] = names
        elif reps[(device, seq)]:
            outcome = REPLAY
        elif closed[(device, seq)]:
            outcome = EPOCH_CLOSED
        else:
            outcome = DUPLICATE
        fb.seq[seq] = outcome
    return out


def stored_keys(
    packets: Iterable[Key],
    duplicates: Iterable[Key],
    replays: Iterable[Key],
    epoch_closed: Iterable[Key] = (),
) -> list[Key]:
    """Keys this batch stored for the first time (one per key), for latency metrics."""
    occurrences = Counter(packets)
    occurrences.subtract(duplicates)
    occurrences.subtract(replays)
    occurrences.subtract(epoch_closed)
    return [k for k, n in occurrences.items() if n > 0]


def packet_flags(packets: Iterable[AcceptedPacket], reused_media: Iterable[bytes]) -> dict[Key, int]:
    """Per packet the OR of its readings' flags as stored: the pipeline's, plus `media_reuse` for a
    media hash the store found reused (it decides that in the batch's transaction)."""
    reused = set(reused_media)
    out: dict[Key, int] = {}
    for p in packets:
        bits = 0
        for f in p.flags:
            bits |= f
        if reused and any(r.media is not None and r.media.sha256 in reused for r in p.readings):
            bits |= FLAG_MEDIA_REUSE
        key = (p.device_id, p.seq)
        out[key] = out.get(key, 0) | bits
    return out
