"""ONNX via the dynamo exporter (torch.onnx.export(dynamo=True)), optionally
optimized with ONNX Runtime's fusions and converted to FP16 or INT8.

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
    """The FP32 export every ONNX-based target starts from."""
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
