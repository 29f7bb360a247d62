"""API keys, pure: the key format and its digest, which endpoints are public and which need a key of
which scope (the one table of it), the refusal a request gets, the per-key token bucket and the UTC
day a quota counts in. No I/O: the store keeps keys (ingest/adapters/store/keys.py), the API's
middleware applies these rules (ingest/api/auth.py).

A key is `dpk_` + 52 base32 characters (32 random bytes). Only its sha256 is stored, with a public id
(the key's first 12 characters, `dpk_` + 8) to list and revoke it by: the id tells a user which key
they hold without revealing it (it gives away 40 of the key's 256 bits).
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import secrets
from dataclasses import dataclass

KEY_PREFIX = "dpk_"
KEY_RE = re.compile(r"dpk_[a-z2-7]{52}")
KEY_ID_RE = re.compile(r"dpk_[a-z2-7]{8}")
KEY_ID_LEN = 12
SCOPES = ("read", "export")
DAY_MS = 86_400_000

PUBLIC = "public"  # no key needed (a key sent anyway is not looked at)
ANY_KEY = "any-key"  # any valid key, whatever its scopes
DEFAULT_RULE = "read"  # a route missing from ACCESS: keyed, so a new data endpoint is never free by omission

# The access rule of every endpoint, written once: handlers added later add a line here. Key: a route
# as aiohttp and OpenAPI write it ("/v1/epochs/{epoch}"), or "P/*" for P and every route under it.
# Value: PUBLIC, ANY_KEY, or the scope a key needs. Owner views are public: registry data is public
# on chain anyway; what buyers pay for (readings, aggregates, exports, signed packets) is keyed.
ACCESS: dict[str, str] = {
    "/": PUBLIC,  # the coverage map page
    "/static/*": PUBLIC,  # its files
    "/healthz": PUBLIC,
    "/readyz": PUBLIC,
    "/metrics": PUBLIC,
    "/openapi.json": PUBLIC,
    "/v1/stats": PUBLIC,
    "/v1/coverage": PUBLIC,
    "/v1/epochs/*": PUBLIC,
    "/v1/owners/*": PUBLIC,
    "/v1/devices/*": PUBLIC,
    "/v1/bounties": PUBLIC,  # on chain and in the manifests anyway
    "/v1/readings/*": "read",
    "/v1/aggregates": "read",
    "/v1/packets/*": "read",
    "/v1/export/*": "export",
    "/v1/usage": ANY_KEY,
}


def access_rule(route: str, table: dict[str, str] = ACCESS) -> str:
    """The rule of a route (its pattern, e.g. "/v1/devices/{device_id}"): an exact entry, else the
    longest "P/*" entry it falls under, else DEFAULT_RULE."""
    if route in table:
        return table[route]
    best = ""
    for pattern in table:
        if pattern.endswith("/*"):
            prefix = pattern[:-2]
            if (route == prefix or route.startswith(prefix + "/")) and len(pattern) > len(best):
                best = pattern
    return table[best] if best else DEFAULT_RULE


# --- keys ---------------------------------------------------------------------------------------------


def new_key() -> str:
    """A fresh key: `dpk_` + 32 random bytes in lower-case base32 (52 characters, no padding)."""
    return KEY_PREFIX + base64.b32encode(secrets.token_bytes(32)).decode().lower().rstrip("=")


def key_id(key: str) -> str:
    """The key's public id: its first 12 characters."""
    return key[:KEY_ID_LEN]


