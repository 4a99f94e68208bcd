"""The one corner check: an export run at every dim's extremes (and the sizes next to them), its
outputs judged against a reference by `parity.compare`, before the gate sees it. A graph or
package that holds only at the sizes it was traced at fails here, inside its build, naming the
sizes, instead of in a server. Pure numpy: the kinds pass callables that run their runtimes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from toolchain.errors import one_line
from toolchain.parity import CORNER_TOLERANCE, compare
from toolchain.recipe import DimSpec, Recipe, Tolerance
from toolchain.records import OutputDiff
from toolchain.samples import Feed, example_feed

LEVELS: dict[str, Callable[[DimSpec], int]] = {
    "min": lambda d: d.min,
    "max": lambda d: d.max,
    "opt": lambda d: d.opt,  # the example size, where a model's own fast path for one size lives
    "min+1": lambda d: min(d.min + (d.multiple or 1), d.max),  # sizes of the other parity: a shape branch taken from the example shows there
    "max-1": lambda d: max(d.max - (d.multiple or 1), d.min),  # (the next accepted size, for a dim of multiples)
}
SEED_OFFSET = 2  # corner inputs draw from parity.seed + 2 (the samples use parity.seed)


@dataclass
class CornerMiss:
    """Where an export fails: the level, the sizes, and whether it raised ("run") or differs ("values")."""

    stage: str  # run | values
    level: str
    at: str  # the dynamic dims' sizes: "batch=1, n=2"
    error: BaseException | None = None  # run: what it raised
    output: str | None = None  # values: the first output that differs
    diff: OutputDiff | None = None

    @property
    def how(self) -> str:
        """How the output differs: 'is off by 0.12 (largest |value| 3.4; cosine 0.97)' or the gate's own words."""
        d = self.diff
        why = d.failures[0].removeprefix("sample 0: ") if d.failures else ""
        if "outside atol" in why or not why:
            return f"is off by {d.max_abs_err:.3g} (largest |value| {d.atol_scale:.3g}; cosine {d.cosine:.6f})"
        shapes = re.fullmatch(r"shape (\[.*\]) != reference (\[.*\])", why)
        return f"has shape {shapes[1]}, the model's {shapes[2]}" if shapes else why

    @property
    def raised(self) -> str:
        return one_line(self.error) if self.error is not None else ""


def corner_feeds(recipe: Recipe, levels: Sequence[str]):
    """(level, sizes text, feed) at each level, every dim at that level; one seeded stream across levels."""
    rng = np.random.default_rng(recipe.parity.seed + SEED_OFFSET)
    for level in levels:
        sizes = {n: LEVELS[level](d) for n, d in recipe.dims.items()}
        at = ", ".join(f"{n}={v}" for n, v in sizes.items() if recipe.dims[n].min < recipe.dims[n].max)
        yield level, at, example_feed(recipe, sizes, rng)


def check_corners(recipe: Recipe, levels: Sequence[str], run: Callable[[Feed], dict], reference: Callable[[Feed], dict] | None = None,
                  tol: Tolerance = CORNER_TOLERANCE) -> CornerMiss | None:  # fmt: skip
    """The first level where `run` raises, or (with a `reference`) computes other values than it; None when it holds."""
    for level, at, feed in corner_feeds(recipe, levels):
        try:
            got = run(feed)
            want = reference(feed) if reference is not None else None
        except Exception as e:
            return CornerMiss("run", level, at, error=e)
        if want is None:
            continue
        report = compare([want], [got], tol)
        bad = next(((name, d) for name, d in report.outputs.items() if not d.passed), None)
        if bad is not None:
            return CornerMiss("values", level, at, output=bad[0], diff=bad[1])
    return None
