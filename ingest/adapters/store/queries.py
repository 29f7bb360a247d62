"""Buyers' queries (README "API"): a `ReadingFilter` (ingest/core/readfilter.py) as SQL, and what the
API asks with it — pages of readings, aggregates per cell × time bucket, metered usage, streamed exports.

A place is a join with `unnest` of its block scans (ingest/core/placescan.py): one LATERAL scan of
readings_block_ts (depin_cell7(cell), ts, cell) per res-7 block, keeping the rows `BlockScan.holds`
keeps (the same test in SQL, `place_parts`). A page asks each block for its first `limit` rows in time
order and merges them, so it reads at most blocks × limit rows, never every row of the place. A device
is `hashbyteaextended(device_id, 0) = …` (readings_device_ts) and `device_id = …`; with a place too,
the device's rows are tested against the scans. The resolutions the data is stored at come from
`readings_resolutions`, kept for RES_TTL_S.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import asyncpg

from ingest.adapters.store import rollups
from ingest.adapters.store.rows import (
    PoolStore,
    Position,
    ReadingPage,
    ReadingRow,
    bytes_or_none,
    clamped_dt,
    dt_to_ms,
    ms_to_dt,
)
from ingest.core import h3cells, metering, rollup_rules
from ingest.core.placescan import BlockScan, blocks_whole, place_scans
from ingest.core.readfilter import ReadingFilter, exact_area
from ingest.core.rules import FLAG_NAMES

READING_SELECT = (
    "ts, device_id, seq, idx, lat, lon, acc, alt, cell, kind, vals, media_sha256, media_uri, flags"
)
RES_TTL_S = 10.0
# The resolutions readings are stored at (migration 013: the batch writer adds each new one).
RESOLUTIONS_SQL = "SELECT res FROM readings_resolutions ORDER BY res"
BUCKETS = {"minute": "1 minute", "hour": "1 hour", "day": "1 day"}
_TS_MS = "floor(extract(epoch from ts) * 1000)::bigint"
_FLAG_NAMES = (
    "array_remove(ARRAY["
    + ", ".join(
        f"CASE WHEN flags & {bit} <> 0 THEN '{reason.value}' END" for bit, reason in FLAG_NAMES.items()
    )
    + "]::text[], NULL)"
)
# The export's columns, in order (README "Exports").
CSV_COLUMNS = (
    f"{_TS_MS} AS ts_ms, encode(device_id, 'hex') AS device_id, seq, idx, lat, lon, acc, alt, "
    "to_hex(cell) AS cell, kind, vals::text AS vals, encode(media_sha256, 'hex') AS media_sha256, "
    f"media_uri, array_to_string({_FLAG_NAMES}, '|') AS flags"
)


def _ndjson_column(extra: str = "") -> str:
    return (
        f"json_build_object('ts', {_TS_MS}, 'device_id', encode(device_id, 'hex'), 'seq', seq, 'idx', idx, "
        "'lat', lat, 'lon', lon, 'acc', acc, 'alt', alt, 'cell', to_hex(cell), 'kind', kind, 'vals', vals, "
        "'media', CASE WHEN media_sha256 IS NULL THEN NULL "
        "ELSE json_build_object('sha256', encode(media_sha256, 'hex'), 'uri', media_uri) END, "
        f"'flags', to_json({_FLAG_NAMES}){extra})::text"
    )


NDJSON_COLUMN = _ndjson_column()
# include=envelope: the packet's signed envelope by its primary key, padded base64 on one line (encode
# wraps at 76 characters). A scalar subquery, not a join the planner may turn into a hash join over a
# scan of packets: each row is one index probe of packets_pkey. Needs the readings aliased `rd`.
ENVELOPE_SQL = (
    "replace(encode((SELECT p.envelope FROM packets p WHERE p.device_id = rd.device_id "
    "AND p.seq = rd.seq), 'base64'), E'\\n', '')"
)
# A page's envelopes, looked up after the page is chosen (so include never changes a page's rows).
ENVELOPES_SQL = """SELECT k.d AS device_id, k.s AS seq,
                          (SELECT p.envelope FROM packets p
                           WHERE p.device_id = k.d AND p.seq = k.s) AS envelope
                   FROM unnest($1::bytea[], $2::bigint[]) AS k(d, s)"""


CONDS = "%CONDS%"  # where a source built by QueryStore.where takes its conditions
INNER = "%INNER%"  # … and a page its per-block ORDER BY and LIMIT
ORDER = "ts, device_id, seq, idx"


def device_sql(n: int) -> str:
    """The condition `device_id = $n` as readings_device_ts (hashbyteaextended(device_id, 0), ts) serves
    it: the hash picks the index entries, the id drops a hash collision's rows."""
    return f"hashbyteaextended(device_id, 0) = hashbyteaextended(${n}::bytea, 0) AND device_id = ${n}"


