"""The coverage map page at `/` and its static files (`/static/map.js`, `/static/map.css`).

The page is ingest/api/static/index.html with the map's settings put in (the tile layer); the
script and style are the esbuild bundle of ingest/api/web/ (Leaflet and the map's own code), built
with `node ingest/api/web/build.js` and committed, so a user needs no Node and no build step. The page
calls only this API (`/v1/epochs`, `/v1/coverage`, `/v1/devices/{id}`); without a tile URL
(DEPIN_MAP_TILES_URL) it draws on a plain background and the browser fetches nothing elsewhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ingest.core.coverage import MAX_CELLS, MAX_DEVICE_IDS

if TYPE_CHECKING:
    from ingest.settings import Settings

STATIC_DIR = Path(__file__).with_name("static")
# What /static/{name} serves, with its type; anything else is a JSON 404.
STATIC_FILES = {"map.js": "application/javascript", "map.css": "text/css"}
MAX_EPOCHS = 1000  # the most epochs /v1/epochs lists at once
_CONFIG_MARK = "{{MAP_CONFIG}}"


@dataclass(frozen=True, slots=True)
class MapConfig:
    """The page's optional tile layer (the epoch numbering is the app's metering.EPOCH_GRID)."""

    tiles_url: str = ""
    tiles_attribution: str = ""


MAP_CONFIG: web.AppKey[MapConfig] = web.AppKey("map_config", MapConfig)


def configure(app: web.Application, settings: Settings) -> None:
    """Give the page the service's tile layer (unset: a plain background)."""
    app[MAP_CONFIG] = MapConfig(settings.api.map_tiles_url, settings.api.map_tiles_attribution)


def map_config(app: web.Application) -> MapConfig:
    return app.get(MAP_CONFIG) or MapConfig()


@cache
def _static(name: str) -> bytes:
    return (STATIC_DIR / name).read_bytes()


def page_html(config: MapConfig) -> str:
    """index.html with the settings as JSON in its config <script> (`<` escaped: no tag can close it)."""
    settings = {"tilesUrl": config.tiles_url, "tilesAttribution": config.tiles_attribution}
    blob = json.dumps(settings).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return _static("index.html").decode().replace(_CONFIG_MARK, blob)


