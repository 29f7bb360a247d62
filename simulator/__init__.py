"""Simulated devices for the demo, tests and benchmarks: a deterministic fleet, a publisher, adversaries."""

from simulator import cheaters
from simulator.fleet import (
    SimDevice,
    StreamStats,
    device_record,
    make_fleet,
    next_message,
    publish_raw,
    readings_for,
    stream,
    unique_client_id,
)

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