def from_where(source: str, conds: list[str], inner: str = "OFFSET 0") -> str:
    """`source WHERE conds`, or the conditions inside a source that takes them (a place's scans), with
    `inner` after them (`OFFSET 0` keeps each LATERAL scan a subquery of its own)."""
    where = " AND ".join(conds) or "true"
    if CONDS in source:
        return source.replace(CONDS, where).replace(INNER, inner)
    return f"{source} WHERE {where}"


def place_parts(scans: list[BlockScan], args: list[Any], test: str) -> list[tuple[str, str, str]]:
    """The scans as SQL, appending their arrays to `args`: per kind of scan (whole blocks, listed
    cells) its row source `g`, the block condition on a reading and the row condition (`BlockScan.holds`
    with `test` the exact position test). A listed scan's `cell = ANY(…)` is an index condition of
    readings_block_ts (block, ts, cell): tested on the index entries, so only the rows of those cells
    are read from the table."""
    parts = []
    whole = [s for s in scans if s.cells is None]
    listed = [s for s in scans if s.cells is not None]
    if whole:
        n = len(args)
        args += [[s.lo for s in whole], [s.hi for s in whole], [s.exact for s in whole]]
        parts.append(
            (
                f"unnest(${n + 1}::bigint[], ${n + 2}::bigint[], ${n + 3}::bool[]) AS g(lo, hi, x)",
                # `=` when every scan is one block: the planner then reads it in (ts) order
                "depin_cell7(cell) = g.lo"
                if blocks_whole(whole)
                else "depin_cell7(cell) BETWEEN g.lo AND g.hi",
                f"(NOT g.x OR {test})",
            )
        )
    if listed:
        cells: list[int] = []
        edge: list[int] = []
        bounds = []
        for s in listed:
            assert s.cells is not None
            i, ei = len(cells) + 1, len(edge) + 1
            cells += s.cells
            edge += sorted(s.edge)
            bounds.append((s.lo, i, len(cells), ei, len(edge)))
        n = len(args)
        args += [cells, edge, *([b[k] for b in bounds] for k in range(5))]
        parts.append(
            (
                f"unnest(${n + 3}::bigint[], ${n + 4}::int[], ${n + 5}::int[], ${n + 6}::int[], "
                f"${n + 7}::int[]) AS g(lo, i, j, ei, ej)",
                "depin_cell7(cell) = g.lo",
                f"cell = ANY((${n + 1}::bigint[])[g.i:g.j])"
                f" AND (cell <> ALL((${n + 2}::bigint[])[g.ei:g.ej]) OR {test})",
            )
        )
    return parts


class AggregateRow(NamedTuple):
    cell: int | None  # the group's cell at the asked resolution (None: not grouped by cell)
    device_id: bytes | None  # None: not grouped by device
    bucket_ms: int
    n: int  # readings whose value is a number
    min: float
    max: float
    avg: float


