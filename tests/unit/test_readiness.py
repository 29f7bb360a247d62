"""The readiness rules (ingest/core/readiness.py), table-tested: only the parts a process runs count."""

from __future__ import annotations

import pytest

from ingest.core.readiness import PartsState, ReadyRules, failing

ALL = ("consume", "follow", "epochs", "api")
R = ReadyRules(mqtt_grace_s=10, chain_stale_s=30, epoch_overdue_s=300)


def state(**kw: object) -> PartsState:
    base: dict[str, object] = dict(
        now=1000.0, database_ok=True, mqtt_connected=True, mqtt_down_since=None, chain_rpc_up=True,
        chain_last_ok=999.0, chain_watch_since=0.0, epoch_failing=False, epoch_due_since=None,
    )  # fmt: skip
    base.update(kw)
    return PartsState(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("parts", "kw", "expected"),
    [
        (ALL, {}, []),
        (ALL, {"database_ok": False}, ["database"]),
        (("api",), {"database_ok": False}, ["database"]),
        # MQTT: a short reconnect is ready; more than the grace is not; only with the consume part.
        (ALL, {"mqtt_connected": False, "mqtt_down_since": 995.0}, []),
        (ALL, {"mqtt_connected": False, "mqtt_down_since": 990.0}, []),
        (ALL, {"mqtt_connected": False, "mqtt_down_since": 989.9}, ["mqtt"]),
        (("api", "epochs", "follow"), {"mqtt_connected": False, "mqtt_down_since": 0.0}, []),
        (("consume",), {"mqtt_connected": False, "mqtt_down_since": None}, []),  # never connected: now
        # Chain: down, or no successful sync for longer than the stale limit (a hung sync).
        (ALL, {"chain_rpc_up": False}, ["chain"]),
        (ALL, {"chain_last_ok": 969.0}, ["chain"]),
        (ALL, {"chain_last_ok": 970.0}, []),
        (ALL, {"chain_last_ok": None, "chain_watch_since": 980.0}, []),  # first sync still within limit
        (ALL, {"chain_last_ok": None, "chain_watch_since": 900.0}, ["chain"]),
        (("follow",), {"chain_rpc_up": False}, ["chain"]),
        (("consume",), {"chain_rpc_up": False}, ["chain"]),  # consume judges against the mirror
        (("api", "epochs"), {"chain_rpc_up": False}, []),  # its publishing failures speak for it
        # Epochs: the last attempt failed, or an epoch has been due for too long.
        (ALL, {"epoch_failing": True}, ["epochs"]),
        (ALL, {"epoch_due_since": 700.0}, []),
        (ALL, {"epoch_due_since": 699.0}, ["epochs"]),
        (("consume", "api"), {"epoch_failing": True}, []),
        # The distributor mirror (epochs part): its last pass failed, or none caught up for too long;
        # not judged before it runs.
        (ALL, {"distributor_watch_since": 0.0, "distributor_last_ok": 999.0}, []),
        (
            ALL,
            {"distributor_watch_since": 0.0, "distributor_last_ok": 999.0, "distributor_failing": True},
            ["distributor"],
        ),
        (ALL, {"distributor_watch_since": 0.0, "distributor_last_ok": 969.0}, ["distributor"]),
        (ALL, {"distributor_watch_since": 980.0, "distributor_last_ok": None}, []),
        (ALL, {"distributor_watch_since": 900.0, "distributor_last_ok": None}, ["distributor"]),
        (("epochs",), {"distributor_watch_since": 0.0, "distributor_failing": True}, ["distributor"]),
        (("api", "consume", "follow"), {"distributor_watch_since": 0.0, "distributor_failing": True}, []),
        (ALL, {"distributor_failing": True}, []),  # no mirror in this process
        (("api",), {"mqtt_connected": False, "mqtt_down_since": 0.0, "chain_rpc_up": False}, []),
        (
            ALL,
            {
                "database_ok": False,
                "mqtt_connected": False,
                "mqtt_down_since": 0.0,
                "chain_rpc_up": False,
                "epoch_failing": True,
                "distributor_watch_since": 0.0,
                "distributor_failing": True,
            },
            ["database", "mqtt", "chain", "distributor", "epochs"],
        ),
    ],
)
def test_failing(parts: tuple[str, ...], kw: dict[str, object], expected: list[str]) -> None:
    assert failing(parts, state(**kw), R) == expected
