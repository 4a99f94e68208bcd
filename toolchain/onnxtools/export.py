"""The FP32 ONNX export every ONNX-based target starts from (the onnx kind, TensorRT's engines):
torch.onnx for PyTorch sources through the capture ladder (dynamo, dynamo with transformers'
translations, TorchScript; each again at other example sizes when it fixed a dim), tf2onnx for
TensorFlow; both end in the same runner. Heavy imports stay inside the functions.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
from functools import partial
from pathlib import Path

from toolchain.capture import CaptureFailed, Strategy, climb
from toolchain.corners import check_corners
from toolchain.errors import StepError
from toolchain.onnxtools.files import check, save_ir
from toolchain.onnxtools.names import assign_io_names
from toolchain.records import Attempt, ExportRecord
from toolchain.sources.tensorflow import LOOKUP_HINT
from toolchain.torchtools import export_errors, rewrites

TORCHSCRIPT_MAX_OPSET = 20  # the TorchScript exporter's newest opset
RECORD = "export.json"  # beside a shared export: how it was captured


def export(source, opset: int, path: Path) -> ExportRecord:
    """The FP32 export every ONNX-based target starts from: torch.onnx for PyTorch
    sources (dynamo, then TorchScript), tf2onnx for TensorFlow; both end in the same
    runner. Returns the manifest's `export` record: which strategy produced it."""
    record = _export_tf(source, opset, path) if source.framework == "tensorflow" else _export_torch(source, opset, path)
    check(path)  # an invalid graph stops here, named, before any later step loads it
    return record


