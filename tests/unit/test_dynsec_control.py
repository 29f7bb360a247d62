"""The dynamic security plugin's commands (ingest/dynsec_control.py): the same roles and ACLs as the file
`depin broker dynsec` writes, the two idempotent rounds, answers matched by correlationData, and which
refusals are errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ingest import brokerauth
from ingest.brokerauth import ADMIN_ROLE, DEVICE_ROLE_PREFIX, SERVICE_ROLE, BrokerAuthError
from ingest.dynsec_control import (
    CONTROL_TOPIC,
    RESPONSE_TOPIC,
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

DEV = "ab" * 32
OTHER = "cd" * 32


def answers(commands: list[dict], errors: dict[tuple[str, str], str] | None = None) -> dict[str, dict]:
    """What the plugin answers: each command echoed with its correlationData, `errors` by subject."""
    errors = errors or {}
    out = {}
    for c in commands:
        a = {"command": c["command"], "correlationData": c["correlationData"]}
        subject = c.get("username") or c.get("rolename")
        if (c["command"], subject) in errors:
            a["error"] = errors[(c["command"], subject)]
        out[c["correlationData"]] = a
    return out


def test_topics() -> None:
    assert CONTROL_TOPIC == "$CONTROL/dynamic-security/v1"
    assert RESPONSE_TOPIC == "$CONTROL/dynamic-security/v1/response"


def test_first_round_creates_the_file_writers_roles_then_clients() -> None:
    accounts = [device_login(DEV, "p1"), device_login(OTHER, "p2"), service_login("depin-ingest", "s")]
    cmds = ensure_round(accounts, "t")
    assert [c["command"] for c in cmds] == [
        "setDefaultACLAccess",
        "createRole",
        "createRole",
        "createRole",
        "createClient",
        "createClient",
        "createClient",
    ]
    default = {a["acltype"]: a["allow"] for a in cmds[0]["acls"]}
    assert default == brokerauth.DYNSEC_DEFAULT_ACCESS
    roles = {c["rolename"]: c for c in cmds if c["command"] == "createRole"}
    # Exactly the roles (and ACLs) the file writer puts in the file.
    assert roles[DEVICE_ROLE_PREFIX + DEV]["acls"] == brokerauth.device_role(DEV)["acls"]
    assert roles[SERVICE_ROLE]["acls"] == brokerauth.service_role()["acls"]
    client = next(c for c in cmds if c.get("username") == DEV)
    assert client == {
        "command": "createClient",
        "username": DEV,
        "password": "p1",
        "roles": [{"rolename": DEVICE_ROLE_PREFIX + DEV}],
        "correlationData": f"t:client:{DEV}",
    }
    # Every command has a tag of its own: answers are matched by it.
    assert len({c["correlationData"] for c in cmds}) == len(cmds)


def test_a_shared_role_is_created_once() -> None:
    cmds = ensure_round([service_login("w1", "a"), service_login("w2", "b")], "t")
    assert [c["rolename"] for c in cmds if c["command"] == "createRole"] == [SERVICE_ROLE]


def test_second_round_modifies_only_what_already_existed() -> None:
    accounts = [device_login(DEV, "p1"), device_login(OTHER, "p2")]
    first = ensure_round(accounts, "t")
    got = answers(
        first,
        {
            ("createClient", DEV): "Client already exists",
            ("createRole", DEVICE_ROLE_PREFIX + DEV): "Role already exists",
        },
    )
    assert failures(first, got) == []
    second = second_round(accounts, got, "t")
    assert [(c["command"], c.get("username") or c["rolename"]) for c in second] == [
        ("modifyRole", DEVICE_ROLE_PREFIX + DEV),
        ("modifyClient", DEV),
    ]
    mod = second[1]
    assert mod["password"] == "p1" and mod["roles"] == [{"rolename": DEVICE_ROLE_PREFIX + DEV}]
    assert second[0]["acls"] == brokerauth.device_role(DEV)["acls"]
    assert outcome(first, [], got).created == (OTHER,) and outcome(first, [], got).updated == (DEV,)
    # Nothing existed: no second round.
    assert second_round(accounts, answers(first), "t") == []


def test_refusals_and_missing_answers_are_failures_named_by_command_and_subject() -> None:
    first = ensure_round([device_login(DEV, "p")], "t")
    got = answers(first, {("createClient", DEV): "Role not found"})
    assert failures(first, got) == [f"createClient {DEV}: Role not found"]
    del got[f"t:client:{DEV}"]
    assert failures(first, got) == [f"createClient {DEV}: no answer"]


def test_removing_a_device_takes_its_role_too_and_absent_is_no_error() -> None:
    cmds = remove_round([DEV, "old-worker", DEV], "t")
    assert [(c["command"], c.get("username") or c["rolename"]) for c in cmds] == [
        ("deleteClient", DEV),
        ("deleteRole", DEVICE_ROLE_PREFIX + DEV),
        ("deleteClient", "old-worker"),
    ]
    got = answers(cmds, {("deleteClient", "old-worker"): "Client not found"})
    assert failures(cmds, got) == []
    assert outcome([], cmds, got).removed == (DEV,)
    with pytest.raises(BrokerAuthError):
        remove_round(["bad name"], "t")


def test_admin_role_reaches_the_control_topic_only() -> None:
    a = admin_login("depin-admin", "pw")
    assert a.rolename == ADMIN_ROLE
    topics = {(acl["acltype"], acl["topic"]) for acl in a.role["acls"]}
    assert topics == {
        ("publishClientSend", "$CONTROL/dynamic-security/#"),
        ("publishClientReceive", "$CONTROL/dynamic-security/#"),
        ("subscribePattern", "$CONTROL/dynamic-security/#"),
    }
    assert all(acl["allow"] for acl in a.role["acls"])


def test_names_are_checked() -> None:
    with pytest.raises(BrokerAuthError, match="not a device id"):
        device_login("AB" * 32, "p")
    with pytest.raises(BrokerAuthError, match="looks like a device id"):
        service_login(DEV, "p")
    with pytest.raises(BrokerAuthError, match="bad username"):
        admin_login("a b", "p")


def test_encode_and_decode() -> None:
    cmds = ensure_round([device_login(DEV, "p")], "t")
    assert json.loads(encode(cmds)) == {"commands": cmds}
    body = {"responses": [{"command": "createClient", "correlationData": "x"}, "junk"]}
    assert decode(json.dumps(body).encode()) == [{"command": "createClient", "correlationData": "x"}]
    assert decode(b"not json") == [] and decode(b'{"x": 1}') == [] and decode(b"[1]") == []


def test_the_file_gets_an_admin_with_its_role_only_while_one_exists(tmp_path: Path) -> None:
    f, pw = tmp_path / "dynsec.json", tmp_path / "admin.pass"
    brokerauth.update_dynsec_file(f, brokerauth.AccountChanges(admin="depin-admin", password_file=pw))
    doc = json.loads(f.read_text())
    admin = next(c for c in doc["clients"] if c["username"] == "depin-admin")
    assert admin["roles"] == [{"rolename": ADMIN_ROLE}]
    assert brokerauth.check_dynsec_password(pw.read_text().strip(), admin)
    assert brokerauth.admin_role() in doc["roles"]
    brokerauth.update_dynsec_file(f, brokerauth.AccountChanges(remove=("depin-admin",)))
    assert ADMIN_ROLE not in {r["rolename"] for r in json.loads(f.read_text())["roles"]}


def test_admin_and_user_are_one_per_run(tmp_path: Path) -> None:
    changes = brokerauth.AccountChanges(user="svc", admin="adm", password_file=tmp_path / "p")
    with pytest.raises(BrokerAuthError, match="one per run"):
        changes.check()
    with pytest.raises(BrokerAuthError, match="broker dynsec"):
        brokerauth.cmd_passwd(
            tmp_path / "pw", brokerauth.AccountChanges(admin="adm", password_file=tmp_path / "p")
        )
