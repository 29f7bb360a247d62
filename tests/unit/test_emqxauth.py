"""`depin broker emqx-users` (ingest/emqxauth.py): EMQX's password hashes against EMQX's own test vectors
and an independent computation, the import file's lines, and the command (files, modes, re-runs, errors).
That deploy/k8s/emqx.yaml's authenticator uses the tool's default: tests/integration/test_deploy.py."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from pathlib import Path

import pytest

from devices.keys import new_identity, save_identity
from ingest.brokerauth import Account, BrokerAuthError
from ingest.cli import main
from ingest.emqxauth import (
    DEFAULT_ALGORITHM,
    Algorithm,
    check_password,
    import_document,
    new_salt,
    password_hash,
)

# --- the hash, against EMQX's own vectors (emqx 5.8.6) ------------------------------------------------

# apps/emqx/test/emqx_passwd_SUITE.erl, t_hash: password <<"password">>, salt <<"salt">>.
SUITE_SHA256_SUFFIX = "7a37b85c8918eac19a9089c0fa5a2ab4dce3f90528dcdeec108b23ddf3607b99"
SUITE_SHA512_SUFFIX = (
    "fa6a2185b3e0a9a85ef41ffb67ef3c1fb6f74980f8ebf970e4e72e353ed9537d"
    "593083c201dfd6e43e1c8a7aac2bc8dbb119c7dfb7d4b8f131111395bd70e97f"
)
# Same suite: {pbkdf2, sha, <<"ATHENA.MIT.EDUraeburn">>, 2, 32} (RFC 3962's vector).
SUITE_PBKDF2_SHA1 = "01dbee7f4a9e243e988b62c73cda935da05378b93244ec8f48a99e61ad799d86"
# apps/emqx_auth/data/user-credentials.json, the sample import file EMQX ships: sha256 with the salt as
# prefix (the authenticator's default position), passwords mypassword1 / mypassword2 — a 32-hex salt
# used as its text.
SHIPPED_USERS = [
    (
        "mypassword1",
        "e378187547bf2d6f0545a3f441aa4d8a",
        "c5e46903df45e5dc096dc74657610dbee8deaacae656df88a1788f1847390242",
    ),
    (
        "mypassword2",
        "6d3f9bd5b54d94b98adbcfe10b6d181f",
        "f4d17f300b11e522fd33f497c11b126ef1ea5149c74d2220f9a16dc876d4567b",
    ),
]


def test_emqx_suite_vectors() -> None:
    assert password_hash(Algorithm("sha256", "suffix"), "password", "salt") == SUITE_SHA256_SUFFIX
    assert password_hash(Algorithm("sha512", "suffix"), "password", "salt") == SUITE_SHA512_SUFFIX
    pbkdf2 = Algorithm("pbkdf2", mac_fun="sha", iterations=2, dk_length=32)
    assert password_hash(pbkdf2, "password", "ATHENA.MIT.EDUraeburn") == SUITE_PBKDF2_SHA1


@pytest.mark.parametrize("password,salt,expected", SHIPPED_USERS)
def test_emqx_sample_import_file(password: str, salt: str, expected: str) -> None:
    algorithm = Algorithm("sha256", "prefix")
    assert password_hash(algorithm, password, salt) == expected
    assert check_password(algorithm, password, {"salt": salt, "password_hash": expected.upper()})
    assert not check_password(
        Algorithm("sha256", "suffix"), password, {"salt": salt, "password_hash": expected}
    )


def _pbkdf2_by_hand(name: str, password: bytes, salt: bytes, iterations: int, dklen: int) -> bytes:
    """RFC 8018 §5.2 written out with hmac alone, to check hashlib's PBKDF2 the way the tool calls it."""
    size = hashlib.new(name).digest_size
    out = b""
    block = 1
    while len(out) < dklen:
        u = hmac.new(password, salt + block.to_bytes(4, "big"), name).digest()
        acc = int.from_bytes(u, "big")
        for _ in range(iterations - 1):
            u = hmac.new(password, u, name).digest()
            acc ^= int.from_bytes(u, "big")
        out += acc.to_bytes(size, "big")
        block += 1
    return out[:dklen]


