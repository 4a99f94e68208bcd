"""FP16 ONNX: onnxconverter-common's converter (FP32 inputs/outputs kept, ops that lose accuracy
in FP16 kept in FP32), and the repairs its output needs before ONNX Runtime loads it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolchain.errors import StepError
from toolchain.onnxtools.files import EXTERNAL_DATA_BYTES, save_model

# Ops kept in FP32 on top of the converter's defaults: reductions, exponentials
# and normalisations overflow or lose precision in FP16 (the same ops PyTorch
# autocast keeps in FP32).
FP16_BLOCK_LIST = [
    "Pow", "Exp", "Log", "Sqrt", "Reciprocal", "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum",
    "ReduceSumSquare", "ReduceProd", "ReduceL2", "ReduceLogSumExp", "LayerNormalization",
    "GroupNormalization", "InstanceNormalization", "CumSum",
    # scatter-adds are reductions too, and ONNX Runtime's CPU ScatterND has no FP16 'add' (a GNN's index_add)
    "ScatterND", "ScatterElements",
]  # fmt: skip


def to_fp16(src: Path, dst: Path) -> dict:
    """FP16 weights and compute, FP32 at the inputs and outputs; returns the manifest record.

    The converter marks values FP16 but leaves some nodes producing FP32 (a
    `Cast(to=FLOAT)` from a bool or int, a float `ConstantOfShape`): ONNX Runtime
    then refuses the model. Those nodes are repaired to produce what the graph
    declares, and the result is type-checked before it is saved.
    """
    import onnx
    from onnxconverter_common import float16

    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP16_BLOCK_LIST))
    source = onnx.load(str(src))
    originals = {t.name: _copy(t) for t in source.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) and np.prod(t.dims) <= 4096}
    io_types = {v.name: v.type.tensor_type.elem_type for v in [*source.graph.input, *source.graph.output]}
    guarded = transposes_into_matmul(source.graph) + counting_in_float(source)
    model = float16.convert_float_to_float16(source, keep_io_types=True, op_block_list=block, node_block_list=guarded)
    repaired = repair_fp16(model, block) + restore_io_types(model, io_types) + restore_fp32_constants(model, originals)
    check_types(model)
    save_model(model, dst)
    kept = sorted({n.op_type for n in model.graph.node if n.op_type in block})
    record = {"mode": "fp16", "converter": "onnxconverter-common float16", "io": "float32", "ops_kept_fp32": kept, "repaired_nodes": repaired}
    return record | ({"nodes_kept_fp32": guarded} if guarded else {})


def transposes_into_matmul(graph) -> list[str]:
    """Transpose nodes that feed a MatMul or Gemm, kept in FP32: ONNX Runtime's CPU session
    (x86, ORT_ENABLE_ALL, 1.2x-1.31) crashes by a null dereference in its NchwcTransformer on
    FP16 Transpose -> (the Cast it inserts) -> MatMul (onnxruntime#28392): any batch_first
    RNN's output head. The FP32 Transpose costs two casts."""
    feeds = {x for n in graph.node if n.op_type in ("MatMul", "Gemm") for x in n.input}
    return [n.name for n in graph.node if n.op_type == "Transpose" and n.name and n.output[0] in feeds]


def counting_in_float(model) -> list[str]:
    """Nodes that compute integers in float, kept in FP32: float math fed only by integers (and small
    constants) whose result goes back to integers (a Cast to int, a comparison). torch.histc counts
    tokens per expert this way (Mixtral's router: ids cast to float, binned by float edges, summed,
    cast back to int): in FP16 the bins shifted, the expert offsets were wrong and ONNX Runtime
    failed on the next broadcast. FP16 holds integers exactly only up to 2048 anyway."""
    import onnx
    from onnx import TensorProto

    floats = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}
    graph = model.graph
    if model.ByteSize() > EXTERNAL_DATA_BYTES:
        return []  # too large for shape inference in memory; nothing guarded
    try:
        types = _declared_types(onnx.shape_inference.infer_shapes(model).graph)
    except Exception:
        return []
    types.update({t.name: t.data_type for t in graph.initializer})
    small = {t.name for t in graph.initializer if np.prod(t.dims, dtype=np.int64) <= 16}  # scalars, bin edges: not weights
    whole = {v.name for v in graph.input if types.get(v.name) not in floats} | {t.name for t in graph.initializer if t.data_type not in floats}
    exact = set(whole) | small  # values that hold integers, or constants that do not break the chain
    made: dict[str, object] = {}
    for node in graph.node:  # topological order, as ONNX requires
        made.update({o: node for o in node.output})
        ins = [i for i in node.input if i]
        if node.op_type == "Constant" or (ins and all(i in exact for i in ins)):
            exact.update(node.output)
        exact.update(o for o in node.output if o in types and types[o] not in floats)  # integers (TopK's indices) are exact
    counting = {o for o in exact if types.get(o) in floats and o in made and made[o].op_type != "Constant"}
    keep: set[str] = set()
    sinks = [n for n in graph.node if n.op_type not in ("Shape", "Size") and all(types.get(o) not in floats for o in n.output)]
    ends = [n for n in sinks if n.name and any(i in counting for i in n.input)]
    keep.update(n.name for n in ends)  # the comparison too: Mixtral's last bin edge is 3.0000002, 3.0 in FP16
    todo = [i for n in ends for i in n.input if i in counting]
    while todo:
        node = made[todo.pop()]
        if node.name in keep or not node.name:
            continue
        keep.add(node.name)
        todo += [i for i in node.input if i in counting]
    return [n.name for n in graph.node if n.name and n.name in keep]


