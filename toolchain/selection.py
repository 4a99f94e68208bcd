"""The selection: the select step's timings turned into a ranking by the recipe's metric.

Pure data: the step that times the artifacts runs in a worker (toolchain.worker.run_select).
"""

from __future__ import annotations

from toolchain.recipe import Select
from toolchain.records import CacheRef, Machine, Ranked, Selection, SelectOutcome, Speed


def rank(sel: Select, outcome: SelectOutcome, kinds_of: dict[str, str], machine: Machine, cache: CacheRef, log: str | None) -> Selection:
    """Every timed artifact against the eager source, fastest first (latency) or most samples/s first (throughput)."""
    figures = dict(outcome.figures)
    eager = figures.pop("eager")
    ranking = [
        Ranked(name, kinds_of[name], round(f.median_ms, 4), round(f.min_ms, 4), round(f.max_ms, 4), round(f.samples_per_s, 2),
               round(eager.median_ms / f.median_ms, 3))
        for name, f in figures.items()
    ]  # fmt: skip
    ranking.sort(key=lambda r: r.median_ms if sel.metric == "latency" else -r.samples_per_s)
    return Selection(
        sel.metric,
        machine,
        cache,
        ranking,
        batch=outcome.batch,
        shape=outcome.sizes,
        threads=outcome.threads,
        rounds=sel.rounds,
        load_average=outcome.load_average,
        eager=Speed(round(eager.median_ms, 4), round(eager.samples_per_s, 2)),
        log=log,
    )


def failed(sel: Select, machine: Machine, cache: CacheRef, reason: str, log: str | None) -> Selection:
    """The timing step failed: an empty ranking, the reason and the log."""
    return Selection(sel.metric, machine, cache, error=reason, log=log)
