"""deploy/depin.env.example documents every setting, and names nothing that is not one.

Every field of `ingest.settings.Environment` (environment variable DEPIN_<NAME>) appears in the example,
set or commented, in a block (lines between blank lines) that explains it in a comment above it. Every
DEPIN_ name in the example is a setting or one of the few variables read outside `Environment`. A set line
shows the default. And the DEPIN_ names the code reads are all accounted for: settings, the variables
below, or test-only knobs (which stay out of the example).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ingest.settings import Environment

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "depin.env.example"
LINE = re.compile(r"^(?P<commented>#\s*)?(?P<name>DEPIN_[A-Z0-9_]+)=(?P<value>.*)$")
NAME = re.compile(r"\bDEPIN_[A-Z0-9_]*[A-Z0-9]\b")

# Read by the `depin` command itself, not by Environment; documented in the example.
SERVICE_EXTRA = {"DEPIN_LOG_FORMAT"}  # ingest/cli.py: text or json logs
# Read by the operator CLI (devices/settings.py, docs/OPERATORS.md); not the service's, so not in the
# service's example file.
OPERATOR_ONLY = {"DEPIN_OPERATOR_KEY", "DEPIN_OPERATOR_KEY_FILE"}
# A buyer's API key for curl, written by the demo into its env file (README "API access"); no setting.
CLIENT_ONLY = {"DEPIN_API_KEY"}
# Knobs of the test suite only; never in the example.
TEST_ONLY = {
    "DEPIN_TEST_DATABASE_URL",  # an external PostgreSQL for the tests
    "DEPIN_TEST_HANG_DUMP_S",  # conftest: dump stacks of a test running longer than this
    "DEPIN_TEST_CURSOR_KEY",  # test_api_fuzz: the hooks' cursor key
    "DEPIN_TEST_DEVICE",  # test_api_fuzz: a device with data
    "DEPIN_FUZZ_EXAMPLES",  # test_api_fuzz: cases per operation
    "DEPIN_FUZZ_SEED",
    "DEPIN_API_LOAD_READINGS",  # test_api_load: sizes of the bigger run
    "DEPIN_API_LOAD_CLIENTS",
    "DEPIN_API_LOAD_SECONDS",
    "DEPIN_SUMMARY_DEVICES",  # test_api: device rows of the epoch summary's before/after timing
    "DEPIN_TEST_EPOCH_KILL_AT",  # ingest/epochs.py fault hook: test_epoch_faults SIGKILLs a worker there
}


def settings_names() -> set[str]:
    return {"DEPIN_" + name.upper() for name in Environment.model_fields}


def example_blocks() -> list[list[str]]:
    blocks: list[list[str]] = [[]]
    for line in EXAMPLE.read_text().splitlines():
        if line.strip():
            blocks[-1].append(line)
        elif blocks[-1]:
            blocks.append([])
    return [b for b in blocks if b]


def is_prose(line: str) -> bool:
    return line.startswith("#") and not LINE.match(line)


def test_every_setting_is_in_the_example_under_a_comment() -> None:
    documented: set[str] = set()
    for block in example_blocks():
        for i, line in enumerate(block):
            m = LINE.match(line)
            if m is None:
                assert is_prose(line), f"{EXAMPLE.name}: neither a comment nor NAME=value: {line!r}"
                continue
            assert any(is_prose(prev) for prev in block[:i]), (
                f"{m['name']} has no comment line above it in its block"
            )
            documented.add(m["name"])
    missing = settings_names() - documented
    assert not missing, f"settings missing from {EXAMPLE.name}: {sorted(missing)}"


def test_every_name_in_the_example_is_a_setting() -> None:
    named = set(NAME.findall(EXAMPLE.read_text()))
    unknown = named - settings_names() - SERVICE_EXTRA
    assert not unknown, f"{EXAMPLE.name} names variables that are not settings: {sorted(unknown)}"
    assert SERVICE_EXTRA <= named


@pytest.mark.parametrize(
    "name,value",
    [
        (m["name"], m["value"])
        for line in EXAMPLE.read_text().splitlines()
        if (m := LINE.match(line)) and not m["commented"]
    ],
)
def test_a_set_line_shows_the_default(name: str, value: str) -> None:
    field = name.removeprefix("DEPIN_").lower()
    assert field in Environment.model_fields, f"{name} is set in the example but is not a setting"
    parsed = getattr(Environment(**{field: value}), field)
    assert parsed == Environment.model_fields[field].default, f"{name}={value} is not the default"


def test_every_depin_variable_the_code_reads_is_accounted_for() -> None:
    known = settings_names() | SERVICE_EXTRA | OPERATOR_ONLY | TEST_ONLY | CLIENT_ONLY
    found: dict[str, str] = {}
    for folder in ("ingest", "devices", "simulator", "bench", "tests", "deploy"):
        for path in sorted((REPO / folder).rglob("*")):
            suffixes = (".py", ".service", ".example", ".conf", ".yaml", ".sh", ".target")
            if path.suffix not in suffixes or not path.is_file():
                continue
            for name in NAME.findall(path.read_text()):
                found.setdefault(name, str(path.relative_to(REPO)))
    unknown = {name: where for name, where in found.items() if name not in known}
    assert not unknown, f"DEPIN_ names that are neither settings nor listed in this test: {unknown}"
