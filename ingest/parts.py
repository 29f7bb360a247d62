"""Wall time and peak memory of the parts of a job (an epoch's close: bench/epochs.py prints them and
the closer logs them at DEBUG)."""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux: ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Parts:
    """`with parts("name"): …` records (name, seconds, peak RSS in MB after it) in `done`."""

    def __init__(self) -> None:
        self.done: list[tuple[str, float, float]] = []

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.done.append((name, time.perf_counter() - started, peak_rss_mb()))

    def __str__(self) -> str:
        return ", ".join(f"{name} {s:.2f} s" for name, s, _ in self.done)
