"""Operator and owner commands: `depin contracts …`, `depin device …` and `depin hw …`, one module a
command group, each holding its argparse definitions beside the commands' bodies (batch registration,
the one long job, has its own module); common.py is what they share. `ingest.cli` wires the groups
into `depin` with `add_commands`.

Each command is a coroutine run by `common.run_command`, which turns every failure a user can cause —
a wrong key, a missing role, a node that is down, a stale deployment file, bad input — into one
`DepinError` line (devices/errors.py; exit code 1 in `ingest.cli`), never a traceback.
"""

from __future__ import annotations

import argparse

from devices.cli import claim, contracts, device, hw, market, verify


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The command groups, in the order `depin --help` lists them."""
    contracts.add_commands(sub)
    device.add_commands(sub)
    hw.add_commands(sub)
    verify.add_commands(sub)
    claim.add_commands(sub)
    market.add_commands(sub)
