"""`depin broker emqx-users`: the user import file of EMQX 5's password authenticator with the built-in
database (deploy/k8s/emqx.yaml), from the same accounts `depin broker dynsec` keeps for Mosquitto.

Devices log in with username = their device id (64 lowercase hex) and the password kept in their
credential file as `"mqtt_password"`, service accounts with the password in their password file; both
are generated (and stored) when absent, by `ingest.brokerauth.device_account` / `service_account`, so
one fleet can move between Mosquitto and EMQX with the same logins.

The file is EMQX's JSON import format for `POST /api/v5/authentication/password_based:built_in_database/
import_users?type=hash` (emqx_authn_mnesia.erl, 5.8): a list of `{"user_id", "password_hash", "salt",
"is_superuser"}`; the import replaces users already present (`override` in its answer), skips identical
ones and never deletes any. The hash must be the one the authenticator's `password_hash_algorithm`
computes (emqx_passwd.erl, emqx_authn_password_hashing.erl):

- the salt is used as the **text** it is (its bytes, never hex-decoded); EMQX makes its own as 16 random
  bytes in 32 lowercase hex digits, and so do we;
- simple algorithms (`sha256`, `sha512`): the lowercase hex digest of password + salt (`suffix`) or
  salt + password (`prefix`);
- `pbkdf2`: the lowercase hex of PBKDF2-HMAC(`mac_fun`, password, salt, `iterations`), `dk_length` bytes
  (default: the digest size of `mac_fun`).

EMQX compares hex digests case-insensitively. Plain (the password stored as is), md5, sha1 and bcrypt are
not written. A re-run keeps a user's salt (and so its line) when the password in its file is still the
one the existing `--out` line was hashed from: re-importing an unchanged fleet then reports `skipped`,
and `override` counts exactly the passwords that changed.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import re
import secrets
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devices.keys import load_identity
from ingest.brokerauth import (
    Account,
    BrokerAuthError,
    check_username,
    device_account,
    service_account,
    write_private,
)

SIMPLE = ("sha256", "sha512")
PBKDF2_MACS = ("sha", "sha224", "sha256", "sha384", "sha512")  # EMQX's names; `sha` is SHA-1
_HASHLIB = {"sha": "sha1", "sha224": "sha224", "sha256": "sha256", "sha384": "sha384", "sha512": "sha512"}
_HEX_ID = re.compile(r"[0-9a-f]{64}")
IMPORT_PATH = "/api/v5/authentication/password_based%3Abuilt_in_database/import_users?type=hash"


@dataclass(frozen=True)
class Algorithm:
    """The authenticator's `password_hash_algorithm`, as its HOCON names the fields."""

    name: str  # sha256 | sha512 | pbkdf2
    salt_position: str = "prefix"  # simple algorithms: prefix | suffix (EMQX's default: prefix)
    mac_fun: str = "sha256"  # pbkdf2 only
    iterations: int = 0  # pbkdf2 only
    dk_length: int | None = None  # pbkdf2 only; None: the digest size of mac_fun

    def check(self) -> Algorithm:
        if self.name in SIMPLE:
            if self.salt_position not in ("prefix", "suffix"):
                raise BrokerAuthError(
                    f"salt position {self.salt_position!r}: prefix or suffix (no unsalted hash is written)"
                )
        elif self.name == "pbkdf2":
            if self.mac_fun not in PBKDF2_MACS:
                raise BrokerAuthError(f"mac_fun {self.mac_fun!r}: one of {', '.join(PBKDF2_MACS)}")
            if self.iterations < 1:
                raise BrokerAuthError("pbkdf2 needs --iterations N (N ≥ 1, as the authenticator's config)")
            if self.dk_length is not None and self.dk_length < 1:
                raise BrokerAuthError("dk_length must be ≥ 1")
        else:
            raise BrokerAuthError(
                f"hash algorithm {self.name!r} is not written: choose sha256, sha512 or pbkdf2 "
                "(plain, md5 and sha are too weak; bcrypt is not supported)"
            )
        return self

    def describe(self) -> str:
        if self.name == "pbkdf2":
            dk = f", dk_length {self.dk_length}" if self.dk_length else ""
            return f"pbkdf2 {self.mac_fun}, {self.iterations} iterations{dk}"
        return f"{self.name}, salt {self.salt_position}"


