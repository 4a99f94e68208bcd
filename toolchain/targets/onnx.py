"""ONNX via the dynamo exporter (torch.onnx.export(dynamo=True))."""

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
    import torch

    path = workdir / "model.onnx"
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
    files = sorted(p for p in workdir.iterdir() if p.is_file())
    return Artifact(
        kind="onnx",
        files=files,
        signature=onnx_signature(path),
        runner="onnxruntime",
        runner_args={"path": path, "output_names": source.output_names, "device": spec.device},
        device=spec.device,
    )
