"""GET /v1/aggregates: count, min, max and avg of one numeric value per H3 cell (at a chosen
resolution) and/or device × time bucket (minute, hour, day), over the filter of /v1/readings.

Charged per (res-7 cell, epoch) as `metering.aggregated_units` of the readings summarised, counted with
one SQL GROUP BY over the same filter.
"""

from __future__ import annotations

import re

from aiohttp import web

from ingest.api.metering import charge
from ingest.api.query_common import (
    QUERIES,
    bad_request,
    choice,
    epoch_clock,
    json_response,
    query_params,
    time_range,
    where_of,
)
from ingest.core import metering
from ingest.core.readfilter import FILTER_PARAMS

PARAMS = FILTER_PARAMS | {"from", "to", "res", "bucket", "value"}
MAX_DAYS = {"minute": 2, "hour": 31, "day": 366}  # range caps per bucket
MAX_GROUPS = 10_000
_VALUE_RE = re.compile(r"[A-Za-z0-9_]{1,64}")


async def aggregates(request: web.Request) -> web.Response:
    q = query_params(request, PARAMS)
    where = where_of(q)
    bucket = choice(q, "bucket", ["minute", "hour", "day"])
    value = q.get("value")
    if value is None or not _VALUE_RE.fullmatch(value):
        raise bad_request("value must name a reading value, e.g. temperature_c (A-Z, a-z, 0-9, _)")
    res = None
    if "res" in q:
        if not re.fullmatch(r"[0-9]{1,2}", q["res"]) or int(q["res"]) > 15:
            raise bad_request("res must be an H3 resolution, 0 to 15")
        res = int(q["res"])
    elif where.device is None:
        raise bad_request("res is required unless device is given (the resolution of the cells to group by)")
    start, end = time_range(q, max_days=MAX_DAYS[bucket])
    f = where.between(start, end)
    store = request.app[QUERIES]
    rows = await store.aggregates(
        f, res=res, by_device=where.device is not None, bucket=bucket, value=value, max_rows=MAX_GROUPS
    )
    if len(rows) > MAX_GROUPS:
        raise bad_request(
            f"more than {MAX_GROUPS:,} groups: narrow the range (from/to) or use a coarser res or bucket"
        )
    used = await store.usage(f, *epoch_clock(request))
    charge(request, {k: metering.aggregated_units(n) for k, n in used.items()})
    return json_response(
        {
            "res": res,
            "bucket": bucket,
            "value": value,
            "from": start,
            "to": end,
            "rows": [
                {
                    "cell": None if r.cell is None else format(r.cell, "x"),
                    "device_id": None if r.device_id is None else r.device_id.hex(),
                    "t": r.bucket_ms,
                    "count": r.n,
                    "min": r.min,
                    "max": r.max,
                    "avg": r.avg,
                }
                for r in rows
            ],
        }
    )
