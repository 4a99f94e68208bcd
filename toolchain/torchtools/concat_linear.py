"""INT8 AOTI packages: one GEMM for the quantized linears that read the same quantized input (a transformer's query,
key and value projections), sliced back apart.

PT2E quantizes each projection on its own: three dequantized copies of one u8 input, three GEMMs of N=768 on BERT-base.
Concatenated along the output channels (weights, per-channel scales and zero points, biases) they are one GEMM of
N=2304 with the same numbers: the input's quantization is shared already and every output channel keeps its own scale,
so the package's outputs are bitwise those of the separate GEMMs. Inductor's autotuned C++ GEMM (AMX) runs the wide one
faster where there are rows to fill it: BERT-base INT8, seq 128, one thread, Xeon with AMX, the two packages side by
side: batch 8 2 to 5% faster (187.5 against 196.6 ms, 181.8 against 185.7); batch 1 within the host's noise but slower
in four of five runs (from 1.2% faster to 1.7% slower). oneDNN's qlinear alone ran
the wide GEMM slower (the 36 projections at 128 rows: 13.0 against 9.5 ms), so it is done only where the GEMMs are
autotuned (toolchain/torchtools/gemm.py).
"""

from __future__ import annotations

from operator import attrgetter

PREFIX = "_mlpack_concat"  # the buffers holding the concatenated weights


def _attr(gm, node):
    return attrgetter(node.target)(gm)  # a get_attr node's tensor (its target may be dotted)


def _member(gm, dq, qn):
    """(dequantized input, linear, dequantized weight, bias node or None, group key) for a PT2E linear fed by `dq`, a
    dequantization of `qn`; None where the linear is not the plain per-channel form this rewrite knows."""
    import torch

    aten, qd = torch.ops.aten, torch.ops.quantized_decomposed
    if dq.op != "call_function" or dq.target is not qd.dequantize_per_tensor.default or dq.args[0] is not qn or dq.kwargs or len(dq.users) != 1:
        return None
    lin = next(iter(dq.users))
    if lin.op != "call_function" or lin.target is not aten.linear.default or lin.kwargs or lin.args[0] is not dq:
        return None
    w, bias = lin.args[1], (lin.args[2] if len(lin.args) > 2 else None)
    if not isinstance(w, torch.fx.Node) or w.target is not qd.dequantize_per_channel.default or len(w.users) != 1 or w.kwargs:
        return None
    if not all(isinstance(a, torch.fx.Node) and a.op == "get_attr" for a in w.args[:3]) or w.args[3] != 0:
        return None
    if bias is not None and not (isinstance(bias, torch.fx.Node) and bias.op == "get_attr"):
        return None
    weight = _attr(gm, w.args[0])
    if weight.dim() != 2:
        return None
    key = (tuple(dq.args[1:]), tuple(w.args[3:]), bias is None, weight.shape[1], weight.dtype)
    return dq, lin, w, bias, key


def _reshape_views(out) -> None:
    """A slice of the wide output is not contiguous (its rows are the wide GEMM's): a `view` that merged its last dimension
    with another (a model's `proj(x).view(batch, -1)`) would fail on it. Every view reached from the slice through
    view-like ops becomes a reshape, which Inductor keeps a view wherever the strides allow (splitting the last
    dimension into heads, as attention does) and copies only where they do not."""
    import torch

    aten = torch.ops.aten
    follow = {aten.transpose.int, aten.permute.default, aten.unsqueeze.default, aten.squeeze.dim, aten.expand.default,
              aten.slice.Tensor, aten.select.int, aten.t.default, aten.reshape.default}  # fmt: skip
    stack = [out]
    while stack:
        node = stack.pop()
        for user in list(node.users):
            if user.op != "call_function":
                continue
            if user.target in (aten.view.default, aten._unsafe_view.default):
                user.target = aten.reshape.default
            if user.target in follow:
                stack.append(user)


def fuse(gm) -> int:
    """Concatenate, in a converted PT2E GraphModule, the linears that dequantize one quantized tensor alike (same
    input scale, same weight quantization, same in_features, all with or all without bias) into one linear whose
    output is sliced back into theirs. Returns the number of groups fused (0: the graph is unchanged)."""
    import torch

    aten, qd = torch.ops.aten, torch.ops.quantized_decomposed
    graph, fused, replaced = gm.graph, 0, set()
    for qn in list(graph.nodes):
        if qn.op != "call_function" or qn.target is not qd.quantize_per_tensor.default:
            continue
        groups: dict = {}
        for dq in list(qn.users):
            member = _member(gm, dq, qn)
            if member is not None:
                groups.setdefault(member[-1], []).append(member[:-1])
        for members in (g for g in groups.values() if len(g) > 1):
            order = {node: i for i, node in enumerate(graph.nodes)}
            members.sort(key=lambda m: order[m[1]])  # the new GEMM goes where the first of them was
            weights = [_attr(gm, w.args[0]) for _, _, w, _ in members]
            parts = {"weight": torch.cat(weights), "scale": torch.cat([_attr(gm, w.args[1]) for _, _, w, _ in members]),
                     "zero_point": torch.cat([_attr(gm, w.args[2]) for _, _, w, _ in members])}  # fmt: skip
            if members[0][3] is not None:
                parts["bias"] = torch.cat([_attr(gm, b) for _, _, _, b in members])
            index = sum(1 for n, _ in gm.named_buffers() if n.startswith(PREFIX))  # unique across calls on one module
            names = {part: f"{PREFIX}{index}_{part}" for part in parts}
            for part, tensor in parts.items():
                gm.register_buffer(names[part], tensor)
            first_dq, first_lin = members[0][0], members[0][1]
            with graph.inserting_before(first_lin):
                got = {part: graph.get_attr(name) for part, name in names.items()}
                wq = graph.call_function(qd.dequantize_per_channel.default, (got["weight"], got["scale"], got["zero_point"], *members[0][2].args[3:]))
                linear = graph.call_function(aten.linear.default, (first_dq, wq) + ((got["bias"],) if "bias" in got else ()))
                start, outs = 0, []
                for (_, old, _, _), w in zip(members, weights):
                    outs.append(graph.call_function(aten.slice.Tensor, (linear, -1, start, start + w.shape[0])))
                    outs[-1].meta.update(old.meta)  # the same shape and dtype as the linear it stands for
                    start += w.shape[0]
            for (dq, old, w, bias), out in zip(members, outs):
                replaced.update(a.target for a in (*w.args[:3], bias) if a is not None)
                old.replace_all_uses_with(out)
                _reshape_views(out)
                graph.erase_node(old)
                graph.erase_node(w)
                if dq is not first_dq:
                    graph.erase_node(dq)
            fused += 1
    if fused:
        graph.eliminate_dead_code()
        still = {n.target for n in graph.nodes if n.op == "get_attr"}
        for target in replaced - still:  # the separate weights, or the package would carry them unused
            owner, _, name = target.rpartition(".")
            delattr(gm.get_submodule(owner) if owner else gm, name)
        graph.lint()
        gm.recompile()
    return fused
