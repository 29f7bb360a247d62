"""`depin simulate`: the simulator's commands (simulator/cli.py), reached from `ingest/cli.py` through
`ingest/dev/` — the only part of `ingest/` the layering table lets import `simulator/`."""

from simulator.cli import add_commands

__all__ = ["add_commands"]