def digest(key: str) -> bytes:
    """What is stored of a key: its sha256."""
    return hashlib.sha256(key.encode()).digest()


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer …` header ("" for a header that is present but not a
    well-formed key, so it is refused without a database lookup); None when there is no header."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not KEY_RE.fullmatch(token):
        return ""
    return token


def parse_scopes(raw: str) -> tuple[str, ...]:
    """ "read,export" → ("read", "export"); a ValueError names an unknown scope."""
    scopes = tuple(dict.fromkeys(s.strip() for s in raw.split(",") if s.strip()))
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise ValueError(f"scopes must be a comma list of {', '.join(SCOPES)}; got {raw!r}")
    return scopes


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A stored key (never the key itself). `quota`: usage units per UTC day (None: unlimited);
    `rate`/`burst`: requests per second per API process (None: DEPIN_API_KEY_RATE/_BURST)."""

    key_id: str
    name: str
    scopes: tuple[str, ...]
    quota: int | None
    rate: float | None
    burst: float | None
    created_ms: int
    revoked_ms: int | None = None
    # Prepaid credit (README "Rewards", buyers' revenue): tokens deposited on chain for this key and
    # the value of its usage so far, in token base units. A key with deposits is prepaid.
    deposited: int = 0
    spent: int = 0


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int  # 401, 402, 403 or 429
    code: str
    message: str
    retry_after_s: int | None = None


def refusal(rule: str, token: str | None, key: KeyRecord | None, *, required: bool) -> Refusal | None:
    """Why a request to a route of `rule` is refused, or None to serve it.

    `token`: the bearer token (None: no header; "": malformed); `key`: its stored record (None:
    unknown). `required` False (DEPIN_API_KEYS=off): a request without a key is served, except where
    the answer is about the key (ANY_KEY); a key that is sent is still checked and metered."""
    if rule == PUBLIC:
        return None
    if token is None:
        if required or rule == ANY_KEY:
            return Refusal(401, "missing_key", "this endpoint needs an API key: Authorization: Bearer dpk_…")
        return None
    if not token or key is None:
        return Refusal(401, "invalid_key", "unknown API key (a key is dpk_ followed by 52 base32 characters)")
    if key.revoked_ms is not None:
        return Refusal(401, "revoked_key", f"API key {key.key_id} was revoked")
    if rule != ANY_KEY and rule not in key.scopes:
        return Refusal(
            403,
            "missing_scope",
            f"API key {key.key_id} lacks scope {rule!r} (it has: {', '.join(key.scopes) or 'none'})",
        )
    return None


def over_quota(key: KeyRecord, used_today: int, now_ms: int) -> Refusal | None:
    """A 429 until the next UTC midnight once today's units reach the key's quota."""
    if key.quota is None or used_today < key.quota:
        return None
    wait = math.ceil((DAY_MS - now_ms % DAY_MS) / 1000)
    return Refusal(
        429,
        "quota_exceeded",
        f"API key {key.key_id} used {used_today} of its {key.quota} units today (UTC); "
        f"the quota resets at midnight UTC, in {wait} s",
        wait,
    )


def credit_spent(key: KeyRecord, spent: int) -> Refusal | None:
    """A 402 once a prepaid key (one with deposits) has spent them: `spent` is its usage's value."""
    if key.deposited <= 0 or spent < key.deposited:
        return None
    return Refusal(
        402,
        "credit_spent",
        f"API key {key.key_id} has spent its prepaid credit ({spent} of {key.deposited} base units "
        f"deposited): deposit more with `depin credit deposit --key-id {key.key_id} …`",
    )


def utc_day(now_ms: int) -> int:
    """Days since 1970-01-01 (UTC): the day a quota counts in."""
    return now_ms // DAY_MS


# --- rate ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Bucket:
    """A key's token bucket in one API process: `rate` requests per second, `burst` at once."""

    tokens: float
    at_s: float

    def take(self, now_s: float, rate: float, burst: float) -> float:
        """Take one token: 0.0 when admitted, else the seconds until a token is there."""
        if now_s > self.at_s:
            self.tokens = min(burst, self.tokens + (now_s - self.at_s) * rate)
            self.at_s = now_s
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / rate


def rate_limited(wait_s: float, key: KeyRecord, rate: float) -> Refusal:
    return Refusal(
        429,
        "rate_limited",
        f"API key {key.key_id} is over its rate of {rate:g} requests/s (per API process); retry shortly",
        max(1, math.ceil(wait_s)),
    )
