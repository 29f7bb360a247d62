"""The pipeline's judging alone (decode, verify, rules, cells; no MQTT, no database): how long
`sort_batch` takes for one batch of signed packets from a simulated fleet, median of `--repeat` runs.

    .venv/bin/python bench/judge.py [--devices 2000] [--readings 10] [--repeat 7]

Use it to tell a change in the judging path from a change in I/O when bench/ingest.py moves.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

# The repository first: run as a script, this folder comes first on the path, and its ingest.py
# (the ingest benchmark) would stand in for the `ingest` package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devices.protocol.topics import up_topic
from ingest.pipeline import Incoming, PipelineConfig, PipelineState, sort_batch
from simulator.fleet import device_record, make_fleet, next_message


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=2000, help="packets per batch, one per device")
    p.add_argument("--readings", type=int, default=10, help="readings per packet")
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    fleet = make_fleet(args.devices, ["0x" + "12" * 20], seed=3)
    now = int(time.time() * 1000)
    registry = {d.device_id: device_record(d) for d in fleet}
    batch = [
        Incoming(up_topic(d.device_id), next_message(d, now - 1000, readings_per_packet=args.readings), now)
        for d in fleet
    ]
    times = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        out = sort_batch(batch, registry.get, now, PipelineConfig(), PipelineState())
        times.append(time.perf_counter() - started)
    assert len(out.accepted) == len(batch), out.rejected[:3]
    ms = statistics.median(times) * 1000
    print(
        f"judge {len(batch):,} packets of {args.readings} reading(s): {ms:.1f} ms per batch "
        f"(median of {args.repeat}), {len(batch) * args.readings / ms * 1000:,.0f} readings/s on one core"
    )


if __name__ == "__main__":
    main()
