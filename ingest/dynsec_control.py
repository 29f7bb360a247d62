"""Commands for a running Mosquitto's dynamic security plugin, and reading its answers. Pure (no I/O):
ingest/brokeradmin.py publishes them on `$CONTROL/dynamic-security/v1` and reads the answers on
`…/response`.

The accounts get the same clients, roles and ACLs as the file `depin broker dynsec` writes
(ingest/brokerauth.py: `device_role`, `service_role`, `admin_role`). Applying is idempotent in two
rounds, since the plugin has no "create or update": round one creates each role and client (a client
with its role); whatever the plugin answers "already exists" for is, in round two, modified to the
same state (`modifyRole` with our ACLs, `modifyClient` with the password and exactly our role). The
plugin answers every command of a message in one response message, in order, each echoing our
`correlationData`: that is how answers are matched, since every admin subscribed to `…/response`
sees every answer.

Mosquitto 2.0.11's `createClient`/`modifyClient` take the password in plaintext only (the plugin
hashes it itself; no field for a ready hash exists before 2.1): send commands over loopback or TLS.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ingest.brokerauth import (
    ADMIN_ROLE,
    DEVICE_ROLE_PREFIX,
    DYNSEC_DEFAULT_ACCESS,
    SERVICE_ROLE,
    BrokerAuthError,
    admin_role,
    check_account_name,
    check_device_name,
    check_username,
    device_role,
    is_device_name,
    service_role,
)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
# Errors that mean "already as asked" for the command that got them: the second round, or nothing, follows.
EXISTS = {"createClient": "Client already exists", "createRole": "Role already exists"}
GONE = {"deleteClient": "Client not found", "deleteRole": "Role not found"}


class DynsecCommandError(BrokerAuthError):
    """The plugin refused a command (one line per refusal)."""


@dataclass(frozen=True)
class LiveAccount:
    """A login to create or update: username, plaintext password, and its role (name + ACLs)."""

    username: str
    password: str
    role: dict[str, Any]

    @property
    def rolename(self) -> str:
        return str(self.role["rolename"])


def device_login(hex_id: str, password: str) -> LiveAccount:
    return LiveAccount(check_device_name(hex_id), password, device_role(hex_id))


def service_login(name: str, password: str) -> LiveAccount:
    return LiveAccount(check_account_name(name, "service account"), password, service_role())


def admin_login(name: str, password: str) -> LiveAccount:
    return LiveAccount(check_account_name(name, "admin account"), password, admin_role())


def _cmd(command: str, tag: str, **fields: Any) -> dict[str, Any]:
    return {"command": command, **fields, "correlationData": tag}


def ensure_round(accounts: Sequence[LiveAccount], tag: str) -> list[dict[str, Any]]:
    """Round one: the default access as the file has it, each distinct role, then each client with its
    role (the roles come first in the same message: the plugin runs a message's commands in order)."""
    out = [
        _cmd(
            "setDefaultACLAccess",
            f"{tag}:default",
            acls=[{"acltype": k, "allow": v} for k, v in DYNSEC_DEFAULT_ACCESS.items()],
        )
    ]
    roles = {a.rolename: a.role for a in accounts}
    out += [_cmd("createRole", f"{tag}:role:{name}", **role) for name, role in roles.items()]
    out += [
        _cmd(
            "createClient",
            f"{tag}:client:{a.username}",
            username=a.username,
            password=a.password,
            roles=[{"rolename": a.rolename}],
        )
        for a in accounts
    ]
    return out


def second_round(
    accounts: Sequence[LiveAccount], answers: Mapping[str, dict[str, Any]], tag: str
) -> list[dict[str, Any]]:
    """Round two: `modifyRole` for the roles and `modifyClient` for the clients that already existed
    (`answers`: round one's answers by correlationData). modifyClient's `roles` replaces the client's
    roles, as the file writer does; the plugin disconnects the client (it reconnects with the same
    password)."""
    out = []
    roles = {a.rolename: a.role for a in accounts}
    for name, role in roles.items():
        if _error(answers.get(f"{tag}:role:{name}")) == EXISTS["createRole"]:
            out.append(_cmd("modifyRole", f"{tag}:modrole:{name}", **role))
    for a in accounts:
        if _error(answers.get(f"{tag}:client:{a.username}")) == EXISTS["createClient"]:
            out.append(
                _cmd(
                    "modifyClient",
                    f"{tag}:modclient:{a.username}",
                    username=a.username,
                    password=a.password,
                    roles=[{"rolename": a.rolename}],
                )
            )
    return out


def remove_round(names: Iterable[str], tag: str) -> list[dict[str, Any]]:
    """Take clients out (the plugin disconnects them at once); a device's own role goes too. Absent
    ones are no error: removing twice is removing once."""
    out = []
    for name in dict.fromkeys(names):
        check_username(name)
        out.append(_cmd("deleteClient", f"{tag}:delclient:{name}", username=name))
        if is_device_name(name):
            out.append(_cmd("deleteRole", f"{tag}:delrole:{name}", rolename=DEVICE_ROLE_PREFIX + name))
    return out


def encode(commands: Sequence[dict[str, Any]]) -> bytes:
    return json.dumps({"commands": list(commands)}, separators=(",", ":")).encode()


def decode(payload: bytes) -> list[dict[str, Any]]:
    """The `responses` of one answer message ([] if it is not one: not JSON, or no list)."""
    try:
        body = json.loads(payload)
    except ValueError:
        return []
    responses = body.get("responses") if isinstance(body, dict) else None
    return [r for r in responses if isinstance(r, dict)] if isinstance(responses, list) else []


def _error(answer: dict[str, Any] | None) -> str | None:
    return None if answer is None else answer.get("error")


def failures(commands: Sequence[dict[str, Any]], answers: Mapping[str, dict[str, Any]]) -> list[str]:
    """One line per command the plugin refused or did not answer, the expected refusals left out
    ("already exists" in round one, "not found" when removing)."""
    out = []
    for c in commands:
        tag, name = c["correlationData"], c["command"]
        if tag not in answers:
            out.append(f"{name} {_subject(c)}: no answer")
            continue
        error = _error(answers[tag])
        if error is None or error == EXISTS.get(name) or error == GONE.get(name):
            continue
        out.append(f"{name} {_subject(c)}: {error}")
    return out


def _subject(c: dict[str, Any]) -> str:
    return str(c.get("username") or c.get("rolename") or "")


@dataclass(frozen=True)
class Outcome:
    """What applying did: clients created, updated (existed: password and role set), removed."""

    created: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


def outcome(
    first: Sequence[dict[str, Any]],
    removes: Sequence[dict[str, Any]],
    answers: Mapping[str, dict[str, Any]],
) -> Outcome:
    """The summary of a run from its commands and the plugin's answers (after `failures` found none)."""
    created: list[str] = []
    updated: list[str] = []
    removed: list[str] = []
    for c in first:
        if c["command"] != "createClient":
            continue
        exists = _error(answers.get(c["correlationData"])) == EXISTS["createClient"]
        (updated if exists else created).append(c["username"])
    for c in removes:
        if c["command"] == "deleteClient" and _error(answers.get(c["correlationData"])) is None:
            removed.append(c["username"])
    return Outcome(tuple(created), tuple(updated), tuple(removed))


__all__ = [
    "ADMIN_ROLE",
    "CONTROL_TOPIC",
    "RESPONSE_TOPIC",
    "SERVICE_ROLE",
    "DynsecCommandError",
    "LiveAccount",
    "Outcome",
    "admin_login",
    "decode",
    "device_login",
    "encode",
    "ensure_round",
    "failures",
    "outcome",
    "remove_round",
    "second_round",
    "service_login",
]
