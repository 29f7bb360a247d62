"""`depin broker …`: the broker's logins and ACLs for a device fleet and the service account(s).

`depin broker dynsec` writes the file of Mosquitto's dynamic security plugin (deploy/mosquitto.conf
loads it): one client per device with a role of its own whose ACLs name its own topics literally, one
shared role for the service accounts, and every ACL type denied by default. Unlike `acl_file`, the plugin
checks subscriptions when they are made, so a device's `$share/<group>/depin/v1/+/up` is refused
(SUBACK "Not authorized") instead of joining the service's share group and swallowing its share of the
messages. Mosquitto 2.0.11's plugin substitutes neither %u nor %c, hence a role per device.
`depin broker passwd` / `acl` write the older password file + ACL (`acl_file` leaves that hole open).

Pure parts (tested without a broker): `hash_password` writes Mosquitto 2's `$7$` format (PBKDF2-HMAC-
SHA512, 101 iterations, 12-byte salt, base64 — what `mosquitto_passwd` writes), `upsert_passwd` replaces
or appends entries and keeps everything else, `acl_text` is the ACL for an `acl_file` broker.

Devices log in with username = their device id (64 lowercase hex, as in their topic) and a random
password that is kept in their own 0600 credential file as `"mqtt_password"`: the file the device is
provisioned with already holds its signing key, so it gets no second secret to carry. The service's
password lives in a 0600 file of its own (`DEPIN_MQTT_PASSWORD_FILE`). An existing password is reused on
a re-run (only its hash is rewritten), so re-running never locks a device out; `--rotate` makes new ones.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devices.errors import InputError
from devices.keys import load_identity

ITERATIONS = 101  # mosquitto_passwd's default (PW_DEFAULT_ITERATIONS)
SALT_BYTES = 12  # mosquitto_passwd's SALT_LEN
CRED_PASSWORD_KEY = "mqtt_password"
# Service account names go into the ACL's `user` lines and the password file's `user:` prefix: no
# spaces, colons or topic wildcards.
_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

# The rules of an `acl_file` broker (`depin broker acl`). `pattern` lines apply to every authenticated
# client with %u = its username: a device (username = its id) may publish only on its own …/up and read
# only its own …/ack. Service accounts read every device's …/up (the consumer's subscription) and write acks.
DEVICE_RULES = ("pattern write depin/v1/%u/up", "pattern read depin/v1/%u/ack")
SERVICE_RULES = ("topic read depin/v1/+/up", "topic write depin/v1/+/ack")

# Dynamic security (deploy/mosquitto.conf). Everything is denied unless a role allows it; unsubscribing is
# harmless. The salt must be 12 bytes (Mosquitto 2.0.11's plugin refuses to load other lengths).
DYNSEC_DEFAULT_ACCESS = {
    "publishClientSend": False,
    "publishClientReceive": False,
    "subscribe": False,
    "unsubscribe": True,
}
SERVICE_ROLE = "depin-service"
DEVICE_ROLE_PREFIX = "depin-device-"
# The operator's admin login for live changes over `$CONTROL/dynamic-security/v1` (ingest/brokeradmin.py).
# Narrower than `mosquitto_ctrl dynsec init`'s "admin" role, which may also read `#` and `$SYS/#`: the
# account that manages logins has no business reading the devices' traffic.
ADMIN_ROLE = "depin-broker-admin"
CONTROL_TOPICS = "$CONTROL/dynamic-security/#"
_HEX_ID = re.compile(r"[0-9a-f]{64}")


class BrokerAuthError(InputError):
    """A user-facing failure (bad name, unreadable file): one line, exit 1."""


# --------------------------------------------------------------------------------------------- pure


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """`$7$<iterations>$<b64 salt>$<b64 sha512 pbkdf2>`, the hash Mosquitto ≥ 2.0 reads."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, hashed: str) -> bool:
    """True if `password` matches a `$7$` hash (ours or mosquitto_passwd's)."""
    try:
        _, kind, iterations, salt64, digest64 = hashed.split("$")
        if kind != "7":
            return False
        salt, digest = base64.b64decode(salt64), base64.b64decode(digest64)
        mine = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(mine, digest)


