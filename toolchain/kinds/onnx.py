"""onnx: torch.onnx.export(dynamo=True) for PyTorch sources, tf2onnx for
TensorFlow, optionally optimized with ONNX Runtime's fusions and converted to
FP16 or INT8; run by ONNX Runtime, served by Triton's onnxruntime backend.

A converted target exports its FP32 model into a scratch folder of its
workdir first (the same export as plain onnx), converts it, and keeps only the
final model.onnx (+ external data) as the artifact.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, StrictInt, model_validator
from pydantic_core import PydanticCustomError

from toolchain.kinds.base import EXPORT_SCHEMA, Artifact, BuildContext, Kind, RunnerSpec, TritonModel
from toolchain.machine import cuda_missing
from toolchain.onnxtools import quantize
from toolchain.onnxtools.export import shared_export
from toolchain.onnxtools.files import check
from toolchain.onnxtools.fp16 import to_fp16
from toolchain.onnxtools.optimize import OPTIMIZATION_SCHEMA, optimize
from toolchain.onnxtools.weights import WEIGHT_BITS, Program, WeightOnly, to_weight_only
from toolchain.options import TargetOptions, YamlOff
from toolchain.records import ExportRecord
from toolchain.records.steps import PREFILL
from toolchain.search import QUANTIZATION_SCHEMA
from toolchain.tensors import onnx_signature

MODEL = "model.onnx"
PREFILL_MODEL = "prefill.onnx"  # an encoder-decoder's prefill program (recipe/decoder.py); model.onnx is its decode step
RUNNER = "onnxruntime"


class OnnxTarget(TargetOptions):
    kind: Literal["onnx"]
    precision_option = "quantize"  # unset: FP32
    opset: Annotated[StrictInt, Field(ge=7, le=23)] = 18
    # int4, int8-weight: weight-only (MatMulNBits), activations stay float (toolchain/onnxtools/weights.py)
    quantize: Literal["int8", "int8-dynamic", "fp16", "int4", "int8-weight"] | None = None
    weights: WeightOnly | None = None
    calibration: Literal["minmax", "entropy", "percentile"] | None = None
    fallback: Annotated[Literal["off", "auto"], YamlOff] = "off"
    optimize: bool = False
    device: Literal["cpu", "cuda"] = "cpu"

    @model_validator(mode="after")
    def _calibration_int8(self) -> OnnxTarget:
        if self.calibration and self.quantize != "int8":
            raise PydanticCustomError("calibration_int8", "calibration applies to quantize: int8 only", {})
        if self.fallback == "auto" and self.quantize in (None, "fp16"):
            raise PydanticCustomError("fallback_int8", "fallback: auto applies to quantize: int8, int8-dynamic, int4 or int8-weight only", {})
        if self.weights is not None and self.quantize not in WEIGHT_BITS:
            raise PydanticCustomError("weights_only", "weights: applies to quantize: int4 or int8-weight only (weight-only quantization)", {})
        return self


# The Python backend's loader (see serving/model_py.txt): ONNX Runtime, CUDA first on GPU instances.
PYTHON_BACKEND = """
def load(path, device, on_gpu, device_id, input_names, output_names, threads=None):
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if on_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
    options = ort.SessionOptions()
    if threads:  # serve.threads (default: one per physical core)
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(path, options, providers=providers)

    def run(arrays):
        return session.run(output_names, dict(zip(input_names, arrays)))

    return run
"""


def _fp32(source, spec: OnnxTarget, scratch: Path, dst: Path, ctx: BuildContext) -> tuple[ExportRecord, dict, Path]:
    """The program exported into `scratch` (and optimized; into `dst` when nothing follows): how, the fields, the file."""
    current = scratch / dst.name
    record, fields = shared_export(source, spec.opset, current, ctx.shared, dst.name, ctx.workdir.name), {}
    if spec.optimize:
        optimized = scratch / f"optimized.{dst.name}" if spec.quantize else dst
        fields["optimization"] = optimize(source, current, optimized, spec.device)
        current = optimized
    return record, fields, current


def _convert(source, spec: OnnxTarget, scratch: Path, dst: Path, ctx: BuildContext) -> tuple[ExportRecord, dict]:
    """Export, then optimize and/or change precision; returns how it was exported and the other manifest fields."""
    record, fields, current = _fp32(source, spec, scratch, dst, ctx)
    if spec.quantize == "fp16":
        fields["quantization"] = to_fp16(current, dst)
    elif spec.quantize in WEIGHT_BITS:
        fields.update(to_weight_only([Program(current, dst, source)], spec, ctx))
    elif spec.quantize:
        fields.update(quantize.to_int8(source, spec, current, dst, scratch, ctx))
    check(dst)
    return record, fields


def _weight_only_pair(decode, prefill, spec: OnnxTarget, ctx: BuildContext) -> tuple[ExportRecord, dict]:
    """An encoder-decoder's two programs in weight-only form, searched and judged together: the generation gate needs both."""
    scratch = ctx.workdir / "fp32"
    programs, records, fields = [], {}, {}
    try:
        for phase, source, name in (("prefill", prefill, PREFILL_MODEL), ("decode", decode, MODEL)):
            (scratch / phase).mkdir(parents=True)
            records[phase], more, current = _fp32(source, spec, scratch / phase, ctx.workdir / name, ctx)
            fields = more  # the decode program's optimization record, as the other precisions keep
            programs.append(Program(current, ctx.workdir / name, source))
        fields.update(to_weight_only(programs, spec, ctx))
        for p in programs:
            check(p.dst)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return ExportRecord.of_phases(records), fields


