"""`depin api-key create|list|revoke`: buyers' API keys, on the service's database (DEPIN_DATABASE_URL;
`. /var/tmp/depin/demo/current.env` for the demo). A key is printed once, at creation; the database
keeps only its sha256 (ingest/core/apikeys.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from devices.errors import SettingsError

T = TypeVar("T")


def _positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {raw!r}")
    return value


def _units(raw: str) -> int:
    if not raw.isdigit() or int(raw) >= 2**63:
        raise argparse.ArgumentTypeError(f"must be a whole number of usage units, got {raw!r}")
    return int(raw)


def _scopes(raw: str) -> tuple[str, ...]:
    from ingest.core.apikeys import parse_scopes

    try:
        return parse_scopes(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _key_id(raw: str) -> str:
    from ingest.core.apikeys import KEY_ID_RE

    if not KEY_ID_RE.fullmatch(raw):
        raise argparse.ArgumentTypeError(
            f"a key id is dpk_ + 8 characters (see `depin api-key list`), got {raw!r}"
        )
    return raw


async def _with_keys(body: Callable[[Any], Awaitable[T]]) -> T:
    from ingest.adapters.db import create_pool, migrate
    from ingest.adapters.store.keys import KeyStore
    from ingest.settings import read_environment

    dsn = read_environment().database_url
    if not dsn:
        raise SettingsError(
            "DEPIN_DATABASE_URL is not set: API keys live in the service's database "
            "(for the demo: . /var/tmp/depin/demo/current.env)"
        )
    pool = await create_pool(dsn, min_size=1, max_size=1, application_name="depin-api-key")
    try:
        await migrate(pool)  # a database the service has not started on yet gets its tables
        return await body(KeyStore(pool))
    finally:
        await pool.close()


def _when(ms: int | None) -> str:
    return "-" if ms is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _row(k: Any) -> dict[str, Any]:
    return {
        "id": k.key_id,
        "name": k.name,
        "scopes": list(k.scopes),
        "quota": k.quota,
        "rate": k.rate,
        "burst": k.burst,
        "created": _when(k.created_ms),
        "revoked": None if k.revoked_ms is None else _when(k.revoked_ms),
    }


def _create(args: argparse.Namespace) -> int:
    token, record = asyncio.run(
        _with_keys(
            lambda keys: keys.create(
                args.name, args.scopes, quota=args.quota, rate=args.rate, burst=args.burst
            )
        )
    )
    if args.json:
        print(json.dumps({"key": token, **_row(record)}))
        return 0
    print(f"id   {record.key_id}  ({record.name}; scopes {','.join(record.scopes)})")
    print(f"key  {token}")
    print("the key is shown only now: the service keeps its sha256 (use: Authorization: Bearer <key>)")
    return 0


def _list(args: argparse.Namespace) -> int:
    records = asyncio.run(_with_keys(lambda keys: keys.list_keys()))
    if args.json:
        print(json.dumps([_row(k) for k in records]))
        return 0
    print(f"{'id':<14}{'name':<20}{'scopes':<14}{'quota/day':>11}{'rate':>8}  {'created':<22}revoked")
    for k in records:
        r = _row(k)
        quota = "-" if k.quota is None else str(k.quota)
        rate = "default" if k.rate is None else f"{k.rate:g}"
        print(
            f"{k.key_id:<14}{k.name[:19]:<20}{','.join(k.scopes):<14}{quota:>11}{rate:>8}  "
            f"{r['created']:<22}{r['revoked'] or '-'}"
        )
    return 0


def _revoke(args: argparse.Namespace) -> int:
    record = asyncio.run(_with_keys(lambda keys: keys.revoke(args.id)))
    if record is None:
        raise LookupError(f"no API key {args.id} (see `depin api-key list`)")
    print(
        f"revoked {record.key_id} ({record.name}) at {_when(record.revoked_ms)}; API processes refuse it "
        "within DEPIN_API_KEY_CACHE_S (default 5 s)"
    )
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ksub = sub.add_parser(
        "api-key", help="buyers' API keys: create (printed once), list, revoke"
    ).add_subparsers(dest="key_command", required=True)
    c = ksub.add_parser("create", help="create a key and print it once (the database keeps its sha256)")
    c.add_argument("--name", required=True, help="who or what the key is for")
    c.add_argument(
        "--scopes", type=_scopes, default=("read",), help="comma list of read,export (default read)"
    )
    c.add_argument("--quota", type=_units, help="usage units per UTC day (default: no quota)")
    c.add_argument(
        "--rate",
        type=_positive_float,
        help="requests per second per API process (default DEPIN_API_KEY_RATE)",
    )
    c.add_argument("--burst", type=_positive_float, help="requests at once (default DEPIN_API_KEY_BURST)")
    c.add_argument("--json", action="store_true", help="print the key and its record as JSON")
    c.set_defaults(func=_create)
    ls = ksub.add_parser("list", help="every key: id, name, scopes, quota, rate, created, revoked")
    ls.add_argument("--json", action="store_true", help="as a JSON array")
    ls.set_defaults(func=_list)
    r = ksub.add_parser("revoke", help="revoke a key by its id (dpk_ + 8 characters)")
    r.add_argument("id", type=_key_id, help="the key's id, from `depin api-key list`")
    r.set_defaults(func=_revoke)
