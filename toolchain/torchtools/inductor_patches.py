"""Workarounds for Inductor bugs (torch 2.13, torchao 0.18) that break compiling users' models,
in force while mlpack compiles an AOTInductor package (`compiling()`). Each is the smallest
change to torch's own behaviour that makes the compile right; the parity gate still judges the
package.
"""

from __future__ import annotations

import contextlib
from unittest import mock


@contextlib.contextmanager
def compiling():
    """The workarounds below, for the duration of a compile."""
    from torch._inductor.fx_passes import quantization

    symbolic_linear_check(quantization)  # torch's copy of the INT8 patterns registers at the first frozen compile
    with _unbounded_where_ranges_fail(), _select_scatter_of_a_constant():
        yield


@contextlib.contextmanager
def _select_scatter_of_a_constant():
    """select_scatter whose source Inductor folded to a scalar `ir.Constant`: its lowering
    unsqueezes the source as a tensor and failed ("'Constant' object has no attribute 'data'").
    BEiT's relative position index (`index[0, 0:] = n - 3` on constants) hit it in every INT8
    compile. The constant is made a 0-d tensor first, as aten.full would."""
    import torch
    from torch._inductor import ir, lowering

    key = torch.ops.aten.select_scatter.default
    original = lowering.lowerings.get(key)
    if original is None:
        yield
        return

    def select_scatter(x, src, dim, index):
        if isinstance(src, ir.Constant):
            src = lowering._full(src, x.get_device(), src.get_dtype(), [])
        return original(x, src, dim, index)

    with mock.patch.dict(lowering.lowerings, {key: select_scatter}):
        yield


@contextlib.contextmanager
def _unbounded_where_ranges_fail():
    """Value-range analysis of a size expression that raises instead of answering: SegFormer's
    strides under dynamic height and width ("ValueRangeError: Invalid ranges [0:-1]" from
    pow_by_natural with exponent -1, inside Inductor's guard_or_false on a stride order) failed
    every compile. A range that cannot be computed is unknown: the callers then take the answer
    that holds for every size (guard_or_false -> False: the buffer is copied to the order the
    conv wants)."""
    import torch.fx.experimental.symbolic_shapes as shapes
    from torch.utils._sympy.value_ranges import ValueRangeError, ValueRanges

    original = shapes.bound_sympy

    def bound_sympy(expr, ranges=None):
        try:
            return original(expr, ranges)
        except ValueRangeError:
            return ValueRanges.unknown()

    with mock.patch.object(shapes, "bound_sympy", bound_sympy):
        yield


def symbolic_linear_check(passes) -> None:
    """The check for the INT8 linear-on-a-3-D-input pattern (a matmul over an expanded,
    non-contiguous activation: a GRU's batch-first output, Mamba's projections) builds
    torch.Size() from the pattern's expand sizes, which under dynamic shapes are graph nodes:
    every such compile failed ("torch.Size() takes an iterable of 'int' (item 0 is 'Node')";
    torch 2.13's Inductor and torchao 0.18 each register a copy of the pattern). The sizes are
    replaced, for that check only, by the activation's own sizes where they are provably equal
    to them; otherwise the pattern is not fused (the matmul stays float)."""
    import torch
    from torch.fx import Node
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    original = getattr(passes, "_is_valid_dequant_linear_pattern", None)
    if original is None or getattr(original, "_mlpack", False):
        return

    def resolved(size, want):
        """`size` with each node replaced by `want`'s matching size, or None where one may differ."""
        out = []
        for s, w in zip(size, want):
            v = s.meta.get("val") if isinstance(s, Node) else s
            if v is None or not statically_known_true(v == w):
                return None
            out.append(w)
        return out if len(out) == len(size) == len(want) else None

    def check(dtype, input_dim_exceeds_two, input_contiguous, *more):
        inner = original(dtype, input_dim_exceeds_two, input_contiguous, *more)

        def _inner(match):
            kw = match.kwargs
            act = kw.get("x").meta.get("val") if isinstance(kw.get("x"), Node) else None
            act_size, wgt_size = kw.get("act_expand_size"), kw.get("wgt_expand_size")
            if not any(isinstance(s, Node) for s in [*(act_size or ()), *(wgt_size or ())]):
                return inner(match)
            if not isinstance(act, torch.Tensor) or wgt_size is None or len(wgt_size) != 3:
                return False
            act_fixed = resolved(act_size, list(act.size()))
            wgt_first = resolved(wgt_size[:1], [act.size()[0]])
            if act_fixed is None or wgt_first is None:
                return False
            kw["act_expand_size"], kw["wgt_expand_size"] = act_fixed, [*wgt_first, *wgt_size[1:]]
            try:
                return inner(match)
            finally:  # the rewrite that follows builds graph nodes from the original sizes
                kw["act_expand_size"], kw["wgt_expand_size"] = act_size, wgt_size

        return _inner

    check._mlpack = True
    passes._is_valid_dequant_linear_pattern = check
