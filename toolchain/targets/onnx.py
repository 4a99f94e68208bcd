"""ONNX: torch.onnx.export(dynamo=True) for PyTorch sources, tf2onnx for TensorFlow.

Both paths end in the same model.onnx checked by the same ONNX Runtime runner.
"""

from __future__ import annotations

from pathlib import Path

from toolchain.errors import StepError
from toolchain.recipe import OnnxTarget
from toolchain.targets import Artifact
from toolchain.tensors import onnx_signature


def skip_reason(spec: OnnxTarget) -> str | None:
    if spec.device == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return "onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)"
        from toolchain.targets.aoti import cuda_missing

        return cuda_missing()
    return None


def build(source, spec: OnnxTarget, workdir: Path) -> Artifact:
    if spec.quantize:
        raise StepError(f"quantize: {spec.quantize} is not supported by this version of mlpack yet; remove it to build FP32 ONNX")
    if spec.optimize:
        raise StepError("optimize: true is not supported by this version of mlpack yet; remove it")
    path = workdir / "model.onnx"
    export = _export_tf if source.framework == "tensorflow" else _export_torch
    export(source, spec, path)
    files = sorted(p for p in workdir.iterdir() if p.is_file())
    return Artifact(
        kind="onnx",
        files=files,
        signature=onnx_signature(path),
        runner="onnxruntime",
        runner_args={"path": path, "output_names": source.output_names, "device": spec.device},
        device=spec.device,
    )


def _export_torch(source, spec: OnnxTarget, path: Path) -> None:
    import torch

    program = torch.onnx.export(
        source.module,
        source.example_args(),
        dynamo=True,
        opset_version=spec.opset,
        input_names=source.input_names,
        output_names=source.output_names,
        dynamic_shapes=source.dynamic_shapes(),
        verbose=False,
    )
    if program is None:
        raise StepError("torch.onnx.export returned no program")
    program.save(str(path))


def _export_tf(source, spec: OnnxTarget, path: Path) -> None:
    """tf2onnx on the same serving function the SavedModel targets save.

    tf2onnx names outputs by the function's dict keys but sorts them, and calls
    dynamic dims unk__N: put outputs back in recipe order and name input dims
    after the recipe's dims.
    """
    import onnx
    import tf2onnx

    proto, _ = tf2onnx.convert.from_function(source.serving_function(), input_signature=source.input_signature(), opset=spec.opset)
    # tf2onnx logs a TF op it cannot convert and leaves it in the graph; fail here, naming it.
    unconverted = sorted({n.op_type for n in proto.graph.node if not onnx.defs.has(n.op_type, n.domain)})
    if unconverted:
        why = ""
        if {"PartitionedCall", "StatefulPartitionedCall"} & set(unconverted):
            why = "; a function call was left in the graph: tf2onnx does not inline XLA-compiled (jit_compile=True) functions, so convert from a model without them"
        raise StepError(f"tf2onnx cannot convert TensorFlow op(s) {', '.join(unconverted)} at opset {spec.opset}{why}")
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