def test_hashes_against_an_independent_computation() -> None:
    pw, salt = "Zr9-x_secret", new_salt()
    assert password_hash(DEFAULT_ALGORITHM, pw, salt) == hashlib.sha256((pw + salt).encode()).hexdigest()
    assert (
        password_hash(Algorithm("sha512", "prefix"), pw, salt)
        == hashlib.sha512((salt + pw).encode()).hexdigest()
    )
    for mac, name, size in [("sha512", "sha512", 64), ("sha256", "sha256", 32), ("sha", "sha1", 20)]:
        got = password_hash(Algorithm("pbkdf2", mac_fun=mac, iterations=7), pw, salt)
        assert got == _pbkdf2_by_hand(name, pw.encode(), salt.encode(), 7, size).hex(), mac
    got = password_hash(Algorithm("pbkdf2", mac_fun="sha512", iterations=3, dk_length=80), pw, salt)
    assert got == _pbkdf2_by_hand("sha512", pw.encode(), salt.encode(), 3, 80).hex()


def test_salts_are_emqx_style_text() -> None:
    """32 lowercase hex digits, hashed as those characters (EMQX's gen_salt), never hex-decoded."""
    salts = {new_salt() for _ in range(50)}
    assert len(salts) == 50 and all(re.fullmatch(r"[0-9a-f]{32}", s) for s in salts)
    salt = salts.pop()
    assert (
        password_hash(DEFAULT_ALGORITHM, "pw", salt)
        != hashlib.sha256(b"pw" + bytes.fromhex(salt)).hexdigest()
    )


def test_the_default_is_sha256_with_the_salt_after() -> None:
    assert DEFAULT_ALGORITHM == Algorithm("sha256", salt_position="suffix")


@pytest.mark.parametrize(
    "algorithm,message",
    [
        (Algorithm("md5", "suffix"), "not written"),
        (Algorithm("plain", "disable"), "not written"),
        (Algorithm("bcrypt"), "not written"),
        (Algorithm("sha256", "disable"), "salt position"),
        (Algorithm("pbkdf2", mac_fun="sha512"), "--iterations"),
        (Algorithm("pbkdf2", mac_fun="md4", iterations=1), "mac_fun"),
    ],
)
def test_unsupported_algorithms_are_refused(algorithm: Algorithm, message: str) -> None:
    with pytest.raises(BrokerAuthError, match=re.escape(message)):
        algorithm.check()


# --- the import file ---------------------------------------------------------------------------------


def test_import_lines_and_kept_salts() -> None:
    dev = Account("ab" * 32, "devpw", created=False)
    svc = Account("depin-ingest", "svcpw", created=False)
    doc = import_document(DEFAULT_ALGORITHM, [svc, dev])
    assert [u["user_id"] for u in doc] == sorted([dev.username, svc.username])
    for line, account in zip(doc, [dev, svc], strict=True):
        assert set(line) == {"user_id", "password_hash", "salt", "is_superuser"}
        assert line["is_superuser"] is False
        assert line["password_hash"] == hashlib.sha256((account.password + line["salt"]).encode()).hexdigest()
    # Unchanged passwords keep their line (EMQX then reports them `skipped`); a changed one is new.
    assert import_document(DEFAULT_ALGORITHM, [svc, dev], doc) == doc
    changed = import_document(DEFAULT_ALGORITHM, [svc, Account(dev.username, "new", created=True)], doc)
    assert changed[1] == doc[1] and changed[0]["salt"] != doc[0]["salt"]
    # A line of another algorithm does not verify, so it is rehashed with a new salt.
    other = import_document(Algorithm("sha512", "suffix"), [svc, dev], doc)
    assert all(
        len(u["password_hash"]) == 128 and u["salt"] != v["salt"] for u, v in zip(other, doc, strict=True)
    )


