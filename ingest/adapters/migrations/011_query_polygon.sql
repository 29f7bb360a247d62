-- The exact position test of polygon queries (ingest/adapters/store/queries.py): is (x, y) = (lon, lat)
-- inside the polygon whose ring edges are (x1[i], y1[i]) → (x2[i], y2[i])? Even-odd rule over every
-- ring's edges, so holes are excluded; the same test as ingest/core/readfilter.py Area.contains (an
-- integration test compares them). Only rows already found by a cell-range index scan reach it.
-- No new index: every query shape is served by the existing ones (EXPLAIN-tested in
-- tests/integration/test_api_query.py): a place is cell ranges on readings_cell_ts (cell, ts), a device
-- readings_key (device_id, ts, …); `kind` only narrows one of those.
CREATE FUNCTION depin_in_polygon(x float8, y float8, x1 float8[], y1 float8[], x2 float8[], y2 float8[])
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT count(*) % 2 = 1
    FROM unnest(x1, y1, x2, y2) AS e(xa, ya, xb, yb)
    WHERE (e.ya > y) <> (e.yb > y) AND x < (e.xb - e.xa) * (y - e.ya) / (e.yb - e.ya) + e.xa
$fn$;