def _copy(proto):
    out = type(proto)()
    out.CopyFrom(proto)  # the converter rewrites the source's initializers in place
    return out


def restore_fp32_constants(model, originals: dict) -> list[str]:
    """A node kept in FP32 reads a constant the converter lowered to FP16 and casts back
    (Cast(to=FLOAT) of an FP16 initializer): it gets the original FP32 constant instead. Bin
    edges such as torch.histc's last one (3.0000002) otherwise round to 3.0 and drop a bin.
    Returns the casts changed."""
    from onnx import TensorProto

    inits = {t.name: t for t in model.graph.initializer}
    changed = []
    for node in model.graph.node:
        if node.op_type != "Cast" or not node.input or node.input[0] not in originals:
            continue
        lowered = inits.get(node.input[0])
        if lowered is None or lowered.data_type != TensorProto.FLOAT16 or next(a.i for a in node.attribute if a.name == "to") != TensorProto.FLOAT:
            continue
        name = f"{node.input[0]}_fp32"
        if name not in inits:
            restored = _copy(originals[node.input[0]])
            restored.name = name
            model.graph.initializer.append(restored)
            inits[name] = restored
        node.input[0] = name
        changed.append(node.name or node.output[0])
    if changed:  # drop the FP16 copies nothing reads any more
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        kept = [t for t in model.graph.initializer if t.name in used or t.name not in originals]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
    return changed


def restore_io_types(model, io_types: dict[str, int]) -> list[str]:
    """The converter keeps inputs and outputs FP32 (keep_io_types) but marks an output FP16 when
    the node producing it is one it kept in FP32 (a ReduceMean at the end of the graph): such an
    output gets a Cast back to its original type. Returns the casts' names."""
    from onnx import TensorProto, helper

    added = []
    for value in model.graph.output:
        want = io_types.get(value.name)
        if want != TensorProto.FLOAT or value.type.tensor_type.elem_type != TensorProto.FLOAT16:
            continue
        inner = f"{value.name}_mlpack_fp16"
        for node in model.graph.node:
            node.output[:] = [inner if o == value.name else o for o in node.output]
            node.input[:] = [inner if i == value.name else i for i in node.input]
        name = f"mlpack_fp16_output_{len(added)}"
        model.graph.node.append(helper.make_node("Cast", [inner], [value.name], to=TensorProto.FLOAT, name=name))
        value.type.tensor_type.elem_type = TensorProto.FLOAT
        added.append(name)
    return added


