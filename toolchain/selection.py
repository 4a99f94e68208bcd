"""The selection: the select step's timings turned into a ranking by the recipe's metric.

Pure data: the step that times the artifacts runs in a worker (toolchain.worker.run_select).
"""

from __future__ import annotations

from toolchain.recipe import Select
from toolchain.records import CacheRef, ClassChoice, Machine, Ranked, Selection, SelectOutcome, Speed, TargetResult


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


def per_class(chosen: Selection, results: list[TargetResult], classes: list[str], here: str | None,
              timed: dict[str, Selection] | None = None) -> list[ClassChoice]:  # fmt: skip
    """For each class of the fleet, the fastest artifact offered to it. `timed`: per class below this machine's, the
    artifacts whose runtime obeys the ISA caps timed as that class; the winner is the fastest of those offered, and
    the others are listed as untimed. A class not timed takes this machine's order, labelled with the class it was
    measured on."""
    proofs = {r.name: r.cpu for r in results}
    timed = timed or {}
    out = []
    for cls in classes:
        own = timed.get(cls)
        ranking = own.ranking if own is not None and own.ranking else chosen.ranking
        excluded, winner = {}, None
        for r in ranking:
            proof = proofs.get(r.target)
            check = proof.check(cls) if proof is not None else None
            if proof is not None and (check is None or not check.offered):
                excluded[r.target] = check.reason if check is not None else f"not checked for {cls}"
            elif winner is None:
                winner = r.target
        if own is not None and own.ranking:
            names = {r.target for r in own.ranking}
            out.append(ClassChoice(cls, winner, cls, excluded, own.ranking, [r.target for r in chosen.ranking if r.target not in names]))
        else:
            out.append(ClassChoice(cls, winner, here, excluded))
    return out