def _csp(config: MapConfig) -> str:
    tiles = " https: http:" if config.tiles_url else ""
    return (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; "
        f"img-src 'self' data:{tiles}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


async def map_page(request: web.Request) -> web.Response:
    config = map_config(request.app)
    return web.Response(
        text=page_html(config),
        content_type="text/html",
        headers={"Content-Security-Policy": _csp(config), "Cache-Control": "no-cache"},
    )


async def map_static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC_FILES:
        raise web.HTTPNotFound(
            text=json.dumps({"error": f"no such file: {name[:100]} (there are {', '.join(STATIC_FILES)})"}),
            content_type="application/json",
        )
    return web.Response(
        body=_static(name), content_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"}
    )


# --- OpenAPI (merged into ingest/api/openapi.py): the page, its files, and the endpoints it calls ----

_INT64_MAX = 2**63 - 1
_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(desc: str, schema: dict[str, Any], media: str = "application/json") -> dict[str, Any]:
    return {"description": desc, "content": {media: {"schema": schema}}}


def _obj(props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def _int(lo: int, hi: int = _INT64_MAX, **extra: Any) -> dict[str, Any]:
    return {"type": "integer", "minimum": lo, "maximum": hi, **extra}


def _query(name: str, desc: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": desc, "schema": schema}


_STATUS = {
    "type": "string",
    "enum": ["open", "closed", "signed", "published", "settled", "refused", "vetoed"],
}
_SPAN = {"epoch": _int(1), "start_ms": _int(0), "end_ms": _int(1), "status": _STATUS}
_COVERED = {"type": "boolean", "description": "has the epoch any covered cell (so far)"}
_POSITION = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
_CELL_FEATURE = _obj(
    {
        "type": {"type": "string", "enum": ["Feature"]},
        "id": {"type": "string"},
        "geometry": _obj(
            {
                "type": {"type": "string", "enum": ["Polygon"]},
                "coordinates": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 1,
                    "items": {"type": "array", "minItems": 6, "maxItems": 11, "items": _POSITION},
                },
            }
        ),
        "properties": _obj(
            {
                "cell": {"type": "string", "description": "H3 index (hex)"},
                "devices": _int(1, description="devices with a reading in the cell"),
                "device_ids": {
                    "type": "array",
                    "items": {"type": "string"},
                    "maxItems": MAX_DEVICE_IDS,
                    "description": f"the {MAX_DEVICE_IDS} most-read devices at most (hex ids)",
                },
                "readings": _int(0, description="unflagged readings (the ones rewards count)"),
                "newest_ms": {**_int(0), "nullable": True},
                "freshness_ms": {
                    **_int(0),
                    "nullable": True,
                    "description": "ms from the newest reading to as_of_ms (the epoch's end, or now)",
                },
                "reward": {
                    "type": "string",
                    "pattern": "^[0-9]+$",
                    "nullable": True,
                    "description": "token base units paid in the cell (closed epochs); null while open",
                },
            }
        ),
    }
)
_DB_ERRORS = {
    "400": _json("bad parameter (the message names it)", _ERROR),
    "503": _json("busy or database unavailable; retry", _ERROR),
    "504": _json("the query ran past the API's statement timeout", _ERROR),
}

OPENAPI_PATHS: dict[str, Any] = {
    "/v1/coverage": {
        "get": {
            "summary": "an epoch's covered H3 cells as a GeoJSON FeatureCollection (public)",
            "description": (
                "Each covered cell is a Polygon feature (its hexagon, [lon, lat], closed ring) with its "
                "device count, unflagged readings, freshness and reward (closed epochs). Without `epoch`: "
                "the open epoch so far. At most `limit` cells, the most-read first; `cells` counts all "
                "covered cells and `truncated` says whether some were left out. A closed epoch is read "
                "from its stored rewards; the open one is kept for a few seconds per API process."
            ),
            "parameters": [
                _query("epoch", "epoch number (default: the open epoch)", _int(1)),
                _query("limit", f"most cells returned (default and maximum {MAX_CELLS})", _int(1, MAX_CELLS)),
            ],
            "responses": {
                "200": _json(
                    "the epoch's coverage",
                    _obj(
                        {
                            "type": {"type": "string", "enum": ["FeatureCollection"]},
                            **_SPAN,
                            "as_of_ms": _int(0),
                            "cells": _int(0),
                            "truncated": {"type": "boolean"},
                            "features": {"type": "array", "items": _CELL_FEATURE, "maxItems": MAX_CELLS},
                        }
                    ),
                    "application/geo+json",
                ),
                "404": _json("the epoch has not started yet", _ERROR),
                **_DB_ERRORS,
            },
        }
    },
    "/v1/epochs": {
        "get": {
            "summary": "epochs newest first with status and bounds: the open one, then the stored (public)",
            "parameters": [
                _query("limit", "most epochs listed (default 100)", _int(1, MAX_EPOCHS)),
                _query("before", "only epochs numbered below this one (the next page)", _int(1)),
            ],
            "responses": {
                "200": _json(
                    "epochs",
                    _obj(
                        {
                            "epochs": {"type": "array", "items": _obj({**_SPAN, "covered": _COVERED})},
                            "open": _int(1),
                        }
                    ),
                ),
                **_DB_ERRORS,
            },
        }
    },
    "/": {
        "get": {
            "summary": "the coverage map (HTML page; public)",
            "responses": {"200": _json("the page", {"type": "string"}, "text/html")},
        }
    },
    "/static/{name}": {
        "get": {
            "summary": "the map page's script and style (the committed bundle of ingest/api/web/)",
            "parameters": [
                {
                    "name": "name",
                    "in": "path",
                    "required": True,
                    "description": "file name",
                    "schema": {"type": "string", "enum": list(STATIC_FILES)},
                }
            ],
            "responses": {
                "200": {
                    "description": "the file",
                    "content": {t: {"schema": {"type": "string"}} for t in STATIC_FILES.values()},
                },
                "404": _json("no such file", _ERROR),
            },
        }
    },
}
