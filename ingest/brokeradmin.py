"""Live changes to a running Mosquitto's logins (`depin broker dynsec --live`, and `depin simulate`'s
generated devices): the commands of ingest/dynsec_control.py published on the dynamic security
plugin's control topic as an admin login, their answers read back, each failure one line.

Why live: the plugin reads its file at start only, and a restart drops the service's `$share`
subscription until it reconnects. The plugin saves every change it accepts to its own file (Debian's
2.0.11 rewrites it in place, owner and mode kept), so the broker's file stays in step with what it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.reasoncodes import ReasonCode

from ingest.adapters.mqtt import MqttConfig, connect_options
from ingest.brokerauth import (
    ADMIN_ROLE,
    Account,
    AccountChanges,
    BrokerAuthError,
    is_device_name,
    update_dynsec_file,
)
from ingest.dynsec_control import (
    CONTROL_TOPIC,
    RESPONSE_TOPIC,
    DynsecCommandError,
    LiveAccount,
    Outcome,
    admin_login,
    decode,
    device_login,
    encode,
    ensure_round,
    failures,
    outcome,
    remove_round,
    second_round,
    service_login,
)

DEFAULT_TIMEOUT_S = 5.0
# Commands per message: the plugin answers a message in one response; a few hundred accounts keep
# both well under any broker's message size limit (deploy/mosquitto.conf: 128 KiB).
BATCH = 100
_REFUSED = {4, 5, 0x86, 0x87, 0x8C}  # CONNACK: bad login (3.1.1: 4, 5; MQTT 5: 0x86, 0x87, 0x8C)


class BrokerAdminError(BrokerAuthError):
    """The broker could not be reached or would not take the admin's commands: one line, exit 1."""


@dataclass(frozen=True)
class AdminTarget:
    """Where the broker is and how the admin logs in (`config.username` / `password`, TLS files)."""

    config: MqttConfig
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def where(self) -> str:
        return f"{self.config.host}:{self.config.port}"


