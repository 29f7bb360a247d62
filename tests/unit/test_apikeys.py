"""ingest/core/apikeys.py: key format, the access table, refusals, quota windows, the token bucket."""

from __future__ import annotations

import pytest

from ingest.core import apikeys
from ingest.core.apikeys import ANY_KEY, PUBLIC, Bucket, KeyRecord

KEY = KeyRecord("dpk_abcdefgh", "buyer", ("read",), None, None, None, 0)


def test_a_new_key_has_the_documented_format_and_an_id_prefix() -> None:
    keys = {apikeys.new_key() for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert apikeys.KEY_RE.fullmatch(key), key
        assert apikeys.KEY_ID_RE.fullmatch(apikeys.key_id(key))
        assert key.startswith(apikeys.key_id(key))
        assert len(apikeys.digest(key)) == 32


@pytest.mark.parametrize(
    ("route", "rule"),
    [
        ("/", PUBLIC),
        ("/static/app.js", PUBLIC),
        ("/static", PUBLIC),
        ("/healthz", PUBLIC),
        ("/readyz", PUBLIC),
        ("/metrics", PUBLIC),
        ("/openapi.json", PUBLIC),
        ("/v1/stats", PUBLIC),
        ("/v1/coverage", PUBLIC),
        ("/v1/epochs", PUBLIC),
        ("/v1/epochs/{epoch}", PUBLIC),
        ("/v1/epochs/{epoch}/manifest", PUBLIC),
        ("/v1/epochs/{epoch}/manifest/export", PUBLIC),
        ("/v1/epochs/{epoch}/manifest/{part}", PUBLIC),
        ("/v1/owners/{address}/proof", PUBLIC),
        ("/v1/owners/{address}/devices", PUBLIC),
        ("/v1/devices/{device_id}", PUBLIC),
        ("/v1/devices/{device_id}/rejections", PUBLIC),
        ("/v1/readings", "read"),
        ("/v1/readings/search", "read"),
        ("/v1/aggregates", "read"),
        ("/v1/packets/{device_id}/{seq}", "read"),
        ("/v1/export", "export"),
        ("/v1/export/{format}", "export"),
        ("/v1/usage", ANY_KEY),
        ("/v1/something-new", "read"),  # not listed: keyed (fail closed)
        ("/v1/statsx", "read"),  # an exact entry is not a prefix
        ("/staticx", "read"),  # "P/*" covers P and P/…, not P…
    ],
)
def test_access_rule_of_each_route(route: str, rule: str) -> None:
    assert apikeys.access_rule(route) == rule


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        ("Bearer dpk_" + "a" * 52, "dpk_" + "a" * 52),
        ("bearer   dpk_" + "a" * 52 + " ", "dpk_" + "a" * 52),
        ("Basic dpk_" + "a" * 52, ""),
        ("Bearer dpk_" + "a" * 51, ""),
        ("Bearer dpk_" + "A" * 52, ""),  # base32 is lower case here
        ("Bearer dpk_" + "1" * 52, ""),  # 0, 1, 8, 9 are not base32
        ("Bearer", ""),
        ("", ""),
        ("Bearer dpk_" + "a" * 52 + "\x00", ""),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert apikeys.bearer_token(header) == token


REVOKED = KeyRecord("dpk_abcdefgh", "old", ("read", "export"), None, None, None, 0, revoked_ms=5)
BOTH = KeyRecord("dpk_abcdefgh", "both", ("read", "export"), None, None, None, 0)
TOKEN = "dpk_" + "a" * 52


@pytest.mark.parametrize(
    ("rule", "token", "key", "required", "status"),
    [
        (PUBLIC, None, None, True, None),
        (PUBLIC, "", None, True, None),  # a bad key on a public endpoint is not looked at
        ("read", None, None, True, 401),
        ("read", None, None, False, None),  # keys off: served without one
        (ANY_KEY, None, None, False, 401),  # …except what is about the key
        ("read", "", None, True, 401),
        ("read", "", None, False, 401),  # a key sent is checked even when keys are off
        ("read", TOKEN, None, True, 401),
        ("read", TOKEN, REVOKED, True, 401),
        ("read", TOKEN, KEY, True, None),
        ("export", TOKEN, KEY, True, 403),
        ("export", TOKEN, KEY, False, 403),
        ("export", TOKEN, BOTH, True, None),
        (ANY_KEY, TOKEN, KEY, True, None),
        (ANY_KEY, TOKEN, REVOKED, True, 401),
    ],
)
def test_refusal(
    rule: str, token: str | None, key: KeyRecord | None, required: bool, status: int | None
) -> None:
    got = apikeys.refusal(rule, token, key, required=required)
    assert (got.status if got else None) == status
    if got is not None:
        assert got.message


@pytest.mark.parametrize(
    ("quota", "used", "now_ms", "retry"),
    [
        (None, 10**9, 0, None),
        (100, 99, 0, None),
        (100, 100, 0, 86_400),
        (100, 150, 86_400_000 - 1, 1),  # one millisecond before midnight: retry in 1 s
        (100, 100, 86_400_000 + 3_600_000, 82_800),
        (0, 0, 0, 86_400),  # a zero quota refuses everything
    ],
)
def test_quota_refuses_until_utc_midnight(
    quota: int | None, used: int, now_ms: int, retry: int | None
) -> None:
    key = KeyRecord("dpk_abcdefgh", "q", ("read",), quota, None, None, 0)
    got = apikeys.over_quota(key, used, now_ms)
    assert (got.retry_after_s if got else None) == retry
    if got is not None:
        assert got.status == 429


def test_utc_day() -> None:
    assert [apikeys.utc_day(ms) for ms in (0, 86_399_999, 86_400_000)] == [0, 0, 1]


def test_the_bucket_admits_a_burst_then_the_rate() -> None:
    b = Bucket(tokens=3.0, at_s=0.0)
    assert [b.take(0.0, 2.0, 3.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take(0.0, 2.0, 3.0) == pytest.approx(0.5)  # empty: one token in 1/rate s
    assert b.take(0.5, 2.0, 3.0) == 0.0
    assert b.take(0.6, 2.0, 3.0) == pytest.approx(0.4)  # 0.2 tokens: 0.8 / 2 s
    assert b.take(100.0, 2.0, 3.0) == 0.0  # refilled to the burst, not beyond
    assert b.tokens == pytest.approx(2.0)
    assert b.take(99.0, 2.0, 3.0) == 0.0  # a clock going back adds nothing
    refusal = apikeys.rate_limited(0.2, KEY, 2.0)
    assert (refusal.status, refusal.retry_after_s) == (429, 1)


@pytest.mark.parametrize(
    ("raw", "scopes"),
    [("read", ("read",)), ("read,export", ("read", "export")), (" export , read,export", ("export", "read"))],
)
def test_parse_scopes(raw: str, scopes: tuple[str, ...]) -> None:
    assert apikeys.parse_scopes(raw) == scopes


@pytest.mark.parametrize("raw", ["", ",", "write", "read,admin"])
def test_parse_scopes_refuses(raw: str) -> None:
    with pytest.raises(ValueError, match="scopes"):
        apikeys.parse_scopes(raw)
