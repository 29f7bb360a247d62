"""Log set-up for every `depin` command: readable lines for a terminal, JSON lines for log shippers.

Our own loggers (`ingest`, `devices`, `simulator`) log at INFO for the service (`depin run`) and at
WARNING for one-shot commands, whose output is their stdout; `-v` turns ours to DEBUG. Third-party
libraries stay at WARNING even with `-v`: web3 alone logs dozens of DEBUG lines a second.

Fields given with `extra={...}` are kept: appended as `key=value` to a text line, as keys of the JSON
object otherwise.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

FORMATS = ("text", "json")
OWN_LOGGERS = ("ingest", "devices", "simulator", "__main__")
# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _iso(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    """`2026-11-30T02:10:00.123Z INFO ingest.service: message key=value …`"""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_iso(record.created)} {record.levelname} {record.name}: {record.getMessage()}"
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={_compact(v)}" for k, v in extras.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the `extra` fields, and exc on errors."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            obj.setdefault(key, value)
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str, separators=(",", ":"))


def _compact(value: Any) -> str:
    if isinstance(value, str):
        return value if value and " " not in value else json.dumps(value)
    try:
        return json.dumps(value, default=str, separators=(",", ":"))
    except (TypeError, ValueError):
        return repr(value)


def configure(
    *, verbose: bool = False, fmt: str = "text", service: bool = False, stream: TextIO | None = None
) -> None:
    """Install one handler on the root logger (replacing any); see the module doc for the levels."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: choose one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    own = logging.DEBUG if verbose else logging.INFO if service else logging.WARNING
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(own)
