"""What `/readyz` calls failing, from what each part reports. Pure (no I/O, no clock): table-tested.

Only the parts this process runs are judged (`depin run --parts`): an API-only process is not unready
because it has no consumer, no follower or no scheduler. The rules (README "Readiness"):

- `database`: every part needs it; failing when `SELECT 1` fails (down, out of connections).
- `mqtt` (part `consume`): failing when the consumer has not been connected for more than
  `mqtt_grace_s` (counted from the process start before the first connection). A short reconnect
  (a broker restart, backoff ≤ 2 s) stays ready.
- `chain` (parts `follow`, `consume`): failing when the last registry sync or on-demand read failed
  or timed out (the RPC has an explicit request timeout), or when no sync has succeeded for more than
  `chain_stale_s` (a sync hanging on a slow RPC).
- `distributor` (part `epochs`): the mirror of the distributor's logs (claims, roots, vetoes,
  deposits, bounties) is failing when its last pass failed (RPC or database), or when no pass has
  caught up with the confirmed head for more than `chain_stale_s` (a hung RPC, a long replay): the
  same rule as the registry's `chain`. Not judged until the mirror runs (`distributor_watch_since`).
- `epochs` (part `epochs`): failing when the scheduler's last attempt to close or publish failed, or
  when a due epoch has waited more than `epoch_overdue_s` to be done (e.g. a receipt that never comes).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ReadyRules:
    mqtt_grace_s: float = 10.0
    chain_stale_s: float = 30.0
    epoch_overdue_s: float = 300.0


@dataclass(frozen=True, slots=True)
class PartsState:
    """What the parts report; times are seconds of one monotonic clock."""

    now: float
    database_ok: bool
    # consumer
    mqtt_connected: bool = False
    mqtt_down_since: float | None = None  # when it last lost (or has not yet had) its connection
    # registry follower / chain RPC
    chain_rpc_up: bool = True
    chain_last_ok: float | None = None  # the last successful sync
    chain_watch_since: float = 0.0  # when the follower started (the stale clock before a first sync)
    # distributor mirror (None: not running in this process)
    distributor_failing: bool = False  # its last pass failed
    distributor_last_ok: float | None = None  # the last pass that caught up
    distributor_watch_since: float | None = None  # when it started (the stale clock before a first pass)
    # epoch scheduler
    epoch_failing: bool = False  # the scheduler's last attempt failed
    epoch_due_since: float | None = None  # an epoch to close/publish has been due since then


def failing(parts: Collection[str], s: PartsState, rules: ReadyRules = ReadyRules()) -> list[str]:
    """Names of what is failing, in a fixed order: database, mqtt, chain, distributor, epochs."""
    out: list[str] = []
    if not s.database_ok:
        out.append("database")
    if "consume" in parts and not s.mqtt_connected:
        since = s.mqtt_down_since if s.mqtt_down_since is not None else s.now
        if s.now - since > rules.mqtt_grace_s:
            out.append("mqtt")
    if "consume" in parts or "follow" in parts:
        last = s.chain_last_ok if s.chain_last_ok is not None else s.chain_watch_since
        if not s.chain_rpc_up or s.now - last > rules.chain_stale_s:
            out.append("chain")
    if "epochs" in parts and s.distributor_watch_since is not None:
        last = s.distributor_last_ok if s.distributor_last_ok is not None else s.distributor_watch_since
        if s.distributor_failing or s.now - last > rules.chain_stale_s:
            out.append("distributor")
    if "epochs" in parts:
        overdue = s.epoch_due_since is not None and s.now - s.epoch_due_since > rules.epoch_overdue_s
        if s.epoch_failing or overdue:
            out.append("epochs")
    return out