def shared_export(source, opset: int, path: Path, shared: Path | None, program: str, target: str) -> ExportRecord:
    """export(), made once per build for every ONNX target of the same opset and program (onnx, onnx-fp16, onnx-int8
    and the weight-only forms all start from it): the first target to get here exports into `shared` while the
    others of the build wait on its lock, then each copies the files. An export that fails is failed for the others
    too, at once (the same ladder would fail the same way, each wait eating into its target's timeout); one killed
    leaves nothing (the next target exports itself). `program`: which of the target's programs this is (an
    encoder-decoder's prefill.onnx and model.onnx differ); `target`: the one asking. `shared` None: export alone."""
    if shared is None:
        return export(source, opset, path)
    io = json.dumps([source.recipe.model_dump(mode="json")["dims"], source.input_names, source.output_names], sort_keys=True)
    memo = shared / f"onnx-{opset}-{Path(program).stem}-{hashlib.sha256(io.encode()).hexdigest()[:12]}"
    shared.mkdir(parents=True, exist_ok=True)
    with open(shared / f"{memo.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the holder ends, killed or not
        except OSError:  # a file system without locks (NFS mounted nolock): export alone, as before
            return export(source, opset, path)
        if (memo / RECORD).is_file():
            made = json.loads((memo / RECORD).read_text())
            record = ExportRecord.from_dict(made["export"])
            print(f"onnx: {program}: the FP32 export (opset {opset}) {made['target']} made for this build, not exported again", flush=True)
        elif (failed := memo.with_name(memo.name + ".failed.json")).is_file():
            why = json.loads(failed.read_text())
            raise StepError(f"{why['reason']} (the FP32 export of opset {opset} {why['target']} tried for this build: logs/{why['target']}.log has "
                            "its tracebacks)", hint=why["hint"])  # fmt: skip
        else:
            work = memo.with_name(memo.name + ".partial")  # a killed exporter's leftovers are never read
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            try:
                record = export(source, opset, work / program)  # its external data, if any, named after the program
            except StepError as e:
                if not e.dims:  # sizes torch.export suggested are the build's retry to make, not a verdict to share
                    failed.write_text(json.dumps({"reason": str(e), "hint": e.hint, "target": target}))
                raise
            (work / RECORD).write_text(json.dumps({"export": record.to_dict(), "target": target}))
            work.rename(memo)
    for f in memo.iterdir():  # the model at `path`, any external-data file it names beside it, under its own name
        if f.name != RECORD:
            shutil.copyfile(f, path if f.name == program else path.parent / f.name)
    return record


def _dynamo(source, opset: int, path: Path, translations: dict | None = None) -> None:
    import torch

    program = torch.onnx.export(source.module, source.example_args(), dynamo=True, opset_version=opset, dynamic_shapes=source.dynamic_shapes(), verbose=False,
                                custom_translation_table=translations)  # fmt: skip
    if program is None:
        raise StepError("torch.onnx.export returned no program")
    assign_io_names(program.model, source.input_names, source.output_names)
    program.save(str(path))


def _transformers_translations() -> dict:
    """transformers' own ONNX lowerings of ops torch.onnx has none for (its MoE experts' custom op
    `transformers::grouped_mm_fallback`, aten.bincount, ...), from the ONNX exporter transformers 5
    ships; {} when the model's transformers has none."""
    import sys

    if "transformers" not in sys.modules:  # not a transformers model: nothing to import
        return {}
    try:
        from transformers.exporters.exporter_onnx import _ONNX_TRANSLATION_TABLE
    except Exception:  # an older transformers, or no onnxscript: the other strategies stand
        return {}
    return dict(_ONNX_TRANSLATION_TABLE)


def _dynamo_translated(source, opset: int, path: Path) -> None:
    """The dynamo exporter with transformers' translations: tried only after the plain one found no
    ONNX function for an op (Mixtral's experts: every ONNX target failed)."""
    _dynamo(source, opset, path, _transformers_translations())


def _torchscript(source, opset: int, path: Path) -> None:
    """torch.onnx.export(dynamo=False): the TorchScript exporter, which still takes models the dynamo path cannot decompose."""
    import onnx_ir as ir
    import torch

    axes = {spec.name: {j: d for j, d in enumerate(spec.shape) if isinstance(d, str)} for spec in source.recipe.inputs}
    raw = path.with_name("torchscript.onnx")
    with torch.no_grad():
        torch.onnx.export(
            source.module, source.example_args(), str(raw), dynamo=False, opset_version=min(opset, TORCHSCRIPT_MAX_OPSET),
            input_names=[f"in_{i}" for i in range(len(source.input_names))], dynamic_axes={f"in_{i}": axes[n] for i, n in enumerate(source.input_names)},
        )  # fmt: skip
    model = ir.load(raw)
    assign_io_names(model, source.input_names, source.output_names)
    save_ir(model, path)
    for leftover in raw.parent.glob(f"{raw.name}*"):
        leftover.unlink()


def _fold_captured_constants(proto, function, input_names: list[str]) -> None:
    """tf2onnx leaves tensors the function captures by value (Keras `Normalization(mean=, variance=)`)
    as graph inputs that no client feeds: fold them into initializers, or fail naming them."""
    import tensorflow as tf
    from onnx import numpy_helper

    concrete = function.get_concrete_function()
    captured = {inner.name: outer for outer, inner in zip(concrete.captured_inputs, concrete.graph.internal_captures) if outer.dtype != tf.resource}
    used = {x for n in proto.graph.node for x in n.input} | {o.name for o in proto.graph.output}
    unused = [i.name for i in proto.graph.input if i.name not in input_names and i.name not in used]  # a replaced lookup's table and default
    if unused:
        kept = [i for i in proto.graph.input if i.name not in unused]
        del proto.graph.input[:]
        proto.graph.input.extend(kept)
    extra = [i for i in proto.graph.input if i.name not in input_names]
    unknown = [i.name for i in extra if i.name not in captured]
    if unknown:
        raise StepError(f"tf2onnx made graph inputs the recipe does not name: {', '.join(unknown)}", hint="name every model input under `inputs:`")
    names = [v.name for v in extra]
    for name in names:
        proto.graph.initializer.append(numpy_helper.from_array(captured[name].numpy(), name))
    kept = [i for i in proto.graph.input if i.name not in names]
    del proto.graph.input[:]
    proto.graph.input.extend(kept)
    if names:
        print(f"onnx: folded captured constants into initializers: {', '.join(names)}")


# torch.onnx's own order: the dynamo exporter first
EXPORTERS = (("dynamo", _dynamo), (TRANSLATED := "dynamo with transformers' ONNX translations", _dynamo_translated), ("torchscript", _torchscript))
OTHER_SIZES = ", other example sizes"


def _fixed_dims(path: Path, source) -> list[str]:
    """The recipe's dynamic dims the exported graph's inputs fixed to a size ("image[3] (width) = 32"):
    an exporter that could not keep a dim dynamic may fix it to the example's size without a word."""
    import onnx

    graph_inputs = {i.name: i.type.tensor_type.shape.dim for i in onnx.load(str(path), load_external_data=False).graph.input}
    fixed = []
    for spec in source.recipe.inputs:
        dims = graph_inputs.get(spec.name, [])
        for j, d in enumerate(spec.shape):
            if isinstance(d, str) and source.recipe.dims[d].min < source.recipe.dims[d].max and j < len(dims) and dims[j].HasField("dim_value"):
                fixed.append(f"{spec.name}[{j}] ({d}) = {dims[j].dim_value}")
    return fixed


def _fails_at_corners(path: Path, source) -> str | None:
    """Why the exported graph is wrong at every dim's min or max, or None. The TorchScript
    exporter traces: a Python loop over a dim (transformers' Mamba scan) is unrolled at the
    example's size, and sizes computed in Python (torchvision Swin's window padding) are baked
    in, while the graph's inputs stay dynamic. ONNX Runtime then fails at other sizes, or runs
    and computes other values; both are found here against the source model, not in the gate."""
    import onnxruntime as ort

    if all(d.min == d.max for d in source.recipe.dims.values()):
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    with source.reference_runner() as reference:
        miss = check_corners(source.recipe, ("min", "max"), lambda feed: dict(zip(names, session.run(None, feed))), reference.infer)
    if miss is None:
        return None
    if miss.stage == "run":
        return f"the graph runs only at the traced sizes: at {miss.at} ONNX Runtime fails ({miss.raised[:200]})"
    return f"the graph is right only at the traced sizes: at {miss.at} output {miss.output} {miss.how}"


def _export_strategies(source, opset: int, path: Path):
    """The capture ladder: each exporter, and again at other example sizes when it fixed a dim (a model
    with a fast path for one size, DINOv2 at its config's image size, gets its dims fixed to the example's)."""
    for name, fn in EXPORTERS:

        def attempt(fn=fn, name=name, other: bool = False) -> None:
            with rewrites.exporting(source.module), source.other_example_sizes() if other else contextlib.nullcontext():
                fn(source, opset, path)
            fixed = _fixed_dims(path, source)
            if fixed:
                raise StepError(f"the exported graph fixed {', '.join(fixed)}: the example's sizes")
            traced = _fails_at_corners(path, source) if name == "torchscript" else None
            if traced:
                raise StepError(traced)

        when = (lambda tried: any("No ONNX function found" in t.error for t in tried) and bool(_transformers_translations())) if name == TRANSLATED else None
        yield Strategy(name, attempt, when, sized=lambda e: _sized(str(e)))
        yield Strategy(name + OTHER_SIZES, partial(attempt, other=True), lambda tried, name=name: tried[-1].strategy == name and tried[-1].sized)


def _export_torch(source, opset: int, path: Path) -> ExportRecord:
    try:
        captured = climb(_export_strategies(source, opset, path), "ONNX export")
    except CaptureFailed as e:
        dims = export_errors.dynamic_fix([t.detail or t.error or "" for t in e.tried], source.recipe.dims) or _static_dims(source, e.tried)
        raise StepError("torch.onnx.export failed with every strategy: " + "; ".join(f"{t.strategy}: {t.error}" for t in e.tried),
                        hint=_export_hint(source, e.tried), dims=dims) from None  # fmt: skip
    return ExportRecord(captured.strategy, captured.tried, rewrites=rewrites.found(source.module))


def _export_hint(source, tried: list[Attempt]) -> str:
    hint = "the log has each exporter's traceback; a model the exporters cannot take often builds with the aoti target"
    site = next((export_errors.data_dependent_site(t.error) for t in tried if export_errors.data_dependent_site(t.error)), None)
    if tried and site and all(_sized(t.error) or export_errors.data_dependent_site(t.error) for t in tried):
        dynamic = [n for n, d in source.recipe.dims.items() if d.min < d.max]
        if site == "the model" and hasattr(source, "dynamic_shapes"):  # the exporter's message has no frames: torch.export's has
            site = export_errors.exported_site(source) or site
        return export_errors.data_dependent_hint(site, dynamic)
    suggested = export_errors.suggested_hint([t.detail or t.error or "" for t in tried], source.recipe.dims)
    if suggested:
        return suggested
    static = _static_dims(source, tried)
    if static:
        dynamic = export_errors.dims_fix(static)
        which = list(static)
        site = export_errors.specialization_site(source, which) if hasattr(source, "dynamic_shapes") else None
        where = f" (at {site})" if site else ""
        return (f"the model's computation depends on the value of a dynamic dim (a Python loop over it, or a branch on it){where}, which no "
                f"exporter keeps symbolic: make the dims static ({dynamic}) and pad or cut inputs to those sizes")  # fmt: skip
    return hint


def _static_dims(source, tried: list[Attempt]) -> dict:
    """export_errors.static_fix when every exporter failed because it fixed a dynamic dim, else {}."""
    if not tried or not all(_sized(t.error) for t in tried) or any(export_errors.data_dependent_site(t.error) for t in tried):
        return {}
    return export_errors.static_fix([t.error for t in tried], source) if hasattr(source, "export_sizes") else {}


def _sized(error: str) -> bool:
    """An exporter's failure that says it could not keep a dim dynamic."""
    return export_errors.specialized(error) or any(m in error for m in ("the exported graph fixed", "only at the traced sizes"))


def _tf2onnx_handlers() -> None:
    """TF ops tf2onnx has no handler for, written in ONNX ops (registered once per process).

    Erfc: Keras 3's exact `gelu` computes 0.5 * x * erfc(-x / sqrt(2)), so any Keras model with
    gelu failed "tf2onnx cannot convert TensorFlow op(s) Erfc". erfc(x) = 1 - erf(x).
    """
    import numpy as np
    from tf2onnx import utils
    from tf2onnx.handler import tf_op

    if getattr(_tf2onnx_handlers, "done", False):
        return

    @tf_op("Erfc")
    class Erfc:
        @classmethod
        def version_9(cls, ctx, node, **kwargs):
            node.type = "Erf"
            one = ctx.make_const(utils.make_name("erfc_one"), np.array(1, utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0])))).output[0]
            ctx.insert_node_on_output(ctx.make_node("Sub", [one, node.output[0]]), node.output[0])

    _tf2onnx_handlers.done = True


