"""`depin simulate`: the simulator's commands (simulator/cli.py), reached from `ingest/cli.py` through
`ingest/dev/` — the only part of `ingest/` the layering table lets import `simulator/`. It also hands the
simulator the one piece of the operator's tooling it needs and may not import itself: creating broker
logins on a running Mosquitto (ingest/brokeradmin.py) for the devices a run registers."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from devices.sdk import BrokerLogin
from simulator.cli import add_commands as _add_commands


async def provision_logins(host: str, port: int, admin: BrokerLogin, passwords: Mapping[str, str]) -> None:
    """Each device (hex id → password) gets its login and role on the running broker, as
    `depin broker dynsec --live --cred …` would give it."""
    from ingest.adapters.mqtt import MqttConfig
    from ingest.brokeradmin import AdminTarget, apply
    from ingest.dynsec_control import device_login

    config = MqttConfig(
        host=host,
        port=port,
        username=admin.username,
        password=admin.password,
        tls=admin.tls,
        tls_ca_file=admin.tls_ca_file,
    )
    await apply(AdminTarget(config), [device_login(h, pw) for h, pw in passwords.items()])


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _add_commands(sub, provisioner=provision_logins)


__all__ = ["add_commands", "provision_logins"]
