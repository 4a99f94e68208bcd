"""The selection: the select step's timings turned into a ranking by the recipe's metric.

Pure data: the step that times the artifacts runs in a worker (toolchain.worker.run_select).
"""

from __future__ import annotations

import dataclasses
import math

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
    ranking.sort(key=_speed(sel.metric))
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


# Errors below this are equal: two FP32 runtimes apart in the sixth decimal of their cosine are equally close.
EXACT = 1e-5


def closeness(r: TargetResult) -> tuple[float, float] | None:
    """How close an artifact came to the source in its gate, higher is closer: (greedy token agreement, minus the
    smallest cosine's distance from 1, floored at EXACT)."""
    if r.generation is not None:
        return round(r.generation.token_match, 4), -max(1.0 - r.generation.logits.worst()[1], EXACT)
    if r.parity is not None and r.parity.outputs:
        return 1.0, -max(1.0 - r.parity.worst()[1], EXACT)
    return None


def _cosine(close: tuple[float, float]) -> str:
    return "1 to within 1e-5" if -close[1] <= EXACT else f"{1 + close[1]:.6f}"


def _pick(ranking: list[Ranked], close: dict[str, tuple[float, float] | None], metric: str, tie: float) -> tuple[int, str | None]:
    """The winner's index in a ranking in speed order: the closest to the source among the artifacts within `tie` of
    the fastest (the fastest of the equally close), and why, when it is not the fastest."""
    if tie <= 0 or len(ranking) < 2:
        return 0, None
    lead = ranking[0]

    def slower(r: Ranked) -> float:  # how much slower than the fastest, as a fraction
        if metric == "latency":
            return r.median_ms / lead.median_ms - 1 if lead.median_ms > 0 else math.inf
        return lead.samples_per_s / r.samples_per_s - 1 if r.samples_per_s > 0 else math.inf

    n = max(1, next((i for i, r in enumerate(ranking) if slower(r) > tie), len(ranking)))
    best = max(range(n), key=lambda i: (close.get(ranking[i].target) or (-math.inf, -math.inf), -i))
    if best == 0:
        return 0, None
    first = ranking[best]
    how = (
        f"{first.median_ms:.3f} against {lead.median_ms:.3f} ms"
        if metric == "latency"
        else f"{first.samples_per_s:.1f} against {lead.samples_per_s:.1f} samples/s"
    )
    a, b = close[first.target], close.get(lead.target)
    if b is None:
        closer = f"{lead.target} has no parity report"
    elif a[0] != b[0]:
        closer = f"token agreement {a[0]:.4f} against {b[0]:.4f}"
    else:
        closer = f"cosine {_cosine(a)} against {_cosine(b)}"
    return best, (f"{first.target} is served: {slower(first):.1%} slower than {lead.target} ({how}), within select.tie ({tie * 100:g}%), "
                  f"and closer to the source ({closer})")  # fmt: skip


def prefer_closest(chosen: Selection, results: list[TargetResult], tie: float) -> Selection:
    """Artifacts timed within `tie` of the fastest are a tie, won by the one closest to the source: an INT8 artifact
    no faster than FP32 on this CPU (AVX2 without VNNI) is not worth its error. The winner ranks first, the rest
    keep their speed order."""
    i, note = _pick(chosen.ranking, {r.name: closeness(r) for r in results}, chosen.metric, tie)
    ranking = chosen.ranking[i : i + 1] + chosen.ranking[:i] + chosen.ranking[i + 1 :]
    return dataclasses.replace(chosen, ranking=ranking, tie=tie, tie_break=note)


def failed(sel: Select, machine: Machine, cache: CacheRef, reason: str, log: str | None) -> Selection:
    """The timing step failed: an empty ranking, the reason and the log."""
    return Selection(sel.metric, machine, cache, error=reason, log=log)


def _speed(metric: str):
    """The sort key that puts the fastest first."""
    return (lambda r: r.median_ms) if metric == "latency" else (lambda r: -r.samples_per_s)


def _winner(offered: list[Ranked], close: dict[str, tuple[float, float] | None], metric: str, tie: float) -> tuple[str | None, str | None]:
    """Of these artifacts, in any order, the one served: the fastest, or within `tie` of it the closest to the source
    (and why, then)."""
    ordered = sorted(offered, key=_speed(metric))
    if not ordered:
        return None, None
    i, note = _pick(ordered, close, metric, tie)
    return ordered[i].target, note


def served(chosen: Selection, results: list[TargetResult], names: list[str]) -> tuple[str | None, str | None]:
    """The artifact a server with these targets serves under the model's name, the selection's winner among them, and
    why when it is not the fastest of them."""
    return _winner([r for r in chosen.ranking if r.target in names], {r.name: closeness(r) for r in results}, chosen.metric, chosen.tie)


def per_class(chosen: Selection, results: list[TargetResult], classes: list[str], here: str | None,
              timed: dict[str, Selection] | None = None, tie: float = 0.0) -> list[ClassChoice]:  # fmt: skip
    """For each class of the fleet, the fastest artifact offered to it (or within `tie` of it, the closest to the
    source). `timed`: per class below this machine's, the artifacts whose runtime obeys the ISA caps timed as that
    class; the winner is the fastest of those offered, and the others are listed as untimed. A class not timed takes
    this machine's order, labelled with the class it was measured on."""
    proofs = {r.name: r.cpu for r in results}
    close = {r.name: closeness(r) for r in results}
    timed = timed or {}
    out = []
    for cls in classes:
        own = timed.get(cls)
        ranking = own.ranking if own is not None and own.ranking else chosen.ranking
        excluded, offered = {}, []
        for r in ranking:
            proof = proofs.get(r.target)
            check = proof.check(cls) if proof is not None else None
            if proof is not None and (check is None or not check.offered):
                excluded[r.target] = check.reason if check is not None else f"not checked for {cls}"
            else:
                offered.append(r)
        winner = _winner(offered, close, chosen.metric, tie)[0]
        if own is not None and own.ranking:
            names = {r.target for r in own.ranking}
            out.append(ClassChoice(cls, winner, cls, excluded, own.ranking, [r.target for r in chosen.ranking if r.target not in names]))
        else:
            out.append(ClassChoice(cls, winner, here, excluded))
    return out
