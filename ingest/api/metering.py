"""Charging a request's usage to its API key: handlers call `charge` with units per (res-7 cell,
epoch) (ingest/core/metering.py computes them); what the request accumulated is persisted to the
`usage` table for its key once the answer is built (the key middleware)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from aiohttp import web

USAGE = "depin.usage"  # request-scoped Counter[(cell7, epoch)] → units


def charge(request: web.Request, units: Mapping[tuple[int, int], int]) -> None:
    """Add `units` to what this request will be charged."""
    usage: Counter[tuple[int, int]] = request.setdefault(USAGE, Counter())
    usage.update(units)


def charged(request: web.Request) -> Counter[tuple[int, int]]:
    """What this request has been charged so far (empty for a public or free request)."""
    return request.get(USAGE) or Counter()
