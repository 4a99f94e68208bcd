"""ONNX: torch.onnx.export(dynamo=True) for PyTorch sources, tf2onnx for
TensorFlow, optionally optimized with ONNX Runtime's fusions and converted to
FP16 or INT8.

A converted target exports its FP32 model into a scratch folder of its
workdir first (the same export as plain onnx), converts it, and keeps only the
final model.onnx (+ external data) as the artifact.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from toolchain.errors import StepError
from toolchain.recipe import OnnxTarget, Recipe
from toolchain.targets import Artifact
from toolchain.tensors import onnx_signature

# Protobuf cannot hold 2 GiB; stay clear of it when deciding to externalise weights.
EXTERNAL_DATA_BYTES = 1_800_000_000


def requires(spec: OnnxTarget, recipe: Recipe) -> list[str]:
    """Names of targets whose artifacts this target needs: none, for now.

    A quantized or optimized target re-exports the FP32 model itself. A build
    engine that runs targets as a dependency graph may later feed it the plain
    onnx target's artifact instead of re-exporting (same source, same opset).
    """
    return []


def skip_reason(spec: OnnxTarget) -> str | None:
    if spec.device == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return "onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)"
        from toolchain.targets.aoti import cuda_missing

        return cuda_missing()
    return None


def export(source, opset: int, path: Path) -> None:
    """The FP32 export every ONNX-based target starts from: the dynamo exporter
    for PyTorch sources, tf2onnx for TensorFlow; both end in the same runner."""
    (_export_tf if source.framework == "tensorflow" else _export_torch)(source, opset, path)


def save_model(model, path: Path) -> None:
    """Save a ModelProto; weights go to `<name>.data` beside it only when protobuf could not hold them."""
    import onnx

    external = model.ByteSize() > EXTERNAL_DATA_BYTES
    onnx.save(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True, location=f"{path.name}.data")


def build(source, spec: OnnxTarget, workdir: Path) -> Artifact:
    path = workdir / "model.onnx"
    fields: dict = {}
    if spec.quantize or spec.optimize:
        scratch = workdir / "fp32"  # intermediates: removed before the artifact is listed
        scratch.mkdir()
        try:
            fields = _convert(source, spec, scratch, path)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    else:
        export(source, spec.opset, path)
    files = sorted(p for p in workdir.iterdir() if p.is_file())
    return Artifact(
        kind="onnx",
        files=files,
        signature=onnx_signature(path),
        runner="onnxruntime",
        runner_args={"path": path, "output_names": source.output_names, "device": spec.device},
        device=spec.device,
        extra=fields,
    )


def _convert(source, spec: OnnxTarget, scratch: Path, dst: Path) -> dict:
    """Export, then optimize and/or change precision; returns the manifest fields."""
    from toolchain.targets import quantize

    current = scratch / "model.onnx"
    export(source, spec.opset, current)
    fields: dict = {}
    if spec.optimize:
        from toolchain.targets.optimize import optimize

        optimized = scratch / "optimized.onnx" if spec.quantize else dst
        fields["optimization"] = optimize(source, current, optimized, spec.device)
        current = optimized
    if spec.quantize == "fp16":
        fields["quantization"] = quantize.to_fp16(current, dst)
    elif spec.quantize:
        fields.update(quantize.to_int8(source, spec, current, dst, scratch))
    return fields


def _export_torch(source, opset: int, path: Path) -> None:
    import torch

    program = torch.onnx.export(
        source.module,
        source.example_args(),
        dynamo=True,
        opset_version=opset,
        input_names=source.input_names,
        output_names=source.output_names,
        dynamic_shapes=source.dynamic_shapes(),
        verbose=False,
    )
    if program is None:
        raise StepError("torch.onnx.export returned no program")
    program.save(str(path))


def _export_tf(source, opset: int, path: Path) -> None:
    """tf2onnx on the same serving function the SavedModel targets save.

    tf2onnx names outputs by the function's dict keys but sorts them, and calls
    dynamic dims unk__N: put outputs back in recipe order and name input dims
    after the recipe's dims.
    """
    import onnx
    import tf2onnx

    proto, _ = tf2onnx.convert.from_function(source.serving_function(), input_signature=source.input_signature(), opset=opset)
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
