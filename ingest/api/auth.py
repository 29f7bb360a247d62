"""API keys on the HTTP API: who may call what (the rule table is ingest/core/apikeys.py `ACCESS`),
per-key rate limit and daily quota, usage written after the answer is built, and CORS.

Order of the middlewares (create_app): json_errors → cors_preflight → db_slots → authenticate →
handler. `authenticate` runs inside the request's database slot: its key lookups (cached
DEPIN_API_KEY_CACHE_S seconds per process) and the usage write use the API's own pool, and the usage
is written before db_slots sends the answer. Per-key rate limits are per API process: N API processes
on one database give a key N × its rate. Quotas count the `usage_daily` row, read with the key and
updated by every write of this process; other processes' usage shows within the cache TTL.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ingest.adapters.store.keys import KeyStore
from ingest.api import metering
from ingest.api.metering import KEY_ID, EpochGrid
from ingest.api.usage_batch import Batch, UsageBatcher
from ingest.core import apikeys
from ingest.core.apikeys import KeyRecord, Refusal
from ingest.core.market import account_of
from ingest.core.metering import epoch_of

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DEFAULT_GRID = EpochGrid(1_767_225_600_000, 86_400_000)  # the settings' defaults: daily from 2026-01-01
_MAX_CACHED = 10_000  # digests remembered (known or unknown) before the cache starts over


@dataclass(frozen=True)
class ApiAccess:
    """DEPIN_API_KEYS (`required`: True), DEPIN_API_KEY_RATE/_BURST (a key's default), DEPIN_API_KEY_CACHE_S,
    DEPIN_API_CORS_ORIGINS, and the epochs' numbering (DEPIN_EPOCH_GENESIS_MS, DEPIN_EPOCH_LENGTH_S)."""

    required: bool = True
    rate: float = 10.0
    burst: float = 20.0
    cache_s: float = 5.0
    cors_origins: tuple[str, ...] = ()
    grid: EpochGrid = DEFAULT_GRID
    # DEPIN_PRICE_PER_UNIT: token base units a usage unit costs a prepaid key (0: nobody pays)
    price_per_unit: int = 0


def api_access(settings: Any) -> ApiAccess:
    """From the service's `Settings` (its `api` and `epochs` groups)."""
    api, epochs = settings.api, settings.epochs
    return ApiAccess(
        required=api.keys == "required",
        rate=api.key_rate,
        burst=api.key_burst,
        cache_s=api.key_cache_s,
        cors_origins=api.cors_origins,
        grid=EpochGrid(epochs.genesis_ms, epochs.length_ms),
        price_per_unit=api.price_per_unit,
    )


@dataclass
class Keys:
    """One API process's view of the keys: a TTL cache of lookups, today's units per key, buckets."""

    store: KeyStore
    access: ApiAccess
    clock: Callable[[], float] = time.monotonic
    wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000
    _cache: dict[bytes, tuple[float, KeyRecord | None]] = field(default_factory=dict)
    _used: dict[str, tuple[int, int]] = field(default_factory=dict)  # key id → (UTC day, units)
    _buckets: dict[str, apikeys.Bucket] = field(default_factory=dict)
    # prepaid keys (deposits seen at the last lookup) → value spent by this process since that lookup
    _spent: dict[str, int] = field(default_factory=dict)
    _usage: UsageBatcher = field(init=False)  # group commit of the usage writes (usage_batch.py)

    def __post_init__(self) -> None:
        self._usage = UsageBatcher(self._write_usage)

    async def get(self, token: str) -> KeyRecord | None:
        digest = apikeys.digest(token)
        now = self.clock()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        day = apikeys.utc_day(self.wall_ms())
        found = await self.store.lookup(digest, day, account_of(apikeys.key_id(token)))
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        record = None if found is None else found[0]
        self._cache[digest] = (now + self.access.cache_s, record)
        if found is not None:
            self._note_used(found[0].key_id, day, found[1])
            if found[0].deposited > 0 and self.access.price_per_unit > 0:
                self._spent[found[0].key_id] = 0  # the looked-up spend counts every committed write
            else:
                self._spent.pop(found[0].key_id, None)
        return record

    async def _write_usage(self, batch: Batch) -> Mapping[tuple[str, int], int]:
        return await self.store.record_usage_batch(batch, price=self.access.price_per_unit)

    def spent(self, key: KeyRecord) -> int:
        """A prepaid key's spend: as looked up, plus what this process wrote since."""
        return key.spent + self._spent.get(key.key_id, 0)

    def _note_used(self, key_id: str, day: int, units: int) -> None:
        seen = self._used.get(key_id)
        if seen is None or seen[0] != day or units > seen[1]:
            self._used[key_id] = (day, units)

    def used_today(self, key_id: str, day: int) -> int:
        seen = self._used.get(key_id)
        return seen[1] if seen is not None and seen[0] == day else 0

    def take(self, key: KeyRecord) -> Refusal | None:
        rate = key.rate or self.access.rate
        burst = key.burst or self.access.burst
        now = self.clock()
        bucket = self._buckets.setdefault(key.key_id, apikeys.Bucket(burst, now))
        wait = bucket.take(now, rate, burst)
        return apikeys.rate_limited(wait, key, rate) if wait else None

    async def record(self, key_id: str, units: Mapping[tuple[int, int], int]) -> None:
        now_ms = self.wall_ms()
        day = apikeys.utc_day(now_ms)
        prepaid = key_id in self._spent
        # the epoch the query ran in: its units count there for demand (and revenue, if prepaid), or in
        # the first epoch not sealed when they are written (KeyStore.record_usage_batch)
        epoch = epoch_of(now_ms, *self.access.grid)
        self._note_used(key_id, day, await self._usage.add(key_id, day, units, epoch=epoch, prepaid=prepaid))
        if prepaid:
            value = sum(n for n in units.values() if n > 0) * self.access.price_per_unit
            self._spent[key_id] = self._spent.get(key_id, 0) + value


ACCESS: web.AppKey[ApiAccess] = web.AppKey("access", ApiAccess)
KEYS: web.AppKey[Keys] = web.AppKey("keys", Keys)
REQUEST_KEY: web.RequestKey[KeyRecord] = web.RequestKey("depin.key", KeyRecord)  # an authenticated request's


def _refuse(r: Refusal) -> web.Response:
    headers: dict[str, str] = {}
    if r.status == 401:
        error = "invalid_token" if r.code != "missing_key" else "invalid_request"
        headers["WWW-Authenticate"] = f'Bearer realm="depin", error="{error}"'
    if r.retry_after_s is not None:
        headers["Retry-After"] = str(r.retry_after_s)
    return web.json_response({"error": r.message}, status=r.status, headers=headers)


def route_of(request: web.Request) -> str | None:
    """The matched route's pattern ("/v1/devices/{device_id}"); None when nothing matched (404/405)."""
    info = request.match_info
    if info.http_exception is not None:
        return None
    resource = info.route.resource
    return resource.canonical if resource is not None else None


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Key, scope, rate and quota before the handler; the request's usage after it (before sending)."""
    route = route_of(request)
    rule = apikeys.PUBLIC if route is None else apikeys.access_rule(route)
    if rule == apikeys.PUBLIC:
        return await handler(request)
    access, keys = request.app[ACCESS], request.app[KEYS]
    token = apikeys.bearer_token(request.headers.get("Authorization"))
    key = await keys.get(token) if token else None
    refusal = apikeys.refusal(rule, token, key, required=access.required)
    if refusal is None and key is not None:
        refusal = keys.take(key)
        now_ms = keys.wall_ms()
        if rule != apikeys.ANY_KEY:  # /v1/usage is free: readable over the quota, to see why
            used = keys.used_today(key.key_id, apikeys.utc_day(now_ms))
            refusal = refusal or apikeys.over_quota(key, used, now_ms)
            if access.price_per_unit > 0:
                refusal = refusal or apikeys.credit_spent(key, keys.spent(key))
    if refusal is not None:
        return _refuse(refusal)
    if key is not None:
        request[REQUEST_KEY] = key
        request[KEY_ID] = key.key_id
    response = await handler(request)
    if response.status < 400 and metering.charged(request):
        try:
            await metering.flush(request)
        except metering.UsageNotRecorded as exc:
            log.warning("API %s %s: usage not recorded (%r)", request.method, request.path, exc.__cause__)
            if response.prepared:  # a stream that charged after its first byte: too late to refuse
                return response
            raise
    return response


# --- CORS ---------------------------------------------------------------------------------------------

_CORS_METHODS = "GET, POST, OPTIONS"
_CORS_HEADERS = "Authorization, Content-Type"
_CORS_EXPOSE = "Retry-After, WWW-Authenticate"


def _allowed_origin(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    origins = request.app[ACCESS].cors_origins
    if origin is None or not origins:
        return None
    if "*" in origins:
        return "*"
    return origin if origin in origins else None


@web.middleware
async def cors_preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer a CORS preflight (OPTIONS with Origin and Access-Control-Request-Method) for an allowed
    origin on an existing path: 204 with the methods and headers (Authorization included) allowed."""
    exc = request.match_info.http_exception
    preflight = request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
    if preflight and (exc is None or exc.status == 405):
        origin = _allowed_origin(request)
        if origin is not None:
            return web.Response(
                status=204,
                headers={
                    "Access-Control-Allow-Origin": origin,
                    "Access-Control-Allow-Methods": _CORS_METHODS,
                    "Access-Control-Allow-Headers": _CORS_HEADERS,
                    "Access-Control-Max-Age": "600",
                    "Vary": "Origin",
                },
            )
    return await handler(request)


async def cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every answer to an allowed origin (errors and streams included) says so."""
    origin = _allowed_origin(request)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = _CORS_EXPOSE
        response.headers.add("Vary", "Origin")


def install_access(app: web.Application, pool: Any, access: ApiAccess) -> None:
    """Keys, metering and CORS on `app` (create_app calls it; `pool`: the API's own)."""
    keys = Keys(KeyStore(pool), access)
    app[ACCESS] = access
    app[KEYS] = keys
    app[metering.EPOCH_GRID] = access.grid
    app[metering.USAGE_SINK] = keys.record
    app.middlewares.insert(1, cors_preflight)  # after json_errors, before db_slots: no slot for a preflight
    app.middlewares.append(authenticate)
    app.on_response_prepare.append(cors_headers)


# --- OpenAPI --------------------------------------------------------------------------------------------

_ERR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_REFUSALS = {
    "401": {"description": "no API key, or an unknown or revoked one (WWW-Authenticate: Bearer)", **_ERR},
    "402": {
        "description": "a prepaid key whose credit is spent (deposit more: `depin credit deposit`)",
        **_ERR,
    },
    "403": {"description": "the key lacks the scope this endpoint needs", **_ERR},
    "429": {
        "description": "over the key's rate (per API process) or its daily quota; see Retry-After",
        **_ERR,
    },
}


def describe_access(doc: dict[str, Any], access: ApiAccess) -> dict[str, Any]:
    """`doc` (an OpenAPI description) with the bearer scheme on every keyed operation, by the same
    table the middleware uses, and the refusals they may answer. Keys optional (`off`): the
    operation may also be called without one."""
    doc = copy.deepcopy(doc)
    doc.setdefault("components", {})["securitySchemes"] = {
        "apiKey": {
            "type": "http",
            "scheme": "bearer",
            "description": "an API key from `depin api-key create`: dpk_ + 52 base32 characters",
        }
    }
    for path, ops in doc.get("paths", {}).items():
        rule = apikeys.access_rule(path)
        if rule == apikeys.PUBLIC:
            continue
        for op in ops.values():
            optional = not access.required and rule != apikeys.ANY_KEY
            op["security"] = [{"apiKey": []}, {}] if optional else [{"apiKey": []}]
            scope = "any valid key" if rule == apikeys.ANY_KEY else f"a key with scope `{rule}`"
            op["description"] = (op.get("description", "") + f" Needs {scope}.").strip()
            op.setdefault("responses", {}).update(copy.deepcopy(_REFUSALS))
    return doc