# --- the command -------------------------------------------------------------------------------------


def test_depin_broker_emqx_users(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    d1, d2 = new_identity(), new_identity()
    save_identity(d1, tmp_path / "d1.json")
    save_identity(d2, tmp_path / "d2.json")
    args = ["broker", "emqx-users", "--out", "users.json"]
    svc = [
        "--user",
        "depin-ingest",
        "--password-file",
        "svc.pass",
        "--user",
        "w2",
        "--password-file",
        "w2.pass",
    ]
    assert main([*args, "--cred", "d1.json", "d2.json", *svc]) == 0
    for name in ("users.json", "svc.pass", "w2.pass", "d1.json", "d2.json"):
        assert (Path(name).stat().st_mode & 0o777) == 0o600, name
    text = Path("users.json").read_text()
    doc = json.loads(text)
    assert len(text.splitlines()) == len(doc) + 2  # a JSON list, one user per line
    users = {u["user_id"]: u for u in doc}
    assert set(users) == {d1.hex_id, d2.hex_id, "depin-ingest", "w2"}
    pw1 = json.loads(Path("d1.json").read_text())["mqtt_password"]
    assert check_password(DEFAULT_ALGORITHM, pw1, users[d1.hex_id])
    assert check_password(DEFAULT_ALGORITHM, Path("svc.pass").read_text().strip(), users["depin-ingest"])
    # The same passwords as `broker dynsec` keeps: a re-run (or dynsec's) reuses them; the file is unchanged.
    before = Path("users.json").read_text()
    assert main(["broker", "dynsec", "--file", "ds.json", "--cred", "d1.json"]) == 0
    assert main([*args, "--cred", "d1.json", "d2.json", *svc]) == 0
    assert Path("users.json").read_text() == before
    assert json.loads(Path("d1.json").read_text())["mqtt_password"] == pw1
    # --rotate: new passwords, new lines.
    assert main([*args, "--cred", "d1.json", "--rotate"]) == 0
    (line,) = json.loads(Path("users.json").read_text())
    pw1b = json.loads(Path("d1.json").read_text())["mqtt_password"]
    assert pw1b != pw1 and check_password(DEFAULT_ALGORITHM, pw1b, line)
    # Another configured algorithm: pbkdf2.
    assert (
        main(
            [*args, "--cred", "d1.json", "--algorithm", "pbkdf2", "--mac-fun", "sha512", "--iterations", "9"]
        )
        == 0
    )
    (line,) = json.loads(Path("users.json").read_text())
    assert (
        line["password_hash"] == _pbkdf2_by_hand("sha512", pw1b.encode(), line["salt"].encode(), 9, 64).hex()
    )


@pytest.mark.parametrize(
    "argv,message",
    [
        ([], "nothing to do"),
        (["--user", "svc"], "one --password-file per --user (1 user(s), 0 file(s))"),
        (["--user", "a b", "--password-file", "p"], "bad username 'a b'"),
        (["--user", "ab" * 32, "--password-file", "p"], "looks like a device id"),
        (["--cred", "c.json", "missing.json"], "missing.json: not a device"),
        (["--cred", "c.json", "--algorithm", "pbkdf2"], "pbkdf2 needs --iterations"),
    ],
)
def test_errors_are_one_line_and_write_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    save_identity(new_identity(), tmp_path / "c.json")
    assert main(["broker", "emqx-users", "--out", "u.json", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("depin broker emqx-users: error: ") and message in err and err.count("\n") == 1, err
    assert not Path("u.json").exists() and not Path("p").exists()
    assert "mqtt_password" not in Path("c.json").read_text()


def test_a_foreign_out_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    save_identity(new_identity(), tmp_path / "c.json")
    Path("u.json").write_text('{"clients": []}')
    assert main(["broker", "emqx-users", "--out", "u.json", "--cred", "c.json"]) == 1
    assert Path("u.json").read_text() == '{"clients": []}'