@dataclass
class DynsecSession:
    """A connected admin, subscribed to the plugin's answers; `run` sends commands and waits for theirs."""

    client: aiomqtt.Client
    target: AdminTarget
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def read(self) -> None:
        async for message in self.client.messages:
            for answer in decode(bytes(message.payload)):
                tag = answer.get("correlationData")
                if isinstance(tag, str):
                    self.answers[tag] = answer
            self.arrived.set()

    async def run(self, commands: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Send `commands` in messages of at most BATCH; the answers by correlationData. Raises
        BrokerAdminError when the plugin says nothing within the timeout."""
        tags = {c["correlationData"] for c in commands}
        for start in range(0, len(commands), BATCH):
            await self.client.publish(CONTROL_TOPIC, encode(commands[start : start + BATCH]), qos=1)
        deadline = asyncio.get_running_loop().time() + self.target.timeout_s
        while not tags <= self.answers.keys():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                if not self.answers:
                    raise BrokerAdminError(
                        f"no answer from the dynamic security plugin on {self.target.where} within "
                        f"{self.target.timeout_s:g} s: is it loaded (plugin + plugin_opt_config_file in "
                        f"mosquitto.conf), and may {self.target.config.username!r} publish on "
                        f"{CONTROL_TOPIC} (role {ADMIN_ROLE})?"
                    )
                break  # some answered, some not: `failures` names the unanswered ones
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), left)
        return {t: self.answers[t] for t in tags if t in self.answers}


@asynccontextmanager
async def dynsec_session(target: AdminTarget) -> AsyncIterator[DynsecSession]:
    cfg = target.config
    client = aiomqtt.Client(
        cfg.host,
        cfg.port,
        # deploy/mosquitto.conf replaces the client id with the username anyway (use_username_as_clientid).
        identifier=f"depin-admin-{os.getpid()}-{os.urandom(3).hex()}",
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=target.timeout_s,
        **connect_options(cfg),
    )
    try:
        await client.__aenter__()
    except MqttConnectError as exc:
        raise BrokerAdminError(_connect_refused(target, exc)) from None
    except (aiomqtt.MqttError, OSError) as exc:
        raise BrokerAdminError(f"cannot connect to MQTT broker {target.where}: {exc}") from None
    reader: asyncio.Task[None] | None = None
    try:
        granted = await client.subscribe(RESPONSE_TOPIC, qos=1)
        if _refused(granted):
            raise BrokerAdminError(
                f"the broker at {target.where} refused {cfg.username!r} the plugin's answers "
                f"({RESPONSE_TOPIC}): give the account role {ADMIN_ROLE} "
                "(`depin broker dynsec --file F --admin NAME --password-file P`, then restart the "
                "broker once)"
            )
        session = DynsecSession(client, target)
        reader = asyncio.create_task(session.read())
        yield session
    finally:
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        with contextlib.suppress(aiomqtt.MqttError, OSError):
            await client.__aexit__(None, None, None)


def _connect_refused(target: AdminTarget, exc: MqttConnectError) -> str:
    rc = exc.rc
    code = rc.value if isinstance(rc, ReasonCode) else int(rc or 0)
    reason = rc.getName() if isinstance(rc, ReasonCode) else f"code {code}"
    msg = f"MQTT broker {target.where} refused the admin login {target.config.username!r}: {reason}"
    if code in _REFUSED:
        msg += " — check --admin-user / --admin-password-file"
    return msg


def _refused(granted: Any) -> bool:
    for code in granted if isinstance(granted, list | tuple) else [granted]:
        value = code.value if isinstance(code, ReasonCode) else code
        if isinstance(value, int) and value >= 0x80:
            return True
    return False


async def apply(target: AdminTarget, accounts: Sequence[LiveAccount], remove: Sequence[str] = ()) -> Outcome:
    """Create or update `accounts` (password and role) and delete `remove` on the running broker.
    Idempotent: re-running with the same input leaves the same state. Raises DynsecCommandError
    listing every command the plugin refused."""
    tag = os.urandom(4).hex()  # other admins' answers on the shared response topic are not ours
    first = ensure_round(accounts, tag) if accounts else []
    removes = remove_round(remove, tag)
    async with dynsec_session(target) as session:
        answers = await session.run(first + removes)
        problems = failures(first + removes, answers)
        second = second_round(accounts, answers, tag)
        if second and not problems:
            second_answers = await session.run(second)
            problems = failures(second, second_answers)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; … {len(problems) - 5} more" if len(problems) > 5 else "")
        raise DynsecCommandError(f"the dynamic security plugin on {target.where} refused: {shown}")
    return outcome(first, removes, answers)


# --------------------------------------------------------------------------------------------- command


def target_from_env(
    username: str,
    password: str,
    *,
    host: str | None = None,
    port: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> AdminTarget:
    """The broker the service uses (DEPIN_MQTT_HOST/PORT and DEPIN_MQTT_TLS*; flags override host and
    port), logged in as the admin instead of the service account."""
    from ingest.settings import read_environment

    e = read_environment()
    config = MqttConfig(
        host=host or e.mqtt_host,
        port=port or e.mqtt_port,
        username=username,
        password=password,
        tls=bool(e.mqtt_tls or e.mqtt_tls_ca_file or e.mqtt_tls_cert_file),
        tls_ca_file=str(e.mqtt_tls_ca_file) if e.mqtt_tls_ca_file else None,
        tls_cert_file=str(e.mqtt_tls_cert_file) if e.mqtt_tls_cert_file else None,
        tls_key_file=str(e.mqtt_tls_key_file) if e.mqtt_tls_key_file else None,
    )
    return AdminTarget(config, timeout_s)


def live_accounts(accounts: Sequence[Account], admin: str | None) -> list[LiveAccount]:
    """Resolved accounts (ingest/brokerauth.py) as logins with their roles: a device by its hex name,
    the admin by name, anything else a service account."""
    out = []
    for a in accounts:
        if is_device_name(a.username):
            out.append(device_login(a.username, a.password))
        elif a.username == admin:
            out.append(admin_login(a.username, a.password))
        else:
            out.append(service_login(a.username, a.password))
    return out


def cmd_dynsec_live(file: Path | None, changes: AccountChanges, target: AdminTarget) -> int:
    """`depin broker dynsec --live`: the same accounts as the file command, applied to the running
    broker; then, with `--file`, written to that file too (the operator's copy stays in step)."""
    changes.check()
    accounts = changes.device_accounts() + changes.service_accounts() + changes.admin_accounts()
    done = asyncio.run(apply(target, live_accounts(accounts, changes.admin), changes.remove))
    line = (
        f"broker {target.where}: {len(done.created)} client(s) created, {len(done.updated)} updated "
        f"(password and role set), {len(done.removed)} removed"
    )
    if file is not None:
        update_dynsec_file(file, changes, accounts)
        line += f"; {file} updated too"
    print(line, file=sys.stderr)
    return 0
