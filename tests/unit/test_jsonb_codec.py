"""The jsonb decoder (ingest/adapters/db.py) reads with orjson where it gives the json module's values
exactly, and falls back to json elsewhere: every value here decodes as json.loads decodes it, types
included (an integer past 64 bits stays an exact int, 1e400 is inf, a lone surrogate is kept)."""

from __future__ import annotations

import json

import pytest

from ingest.adapters.db import _jsonb_decode

TEXTS = [
    '{"pm25": 12.5, "pm10": 31.5}',
    '{"a": 123456789012345678901234567890}',
    '{"a": -9223372036854775809, "b": -9223372036854775808, "c": 18446744073709551615}',
    '{"a": 18446744073709551616}',
    '{"a": 1e400, "b": -1e400}',
    '{"a": 1e-400, "b": -0, "c": 0.0e0, "d": 5e-324, "e": 1.7976931348623157e308}',
    '{"a": 100000000000000000000000000000.5, "b": 0.12345678901234567891234}',
    '{"a": "\\ud800", "b": "x\\u0000y", "c": "1234567890123456789012"}',
    '{"nested": [1, [2.5, {"k": null}], true, false, "é"]}',
    "[]",
    '"text"',
]


@pytest.mark.parametrize("text", TEXTS)
def test_decodes_as_the_json_module_does(text: str) -> None:
    got, want = _jsonb_decode(b"\x01" + text.encode()), json.loads(text)
    assert repr(got) == repr(want)
