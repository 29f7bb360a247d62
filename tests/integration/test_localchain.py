"""The local anvil the tests and the demo start."""

from __future__ import annotations

import json
import urllib.request

import pytest

pytestmark = pytest.mark.integration


def _block_number(url: str) -> int:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return int(json.loads(response.read())["result"], 16)


async def test_anvil_keeps_answering_while_the_event_loop_is_blocked(anvil_url: str) -> None:
    """anvil logs a line per request. When its output was a pipe drained by the event loop, a caller
    blocking the loop (a sync test, a busy demo) let the pipe fill after a few thousand requests and
    anvil froze mid-request for the rest of the session (seen in CI: a registry test lost half its
    reads, the next test hung). 8,000 requests from inside the loop, which never yields here."""
    answers = [_block_number(anvil_url) for _ in range(8000)]
    assert len(answers) == 8000 and set(answers) == {answers[0]}  # every one answered; nothing mined
