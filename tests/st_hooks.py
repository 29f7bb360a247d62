"""Schemathesis hooks for tests/integration/test_api_fuzz.py (loaded by `st run` through SCHEMATHESIS_HOOKS).

The custom string formats of /openapi.json get generators of valid values (H3 cells, EIP-55 addresses),
and positive cases of GET /v1/readings are kept within the two rules OpenAPI 3.0 cannot state (and the
description states): `device` or `cell` given; `from` < `to` at most 31 days apart; a cursor is one the
API handed out for the same query (signed with DEPIN_TEST_CURSOR_KEY, as the server does). Negative
cases are left alone: they must all come back 4xx.
"""

from __future__ import annotations

import os
from typing import Any

import h3
import schemathesis
from eth_utils import to_checksum_address
from hypothesis import strategies as st

from ingest.api.app import MAX_RANGE_MS, encode_cursor
from ingest.api.openapi import MAX_TS_MS

KEY = bytes.fromhex(os.environ.get("DEPIN_TEST_CURSOR_KEY", "00" * 32))
KNOWN_DEVICE = os.environ.get("DEPIN_TEST_DEVICE", "ab" * 32)

cells = st.builds(
    lambda lat, lon, res: h3.latlng_to_cell(lat, lon, res),
    st.floats(-89.9, 89.9),
    st.floats(-179.9, 179.9),
    st.integers(0, 15),
)


def _address(raw: bytes, style: str) -> str:
    plain = "0x" + raw.hex()
    return {"checksum": to_checksum_address(plain), "lower": plain, "upper": "0x" + raw.hex().upper()}[style]


addresses = st.builds(
    _address, st.binary(min_size=20, max_size=20), st.sampled_from(["checksum", "lower", "upper"])
)
schemathesis.openapi.format("h3-cell", cells)
schemathesis.openapi.format("eip55-address", addresses)
schemathesis.openapi.format("depin-cursor", st.just("replaced-by-map_case"))


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    meta = getattr(case, "meta", None)
    if meta is None or not meta.generation.mode.is_positive:
        return case
    path = case.operation.path
    if path in ("/v1/owners/{address}/proof", "/v1/owners/{address}/devices"):
        # The coverage phase draws from the pattern alone, ignoring the format: keep it to its format
        # (one case, or EIP-55 mixed case).
        address = (case.path_parameters or {}).get("address")
        if isinstance(address, str) and address != to_checksum_address(address):
            case.path_parameters = {**case.path_parameters, "address": address.lower()}
        return case
    if path != "/v1/readings":
        return case
    q: dict[str, Any] = dict(case.query or {})
    if "device" not in q and "cell" not in q:
        q["device"] = KNOWN_DEVICE
    if isinstance(q.get("cell"), str) and not h3.is_valid_cell(q["cell"]):
        q["cell"] = "88283096cdfffff"  # the same: a pattern-only draw is not of format h3-cell
    start, end = q.get("from"), q.get("to")
    if isinstance(start, int) and isinstance(end, int) and not (0 < end - start <= MAX_RANGE_MS):
        q["to"] = end = min(start + 3_600_000, MAX_TS_MS)
        if end <= start:
            q["from"] = start = end - 3_600_000
    if "cursor" in q:
        device = bytes.fromhex(q["device"].removeprefix("0x")) if "device" in q else None
        cell = int(q["cell"], 16) if "cell" in q else None
        if isinstance(end, int):
            hi = end
            lo = start if isinstance(start, int) else max(0, hi - 86_400_000)
        else:
            lo = start if isinstance(start, int) else 0
            hi = min(lo + 86_400_000, MAX_TS_MS)
            if hi <= lo:
                lo = hi - 86_400_000
        q.update({k: v for k, v in (("from", lo), ("to", hi)) if k in q})
        q["cursor"] = encode_cursor(KEY, device, cell, (lo, hi), (lo, bytes(32), 0, 0))
    case.query = q
    return case
