"""INT8 AOTI packages: attention in BF16 where every CPU that serves them has native BF16 (issue 23).

PT2E quantizes a transformer's linears only; its attention stays a float `scaled_dot_product_attention`, which
Inductor lowers to ATen's FP32 flash kernel. On BERT-base (batch 1, seq 128, one thread, AMD Zen 5) that kernel
took 8.4 of the INT8 package's 37 ms. The same attention written as two BF16 matmuls (oneDNN, vdpbf16ps) around an
FP32 softmax took 4 ms, at the same cosine. BF16 is emulated (and slower than FP32) on CPUs without it, so this is
done only when the build machine and every class of `serve.cpus` have it natively, and the manifest says so.

Two forms, chosen by the build machine's class (the package is compiled for it): on AMX, ATen's fused BF16 attention
kernel (q, k and v in BF16, the mask as the model gave it) was faster still, BERT-base INT8 32.5 ms against 35.1 ms for
the two matmuls (Xeon with AMX, 1 thread; the softmax kernel alone took 4 ms there); on AVX512-BF16 without AMX the two
matmuls were measured (above) and the fused kernel was not. In the fused form the q, k and v projections, when INT8,
write BF16 themselves (no separate casts).
"""

from __future__ import annotations

import math

from toolchain import cpuclass

# Inductor recomputes a shared pointwise producer (the padding mask) inside every consumer unless it is realized;
# with the mask rebuilt per layer the softmax kernel cost 0.34 ms instead of 0.19 (BERT-base, Zen 5).
COMPILE_CONFIGS = {"realize_opcount_threshold": 4}
FUSED_ON = ("amx",)  # the classes where the fused BF16 kernel was measured faster than the two matmuls
FORMS = {"fused": "ATen's fused attention kernel in BF16", "matmuls": "two BF16 matmuls around an FP32 softmax"}


def form_for(machine_class: str | None) -> str:
    """The BF16 form for a package compiled on `machine_class`."""
    return "fused" if machine_class in FUSED_ON else "matmuls"


def bf16_reason(recipe, device: str, option: str) -> tuple[bool, str]:
    """(whether the package's attention runs in BF16, why) for an INT8 CPU package."""
    if option == "float" or device != "cpu":
        return False, "attention: float" if option == "float" else "a CUDA package"
    here = cpuclass.machine_class()
    if here not in cpuclass.NATIVE_BF16:
        return False, f"this machine ({here or 'below avx2'}) has no native BF16 to prove it on"
    fleet = list(recipe.serve.cpus) or [here]
    without = [c for c in fleet if c not in cpuclass.NATIVE_BF16]
    if without:
        return False, f"serve.cpus has {', '.join(without)}, without native BF16 (emulated BF16 is slower than FP32 there)"
    return True, f"every class that serves it has native BF16 ({', '.join(fleet)})"


def _projection_in_bf16(graph, cast, dropped: set) -> bool:
    """Have the INT8 linear behind `cast` (through views and slices alone) write BF16 itself, dropping the cast: Inductor
    then computes it as an INT8 GEMM with a BF16 output (its int8-mixed-bf16 pattern: the dequantized input cast to BF16
    is the u8 tensor and its scale, no rounding). BERT-base INT8 on the Xeon with AMX, autotuned GEMMs: 29.4 against
    30.4 ms at batch 1, 187.6 against 190.1 at batch 8. A linear kept float (no dequantized input) is left alone: its
    input would be rounded to BF16. A linear shared by several projections (concat_linear) is converted once, when
    every one of its outputs reaches such a cast; the casts dropped are added to `dropped`."""
    import torch

    if cast in dropped:
        return True
    aten = torch.ops.aten
    views = {aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.transpose.int, aten.permute.default, aten.slice.Tensor}
    node = cast.args[0]
    while node.op == "call_function" and node.target in views and len(node.users) == 1:
        node = node.args[0]
    if node.op != "call_function" or node.target is not aten.linear.default or node.kwargs:
        return False
    x, w, *bias = node.args
    dequant = lambda t, kind: isinstance(t, torch.fx.Node) and t.op == "call_function" and f"dequantize_per_{kind}" in str(t.target)  # noqa: E731
    if not (dequant(x, "tensor") and dequant(w, "channel")):
        return False
    casts = []
    for user in node.users:
        while user.op == "call_function" and user.target in views and len(user.users) == 1:
            user = next(iter(user.users))
        if not (user.op == "call_function" and user.target is aten._to_copy.default and user.kwargs == {"dtype": torch.bfloat16}):
            return False
        casts.append(user)
    with graph.inserting_before(node):
        bf = [graph.call_function(aten._to_copy.default, (t,), {"dtype": torch.bfloat16}) if t is not None else None for t in (x, w, *bias)]
        linear = graph.call_function(aten.linear.default, tuple(bf))
    node.replace_all_uses_with(linear)
    graph.erase_node(node)
    for c in casts:
        c.replace_all_uses_with(c.args[0])
        graph.erase_node(c)
        dropped.add(c)
    return True