async def fetch_page(
    db: asyncpg.Pool | asyncpg.Connection,
    source: str,
    conds: list[str],
    args: list[Any],
    *,
    limit: int,
    after: Position | None,
    max_bytes: int | None,
    ordered: bool = True,
) -> ReadingPage:
    """One page of `SELECT … FROM from_where(source, conds)` in (ts, device_id, seq, idx) order after
    `after`, ending at `limit` rows or once the rows' estimated JSON size (vals, media uri and a fixed
    300 bytes per row) passes `max_bytes` — decided in SQL, so a page of large readings is cut short
    (at least one row, `next` set) instead of being built in memory whole."""
    if limit <= 0:
        raise ValueError("limit must be positive")
    conds, args = list(conds), list(args)
    if after is not None:
        a_ts, a_dev, a_seq, a_idx = after
        n = len(args)
        args += [ms_to_dt(a_ts), a_dev, a_seq, a_idx]
        # The redundant `ts >= …` lets the planner use it as an index bound; the row comparison is the
        # exact keyset condition.
        conds.append(f"ts >= ${n + 1}")
        conds.append(f"(ts, device_id, seq, idx) > (${n + 1}, ${n + 2}, ${n + 3}, ${n + 4})")
    args.append(limit)
    # Each block scan (if the source has them) stops at the page's size too: at most blocks × limit rows
    # reach the merge. Block ranges (a place coarser than res 3) are read whole and sorted.
    inner = f"ORDER BY {ORDER} LIMIT ${len(args)}" if ordered else "OFFSET 0"
    page = (
        f"SELECT {READING_SELECT} FROM {from_where(source, conds, inner)} ORDER BY {ORDER} LIMIT ${len(args)}"
    )
    if max_bytes is None:
        rows = await db.fetch(page, *args)
        cut = False
    else:
        args.append(max_bytes)
        rows = await db.fetch(
            f"""SELECT * FROM (
                    SELECT *, count(*) OVER () AS _n, row_number() OVER w AS _i,
                           sum(300 + coalesce(octet_length(vals::text), 0)
                               + coalesce(octet_length(media_uri), 0)) OVER w AS _upto
                    FROM ({page}) p
                    WINDOW w AS (ORDER BY ts, device_id, seq, idx ROWS UNBOUNDED PRECEDING)) q
                WHERE _upto <= ${len(args)} OR _i = 1
                ORDER BY ts, device_id, seq, idx""",
            *args,
        )
        cut = bool(rows) and len(rows) < rows[0]["_n"]
    # The first columns are READING_SELECT's, in ReadingRow's order (then the window's, if any);
    # unpacking them beats 14 lookups by name on a page of thousands of rows.
    n = len(ReadingRow._fields)
    items = [
        ReadingRow._make((dt_to_ms(ts), bytes(dev), *mid, bytes_or_none(sha), uri, flags))
        for ts, dev, *mid, sha, uri, flags in (r[:n] for r in rows)
    ]
    nxt = None
    if rows and (len(rows) == limit or cut):
        last = rows[-1]
        nxt = (dt_to_ms(last["ts"]), bytes(last["device_id"]), last["seq"], last["idx"])
    return ReadingPage(items, nxt)