class OnnxKind(Kind):
    name = "onnx"
    order = 10
    summary = "ONNX model (FP32, FP16, INT8, or INT4/INT8 weight-only) run by ONNX Runtime"
    options = OnnxTarget
    tasks = frozenset({"predict", "text-generation"})
    frameworks = frozenset({"pytorch", "tensorflow"})
    tools = ("onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "onnxconverter-common", "tf2onnx")
    preload = ("onnx", "onnxscript", "torch.onnx._internal.exporter._core")
    runners = {RUNNER: "toolchain.runners.onnxruntime:OnnxRuntimeRunner"}
    triton = TritonModel(platform="onnxruntime_onnx", backend="onnxruntime", artifact=MODEL, siblings=True, python_backend=PYTHON_BACKEND,
                         generator_programs={"prefill": MODEL, "decode": MODEL})  # fmt: skip
    manifest_fields = {
        "quantization": QUANTIZATION_SCHEMA,
        "optimization": OPTIMIZATION_SCHEMA,
        "excluded_nodes": {"type": "array", "items": {"type": "string"}},
        "export": EXPORT_SCHEMA,
    }

    def skip_reason(self, spec: OnnxTarget) -> str | None:
        if spec.device == "cuda":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                return "onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)"
            return cuda_missing()
        return None

    def check(self, spec: OnnxTarget, recipe) -> list:
        if recipe.seq2seq and spec.quantize in ("int8", "int8-dynamic"):
            return [(("quantize",), f"an encoder-decoder builds in FP32, FP16 or weight-only INT4/INT8 here; quantize: {spec.quantize} is not built for it yet",
                     "use quantize: int8-weight (or int4, or fp16)")]  # fmt: skip
        return []

    def build(self, source, spec: OnnxTarget, ctx: BuildContext) -> Artifact:
        path = ctx.workdir / MODEL
        options = {}
        if source.recipe.seq2seq:  # an encoder-decoder: the prefill program beside the decode program, converted alike
            prefill = source.for_phase("prefill")
            if spec.quantize in WEIGHT_BITS:
                record, fields = _weight_only_pair(source, prefill, spec, ctx)
            else:
                record, fields = self._program(source, spec, ctx, path)
                first, _ = self._program(prefill, spec, ctx, ctx.workdir / PREFILL_MODEL)
                record = ExportRecord.of_phases({"prefill": first, "decode": record})
            options = {PREFILL: {"runner": RUNNER, "path": PREFILL_MODEL, "inputs": prefill.input_names, "outputs": prefill.output_names}}
        else:
            record, fields = self._program(source, spec, ctx, path)
        fields = {"export": record.to_dict(), **fields}
        return Artifact(
            files=sorted(p for p in ctx.workdir.iterdir() if p.is_file()),
            signature=onnx_signature(path),
            runner=RunnerSpec(runner=RUNNER, path=str(path), inputs=source.input_names, outputs=source.output_names, device=spec.device, options=options),
            device=spec.device,
            extra=fields,
        )

    def _program(self, source, spec: OnnxTarget, ctx: BuildContext, path: Path) -> tuple[ExportRecord, dict]:
        """One ONNX program at `path`, exported and converted as the target says: how it was exported, the other
        manifest fields."""
        if spec.quantize or spec.optimize:
            scratch = ctx.workdir / "fp32"  # intermediates: removed before the artifact is listed
            scratch.mkdir()
            try:
                return _convert(source, spec, scratch, path, ctx)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        return shared_export(source, spec.opset, path, ctx.shared, path.name, ctx.workdir.name), {}

    def triton_threads(self, config, threads: int) -> bool:
        # the onnxruntime backend's per-model session option; the Python backend's loader sets the same
        config.parameters["intra_op_thread_count"].string_value = str(threads)
        return True

    def triton_configure(self, config, serve, backend: str) -> None:
        """ONNX Runtime's TensorRT execution provider on GPU instances (`serve.triton.onnx_tensorrt`).

        The alternative to a tensorrt target: ONNX Runtime builds the engine when
        the model loads, on the serving GPU, and runs what TensorRT cannot on CUDA.
        """
        if backend == "native" and serve.onnx_tensorrt != "off":
            acc = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
            acc.parameters["precision_mode"] = serve.onnx_tensorrt.upper()


KIND = OnnxKind()