# What deploy/k8s/emqx.yaml configures (tests/integration/test_deploy.py parses the manifest against it):
# one SHA-256 of password + salt. The passwords are 192 random bits, never chosen by a person, so a slow
# hash would protect nothing and cost CPU on every connect of a million devices (a reconnect storm
# after a broker restart).
DEFAULT_ALGORITHM = Algorithm("sha256", salt_position="suffix")


def new_salt() -> str:
    """A salt as EMQX makes one (emqx_authn_password_hashing:gen_salt/1): 16 random bytes written as 32
    lowercase hex digits; the hash uses these 32 characters, not the bytes they spell."""
    return secrets.token_hex(16)


def password_hash(algorithm: Algorithm, password: str, salt: str) -> str:
    """The `password_hash` EMQX computes for `password` with `salt` (emqx_passwd:hash/2)."""
    pw, salt_bytes = password.encode(), salt.encode()
    if algorithm.name == "pbkdf2":
        digest = _HASHLIB[algorithm.mac_fun]
        return hashlib.pbkdf2_hmac(digest, pw, salt_bytes, algorithm.iterations, algorithm.dk_length).hex()
    data = pw + salt_bytes if algorithm.salt_position == "suffix" else salt_bytes + pw
    return hashlib.new(algorithm.name, data).hexdigest()


def check_password(algorithm: Algorithm, password: str, user: dict[str, Any]) -> bool:
    """True if the import line `user` was hashed from `password` (hex compared without case, as EMQX)."""
    try:
        mine = password_hash(algorithm, password, str(user["salt"]))
        return hmac.compare_digest(mine, str(user["password_hash"]).lower())
    except (KeyError, TypeError, ValueError):
        return False