class QueryStore(PoolStore):
    """The buyers' queries, on the API's pool. Read-only."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self._res: tuple[float, list[int]] = (-1.0, [])

    async def stored_resolutions(self) -> list[int]:
        """The H3 resolutions readings are stored at (RESOLUTIONS_SQL), kept RES_TTL_S seconds."""
        at, res = self._res
        if time.monotonic() - at > RES_TTL_S:
            res = [r["res"] for r in await self.pool.fetch(RESOLUTIONS_SQL)]
            self._res = (time.monotonic(), res)
        return res

    async def where(self, f: ReadingFilter) -> tuple[str, list[str], list[Any], bool]:
        """(source, conditions, arguments, ordered) of the filter; `from_where` makes them SQL.
        `ordered`: every block scan reads one block, in time order (`fetch_page` then limits each)."""
        args: list[Any] = [clamped_dt(f.start_ms), clamped_dt(f.end_ms)]
        conds = ["ts >= $1", "ts < $2"]
        if f.kind is not None:
            args.append(f.kind)
            conds.append(f"kind = ${len(args)}")
        if f.device is not None:
            args.append(f.device)
            conds.append(device_sql(len(args)))
        if f.cell is None and f.area is None:
            return "readings", conds, args, True
        scans = place_scans(f, await self.stored_resolutions())
        if not scans:
            return "readings", [*conds, "false"], args, True
        test = "true"
        area = exact_area(f)
        if area is not None and any(s.exact or s.edge for s in scans):
            n = len(args)
            if area.shape == "bbox":
                args += list(area.bbox)
                test = f"lon BETWEEN ${n + 1} AND ${n + 3} AND lat BETWEEN ${n + 2} AND ${n + 4}"
            else:
                args += [list(col) for col in zip(*area.edges(), strict=True)]
                test = f"depin_in_polygon(lon, lat, ${n + 1}, ${n + 2}, ${n + 3}, ${n + 4})"
        parts = place_parts(scans, args, test)
        if f.device is not None:  # the device's rows (its index), each tested against the scans
            exists = [f"EXISTS (SELECT 1 FROM {g} WHERE {block} AND {rows})" for g, block, rows in parts]
            return "readings", [*conds, f"({' OR '.join(exists)})"], args, True
        lateral = [
            f"SELECT r.* FROM {g} CROSS JOIN LATERAL "
            f"(SELECT * FROM readings WHERE {block} AND {rows} AND {CONDS} {INNER}) r"
            for g, block, rows in parts
        ]
        return f"({' UNION ALL '.join(lateral)}) AS rd", conds, args, blocks_whole(scans)

    async def readings(
        self,
        f: ReadingFilter,
        *,
        limit: int = 1000,
        after: Position | None = None,
        max_bytes: int | None = None,
    ) -> ReadingPage:
        source, conds, args, ordered = await self.where(f)
        return await fetch_page(
            self.pool, source, conds, args, limit=limit, after=after, max_bytes=max_bytes, ordered=ordered
        )

    async def usage(self, f: ReadingFilter, genesis_ms: int, length_ms: int) -> dict[tuple[int, int], int]:
        """Readings the filter matches per (res-7 metering cell, epoch): one GROUP BY, no rows fetched."""
        res = await self.stored_resolutions()
        if rollup_rules.usage_eligible(f, genesis_ms=genesis_ms, length_ms=length_ms, stored_res=res):
            return await rollups.usage(self.pool, f, genesis_ms, length_ms)
        source, conds, args, _ = await self.where(f)
        rows = await self.pool.fetch(
            f"SELECT {metering.cell7_sql('cell')} AS c, "
            f"{metering.epoch_sql('ts', genesis_ms, length_ms)} AS e, "
            f"count(*) AS n FROM {from_where(source, conds)} GROUP BY 1, 2",
            *args,
        )
        return {(r["c"], r["e"]): r["n"] for r in rows}

    async def aggregates(
        self, f: ReadingFilter, *, res: int | None, by_device: bool, bucket: str, value: str, max_rows: int
    ) -> list[AggregateRow]:
        """count/min/max/avg of the numeric `vals->value` per (cell at `res`) × (device) × bucket, oldest
        bucket first; at most `max_rows` + 1 rows (the caller refuses more). A reading stored coarser
        than `res` is grouped at its own cell."""
        stored = await self.stored_resolutions()
        if rollup_rules.aggregate_eligible(f, res=res, by_device=by_device, bucket=bucket, stored_res=stored):
            rows = await rollups.aggregates(
                self.pool, f, res=res, bucket=bucket, value=value, max_rows=max_rows
            )
            return [AggregateRow(*r) for r in rows]
        source, conds, args, _ = await self.where(f)
        cell = "NULL::bigint"
        if res is not None:
            at_res = f"((cell >> {h3cells.RES_SHIFT}) & 15) >= {res}"
            cell = f"(CASE WHEN {at_res} THEN {h3cells.parent_sql('cell', res)} ELSE cell END)"
        device = "device_id" if by_device else "NULL::bytea"
        args += [value, max_rows + 1]
        n = len(args)
        rows = await self.pool.fetch(
            f"""SELECT {cell} AS cell, {device} AS device_id,
                       date_bin('{BUCKETS[bucket]}', ts, '1970-01-01T00:00:00Z') AS t,
                       count(*) AS n, min(v) AS lo, max(v) AS hi, avg(v) AS mean
                FROM (SELECT cell, device_id, ts, (vals ->> ${n - 1})::float8 AS v
                      FROM {from_where(source, [*conds, f"jsonb_typeof(vals -> ${n - 1}) = 'number'"])}) s
                GROUP BY 1, 2, 3 ORDER BY 3, 1, 2 LIMIT ${n}""",
            *args,
        )
        return [
            AggregateRow(
                r["cell"],
                bytes_or_none(r["device_id"]),
                dt_to_ms(r["t"]),
                r["n"],
                r["lo"],
                r["hi"],
                r["mean"],
            )
            for r in rows
        ]

    async def envelopes(self, keys: list[tuple[bytes, int]]) -> dict[tuple[bytes, int], bytes | None]:
        """The signed envelopes of the packets `keys` (device_id, seq): one primary-key probe each."""
        if not keys:
            return {}
        rows = await self.pool.fetch(ENVELOPES_SQL, [k[0] for k in keys], [k[1] for k in keys])
        return {(bytes(r["device_id"]), r["seq"]): bytes_or_none(r["envelope"]) for r in rows}

    async def export_sql(
        self, f: ReadingFilter, fmt: str, *, envelope: bool = False
    ) -> tuple[str, list[Any]]:
        """The export's SELECT (CSV_COLUMNS or NDJSON_COLUMN, then `envelope` if asked), oldest first,
        and its arguments."""
        source, conds, args, _ = await self.where(f)
        if not envelope:
            columns = CSV_COLUMNS if fmt == "csv" else NDJSON_COLUMN
            return (
                f"SELECT {columns} FROM {from_where(source, conds)} ORDER BY ts, device_id, seq, idx",
                args,
            )
        columns = (
            f"{CSV_COLUMNS}, {ENVELOPE_SQL} AS envelope"
            if fmt == "csv"
            else _ndjson_column(f", 'envelope', {ENVELOPE_SQL}")
        )
        # The filtered readings as one aliased row source, so the envelope lookup can name its columns.
        return (
            f"SELECT {columns} FROM (SELECT * FROM {from_where(source, conds)}) rd "
            "ORDER BY ts, device_id, seq, idx",
            args,
        )

    async def export(
        self,
        f: ReadingFilter,
        fmt: str,
        output: Callable[[bytes], Awaitable[None]],
        *,
        timeout_ms: int,
        envelope: bool = False,
    ) -> None:
        """Stream the filter's readings, oldest first, as CSV (header, CSV_COLUMNS) or NDJSON (one
        reading per line, the shape of /v1/readings) into `output`, straight from a COPY: memory stays
        at a chunk. NDJSON is a one-column COPY in CSV format with a quote and delimiter that JSON text
        never holds raw (\\x01, \\x02), so each line is the JSON verbatim."""
        sql, args = await self.export_sql(f, fmt, envelope=envelope)
        options: dict[str, Any] = {"format": "csv", "header": True}
        if fmt != "csv":
            options = {"format": "csv", "quote": "\x01", "delimiter": "\x02"}
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            await conn.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
            await conn.copy_from_query(sql, *args, output=output, **options)
