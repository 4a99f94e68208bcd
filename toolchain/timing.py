"""Timing several runtimes fairly: in one process, interleaved, median of rounds.

On a shared 2-core machine a busy neighbour slows whatever runs at that moment;
interleaving the runtimes round by round (in a rotating order) spreads such a
burst over all of them, and the median of per-round figures drops the outliers.
Nothing here imports a framework.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

from toolchain.records import Timing


def calls_per_round(fn: Callable[[], object], seconds: float) -> int:
    """How many calls of `fn` fill about `seconds` (at least 1), measured on one call."""
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-6)
    return max(1, int(seconds / once))


def interleaved(calls: dict[str, Callable[[], object]], rounds: int = 7, seconds: float = 0.2, warmup: int = 3) -> dict[str, Timing]:
    """Per callable: median and spread of the seconds per call over `rounds` interleaved rounds.

    Each round calls every callable `n` times back to back (n sized to about
    `seconds` from a warm call); the order rotates from round to round.
    """
    names = list(calls)
    for name in names:
        for _ in range(warmup):
            calls[name]()
    n = {name: calls_per_round(calls[name], seconds) for name in names}
    per_round: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            fn = calls[name]
            t0 = time.perf_counter()
            for _ in range(n[name]):
                fn()
            per_round[name].append((time.perf_counter() - t0) / n[name])
    return {name: Timing(statistics.median(times) * 1e3, min(times) * 1e3, max(times) * 1e3, rounds, n[name]) for name, times in per_round.items()}


def load_average() -> float:
    return os.getloadavg()[0]
