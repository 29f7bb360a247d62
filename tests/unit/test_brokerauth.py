"""The pure parts of broker security: `$7$` hashes, the password file, the ACL, the dynamic security
file (what deploy/mosquitto.conf loads),
the deployment config rewrite, the MQTT settings and the consumer's connect-error lines; and
`depin broker` run in-process (files, modes, idempotent re-runs, one-line errors)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import ssl
from pathlib import Path

import pytest
from aiomqtt.exceptions import MqttCodeError, MqttConnectError, MqttError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from devices.keys import new_identity, save_identity
from devices.sdk import BrokerLogin
from ingest import brokerauth
from ingest.adapters.mqtt import (
    MqttConfig,
    SubscriptionRefused,
    _refused,
    describe_connect_error,
    describe_lost,
)
from ingest.cli import main
from ingest.dev.broker import SecuredFiles, secured_config
from ingest.settings import Settings, load_settings
from tests.pki import make_pki

REPO = Path(__file__).resolve().parents[2]


# --- hashes and the password file ------------------------------------------------------------------


def test_hash_is_mosquitto_7_format() -> None:
    salt = bytes(range(12))
    hashed = brokerauth.hash_password("pw", salt=salt)
    _, kind, iterations, salt64, digest64 = hashed.split("$")
    assert (kind, iterations, base64.b64decode(salt64)) == ("7", "101", salt)
    # The digest is PBKDF2-HMAC-SHA512 over exactly these inputs, 64 bytes (mosquitto_passwd's layout;
    # tests/integration/test_secured_broker.py checks it against mosquitto_passwd's own output).
    assert base64.b64decode(digest64) == hashlib.pbkdf2_hmac("sha512", b"pw", salt, 101)
    assert len(base64.b64decode(digest64)) == 64


def test_each_hash_has_its_own_salt_and_checks() -> None:
    h1, h2 = brokerauth.hash_password("pw"), brokerauth.hash_password("pw")
    assert h1 != h2
    assert brokerauth.check_password("pw", h1) and brokerauth.check_password("pw", h2)
    assert not brokerauth.check_password("pW", h1)
    assert not brokerauth.check_password("pw", "$6$x$y") and not brokerauth.check_password("pw", "junk")


def test_upsert_replaces_in_place_appends_and_keeps_the_rest() -> None:
    text = "alice:$7$old-a\nbob:$7$old-b\n# a comment\n"
    out = brokerauth.upsert_passwd(text, {"bob": "$7$new-b", "carol": "$7$new-c"})
    assert out == "alice:$7$old-a\nbob:$7$new-b\n# a comment\ncarol:$7$new-c\n"
    assert brokerauth.upsert_passwd(out, {"bob": "$7$new-b"}) == out  # re-run: same file
    assert brokerauth.upsert_passwd("", {"x": "h"}) == "x:h\n"
    assert brokerauth.upsert_passwd(out, {}, remove=["alice", "nobody"]) == (
        "bob:$7$new-b\n# a comment\ncarol:$7$new-c\n"
    )


@pytest.mark.parametrize("name", ["", "a b", "a:b", "dev/1", "+", "#", "-lead", "x" * 65])
def test_bad_service_names_are_refused(name: str) -> None:
    with pytest.raises(brokerauth.BrokerAuthError, match="bad username"):
        brokerauth.check_username(name)


# --- the ACL -------------------------------------------------------------------------------------


# --- the dynamic security file --------------------------------------------------------------------

DEV_A, DEV_B = "a1" * 32, "b2" * 32


def test_dynsec_hash_is_pbkdf2_sha512_with_a_12_byte_salt() -> None:
    salt = bytes(range(12))
    fields = brokerauth.dynsec_hash("pw", salt=salt)
    assert fields == {
        "password": base64.b64encode(hashlib.pbkdf2_hmac("sha512", b"pw", salt, 101)).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": 101,
    }
    assert len(base64.b64decode(brokerauth.dynsec_hash("x")["salt"])) == 12  # the plugin's fixed size
    assert brokerauth.check_dynsec_password("pw", fields)
    assert not brokerauth.check_dynsec_password("pW", fields)
    assert not brokerauth.check_dynsec_password("pw", {"salt": "!!"})


def _roles(doc: dict) -> dict[str, list[tuple[str, str, bool]]]:
    return {r["rolename"]: [(a["acltype"], a["topic"], a["allow"]) for a in r["acls"]] for r in doc["roles"]}


@pytest.mark.parametrize(
    ("devices", "services", "remove", "clients"),
    [
        ([DEV_A, DEV_B], ["depin-ingest"], [], [DEV_A, DEV_B, "depin-ingest"]),
        ([DEV_A], ["w1", "w2"], [], [DEV_A, "w1", "w2"]),
        ([], ["depin-ingest"], [], ["depin-ingest"]),
        ([DEV_B], [], [DEV_A], [DEV_B]),
    ],
)
def test_dynsec_update_table(
    devices: list[str], services: list[str], remove: list[str], clients: list[str]
) -> None:
    base = brokerauth.dynsec_update(None, {DEV_A: {"password": "p", "salt": "s", "iterations": 1}}, {})
    doc = brokerauth.dynsec_update(
        base,
        {d: brokerauth.dynsec_hash("d") for d in devices},
        {u: brokerauth.dynsec_hash("s") for u in services},
        remove,
    )
    assert [c["username"] for c in doc["clients"]] == sorted(set(clients) | ({DEV_A} - set(remove)))
    # Everything denied unless a role allows it (unsubscribing is harmless).
    assert doc["defaultACLAccess"] == {
        "publishClientSend": False,
        "publishClientReceive": False,
        "subscribe": False,
        "unsubscribe": True,
    }
    roles = _roles(doc)
    for c in doc["clients"]:
        name = c["username"]
        if len(name) == 64:
            # A role of its own whose topics are literal: the 2.0.11 plugin substitutes no %u / %c.
            assert c["roles"] == [{"rolename": f"depin-device-{name}"}]
            assert roles[f"depin-device-{name}"] == [
                ("publishClientSend", f"depin/v1/{name}/up", True),
                ("subscribeLiteral", f"depin/v1/{name}/ack", True),
                ("publishClientReceive", f"depin/v1/{name}/ack", True),
            ]
        else:
            assert c["roles"] == [{"rolename": "depin-service"}]
    assert roles["depin-service"] == [
        ("subscribePattern", "$share/+/depin/v1/+/up", True),
        ("subscribePattern", "depin/v1/+/up", True),
        ("publishClientReceive", "depin/v1/+/up", True),
        ("publishClientSend", "depin/v1/+/ack", True),
    ]
    # No role for a device that is not a client (a removed device loses its role too).
    assert {r for r in roles if r.startswith("depin-device-")} == {
        f"depin-device-{c['username']}" for c in doc["clients"] if len(c["username"]) == 64
    }
    # No ACL anywhere grants a device a pattern or a $share subscription.
    for name, acls in roles.items():
        if name.startswith("depin-device-"):
            assert all("+" not in t and "#" not in t and not t.startswith("$") for _, t, _ in acls)


def test_dynsec_update_keeps_what_is_not_ours_and_replaces_hashes() -> None:
    admin = {
        "username": "admin",
        "password": "x",
        "salt": "y",
        "iterations": 101,
        "roles": [{"rolename": "a"}],
    }
    doc = {
        "clients": [
            admin,
            {"username": DEV_A, "password": "old", "salt": "old", "iterations": 7, "textname": "t"},
        ],
        "groups": [{"groupname": "g"}],
        "roles": [{"rolename": "a", "acls": []}, {"rolename": "depin-device-" + "c3" * 32, "acls": []}],
    }
    new_pw = brokerauth.dynsec_hash("new")
    out = brokerauth.dynsec_update(doc, {DEV_A: new_pw}, {})
    clients = {c["username"]: c for c in out["clients"]}
    assert clients["admin"] == admin and out["groups"] == [{"groupname": "g"}]
    assert clients[DEV_A]["textname"] == "t" and clients[DEV_A]["password"] == new_pw["password"]
    assert [r["rolename"] for r in out["roles"]] == ["a", "depin-service", f"depin-device-{DEV_A}"]
    assert doc["clients"][1]["password"] == "old"  # the input is not modified
    with pytest.raises(brokerauth.BrokerAuthError, match="not a device id"):
        brokerauth.dynsec_update(None, {"ab": new_pw}, {})
    with pytest.raises(brokerauth.BrokerAuthError, match="looks like a device id"):
        brokerauth.dynsec_update(None, {}, {DEV_B: new_pw})
    with pytest.raises(brokerauth.BrokerAuthError, match="bad username"):
        brokerauth.dynsec_update(None, {}, {"a b": new_pw})


def test_depin_broker_dynsec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    d1, d2 = new_identity(), new_identity()
    save_identity(d1, tmp_path / "d1.json")
    save_identity(d2, tmp_path / "d2.json")
    args = ["broker", "dynsec", "--file", "ds.json"]
    assert (
        main([*args, "--cred", "d1.json", "d2.json", "--user", "depin-ingest", "--password-file", "svc"]) == 0
    )
    for name in ("ds.json", "svc", "d1.json", "d2.json"):
        assert (Path(name).stat().st_mode & 0o777) == 0o600, name
    doc = json.loads(Path("ds.json").read_text())
    clients = {c["username"]: c for c in doc["clients"]}
    assert set(clients) == {d1.hex_id, d2.hex_id, "depin-ingest"}
    pw1 = json.loads(Path("d1.json").read_text())["mqtt_password"]
    assert brokerauth.check_dynsec_password(pw1, clients[d1.hex_id])
    assert brokerauth.check_dynsec_password(Path("svc").read_text().strip(), clients["depin-ingest"])
    # Re-run: same password, new salt; --remove takes a device and its role out.
    assert main([*args, "--cred", "d1.json", "--remove", d2.hex_id]) == 0
    doc2 = json.loads(Path("ds.json").read_text())
    clients2 = {c["username"]: c for c in doc2["clients"]}
    assert set(clients2) == {d1.hex_id, "depin-ingest"}
    assert clients2[d1.hex_id]["salt"] != clients[d1.hex_id]["salt"]
    assert brokerauth.check_dynsec_password(pw1, clients2[d1.hex_id])
    assert f"depin-device-{d2.hex_id}" not in _roles(doc2)
    assert main([*args, "--cred", "d1.json", "--rotate"]) == 0
    assert json.loads(Path("d1.json").read_text())["mqtt_password"] != pw1
    assert main([*args]) == 1  # nothing to do: one line, exit 1
    Path("bad.json").write_text("[1]")
    assert main(["broker", "dynsec", "--file", "bad.json", "--cred", "d1.json"]) == 1


def test_acl_rules() -> None:
    text = brokerauth.acl_text(["w1", "w2", "w1"])
    rules = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert rules == [
        "pattern write depin/v1/%u/up",
        "pattern read depin/v1/%u/ack",
        "user w1",
        "topic read depin/v1/+/up",
        "topic write depin/v1/+/ack",
        "user w2",
        "topic read depin/v1/+/up",
        "topic write depin/v1/+/ack",
    ]
    with pytest.raises(brokerauth.BrokerAuthError):
        brokerauth.acl_text([])


# --- the deployment config, made runnable in tests ------------------------------------------------------


def test_secured_config_rewrites_only_paths_and_listener(tmp_path: Path) -> None:
    template = (REPO / "deploy" / "mosquitto.conf").read_text()
    files = SecuredFiles(tmp_path / "ds.json", certfile=tmp_path / "s.crt", keyfile=tmp_path / "s.key")
    out = secured_config(template, tmp_path, 4242, files).splitlines()
    expected = []
    for line in template.splitlines():
        key = line.split(" ", 1)[0]
        if key == "listener":
            expected += ["listener 4242 127.0.0.1", f"certfile {tmp_path}/s.crt", f"keyfile {tmp_path}/s.key"]
        elif key == "persistence_location":
            expected.append(f"persistence_location {tmp_path}/")
        elif key == "plugin_opt_config_file":
            expected.append(f"plugin_opt_config_file {tmp_path}/ds.json")
        else:
            expected.append(line)  # every other directive and comment, as operators deploy it
    assert out[: len(expected)] == expected
    assert out[len(expected) :] == (["user root"] if os.geteuid() == 0 else [])
    assert "allow_anonymous false" in out
    assert "plugin /usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so" in out
    assert not any(line.startswith(("password_file", "acl_file")) for line in out)


def test_secured_config_refuses_a_template_it_cannot_honour(tmp_path: Path) -> None:
    files = SecuredFiles(tmp_path / "ds.json")
    base = "listener 1 127.0.0.1\npersistence_location /x/\nplugin /p.so\nplugin_opt_config_file /a\n"
    secured_config(base, tmp_path, 2, files)
    with pytest.raises(ValueError, match="'plugin_opt_config_file'"):
        secured_config(base.replace("plugin_opt_config_file /a\n", ""), tmp_path, 2, files)
    with pytest.raises(ValueError, match="'plugin'"):
        secured_config(base.replace("plugin /p.so\n", ""), tmp_path, 2, files)
    with pytest.raises(ValueError, match="'listener'"):
        secured_config(base + "listener 8883\n", tmp_path, 2, files)
    secured_config(base + "#listener 8883\n", tmp_path, 2, files)  # commented out: fine


# --- settings → Settings.mqtt ---------------------------------------------------------------------


def _settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for key in list(os.environ):
        if key.startswith("DEPIN_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(f"DEPIN_{key.upper()}", value)
    return load_settings()


def test_login_and_tls_reach_the_consumer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "svc.pass").write_text("s3cret\n")
    pki = make_pki(tmp_path / "pki")
    s = _settings(
        monkeypatch,
        mqtt_username="depin-ingest",
        mqtt_password_file=str(tmp_path / "svc.pass"),
        mqtt_tls_ca_file=str(pki.ca),
        mqtt_tls_cert_file=str(pki.client_cert),
        mqtt_tls_key_file=str(pki.client_key),
        mqtt_manual_ack="false",
        ack_feedback="true",
    )
    cfg = s.mqtt
    assert (cfg.username, cfg.password, cfg.tls) == ("depin-ingest", "s3cret", True)
    assert (cfg.tls_ca_file, cfg.tls_cert_file, cfg.tls_key_file) == tuple(
        map(str, (pki.ca, pki.client_cert, pki.client_key))
    )
    assert (cfg.manual_ack, cfg.ack_feedback) == (False, True)  # what build_node hands the consumer
    assert "s3cret" not in repr(cfg)
    s = _settings(monkeypatch, mqtt_username="u", mqtt_password="inline")
    assert s.mqtt.password == "inline" and "inline" not in repr(s)
    assert _settings(monkeypatch, mqtt_tls="true").mqtt.tls is True
    assert _settings(monkeypatch).mqtt.tls is False


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"mqtt_username": "u", "mqtt_password": "a", "mqtt_password_file": "/f"}, "not both"),
        ({"mqtt_password": "a"}, "DEPIN_MQTT_USERNAME is not"),
        ({"mqtt_tls_key_file": "/k"}, "needs DEPIN_MQTT_TLS_CERT_FILE"),
        ({"mqtt_tls": "false", "mqtt_tls_ca_file": "/ca"}, "DEPIN_MQTT_TLS=false"),
    ],
)
def test_contradictory_mqtt_settings(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        _settings(monkeypatch, **env)


def test_unloadable_tls_files_stop_the_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot load the MQTT TLS files .*No such file"):
        _settings(monkeypatch, mqtt_tls_ca_file=str(tmp_path / "nope.pem"))
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    with pytest.raises(ValueError, match="cannot load the MQTT TLS files"):
        _settings(monkeypatch, mqtt_tls_ca_file=str(tmp_path / "junk.pem"))


def test_empty_or_missing_password_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        _settings(monkeypatch, mqtt_username="u", mqtt_password_file=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="cannot read the MQTT password file"):
        _settings(monkeypatch, mqtt_username="u", mqtt_password_file=str(tmp_path / "nope"))


def test_device_login_from_its_credential_file(tmp_path: Path) -> None:
    cred = tmp_path / "d.json"
    identity = new_identity()
    save_identity(identity, cred)
    with pytest.raises(ValueError, match="depin broker dynsec --file … --cred"):
        BrokerLogin.from_credentials(cred)
    brokerauth.device_account(cred, rotate=False)
    login = BrokerLogin.from_credentials(cred, tls_ca_file=None, tls=True)
    assert login.username == identity.hex_id and login.password and login.password not in repr(login)
    assert isinstance(login.client_kwargs()["tls_context"], ssl.SSLContext)
    assert BrokerLogin("u", "p").client_kwargs()["tls_context"] is None


# --- connect-error lines ------------------------------------------------------------------------------

CFG = MqttConfig(host="127.0.0.1", port=1883, username="depin-ingest", password="x")


def test_auth_refusals_say_what_to_check() -> None:
    v5 = MqttConnectError(ReasonCode(PacketTypes.CONNACK, identifier=0x87))
    assert describe_connect_error(CFG, v5) == (
        "MQTT broker 127.0.0.1:1883 refused the connection: Not authorized — check "
        "DEPIN_MQTT_USERNAME / DEPIN_MQTT_PASSWORD(_FILE) (user 'depin-ingest')"
    )
    bad = MqttConnectError(ReasonCode(PacketTypes.CONNACK, identifier=0x86))
    assert "Bad user name or password — check DEPIN_MQTT_USERNAME" in describe_connect_error(CFG, bad)
    v3 = MqttConnectError(5)
    anonymous = MqttConfig(port=1884)
    assert describe_connect_error(anonymous, v3) == (
        "MQTT broker 127.0.0.1:1884 refused the connection: Not authorized — check "
        "DEPIN_MQTT_USERNAME / DEPIN_MQTT_PASSWORD(_FILE) (anonymous: no username set)"
    )
    busy = MqttConnectError(ReasonCode(PacketTypes.CONNACK, identifier=0x89))
    assert (
        describe_connect_error(CFG, busy) == "MQTT broker 127.0.0.1:1883 refused the connection: Server busy"
    )


def test_network_and_tls_failures_name_the_broker() -> None:
    refused = MqttError("[Errno 111] Connection refused")
    assert describe_connect_error(CFG, refused) == (
        "cannot connect to MQTT broker 127.0.0.1:1883: [Errno 111] Connection refused"
    )
    tls = MqttError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate")
    line = describe_connect_error(CFG, tls)
    assert line.startswith("TLS handshake with MQTT broker 127.0.0.1:1883 failed: [SSL: CERTIFICATE_VERIFY")
    assert line.endswith("check DEPIN_MQTT_TLS_CA_FILE and DEPIN_MQTT_HOST")
    assert describe_connect_error(CFG, SubscriptionRefused("as is")) == "as is"


def _chained(code: int) -> MqttError:
    # What aiomqtt raises from message iteration: the broker's reason is the cause.
    try:
        raise MqttError("Disconnected during message iteration") from MqttCodeError(
            ReasonCode(PacketTypes.DISCONNECT, identifier=code), "Unexpected disconnection"
        )
    except MqttError as exc:
        return exc


def test_lost_connections_name_the_broker_and_its_reason() -> None:
    cfg = MqttConfig(port=1883, client_id="w1")
    assert (
        describe_lost(cfg, _chained(0x8B)) == "MQTT connection to 127.0.0.1:1883 lost: Server shutting down"
    )
    assert describe_lost(cfg, _chained(0x8E)) == (
        "MQTT connection to 127.0.0.1:1883 lost: Session taken over — another client connected with "
        "client id 'w1' (DEPIN_MQTT_CLIENT_ID)"
    )
    assert describe_lost(cfg, _chained(0x80)).endswith("lost: the broker or the network closed it")
    assert describe_lost(cfg, MqttError("boom")) == "MQTT connection to 127.0.0.1:1883 lost (boom)"


def test_refused_subscriptions_are_recognised() -> None:
    ok = [ReasonCode(PacketTypes.SUBACK, identifier=1)]
    assert _refused(ok) is None and _refused((1,)) is None
    assert _refused([ReasonCode(PacketTypes.SUBACK, identifier=0x87)]) == "Not authorized"
    assert _refused((0x80,)) == "code 0x80"


# --- the command, in-process ----------------------------------------------------------------------------


def test_depin_broker_passwd_and_acl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    d1, d2 = new_identity(), new_identity()
    save_identity(d1, tmp_path / "d1.json")
    save_identity(d2, tmp_path / "d2.json")
    Path("passwd").write_text("someone:$7$101$keep$me\n")
    assert main(["broker", "passwd", "--file", "passwd", "--cred", "d1.json", "d2.json"]) == 0
    assert (
        main(
            ["broker", "passwd", "--file", "passwd", "--user", "depin-ingest", "--password-file", "svc.pass"]
        )
        == 0
    )
    assert main(["broker", "acl", "--service-user", "depin-ingest", "--out", "acl"]) == 0
    for name in ("passwd", "svc.pass", "acl", "d1.json", "d2.json"):
        assert (Path(name).stat().st_mode & 0o777) == 0o600, name
    entries = dict(line.split(":", 1) for line in Path("passwd").read_text().splitlines())
    assert list(entries) == ["someone", d1.hex_id, d2.hex_id, "depin-ingest"]
    svc = Path("svc.pass").read_text().strip()
    pw1 = json.loads(Path("d1.json").read_text())["mqtt_password"]
    assert brokerauth.check_password(svc, entries["depin-ingest"]) and brokerauth.check_password(
        pw1, entries[d1.hex_id]
    )

    # Re-run: same passwords (new salts), same users, same order; --rotate makes new ones.
    assert (
        main(
            [
                "broker",
                "passwd",
                "--file",
                "passwd",
                "--cred",
                "d1.json",
                "--user",
                "depin-ingest",
                "--password-file",
                "svc.pass",
            ]
        )
        == 0
    )
    again = dict(line.split(":", 1) for line in Path("passwd").read_text().splitlines())
    assert list(again) == list(entries) and again["someone"] == entries["someone"]
    assert (
        Path("svc.pass").read_text().strip() == svc
        and json.loads(Path("d1.json").read_text())["mqtt_password"] == pw1
    )
    assert main(["broker", "passwd", "--file", "passwd", "--cred", "d1.json", "--rotate"]) == 0
    rotated = json.loads(Path("d1.json").read_text())["mqtt_password"]
    assert rotated != pw1 and brokerauth.check_password(
        rotated, Path("passwd").read_text().splitlines()[1].split(":", 1)[1]
    )
    assert (
        json.loads(Path("d1.json").read_text())["seed"] == bytes(d1.signing_key).hex()
    )  # the key is untouched
    capsys.readouterr()

    assert main(["broker", "acl", "--service-user", "w1"]) == 0
    assert "user w1" in capsys.readouterr().out

    # A revoked device loses its login; the others stay.
    assert main(["broker", "passwd", "--file", "passwd", "--remove", d2.hex_id]) == 0
    users = [line.split(":", 1)[0] for line in Path("passwd").read_text().splitlines()]
    assert users == ["someone", d1.hex_id, "depin-ingest"]
    assert "1 removed" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["passwd", "--file", "pw"], "nothing to do"),
        (["passwd", "--file", "pw", "--cred", "missing.json"], "missing.json: not a device credential file"),
        (["passwd", "--file", "pw", "--user", "svc"], "give --password-file for 'svc'"),
        (["passwd", "--file", "pw", "--password-file", "p"], "--password-file belongs to --user"),
        (["passwd", "--file", "pw", "--user", "a b", "--password-file", "p"], "bad username 'a b'"),
        (["acl", "--service-user", "x:y"], "bad username 'x:y'"),
        (["passwd", "--file", "pw", "--user", "s", "--password-file", "p", "--remove", "s"], "s is both"),
        (["passwd", "--file", "pw", "--cred", "c.json", "missing.json"], "missing.json: not a device"),
    ],
)
def test_depin_broker_errors_are_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    save_identity(new_identity(), tmp_path / "c.json")
    assert main(["broker", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"depin broker {argv[0]}: error: ") and message in err and err.count("\n") == 1, err
    assert not Path("pw").exists() and not Path("p").exists()
    assert "mqtt_password" not in Path("c.json").read_text()  # nothing written before the failure


def test_rewrite_keeps_the_owner_and_is_0600(tmp_path: Path) -> None:
    """An operator chowns the files to `mosquitto` once (the broker cannot read root's 0600 files);
    a re-run must not hand them back to root."""
    path = tmp_path / "passwd"
    path.write_text("old\n")
    path.chmod(0o644)
    owner = (65534, 65534) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    if os.geteuid() == 0:
        os.chown(path, *owner)
    brokerauth.write_private(path, "new\n")
    st = path.stat()
    assert path.read_text() == "new\n" and (st.st_mode & 0o777) == 0o600
    assert (st.st_uid, st.st_gid) == owner
    assert [p.name for p in tmp_path.iterdir()] == ["passwd"]  # no temp file left behind