# Ops whose mixed FP16/FP32 inputs are compared in FP32: exact, and their output is bool.
COMPARISONS = frozenset({"Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal"})


def _declare(graph, name: str, elem_type: int) -> int:
    """Set the element type the graph declares for value `name`; returns it."""
    for v in [*graph.value_info, *graph.output]:
        if v.name == name:
            v.type.tensor_type.elem_type = elem_type
    return elem_type


def _declared_types(graph) -> dict[str, int]:
    return {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.output, *graph.input] if v.type.HasField("tensor_type")}


def _type_params(schema, node) -> tuple[list[str], list[str]]:
    """The type parameter (e.g. 'T') of each actual input and output of `node` under `schema`."""

    def expand(formals, actual: int) -> list[str]:
        out = [f.type_str for f in formals][:actual]
        while len(out) < actual and formals:  # variadic: the last formal repeats
            out.append(formals[-1].type_str)
        return out

    return expand(schema.inputs, len(node.input)), expand(schema.outputs, len(node.output))


def repair_fp16(model, block: list[str] = ()) -> list[str]:
    """Make the converted graph's float types agree; returns the names of the nodes changed.

    onnxconverter-common marks values FP16 but leaves some nodes on FP32: a
    `Cast(to=FLOAT)` from a bool or int, a float `ConstantOfShape`, a `Slice` of a
    table it kept in FP32, a `Less` between an FP16 and an FP32 value. For each
    node, in order: Cast and ConstantOfShape produce the type declared for their
    output; inputs bound to one type parameter that disagree get a Cast to one type
    (the declared output's, else FP32 for ops kept in FP32, else FP16); an output
    whose computed type differs from the type declared for it gets a Cast after it.
    The bodies of Loop, Scan and If nodes are repaired the same way (a recurrent
    layer exported as a while loop: the converter types the body's values FP16 and
    leaves its Casts from bool or int on FP32).
    """
    from onnx import TensorProto

    opset = {imp.domain or "": imp.version for imp in model.opset_import}
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in graph.input} | {t.name: t.data_type for t in graph.initializer}
    fixed: list[str] = []
    _repair_graph(graph, types, opset.get("", 18), set(block), fixed, TensorProto.FLOAT16)
    return sorted(set(fixed))


