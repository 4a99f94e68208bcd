"""The parity gate run inside a build step: a kind that chooses among variants
(INT8 configurations, frozen or not) judges each with the gate's own runner and
`parity.compare`, on the parity samples the build saved.
"""

from __future__ import annotations

from toolchain.parity import ParityReport, compare
from toolchain.recipe import Tolerance
from toolchain.runners import Runner, run_all


def judge(runner: Runner, samples: list[dict], reference: list[dict], tol: Tolerance, scores: list[str]) -> tuple[ParityReport, list[dict]]:
    """(the gate's report, the outputs) of `runner` on the parity samples."""
    outputs = run_all(runner, samples)
    return compare(reference, outputs, tol, scores), outputs


def margin(report: ParityReport) -> float:
    """How far the worst output is from its floors (>= 0 passes them): what a search maximises."""
    tol = report.tolerance
    margins = []
    for d in report.outputs.values():
        if d.agreement is not None:  # an integer output: judged by agreement only (parity.compare)
            margins.append(d.agreement - tol.get("top1", 1.0))
        elif "cosine" in tol:
            margins.append(d.cosine - tol["cosine"])
        if "top1" in tol and d.top1 is not None:
            margins.append(d.top1 - tol["top1"])
        if d.nonfinite:
            margins.append(-1.0)
    return min(margins, default=0.0 if report.passed else -1.0)


def summary(report: ParityReport) -> dict:
    """The figures an attempt records: passed, worst cosine, worst top-1."""
    outs = report.outputs.values()
    top1 = [d.top1 for d in outs if d.top1 is not None]
    return {"passed": report.passed, "cosine": min((d.cosine for d in outs if d.agreement is None), default=1.0), "top1": min(top1) if top1 else None}
