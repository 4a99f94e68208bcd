"""Reduced precision for ONNX models: FP16 conversion and INT8 quantization.

FP16 uses onnxconverter-common's converter (FP32 inputs/outputs kept, ops
that lose accuracy in FP16 kept in FP32). INT8 uses ONNX Runtime's tools:
pre-processing, then static QDQ quantization calibrated on samples disjoint
from the parity samples, or dynamic quantization for transformer-style
models. An INT8 model is checked against the parity budget here, so that a
miss can name the nodes that cost the most and, with `fallback: auto`,
keep them in float and try again.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolchain.errors import StepError, one_line
from toolchain.judge import judge, margin, summary
from toolchain.onnxtools.files import EXTERNAL_DATA_BYTES, save_model
from toolchain.onnxtools.kernels import RUNTIME_SCHEMA, runtime_kernels
from toolchain.onnxtools.node_report import node_errors
from toolchain.parity import CalibrationSet, ParityReport, calibration_samples, cosine
from toolchain.runners.onnxruntime import OnnxRuntimeRunner

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

CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
REPORT_NODES = 10  # nodes listed in the manifest's node_report
SEARCH_SHARE = 0.5  # of the target's timeout, for fallback: auto's search


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


# ONNX Runtime's pre-processing, most thorough first: its symbolic shape inference
# crashes on some graphs (wav2vec2, pooled encoders: "object of type 'NoneType' has
# no len()"), and the quantizers work without it.
PRE_PROCESS = (
    ("full", {}),
    ("without symbolic shape inference", {"skip_symbolic_shape": True}),
    ("without symbolic shape inference and graph optimization", {"skip_symbolic_shape": True, "skip_optimization": True}),
)


def pre_process(src: Path, dst: Path) -> dict:
    """ONNX Runtime's pre-quantization step (shape inference and graph cleanup); returns what ran.

    Symbolic shape inference is incomplete on some dynamo exports (e.g. BERT);
    auto_merge lets it reconcile the symbolic dims it cannot prove equal.
    """
    import onnx
    from onnxruntime.quantization import quant_pre_process

    failed = []
    for label, options in PRE_PROCESS:
        try:
            quant_pre_process(str(src), str(dst), auto_merge=True, **options)
            break
        except Exception as e:
            failed.append(f"{label}: {one_line(e)}")
            print(f"quant_pre_process ({label}) failed: {one_line(e)}")  # into the target's log
    else:
        raise StepError(f"ONNX Runtime's quant_pre_process failed every way: {'; '.join(failed)}")
    model = onnx.load(str(dst))
    unnamed = [n for n in model.graph.node if not n.name]
    if unnamed:  # nodes_to_exclude and the node report address nodes by name
        for i, n in enumerate(unnamed):
            n.name = f"{n.op_type}_{i}_unnamed"
        onnx.save(model, str(dst))
    return {"pre_process": label, "pre_process_failures": failed}


class _Reader:
    """A CalibrationDataReader over a list of feeds, readable in ranges.

    Calibration feeds span the dims like parity samples, so their shapes
    differ; ORT's histogram calibrators stack the outputs of one collection
    pass, so the quantizer collects feed by feed (CalibStridedMinMax: 1) and
    merges the ranges or histograms across passes.
    """

    def __init__(self, feeds: list[dict]):
        self._feeds = feeds
        self.set_range(0, len(feeds))

    def __len__(self) -> int:
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self._feeds[start_index:end_index])

    def get_next(self) -> dict | None:
        return next(self._it, None)


def quantize_static_qdq(prep: Path, dst: Path, calib: CalibrationSet, method: str, excluded: list[str], symmetric: bool, cache: Path | None = None,
                        op_types: tuple[str, ...] | None = None) -> None:  # fmt: skip
    """Static QDQ with per-channel weights.

    symmetric=True (TensorRT) puts every zero point at 0, as TensorRT requires;
    otherwise activations are asymmetric uint8, ONNX Runtime's CPU choice.
    `cache` keeps the calibrated ranges so search rounds skip recalibrating;
    `op_types` limits which op types are quantized (None: ONNX Runtime's default set).
    """
    from onnxruntime import quantization as q

    q.quantize_static(
        str(prep),
        str(dst),
        _Reader(calib.feeds),
        quant_format=q.QuantFormat.QDQ,
        op_types_to_quantize=list(op_types) if op_types else None,
        per_channel=True,
        activation_type=q.QuantType.QInt8 if symmetric else q.QuantType.QUInt8,
        weight_type=q.QuantType.QInt8,
        calibrate_method=getattr(q.CalibrationMethod, CALIBRATION_METHODS[method]),
        nodes_to_exclude=excluded,
        extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True, "CalibStridedMinMax": 1},
        calibration_cache_path=str(cache) if cache else None,
    )


def quantize_dynamic(prep: Path, dst: Path, excluded: list[str], op_types: tuple[str, ...] | None = None) -> None:
    """Weights INT8 ahead of time (per output channel), activations quantized per batch at run time.

    Per-channel weights: on real all-MiniLM-L6-v2 weights, per-tensor dynamic INT8
    reached cosine 0.965 to FP32 and per-channel 0.993.
    """
    from onnxruntime import quantization as q

    q.quantize_dynamic(str(prep), str(dst), weight_type=q.QuantType.QInt8, per_channel=True, nodes_to_exclude=excluded,
                       op_types_to_quantize=list(op_types) if op_types else None)  # fmt: skip


def _worst_sample(reference: list[dict], outputs: list[dict]) -> int:
    """Index of the sample whose outputs are least like the reference (lowest cosine)."""
    scores = [min(cosine(r[k], o[k]) for k in r if k in o) for r, o in zip(reference, outputs)]
    return int(np.argmin(scores))


# Compute-heavy ops: quantizing only these leaves activations, residual adds and
# squeeze-excite gates in float, where most of a CNN's INT8 error starts.
COMPUTE_OPS = ("Conv", "MatMul", "Gemm")
SENSITIVITY_CANDIDATES = 12  # nodes whose one-at-a-time exclusion is measured
GROUPS_TRIED = 6  # op-type groups whose exclusion is tried


@dataclass(frozen=True)
class Config:
    """One quantization tried by the search."""

    method: str | None  # calibration method (static INT8); None for dynamic
    op_types: tuple[str, ...] | None = None  # op types quantized (None: ONNX Runtime's default)
    excluded: tuple[str, ...] = ()  # nodes kept in float
    why: str = "plain"  # what this attempt tried

    def to_dict(self) -> dict:
        return {"why": self.why, "calibration": self.method, "op_types": list(self.op_types) if self.op_types else "default", "excluded": len(self.excluded)}


class Search:
    """Quantize, check against the budget, keep the best configuration found (its model in `best_path`)."""

    def __init__(self, source, spec, prep: Path, scratch: Path, calib, samples, reference, tol, deadline: float):
        self.source, self.spec, self.prep, self.scratch, self.calib = source, spec, prep, scratch, calib
        self.samples, self.reference, self.tol, self.deadline = samples, reference, tol, deadline
        self.attempts: list[dict] = []
        self.best: tuple[float, Config, ParityReport, list[dict]] | None = None
        self.best_path = scratch / "best.onnx"

    @property
    def passed(self) -> bool:
        return self.best is not None and self.best[2].passed

    def out_of_time(self) -> bool:
        return time.monotonic() > self.deadline

    def run(self, config: Config) -> tuple[float, ParityReport, list[dict]]:
        path = self.scratch / "attempt.onnx"
        if config.method is not None:
            quantize_static_qdq(self.prep, path, self.calib, config.method, list(config.excluded), symmetric=False,
                                cache=self.scratch / f"calibration.{config.method}.json", op_types=config.op_types)  # fmt: skip
        else:
            quantize_dynamic(self.prep, path, list(config.excluded), config.op_types)
        runner = OnnxRuntimeRunner(path, self.source.input_names, self.source.output_names, self.spec.device)
        report, outputs = judge(runner, self.samples, self.reference, self.tol, self.source.recipe.parity.scores)
        score = margin(report)
        self.attempts.append({**config.to_dict(), "excluded": len(config.excluded), **summary(report)})
        if self.best is None or (report.passed, score) > (self.best[2].passed, self.best[0]):
            self.best = (score, config, report, outputs)
            shutil.copyfile(path, self.best_path)
        return score, report, outputs


def _default_op_types(static: bool) -> list[str]:
    """The op types ONNX Runtime quantizes when not told which."""
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry, QLinearOpsRegistry

    return sorted(set(QDQRegistry) | set(QLinearOpsRegistry)) if static else sorted(IntegerOpsRegistry)


def _group_of(node) -> str:
    if node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute):
        return "depthwise Conv"
    return node.op_type


def _search(search: Search, base: Config, static: bool, explicit_method: bool) -> None:
    """fallback: auto, in order until the budget holds (or time runs out):

    1. quantizing only compute-heavy ops (Conv, MatMul, Gemm);
    2. the other calibration methods (unless the recipe names one);
    3. op types (and depthwise convolutions) kept in float, greedily: a group
       stays in float when that brought the outputs closer to the reference;
    4. nodes ranked by how much keeping each one alone in float improves the final
       outputs (not by their own local error), then kept in float cumulatively,
       1, 2, 4, ... of them, up to half the quantizable nodes.
    """
    import onnx

    # Cheapest first: the op-type choice reuses the calibrated ranges; another method recalibrates.
    if static and not search.out_of_time():
        search.run(Config(base.method, COMPUTE_OPS, (), "compute-heavy ops only"))
    if static and not explicit_method:
        op_types = search.best[1].op_types
        # Not entropy: ONNX Runtime's KL threshold search took over ten minutes on EfficientNet-B0's
        # 240 tensors; a recipe can still ask for it with `calibration: entropy`.
        for method in ("percentile",):
            if search.passed or search.out_of_time():
                return
            search.run(Config(method, op_types, (), f"calibration {method}"))
    base = search.best[1]
    if search.passed:
        return
    model = onnx.load(str(search.prep), load_external_data=False)
    quantizable = set(base.op_types or _default_op_types(static))
    groups: dict[str, list[str]] = {}
    for n in model.graph.node:
        if n.op_type in quantizable:
            groups.setdefault(_group_of(n), []).append(n.name)
    total = sum(len(v) for v in groups.values())
    excluded: list[str] = []
    current = search.best[0]
    for group, names in sorted(groups.items(), key=lambda kv: -len(kv[1]))[:GROUPS_TRIED]:
        if search.passed or search.out_of_time():
            return
        if len(names) > total // 2:
            continue  # the bulk of the model: keeping it all in float is no INT8 artifact
        score, _, _ = search.run(Config(base.method, base.op_types, tuple(excluded + names), f"{group} in float (greedy)"))
        if score > current:
            excluded, current = excluded + names, score
    if search.passed or search.out_of_time():
        return
    base_margin, report, outputs = search.run(Config(base.method, base.op_types, tuple(excluded), "baseline for the node ranking"))
    errors = node_errors(search.prep, search.scratch / "attempt.onnx", search.samples[_worst_sample(search.reference, outputs)], search.spec.device)
    # Keeping a node in float must keep what it reads in float too: the quantizer puts a
    # Q/DQ pair on a tensor for its (quantized) producer, whatever the consumer is.
    producer = {o: n.name for n in model.graph.node for o in n.output}
    nodes = {n.name: n for n in model.graph.node}
    quantized = {n for names in groups.values() for n in names}

    def unit(name: str) -> list[str]:
        feeding = [producer[i] for i in nodes[name].input if i in producer and producer[i] in quantized] if name in nodes else []
        return [n for n in dict.fromkeys([name, *feeding]) if n not in excluded]

    by_error = [e.node for e in errors if e.node not in excluded and (e.quantized or unit(e.node)[1:])]
    gains = []
    for node in by_error[:SENSITIVITY_CANDIDATES]:
        if search.passed or search.out_of_time():
            return
        m, _, _ = search.run(Config(base.method, base.op_types, tuple(excluded + unit(node)), f"{node} and its inputs in float"))
        gains.append((m - base_margin, node))
    ranked = [n for _, n in sorted(gains, key=lambda g: -g[0])]
    ranked += [n for n in by_error if n not in ranked]
    cap = max(1, total // 2 - len(excluded))
    k = 1
    while not search.passed and not search.out_of_time():
        chosen = list(dict.fromkeys(x for n in ranked[:k] for x in unit(n)))[:cap]
        search.run(Config(base.method, base.op_types, tuple(excluded + chosen), f"{k} most helpful nodes and their inputs in float"))
        if k >= len(ranked) or len(chosen) >= cap:
            break
        k *= 2


def to_int8(source, spec, src: Path, dst: Path, scratch: Path, ctx) -> dict:
    """Quantize `src` into `dst`, check the budget, and with `fallback: auto` search for a configuration that meets it.

    `ctx` is the step's BuildContext (the parity data lies under its root).
    Returns the manifest fields: `quantization` (mode, calibration, the search's
    attempts, node_report), `excluded_nodes` and `warnings`.
    """
    recipe = source.recipe
    method = spec.calibration or "minmax"
    prep = scratch / "prep.onnx"
    record: dict = {"mode": spec.quantize, "fallback": spec.fallback, **pre_process(src, prep)}
    warnings: list[str] = []
    calib = None
    static = spec.quantize == "int8"
    if static:
        calib = calibration_samples(recipe)
        record |= {"format": "QDQ", "per_channel": True, "activations": "uint8 asymmetric", "weights": "int8 symmetric"}
        if calib.warning:
            warnings.append(calib.warning)
    else:
        record |= {"format": "dynamic (QOperator)", "weights": "int8 per channel"}
    samples, reference = ctx.parity_data()
    tol = recipe.tolerance(spec)
    # The search may use half the target's time; what is left builds the gate's own check.
    search = Search(source, spec, prep, scratch, calib, samples, reference, tol, time.monotonic() + spec.timeout * SEARCH_SHARE)
    base = Config(method if static else None)
    _, report, outputs = search.run(base)
    node_report = None
    if not report.passed:
        node_report = [e.to_dict() for e in node_errors(prep, scratch / "attempt.onnx", samples[_worst_sample(reference, outputs)], spec.device)[:REPORT_NODES]]
        if spec.fallback == "auto":
            _search(search, base, static, spec.calibration is not None)
    _, best, report, _ = search.best
    shutil.copyfile(search.best_path, dst)
    record["runtime"] = runtime_kernels(dst)
    if static:
        record["calibration"] = {"method": best.method, **calib.to_dict()}
    record |= {"chosen": best.to_dict(), "op_types": list(best.op_types) if best.op_types else "default"}
    if not report.passed:
        names = ", ".join(f"{r['node']} ({r['op_type']}, +{r['added_error']:.3g})" for r in (node_report or [])[:3])
        if spec.fallback == "off":
            warnings.append(
                f"{spec.quantize} misses its budget; nodes adding the most error: {names}; set fallback: auto to search for a configuration that meets it"
            )
        else:
            cos = min(d.cosine for d in report.outputs.values())
            warnings.append(f"{spec.quantize} misses its budget after {len(search.attempts)} attempts; the best ({best.why}) reached cosine {cos:.6f}; "
                            f"nodes adding the most error: {names}")  # fmt: skip
    record |= {"attempts": search.attempts, "node_report": node_report}
    return {"quantization": record, "excluded_nodes": list(best.excluded), "warnings": warnings}


# The `quantization` field a reduced-precision target adds to its manifest entry (JSON Schema).
QUANTIZATION_SCHEMA: dict = {
    "type": "object",
    "required": ["mode"],
    "properties": {
        "mode": {"enum": ["fp16", "int8", "int8-dynamic"]},
        "fallback": {"enum": ["off", "auto"]},
        "format": {"type": "string"},
        "nodes_kept_fp32": {"type": "array", "items": {"type": "string"}},  # fp16: Transposes into a MatMul (transposes_into_matmul)
        "calibration": {
            "type": "object",
            "required": ["method", "source", "samples", "seed"],
            "properties": {
                # histogram: PT2E's observers (AOTI int8); the others are ONNX Runtime's calibrators
                "method": {"enum": ["minmax", "entropy", "percentile", "histogram"]},
                "source": {"enum": ["data", "generated"]},
                "samples": {"type": "integer", "minimum": 1},
                "rows": {"type": ["array", "null"], "items": {"type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 2},
                "parity_rows": {"type": ["array", "null"], "items": {"type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 2},
                "seed": {"type": "array", "items": {"type": "integer"}},
                "warning": {"type": ["string", "null"]},
            },
        },
        "runtime": RUNTIME_SCHEMA,  # ONNX: the kernels ONNX Runtime runs the graph with
        "compiled_checks": {  # AOTI int8: the compiled package judged after the (eager) search
            "type": "array",
            "items": {
                "type": "object",
                "required": ["eager_cosine", "compiled_cosine", "passed", "floor"],
                "properties": {
                    "eager_cosine": {"type": ["number", "null"]},
                    "compiled_cosine": {"type": "number"},
                    "passed": {"type": "boolean"},
                    "floor": {"type": ["number", "null"]},
                },
            },
        },
        # AOTI int8: weights computed by parametrizations (weight_norm, spectral_norm) baked into parameters first
        "parametrizations_baked": {"type": "integer", "minimum": 1},
        "quantized_layers": {"type": "integer", "minimum": 0},  # AOTI int8: layers with INT8 weights in the chosen model
        "kept_float_for_lowering": {  # AOTI int8: modules the compiler would get wrong (pt2e.lowering_hazards)
            "type": "array",
            "items": {"type": "object", "required": ["module", "why"], "properties": {"module": {"type": "string"}, "why": {"type": "string"}}},
        },
        "attempts": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["excluded", "passed", "cosine", "top1"],
                "properties": {
                    "excluded": {"type": "integer", "minimum": 0},
                    "passed": {"type": "boolean"},
                    "cosine": {"type": "number"},
                    "top1": {"type": ["number", "null"]},
                },
            },
        },
        "node_report": {
            "type": ["array", "null"],
            "items": {
                "anyOf": [
                    {  # ONNX: one row per graph node
                        "type": "object",
                        "required": ["node", "op_type", "added_error", "output_error", "quantized"],
                        "properties": {
                            "node": {"type": "string"},
                            "op_type": {"type": "string"},
                            "added_error": {"type": "number", "minimum": 0},
                            "output_error": {"type": "number", "minimum": 0},
                            "quantized": {"type": "boolean"},
                        },
                    },
                    {  # AOTI (PT2E): one row per module, its worst signal-to-quantization-noise ratio
                        "type": "object",
                        "required": ["module", "sqnr_db", "node"],
                        "properties": {"module": {"type": "string"}, "sqnr_db": {"type": "number"}, "node": {"type": "string"}},
                    },
                ]
            },
        },
    },
}