def user_entry(
    algorithm: Algorithm, account: Account, previous: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The import line of `account`: `previous` (the same user's line of the last file) is kept when its
    hash still matches the password, else a new salt is drawn."""
    if previous is not None and not account.created and check_password(algorithm, account.password, previous):
        salt = str(previous["salt"])
    else:
        salt = new_salt()
    return {
        "user_id": account.username,
        "password_hash": password_hash(algorithm, account.password, salt),
        "salt": salt,
        "is_superuser": False,
    }


def import_document(
    algorithm: Algorithm, accounts: Iterable[Account], previous: Sequence[dict[str, Any]] = ()
) -> list[dict[str, Any]]:
    """Every account's line, sorted by user id (one line per user id: the last account given wins)."""
    old = {str(u.get("user_id")): u for u in previous if isinstance(u, dict)}
    by_id = {a.username: a for a in accounts}
    return [user_entry(algorithm, by_id[uid], old.get(uid)) for uid in sorted(by_id)]


def import_text(doc: Sequence[dict[str, Any]]) -> str:
    """The file: a JSON list, one user per line (about 225 bytes for a device: 225 MB per million)."""
    if not doc:
        return "[]\n"
    return "[\n" + ",\n".join(json.dumps(u, separators=(",", ":")) for u in doc) + "\n]\n"


# --------------------------------------------------------------------------------------------- command


def _previous(out: Path) -> list[dict[str, Any]]:
    try:
        text = out.read_text()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise BrokerAuthError(f"cannot read {out}: {exc.strerror}") from None
    try:
        doc = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as exc:
        raise BrokerAuthError(f"{out} is not JSON: {exc}") from None
    if not isinstance(doc, list):
        raise BrokerAuthError(f"{out} is not an EMQX user import file (a JSON list expected)")
    return doc


def cmd_emqx_users(
    out: Path,
    creds: Sequence[Path],
    users: Sequence[str],
    password_files: Sequence[Path],
    algorithm: Algorithm,
    rotate: bool = False,
) -> int:
    """Write `out` (0600, atomically) with the devices of `creds` and the service accounts `users` (each
    with its password file, in the same order); nothing is written when an input is bad."""
    algorithm.check()
    if len(users) != len(password_files):
        raise BrokerAuthError(
            f"give one --password-file per --user ({len(users)} user(s), {len(password_files)} file(s))"
        )
    if not creds and not users:
        raise BrokerAuthError(
            "nothing to do: give --cred FILE… (devices) and/or --user NAME --password-file F"
        )
    for user in users:
        check_username(user)
        if _HEX_ID.fullmatch(user):
            raise BrokerAuthError(f"service account {user!r} looks like a device id")
    previous = _previous(out)
    for cred in creds:  # every credential file is read before any file is written
        load_identity(cred)
    devices = [device_account(cred, rotate) for cred in creds]
    services = [service_account(u, f, rotate) for u, f in zip(users, password_files, strict=True)]
    doc = import_document(algorithm, [*devices, *services], previous)
    write_private(out, import_text(doc))
    created = sum(a.created for a in [*devices, *services])
    print(
        f"{out}: {len(doc)} user(s) for EMQX's built-in database ({len(devices)} device(s), "
        f"{len(services)} service account(s); {created} new password(s)), hashed {algorithm.describe()} "
        f"— import with POST {IMPORT_PATH} (deploy/k8s/README.md)",
        file=sys.stderr,
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    algorithm = Algorithm(
        args.algorithm,
        salt_position=args.salt_position,
        mac_fun=args.mac_fun,
        iterations=args.iterations or 0,
        dk_length=args.dk_length,
    )
    return cmd_emqx_users(args.out, args.cred, args.user, args.password_file, algorithm, args.rotate)


def add_command(bsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`depin broker emqx-users` (registered by ingest/cli.py under `depin broker`)."""
    d = DEFAULT_ALGORITHM
    p = bsub.add_parser(
        "emqx-users",
        help="write the user import file of EMQX's built-in-database authenticator (deploy/k8s; mode 0600)",
        description="Devices log in as their id (hex) with the password kept in their credential file "
        '("mqtt_password", generated if absent, as `broker dynsec` does); each service account (--user) '
        "with the password in its --password-file (generated if absent). The file is EMQX 5's JSON import "
        f"format with hashed passwords: POST it to {IMPORT_PATH}. The hash options must match the "
        "authenticator's password_hash_algorithm (default: deploy/k8s/emqx.yaml's).",
    )
    p.add_argument("--out", type=Path, required=True, help="import file to write (JSON, mode 0600)")
    p.add_argument(
        "--cred", type=Path, nargs="+", default=[], metavar="FILE", help="device credential file(s)"
    )
    p.add_argument(
        "--user", action="append", default=[], help="service account (DEPIN_MQTT_USERNAME); repeatable"
    )
    p.add_argument(
        "--password-file",
        type=Path,
        action="append",
        default=[],
        help="its password file (DEPIN_MQTT_PASSWORD_FILE), one per --user, in the same order",
    )
    p.add_argument("--rotate", action="store_true", help="generate new passwords instead of reusing")
    g = p.add_argument_group("hash (the authenticator's password_hash_algorithm)")
    g.add_argument(
        "--algorithm", choices=[*SIMPLE, "pbkdf2"], default=d.name, help=f"name (default {d.name})"
    )
    g.add_argument(
        "--salt-position",
        choices=["prefix", "suffix"],
        default=d.salt_position,
        help=f"sha256/sha512: salt before or after the password (default {d.salt_position})",
    )
    g.add_argument("--mac-fun", choices=PBKDF2_MACS, default="sha256", help="pbkdf2: HMAC (default sha256)")
    g.add_argument("--iterations", type=int, help="pbkdf2: iterations (required with pbkdf2)")
    g.add_argument("--dk-length", type=int, help="pbkdf2: derived key bytes (default: the HMAC's size)")
    p.set_defaults(func=_run)