def to_bf16(gm, form: str = "matmuls") -> int:
    """Rewrite each non-causal, dropout-free SDPA of an FX GraphModule in BF16, back in the original dtype: as BF16 q @ k^T,
    an FP32 scaled, masked softmax and BF16 p @ v ("matmuls"), or as the same SDPA on BF16 q, k and v ("fused"; a float
    mask stays float, so a row masked by large finite values averages as the source's does). Returns the number
    rewritten (0: the graph is unchanged)."""
    import torch

    aten = torch.ops.aten
    graph, done = gm.graph, 0
    live: dict = {}  # mask node -> its rows with a key left, computed once for every layer that shares the mask
    dropped: set = set()  # casts a shared projection dropped already
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not aten.scaled_dot_product_attention.default:
            continue
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
        given = dict(zip(names, node.args)) | dict(node.kwargs)
        if given.get("dropout_p") or given.get("is_causal") or given.get("enable_gqa"):
            continue
        q, k, v, mask = given["query"], given["key"], given["value"], given.get("attn_mask")
        val = node.meta.get("val")
        if val is None or val.dtype != torch.float32 or not all(isinstance(t, torch.fx.Node) for t in (q, k, v)):
            continue
        if form == "fused":
            with graph.inserting_before(node):
                bf = [graph.call_function(aten._to_copy.default, (t,), {"dtype": torch.bfloat16}) for t in (q, k, v)]
                fused = graph.call_function(node.target, (*bf, *node.args[3:]), dict(node.kwargs))
                out = graph.call_function(aten._to_copy.default, (fused,), {"dtype": torch.float32})
            node.replace_all_uses_with(out)
            graph.erase_node(node)
            for cast in bf:
                _projection_in_bf16(graph, cast, dropped)
            done += 1
            continue
        scale = given.get("scale")
        scale = 1.0 / math.sqrt(q.meta["val"].shape[-1]) if scale is None else scale
        with graph.inserting_before(node):

            def call(op, *args, **kwargs):
                return graph.call_function(op, args, kwargs)

            bf = lambda t: call(aten._to_copy.default, t, dtype=torch.bfloat16)  # noqa: E731
            scores = call(aten._to_copy.default, call(aten.matmul.default, bf(q), call(aten.transpose.int, bf(k), -2, -1)), dtype=torch.float32)
            scores = call(aten.mul.Tensor, scores, scale)
            masked = isinstance(mask, torch.fx.Node)
            if masked:
                is_bool = mask.meta["val"].dtype == torch.bool
                if mask not in live:
                    with graph.inserting_after(mask):
                        keep = mask if is_bool else graph.call_function(aten.gt.Scalar, (mask, float("-inf")))
                    with graph.inserting_after(keep):
                        live[mask] = graph.call_function(aten.any.dim, (keep, -1, True))
                if is_bool:
                    scores = call(aten.masked_fill.Scalar, scores, call(aten.logical_not.default, mask), float("-inf"))
                else:
                    scores = call(aten.add.Tensor, scores, mask)
            probs = call(aten._softmax.default, scores, -1, False)
            if masked:  # a row masked everywhere gives zeros, as SDPA does, not NaN (cheaper than _safe_softmax's own reduction)
                probs = call(aten.where.ScalarOther, live[mask], probs, 0.0)
            out = call(aten._to_copy.default, call(aten.matmul.default, bf(probs), bf(v)), dtype=torch.float32)
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        done += 1
    if done:
        graph.lint()
        gm.recompile()
    return done