def _lookup_tables(concrete) -> dict[str, tuple]:
    """{op name: (keys, values, default)} for each table lookup in the traced function: Keras
    IntegerLookup (and tf.lookup tables) hold a hash table the function captures as a resource,
    which tf2onnx cannot convert. Integer tables are read out here and become ONNX-ML
    LabelEncoder nodes (_label_encoder); any other table fails naming the fix."""
    import tensorflow as tf

    outer = {inner.name: value for value, inner in zip(concrete.captured_inputs, concrete.graph.internal_captures)}
    ops = [op for op in concrete.graph.get_operations() if op.type.startswith("LookupTable")]
    tables = {}
    for op in ops:
        handle = outer.get(op.inputs[0].name) if op.type == "LookupTableFindV2" else None
        if handle is None or op.inputs[1].dtype != tf.int64 or op.outputs[0].dtype != tf.int64:
            kinds = ", ".join(sorted({f"{o.type} ({o.inputs[1].dtype.name} -> {o.outputs[0].dtype.name})" for o in ops if o.type == "LookupTableFindV2"}))
            raise StepError(f"tf2onnx cannot convert the model's lookup table: {kinds or op.type}; mlpack converts int64 -> int64 tables only "
                            "(Keras IntegerLookup)", hint=LOOKUP_HINT)  # fmt: skip
        keys, values = tf.raw_ops.LookupTableExportV2(table_handle=handle, Tkeys=tf.int64, Tvalues=tf.int64)
        default = op.inputs[2]
        default = outer[default.name].numpy() if default.name in outer else tf.get_static_value(default)
        tables[op.name] = (keys.numpy().tolist(), values.numpy().tolist(), int(default))
    return tables


