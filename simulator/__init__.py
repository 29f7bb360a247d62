"""Simulated devices for the demo, tests and benchmarks: a deterministic fleet (fleet.py, no I/O), its
MQTT publisher (publish.py), adversaries (cheaters.py), and `depin simulate` (README "Simulator"):
scenarios (scenario.py), the messages and ledger of a run (plan.py, ledger.py), pacing (pacing.py) —
all pure — and the run's I/O (run.py, cli.py)."""

from simulator import cheaters
from simulator.fleet import SimDevice, device_record, make_fleet, next_message, readings_for
from simulator.publish import StreamStats, publish_raw, stream, unique_client_id

__all__ = [
    "SimDevice",
    "StreamStats",
    "cheaters",
    "device_record",
    "make_fleet",
    "next_message",
    "publish_raw",
    "readings_for",
    "stream",
    "unique_client_id",
]
