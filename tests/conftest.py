"""Shared fixtures: real services (PostgreSQL, anvil, Mosquitto) started per test session.

Also hang diagnostics: a test still running after DEPIN_TEST_HANG_DUMP_S seconds (default 240) gets
every thread's stack and every running asyncio task's stack written to stderr, so a hang in CI says
where it hangs instead of only running into the job's time limit.
"""

import asyncio
import faulthandler
import gc
import os
import sys
import threading
from collections.abc import Iterator

import pytest

from tests.fixtures_chain import *  # noqa: F403
from tests.fixtures_keys import *  # noqa: F403
from tests.fixtures_mqtt import *  # noqa: F403
from tests.fixtures_pg import *  # noqa: F403

_HANG_DUMP_S = float(os.environ.get("DEPIN_TEST_HANG_DUMP_S", "240"))


def _dump_stacks(name: str, config: pytest.Config) -> None:
    # Past pytest's output capture (which holds fd 2 while a test runs): the dump must reach the log
    # of a run that never finishes.
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is None:
        _write_stacks(name)
        return
    with capman.global_and_fixture_disabled():
        _write_stacks(name)


def _write_stacks(name: str) -> None:
    out = sys.stderr
    print(f"\n=== {name} still running after {_HANG_DUMP_S:.0f} s: stacks ===", file=out)
    faulthandler.dump_traceback(file=out, all_threads=True)
    loops = [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop) and o.is_running()]
    for loop in loops:
        for _ in range(3):  # the task set may change while it is read from this thread
            try:
                tasks = list(asyncio.all_tasks(loop))
                break
            except RuntimeError:
                tasks = []
        for task in tasks:
            print(f"--- {task!r}", file=out)
            task.print_stack(file=out)
    out.flush()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    # Set-up, call and teardown: a fixture can hang as well as a test.
    timer = threading.Timer(_HANG_DUMP_S, _dump_stacks, args=(item.nodeid, item.config))
    timer.daemon = True
    timer.start()
    try:
        yield
        return None
    finally:
        timer.cancel()
