"""The buyers' query endpoints on an app: /v1/readings, /v1/aggregates, /v1/export (one call from
ingest/api/app.py's create_app)."""

from __future__ import annotations

from aiohttp import web

from ingest.adapters.store.queries import QueryStore
from ingest.adapters.store.rows import PoolStore
from ingest.api.aggregates import aggregates
from ingest.api.export import export
from ingest.api.query_common import QUERIES, QUERY_LIMITS, QueryLimits
from ingest.api.readings import readings


def add_query_routes(app: web.Application, store: PoolStore, limits: QueryLimits) -> None:
    """Routes and state of the query endpoints; their queries run on `store`'s pool (the API's)."""
    app[QUERIES] = QueryStore(store.pool)
    app[QUERY_LIMITS] = limits
    app.router.add_get("/v1/readings", readings)
    app.router.add_get("/v1/aggregates", aggregates)
    app.router.add_get("/v1/export", export)
