"""The parity gate run inside a build step: a kind that chooses among variants
(INT8 configurations, frozen or not) judges each with the gate's own runner and
`parity.compare`, on the parity samples the build saved.
"""

from __future__ import annotations

from toolchain.parity import compare
from toolchain.recipe import Tolerance
from toolchain.records import ParityReport
from toolchain.runners import Runner, run_all


def judge(runner: Runner, samples: list[dict], reference: list[dict], tol: Tolerance, scores: list[str]) -> tuple[ParityReport, list[dict]]:
    """(the gate's report, the outputs) of `runner` on the parity samples."""
    outputs = run_all(runner, samples)
    return compare(reference, outputs, tol, scores), outputs
