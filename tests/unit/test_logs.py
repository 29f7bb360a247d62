"""Log set-up: levels per command, text and JSON lines, extras kept, libraries quiet under -v."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from ingest.cli import main
from ingest.logs import configure


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {n: logging.getLogger(n).level for n in ("ingest", "devices", "simulator", "web3")}
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    for name, lvl in levels.items():
        logging.getLogger(name).setLevel(lvl)


def _emit(fmt: str, **kwargs: bool) -> str:
    out = io.StringIO()
    configure(fmt=fmt, stream=out, **kwargs)
    logging.getLogger("ingest.epochs").info("epoch %d published", 3, extra={"block": 17, "tx": "0xab"})
    logging.getLogger("ingest.consumer").debug("batch judged")
    logging.getLogger("web3.providers").debug("rpc call")
    logging.getLogger("web3.providers").info("rpc info")
    logging.getLogger("aiohttp.access").info("GET /metrics")
    return out.getvalue()


def test_service_logs_info_of_ours_and_nothing_of_libraries() -> None:
    text = _emit("text", service=True)
    lines = text.splitlines()
    assert len(lines) == 1, text
    assert "INFO ingest.epochs: epoch 3 published block=17 tx=0xab" in lines[0]


def test_one_shot_commands_log_warnings_only() -> None:
    assert _emit("text", service=False) == ""


def test_verbose_turns_ours_to_debug_but_not_web3() -> None:
    text = _emit("text", service=True, verbose=True)
    assert "batch judged" in text
    assert "rpc" not in text and "GET /metrics" not in text


def test_json_lines_carry_level_logger_message_and_extras() -> None:
    lines = _emit("json", service=True).splitlines()
    obj = json.loads(lines[0])
    assert obj["level"] == "INFO" and obj["logger"] == "ingest.epochs"
    assert obj["msg"] == "epoch 3 published"
    assert obj["block"] == 17 and obj["tx"] == "0xab"
    assert obj["ts"].endswith("Z")


def test_json_line_of_an_exception_has_its_traceback() -> None:
    out = io.StringIO()
    configure(fmt="json", stream=out, service=True)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("ingest.x").exception("failed")
    obj = json.loads(out.getvalue())
    assert obj["msg"] == "failed" and "ValueError: boom" in obj["exc"]


def test_unknown_format_from_the_environment_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DEPIN_LOG_FORMAT", "xml")
    assert main(["device", "new", "--out", "/nonexistent/x.json"]) == 2
    assert "log format 'xml'" in capsys.readouterr().err