def check_username(name: str) -> str:
    if not _USERNAME.fullmatch(name):
        raise BrokerAuthError(
            f"bad username {name!r}: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def upsert_passwd(text: str, entries: dict[str, str], remove: Iterable[str] = ()) -> str:
    """The password file `text` with each user's line replaced by `user:hash` (in place), new users
    appended, the users in `remove` taken out, every other line kept as it was."""
    todo = dict(entries)
    gone = set(remove)
    out = []
    for line in text.splitlines():
        user = line.split(":", 1)[0] if ":" in line and not line.startswith("#") else None
        if user is not None and user in gone:
            continue
        if user is not None and user in todo:
            out.append(f"{user}:{todo.pop(user)}")
        else:
            out.append(line)
    out.extend(f"{user}:{hashed}" for user, hashed in todo.items())
    return "\n".join(out) + "\n" if out else ""


def acl_text(service_users: Sequence[str]) -> str:
    """The ACL file: device patterns, then one block per service account."""
    if not service_users:
        raise BrokerAuthError("name at least one --service-user (the account DEPIN_MQTT_USERNAME names)")
    lines = [
        "# Mosquitto ACL for depin-ingest (written by `depin broker acl`; see README, Securing the broker).",
        "# Devices (username = device id hex): publish only on their own …/up, read only their own …/ack.",
        *DEVICE_RULES,
    ]
    for user in dict.fromkeys(check_username(u) for u in service_users):
        lines += ["", "# The ingest service: reads every device's …/up, writes their …/ack.", f"user {user}"]
        lines += list(SERVICE_RULES)
    return "\n".join(lines) + "\n"


def dynsec_hash(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> dict[str, Any]:
    """The plugin's password fields: base64 PBKDF2-HMAC-SHA512 digest, base64 12-byte salt, iterations."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": iterations,
    }


def check_dynsec_password(password: str, client: dict[str, Any]) -> bool:
    try:
        salt, digest = base64.b64decode(client["salt"]), base64.b64decode(client["password"])
        mine = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(client["iterations"]))
    except (KeyError, ValueError, TypeError):
        return False
    return hmac.compare_digest(mine, digest)


def _acl(acltype: str, topic: str) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "priority": 0, "allow": True}


def device_role(device_hex: str) -> dict[str, Any]:
    """A device's own role: publish on its …/up, subscribe to and receive its …/ack, all literal."""
    return {
        "rolename": DEVICE_ROLE_PREFIX + device_hex,
        "acls": [
            _acl("publishClientSend", f"depin/v1/{device_hex}/up"),
            _acl("subscribeLiteral", f"depin/v1/{device_hex}/ack"),
            _acl("publishClientReceive", f"depin/v1/{device_hex}/ack"),
        ],
    }


def service_role() -> dict[str, Any]:
    """The service accounts' role: subscribe to every device's …/up, shared (any group) or not, receive
    it, and publish the …/ack feedback."""
    return {
        "rolename": SERVICE_ROLE,
        "acls": [
            _acl("subscribePattern", "$share/+/depin/v1/+/up"),
            _acl("subscribePattern", "depin/v1/+/up"),
            _acl("publishClientReceive", "depin/v1/+/up"),
            _acl("publishClientSend", "depin/v1/+/ack"),
        ],
    }


def admin_role() -> dict[str, Any]:
    """The admin login's role: send commands to the dynamic security plugin and read its answers."""
    return {
        "rolename": ADMIN_ROLE,
        "acls": [
            _acl("publishClientSend", CONTROL_TOPICS),
            _acl("publishClientReceive", CONTROL_TOPICS),
            _acl("subscribePattern", CONTROL_TOPICS),
        ],
    }


def check_device_name(name: str) -> str:
    if not _HEX_ID.fullmatch(name):
        raise BrokerAuthError(f"not a device id (64 lowercase hex digits): {name!r}")
    return name


def check_account_name(name: str, what: str) -> str:
    """A service or admin account: a plain username that cannot be mistaken for a device's."""
    check_username(name)
    if _HEX_ID.fullmatch(name):
        raise BrokerAuthError(f"{what} {name!r} looks like a device id")
    return name


def is_device_name(name: str) -> bool:
    return bool(_HEX_ID.fullmatch(name))


def dynsec_update(
    doc: dict[str, Any] | None,
    devices: dict[str, dict[str, Any]],
    services: dict[str, dict[str, Any]],
    remove: Iterable[str] = (),
    admins: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The plugin's config `doc` with each device (hex id → `dynsec_hash` fields), service account and
    admin account written as a client with its role, those in `remove` (and a removed device's role)
    taken out, our roles and the default access rewritten as this module defines them, every other
    client, group and role kept (an admin account made with `mosquitto_ctrl`, say). A new `doc` when
    None."""
    admins = admins or {}
    for name in devices:
        check_device_name(name)
    for name in services:
        check_account_name(name, "service account")
    for name in admins:
        check_account_name(name, "admin account")
    doc = {} if doc is None else dict(doc)
    gone = set(remove)
    ours = set(devices) | set(services) | set(admins)
    clients = [
        c for c in doc.get("clients", []) if c.get("username") not in gone and c.get("username") not in ours
    ]
    by_name = {c.get("username"): c for c in doc.get("clients", [])}
    for name, pw in [*devices.items(), *services.items(), *admins.items()]:
        role = DEVICE_ROLE_PREFIX + name if name in devices else SERVICE_ROLE
        role = ADMIN_ROLE if name in admins else role
        old = by_name.get(name, {})
        client = {k: v for k, v in old.items() if k not in ("password", "salt", "iterations")}
        client.update({"username": name, **pw, "roles": [{"rolename": role}]})
        clients.append(client)
    clients.sort(key=lambda c: str(c.get("username")))
    wanted = {DEVICE_ROLE_PREFIX + c["username"] for c in clients if _HEX_ID.fullmatch(str(c["username"]))}
    roles = [
        r
        for r in doc.get("roles", [])
        if not str(r.get("rolename", "")).startswith(DEVICE_ROLE_PREFIX)
        and r.get("rolename") not in (SERVICE_ROLE, ADMIN_ROLE)
    ]
    roles.append(service_role())
    # The admin role is written only while a client holds it: a file without an admin stays as before.
    if any(r.get("rolename") == ADMIN_ROLE for c in clients for r in c.get("roles", [])):
        roles.append(admin_role())
    roles += [device_role(name.removeprefix(DEVICE_ROLE_PREFIX)) for name in sorted(wanted)]
    doc["defaultACLAccess"] = dict(DYNSEC_DEFAULT_ACCESS)
    doc["clients"] = clients
    doc["groups"] = doc.get("groups", [])
    doc["roles"] = roles
    return doc


def new_password() -> str:
    return secrets.token_urlsafe(24)  # 192 bits; URL-safe, so no quoting trouble in files or shells


# --------------------------------------------------------------------------------------------- files


def write_private(path: Path, text: str) -> None:
    """Replace `path` atomically with a 0600 file; an existing file's owner is kept (an operator who
    chowned it to `mosquitto` does not have to do it again after a re-run)."""
    path = Path(path)
    try:
        st: os.stat_result | None = path.stat()
    except FileNotFoundError:
        st = None
    fd, tmp = tempfile.mkstemp(dir=path.parent or Path("."), prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        if st is not None and os.geteuid() == 0:
            os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise BrokerAuthError(f"cannot read {what} {path}: {exc.strerror}") from None


@dataclass(frozen=True)
class Account:
    username: str
    password: str
    created: bool  # a new password was generated (first run or --rotate)


def device_account(cred: Path, rotate: bool) -> Account:
    """The device's MQTT login from its credential file, generating (and storing) a password if needed."""
    identity = load_identity(cred)  # ValueError naming the file if it is not a credential file
    data = json.loads(cred.read_text())
    password = data.get(CRED_PASSWORD_KEY)
    if isinstance(password, str) and password and not rotate:
        return Account(identity.hex_id, password, created=False)
    data[CRED_PASSWORD_KEY] = new_password()
    write_private(cred, json.dumps(data))
    return Account(identity.hex_id, data[CRED_PASSWORD_KEY], created=True)


def service_account(user: str, password_file: Path, rotate: bool) -> Account:
    """The service's login; its password file is created (0600) when absent, reused when present."""
    check_username(user)
    existing = _read(password_file, "password file").strip()
    if existing and not rotate:
        return Account(user, existing, created=False)
    password = new_password()
    write_private(password_file, password + "\n")
    return Account(user, password, created=True)


def read_password_file(path: Path) -> str:
    """A password file as `DEPIN_MQTT_PASSWORD_FILE` names it: the first line, surrounding blanks cut."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise BrokerAuthError(f"cannot read the MQTT password file {path}: {exc.strerror}") from None
    password = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not password:
        raise BrokerAuthError(f"the MQTT password file {path} is empty")
    return password


# --------------------------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class AccountChanges:
    """What `broker passwd` and `broker dynsec` are asked to do: device accounts from credential files,
    one service account (`user`) or one admin account (`admin`, dynsec only) with its `password_file`,
    accounts to take out (`remove`)."""

    creds: tuple[Path, ...] = ()
    user: str | None = None
    password_file: Path | None = None
    rotate: bool = False
    remove: tuple[str, ...] = ()
    admin: str | None = None

    def check(self) -> None:
        """The argument rules: a service or admin account comes with its password file, there is
        something to do, and no name is both added and removed. Every credential file is read here,
        before any file is written: a bad one stops the run with nothing changed."""
        if self.user is not None and self.admin is not None:
            raise BrokerAuthError("--user and --admin each take their own --password-file: one per run")
        account = self.user if self.user is not None else self.admin
        flag = "--user" if self.user is not None else "--admin"
        if account is None and self.password_file is not None:
            raise BrokerAuthError(
                "--password-file belongs to --user NAME (the service account) or --admin NAME"
            )
        if account is not None and self.password_file is None:
            raise BrokerAuthError(
                f"give --password-file for {account!r} ({flag}; created with a new password if absent)"
            )
        if not self.creds and account is None and not self.remove:
            raise BrokerAuthError(
                "nothing to do: give --cred FILE… (devices), --user NAME --password-file FILE, "
                "or --remove NAME…"
            )
        for name in self.remove:
            check_username(name)
        if self.user is not None:
            check_account_name(self.user, "service account")
        if self.admin is not None:
            check_account_name(self.admin, "admin account")
        adding = [load_identity(cred).hex_id for cred in self.creds] + ([account] if account else [])
        both = sorted(set(adding) & set(self.remove))
        if both:
            raise BrokerAuthError(f"{both[0]} is both added and removed")

    def device_accounts(self) -> list[Account]:
        return [device_account(cred, self.rotate) for cred in self.creds]

    def service_accounts(self) -> list[Account]:
        if self.user is None or self.password_file is None:
            return []
        return [service_account(self.user, self.password_file, self.rotate)]

    def admin_accounts(self) -> list[Account]:
        if self.admin is None or self.password_file is None:
            return []
        return [service_account(self.admin, self.password_file, self.rotate)]


def cmd_passwd(file: Path, changes: AccountChanges) -> int:
    """`depin broker passwd`: add or replace the entries of devices (`--cred`) and a service account,
    take out those named by `--remove` (a revoked device's id, a retired account)."""
    changes.check()
    if changes.admin is not None:
        raise BrokerAuthError("--admin is for `broker dynsec` (a password-file broker has no control topic)")
    accounts = changes.device_accounts() + changes.service_accounts()
    text = _read(file, "password file")
    present = {line.split(":", 1)[0] for line in text.splitlines() if ":" in line}
    entries = {a.username: hash_password(a.password) for a in accounts}
    write_private(file, upsert_passwd(text, entries, changes.remove))
    created = sum(a.created for a in accounts)
    removed = len(set(changes.remove) & present)
    print(
        f"{file}: {len(accounts)} user(s) written ({created} new password(s), "
        f"{len(accounts) - created} kept), {removed} removed; reload Mosquitto (SIGHUP) to apply",
        file=sys.stderr,
    )
    return 0


def cmd_acl(service_users: Sequence[str], out: Path | None) -> int:
    text = acl_text(service_users)
    if out is None:
        sys.stdout.write(text)
    else:
        write_private(out, text)
        print(f"{out}: ACL written for service user(s) {', '.join(service_users)}", file=sys.stderr)
    return 0


def cmd_dynsec(file: Path, changes: AccountChanges) -> int:
    """`depin broker dynsec` (file only): add or replace devices (`--cred`) and a service or admin
    account in the dynamic security plugin's file, take out those named by `--remove`. Same password
    rules as `passwd`. `--live` goes through ingest/brokeradmin.py instead (and this file too)."""
    accounts, removed = update_dynsec_file(file, changes)
    created = sum(a.created for a in accounts)
    print(
        f"{file}: {len(accounts)} client(s) written ({created} new password(s), "
        f"{len(accounts) - created} kept), {removed} removed; restart Mosquitto to "
        "apply (its dynamic security plugin reads the file at start only), or apply them to the "
        "running broker with --live",
        file=sys.stderr,
    )
    return 0


def load_dynsec_doc(file: Path) -> dict[str, Any] | None:
    text = _read(file, "dynamic security file")
    try:
        doc = json.loads(text) if text.strip() else None
    except json.JSONDecodeError as exc:
        raise BrokerAuthError(f"{file} is not JSON: {exc}") from None
    if doc is not None and not isinstance(doc, dict):
        raise BrokerAuthError(f"{file} is not a dynamic security file (a JSON object expected)")
    return doc


def update_dynsec_file(
    file: Path, changes: AccountChanges, accounts: Sequence[Account] | None = None
) -> tuple[list[Account], int]:
    """Write the devices and the service/admin account of `changes` into the dynamic security `file`
    (created when absent), take out its `remove`; return the accounts written and how many were
    removed. Nothing is written when any input is bad (`AccountChanges.check`). `accounts`: the
    accounts already resolved by the caller (`--live` resolves them once for the broker and the file),
    in the order devices, service, admin."""
    changes.check()
    doc = load_dynsec_doc(file)
    if accounts is None:
        accounts = changes.device_accounts() + changes.service_accounts() + changes.admin_accounts()
    present = {c.get("username") for c in (doc or {}).get("clients", [])}
    devices = [a for a in accounts if is_device_name(a.username)]
    admins = [a for a in accounts if a.username == changes.admin]
    services = [a for a in accounts if a not in devices and a not in admins]
    new = dynsec_update(
        doc,
        {a.username: dynsec_hash(a.password) for a in devices},
        {a.username: dynsec_hash(a.password) for a in services},
        changes.remove,
        {a.username: dynsec_hash(a.password) for a in admins},
    )
    write_private(file, json.dumps(new, indent=2) + "\n")
    return list(accounts), len(set(changes.remove) & present)
