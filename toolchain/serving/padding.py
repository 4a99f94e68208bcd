"""Sizes a served model takes (issue 26): refuse a size its artifact cannot run, or pad it up to one it can and trim
the outputs back. Pure numpy, no package imports and no `from __future__`: render_model_py pastes this file into
every Triton model.py, and the build's pad check (worker.run_target) runs the same functions on the artifact.

ACCEPTS: input name -> [[axis, dim, lo, hi, multiple, pad_from], ...] (pad_from None: sizes other than the accepted
ones are refused); TRIMS: output name -> [[axis, dim], ...], the axes that follow a padded dim.
"""

import numpy as np


def accepted_text(lo, hi, multiple):
    return f"multiples of {multiple} in [{lo}, {hi}]" if multiple else f"[{lo}, {hi}]"


def padded_size(n, lo, hi, multiple):
    """The smallest accepted size >= n; None when there is none."""
    k = multiple or 1
    m = max(lo, -(-n // k) * k)
    return m if m <= hi else None


def fit_inputs(accepts, names, arrays):
    """(arrays padded to accepted sizes, {dim: size asked}); ValueError naming the input, axis and sizes when a size
    cannot be served (two inputs disagreeing on a dim too)."""
    asked, out = {}, []
    for name, arr in zip(names, arrays):
        for axis, dim, lo, hi, k, pad_from in accepts.get(name, []):
            n = int(arr.shape[axis])
            if asked.setdefault(dim, n) != n:
                raise ValueError(f"input '{name}' axis {axis} ({dim}) has size {n}, another input has {dim} {asked[dim]}")
            if lo <= n <= hi and n % (k or 1) == 0:
                continue
            if pad_from is None or not pad_from <= n <= hi or padded_size(n, lo, hi, k) is None:
                served = f"any size in [{pad_from}, {hi}] (padded up to {accepted_text(lo, hi, k)})" if pad_from is not None else accepted_text(lo, hi, k)
                raise ValueError(f"input '{name}' axis {axis} ({dim}) has size {n}; this model accepts {dim}: {served}")
    for name, arr in zip(names, arrays):
        widths = [(0, 0)] * arr.ndim
        for axis, dim, lo, hi, k, pad_from in accepts.get(name, []):
            if pad_from is not None:
                widths[axis] = (0, padded_size(asked[dim], lo, hi, k) - asked[dim])
        out.append(np.pad(arr, widths) if any(w[1] for w in widths) else arr)  # zeros: masks mask, ids are padding
    return out, asked


def trim_outputs(trims, names, outputs, asked):
    """Each output cut back, along the axes that follow a padded dim, to the size the request had."""
    out = []
    for name, arr in zip(names, outputs):
        index = [slice(None)] * np.ndim(arr)
        for axis, dim in trims.get(name, []):
            if dim in asked:
                index[axis] = slice(0, asked[dim])
        out.append(arr[tuple(index)])
    return out