def _repair_graph(graph, types: dict[str, int], opset: int, block: set[str], fixed: list[str], default: int) -> None:
    """repair_fp16 on one graph; `types` holds the values it can see (the outer scopes' too)."""
    from onnx import NodeProto, TensorProto, defs, helper, numpy_helper

    floats = {TensorProto.FLOAT, TensorProto.FLOAT16}
    declared = _declared_types(graph)
    types.update({v.name: v.type.tensor_type.elem_type for v in graph.input if v.type.HasField("tensor_type")})
    types.update({t.name: t.data_type for t in graph.initializer})
    consumers: dict[str, set[str]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, set()).add(n.op_type)
    nodes = []

    def cast(name: str, to: int, tag: str) -> str:
        out = f"{name}_{tag}_{len(fixed)}"
        nodes.append(helper.make_node("Cast", [name], [out], to=to, name=f"mlpack_fp16_repair_{len(fixed)}_{tag}"))
        types[out] = to
        return out

    for node in graph.node:
        label = node.name or node.output[0]
        for attr in node.attribute:
            if attr.type == helper.AttributeProto.GRAPH:
                _repair_graph(attr.g, dict(types), opset, block, fixed, default)
            elif attr.type == helper.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _repair_graph(g, dict(types), opset, block, fixed, default)
        want = declared.get(node.output[0]) if node.output else None
        if node.op_type == "Cast" and want in floats:
            to = next(a for a in node.attribute if a.name == "to")
            if to.i in floats and to.i != want:
                # A count compared with a count (a while loop's counter against its trip count) stays
                # exact in FP32; FP16 holds integers exactly only up to 2048.
                if types.get(node.input[0]) not in floats and consumers.get(node.output[0], {""}) <= COMPARISONS:
                    declared[node.output[0]] = _declare(graph, node.output[0], to.i)
                else:
                    to.i = want
                fixed.append(label)
        elif node.op_type == "ConstantOfShape" and want in floats:
            value = next((a for a in node.attribute if a.name == "value"), None)
            current = numpy_helper.to_array(value.t) if value is not None else np.zeros(1, np.float32)
            dtype = np.float16 if want == TensorProto.FLOAT16 else np.float32
            if current.dtype.kind == "f" and current.dtype != dtype:
                node.ClearField("attribute")
                node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(current.astype(dtype))))
                fixed.append(label)
        schema = None
        if node.domain in ("", "ai.onnx") and node.op_type not in ("Cast", "ConstantOfShape"):
            try:
                schema = defs.get_schema(node.op_type, opset, "")
            except defs.SchemaError:
                schema = None
        post: list[tuple[int, int]] = []
        if schema is not None:
            in_params, out_params = _type_params(schema, node)
            for param in set(in_params):
                idx = [i for i, p in enumerate(in_params) if p == param and node.input[i] and types.get(node.input[i]) in floats]
                kinds = {types[node.input[i]] for i in idx}
                if len(kinds) < 2:
                    continue
                outs = [declared.get(o) for o, p in zip(node.output, out_params) if p == param and declared.get(o) in floats]
                target = outs[0] if outs else TensorProto.FLOAT if node.op_type in block | COMPARISONS else default
                for i in idx:
                    if types[node.input[i]] != target:
                        node.input[i] = cast(node.input[i], target, "in")
                fixed.append(label)
            for j, (out, param) in enumerate(zip(node.output, out_params)):
                bound = [types.get(node.input[i]) for i, p in enumerate(in_params) if p == param and node.input[i]]
                computed = bound[0] if bound and bound[0] in floats else None
                if computed is not None and declared.get(out) in floats and declared[out] != computed:
                    post.append((j, declared[out]))
                types[out] = declared.get(out, computed or 0)
        else:
            for out in node.output:
                types[out] = declared.get(out, 0)
            if node.op_type == "Cast":
                types[node.output[0]] = next(a.i for a in node.attribute if a.name == "to")
        casts = []
        for j, to in post:
            raw = f"{node.output[j]}_computed"
            casts.append(helper.make_node("Cast", [raw], [node.output[j]], to=to, name=f"mlpack_fp16_repair_{len(fixed)}_out"))
            node.output[j] = raw
            fixed.append(label)
        copy = NodeProto()
        copy.CopyFrom(node)  # the graph's own list is cleared below
        nodes += [copy, *casts]
    del graph.node[:]
    graph.node.extend(nodes)


def check_types(model) -> None:
    """Strict ONNX type inference: a value whose declared type disagrees with what its node produces is an error here."""
    import onnx

    if model.ByteSize() > EXTERNAL_DATA_BYTES:
        return  # protobuf cannot hold it for inference; ONNX Runtime's load in the gate still checks it
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as e:
        loops = sorted({n.op_type for n in model.graph.node if n.op_type in ("Loop", "Scan")})
        hint = (
            f"the graph has {'/'.join(loops)} control flow (a recurrent layer exported as a while loop): onnxconverter-common "
            "converts a loop body apart from the values it reads from outside it, so FP16 ONNX of this model does not work; "
            "build the onnx or onnx-int8 target for it"
            if loops and ("Loop" in str(e) or "Scan" in str(e))
            else "set quantize: fp16 aside for this model (or report the node named); the FP32 onnx target is unaffected"
        )
        raise StepError(f"the FP16 conversion left an invalid graph: {str(e).strip().splitlines()[0]}", hint=hint) from None
