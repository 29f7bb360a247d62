"""GET /v1/export?format=csv|ndjson: the readings of a filter (as /v1/readings) over up to 366 days,
streamed straight from a PostgreSQL COPY into the response: the process holds one chunk at a time
whatever the size (the client's pace is the COPY's: aiohttp's write waits for the socket to drain).

The usage is charged before the first byte, with one SQL GROUP BY over the same filter (readings per
res-7 cell and epoch). Columns: ingest/adapters/store/queries.py CSV_COLUMNS (README "Exports"), plus
`envelope` with include=envelope (DESIGN §14). An
error after the first byte cannot become a status any more: the connection is then closed without
the chunked stream's end, so a client sees a truncated transfer, never a short file that looks whole.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web

from ingest.api.metering import EPOCH_GRID, record_usage
from ingest.api.query_common import QUERIES, choice, query_params, time_range, where_of
from ingest.api.readings import include_of
from ingest.core import metering
from ingest.core.readfilter import FILTER_PARAMS

log = logging.getLogger(__name__)
PARAMS = FILTER_PARAMS | {"from", "to", "format", "include"}
MAX_DAYS = 366
EXPORT_TIMEOUT_MS = 15 * 60_000  # the export's own statement timeout (the API pool's is for pages)
CONTENT_TYPES = {"csv": "text/csv", "ndjson": "application/x-ndjson"}


async def export(request: web.Request) -> web.StreamResponse:
    q = query_params(request, PARAMS)
    fmt = choice(q, "format", list(CONTENT_TYPES))
    where = where_of(q)
    include = include_of(q)
    start, end = time_range(q, max_days=MAX_DAYS)
    f = where.between(start, end)
    store = request.app[QUERIES]
    used = await store.usage(f, *request.app[EPOCH_GRID])
    # Written before the first byte: a failed write is a 503, never an unpaid stream.
    await record_usage(request, {k: n * metering.READING_UNITS for k, n in used.items()})
    response = web.StreamResponse(
        headers={
            "Content-Type": f"{CONTENT_TYPES[fmt]}; charset=utf-8",
            "Content-Disposition": f'attachment; filename="readings-{start}-{end}.{fmt}"',
        }
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    started = time.monotonic()
    try:
        await store.export(
            f, fmt, response.write, timeout_ms=EXPORT_TIMEOUT_MS, envelope="envelope" in include
        )
    except Exception:
        log.warning(
            "export %s stopped after %.1f s; closing the connection",
            request.path_qs[:300],
            time.monotonic() - started,
            exc_info=True,
        )
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response