def _label_encoder(ctx, node, name, args):
    """tf2onnx handler: LookupTableFindV2(table, keys, default) -> ai.onnx.ml LabelEncoder(keys)."""
    keys, values, default = args[0][node.name]
    node.type, node.domain = "LabelEncoder", "ai.onnx.ml"
    node.set_attr("keys_int64s", keys)
    node.set_attr("values_int64s", values)
    node.set_attr("default_int64", default)
    ctx.replace_inputs(node, [node.input[1]])
    return node


def _export_tf(source, opset: int, path: Path) -> ExportRecord:
    """tf2onnx on the same serving function the SavedModel targets save.

    tf2onnx names outputs by the function's dict keys but sorts them, and calls
    dynamic dims unk__N: put outputs back in recipe order and name input dims
    after the recipe's dims.
    """
    import onnx
    import tf2onnx

    _tf2onnx_handlers()
    function = source.serving_function()
    tables = _lookup_tables(function.get_concrete_function())
    handlers = {"LookupTableFindV2": (_label_encoder, ["LabelEncoder", tables])} if tables else None  # tf2onnx's old API: [onnx op, *args]
    extra = [onnx.helper.make_opsetid("ai.onnx.ml", 2)] if tables else None
    proto, _ = tf2onnx.convert.from_function(function, input_signature=source.input_signature(), opset=opset, custom_op_handlers=handlers, extra_opset=extra)
    _fold_captured_constants(proto, function, source.input_names)
    # tf2onnx logs a TF op it cannot convert and leaves it in the graph; fail here, naming it.
    unconverted = sorted({n.op_type for n in proto.graph.node if not onnx.defs.has(n.op_type, n.domain)})
    if unconverted:
        why = ""
        if {"PartitionedCall", "StatefulPartitionedCall"} & set(unconverted):
            why = "; a function call was left in the graph: tf2onnx does not inline XLA-compiled (jit_compile=True) functions, so convert from a model without them"
        raise StepError(f"tf2onnx cannot convert TensorFlow op(s) {', '.join(unconverted)} at opset {opset}{why}")
    by_name = {o.name: o for o in proto.graph.output}
    missing = [n for n in source.output_names if n not in by_name]
    if missing:
        raise StepError(f"tf2onnx produced outputs {sorted(by_name)}, not the recipe's {missing}")
    ordered = [onnx.ValueInfoProto.FromString(by_name[n].SerializeToString()) for n in source.output_names]
    del proto.graph.output[:]
    proto.graph.output.extend(ordered)
    shapes = {s.name: s.shape for s in source.recipe.inputs}
    for value in proto.graph.input:
        for dim, want in zip(value.type.tensor_type.shape.dim, shapes.get(value.name, [])):
            if isinstance(want, str):
                dim.dim_param = want
    onnx.save(proto, str(path))
    return ExportRecord("tf2onnx", rewrites=sorted(source.rewrites))
