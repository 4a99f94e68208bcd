"""serve-check of the sizes a served model takes (issue 26), through the real server: the pad samples (sizes no
artifact accepts) answered as the source answers them when the model pads, and a size the artifact cannot run
refused with the model's own error, never run. The sizes are read from what the server runs: a Triton model.py's
ACCEPTS table, a TF Serving model's assets.extra/mlpack_sizes.json (serving/tfserving_sizes.py).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np

from toolchain import padcheck
from toolchain.feeds import load_feeds
from toolchain.parity import judge_again


def served_table(model_py: Path) -> dict[str, list[list]]:
    """ACCEPTS of a served model.py ({} when it has none, or is not mlpack's)."""
    if not model_py.is_file():
        return {}
    m = re.search(r"^ACCEPTS = (.*?)  #", model_py.read_text(encoding="utf-8"), re.M)
    return ast.literal_eval(m.group(1)) if m else {}


def _refused_size(table: dict[str, list[list]]) -> tuple[str, int] | None:
    """A dim and a size the model must refuse: off its multiple when it does not pad, else past its max (not the
    batch axis: Triton refuses that one itself)."""
    rows = sorted((r for rows in table.values() for r in rows if r[0] > 0), key=lambda r: not (r[4] or r[5] is not None))
    for _axis, dim, lo, hi, k, pad_from in rows:
        return (dim, lo + 1) if k and pad_from is None and lo + 1 < hi else (dim, hi + 1)
    return None


def _resized(feed: dict, table: dict[str, list[list]], dim: str, size: int) -> dict:
    out = {}
    for name, arr in feed.items():
        for axis, d, *_ in table.get(name, []):
            if d == dim:
                n = arr.shape[axis]
                arr = np.pad(arr, [(0, size - n if a == axis else 0) for a in range(arr.ndim)]) if size > n else arr.take(range(size), axis=axis)
        out[name] = arr
    return out


def check_sizes(replay, target, root: Path, table: dict[str, list[list]], samples: list[dict]) -> dict | None:
    """{"pad": ..., "refused": ..., "passed": bool, "problem": str | None}; None when the model has no size table
    (`table`: the ACCEPTS the served model holds). `replay(samples) -> (outputs, first error, requests)` sends over
    the server."""
    if not table:
        return None
    out: dict = {"passed": True, "problem": None}
    if target.pad is not None and (root / padcheck.SAMPLES).exists():
        outputs, error, _ = replay(load_feeds(root / padcheck.SAMPLES))
        if error:
            out.update(passed=False, problem=f"a size the model pads was refused: {error}")
        else:
            report = judge_again(target.parity, load_feeds(root / padcheck.REFERENCE), outputs)
            out["pad"] = {"samples": target.pad.samples, "passed": report.passed, "worst_cosine": report.worst()[1]}
            if not report.passed:
                out.update(passed=False, problem=f"padded sizes answered unlike the source: {report.first_failure()}")
    refused = _refused_size(table)
    if refused and samples:
        dim, size = refused
        _, error, _ = replay([_resized(samples[0], table, dim, size)])
        out["refused"] = {"dim": dim, "size": size, "error": error}
        if not error or "this model accepts" not in error:
            out.update(
                passed=False,
                problem=out["problem"] or f"{dim} {size} is not a size the artifact accepts, yet the server " + (f"answered: {error}" if error else "ran it"),
            )
    return out
