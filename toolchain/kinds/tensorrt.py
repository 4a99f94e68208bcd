"""tensorrt: TensorRT engines built from the target's ONNX with the TensorRT 10 Python API.

fp32 and fp16 engines are built from the FP32 ONNX (fp16 through the builder
flag); int8 from a QDQ ONNX quantized here with symmetric scales (explicit
quantization in a strongly typed network, not the deprecated implicit
calibrators). One optimization profile spans the recipe's dims. A timing
cache in the output root makes rebuilds fast. An engine only runs on the
TensorRT version and GPU compute capability that built it: both are recorded
in the manifest and checked before the engine is loaded again.

Not run in this workplace: TensorRT cannot be installed here (see the README).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from toolchain.errors import StepError
from toolchain.kinds.base import Artifact, BuildContext, Kind, RunnerSpec, TritonModel
from toolchain.machine import cuda_missing, gpu_identity
from toolchain.onnxtools import quantize
from toolchain.onnxtools.export import export
from toolchain.options import TargetOptions
from toolchain.samples import calibration_samples
from toolchain.search import QUANTIZATION_SCHEMA
from toolchain.tensors import onnx_signature

if TYPE_CHECKING:  # annotations only
    from toolchain.recipe import Recipe

OPSET = 18  # per-channel QDQ needs opset >= 13; 18 is what the onnx target exports by default
PLAN = "model.plan"
RUNNER = "tensorrt"


class TensorRTTarget(TargetOptions):
    kind: Literal["tensorrt"]
    precision_option = "precision"
    precision: Literal["fp32", "fp16", "int8"] = "fp16"
    calibration: Literal["minmax", "entropy", "percentile"] | None = Field(None, description="int8: how the QDQ ONNX is calibrated (default minmax)")

    @model_validator(mode="after")
    def _calibration_int8(self) -> TensorRTTarget:
        if self.calibration and self.precision != "int8":
            raise PydanticCustomError("calibration_int8", "calibration applies to precision: int8 only", {})
        return self

    @property
    def target_device(self) -> str:
        return "cuda"


def profile_shapes(recipe: Recipe) -> dict[str, tuple[list[int], list[int], list[int]]]:
    """(min, opt, max) shape of every input from the recipe's dims: the one optimization profile."""
    out = {}
    for spec in recipe.inputs:
        out[spec.name] = tuple([getattr(recipe.dims[d], level) if isinstance(d, str) else d for d in spec.shape] for level in ("min", "opt", "max"))
    return out


def engine_env() -> dict:
    """What an engine is bound to: this machine's TensorRT version and GPU."""
    import tensorrt as trt
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return {"tensorrt": trt.__version__, "compute_capability": f"{major}.{minor}", "gpu": torch.cuda.get_device_name(0)}


def compatibility_problem(built: dict, here: dict) -> str | None:
    """Why an engine built under `built` (engine_env) cannot run under `here`, or None."""
    problems = []
    if built.get("tensorrt") != here.get("tensorrt"):
        problems.append(f"built with TensorRT {built.get('tensorrt')}, this machine has {here.get('tensorrt')}")
    if built.get("compute_capability") != here.get("compute_capability"):
        problems.append(
            f"built for compute capability {built.get('compute_capability')} ({built.get('gpu')}), "
            f"this GPU is {here.get('compute_capability')} ({here.get('gpu')})"
        )
    return "; ".join(problems) + "; rebuild the engine on this machine" if problems else None


def timing_cache_path(out_root: Path, env: dict) -> Path:
    """One cache per TensorRT version and compute capability: timings do not carry across either."""
    cc = env["compute_capability"].replace(".", "")
    return Path(out_root) / f".mlpack-trt-timing-{env['tensorrt']}-sm{cc}.cache"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # a concurrent build reads the old cache or the new, never half


def build_engine(onnx_path: Path, shapes: dict, precision: str, cache_path: Path) -> bytes:
    """Parse the ONNX, build a serialized engine, and update the timing cache."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # A QDQ graph states every precision itself: a strongly typed network follows it exactly.
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if precision == "int8" else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise StepError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {'; '.join(errors[:3])}")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 matmuls would miss FP32 tolerances
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise StepError("TensorRT could not build an engine (the log has the builder's messages)")
    _write_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def build(source, spec: TensorRTTarget, ctx: BuildContext) -> Artifact:
    recipe = source.recipe
    env = engine_env()
    cache = timing_cache_path(ctx.out_root, env)  # <out>/, beside the published builds
    workdir = ctx.workdir
    scratch = workdir / "fp32-onnx"  # the ONNX the engine is built from; not part of the artifact
    scratch.mkdir()
    fields: dict = {}
    try:
        onnx_path = scratch / "model.onnx"
        export(source, OPSET, onnx_path)
        if spec.precision == "int8":
            prep, qdq = scratch / "prep.onnx", scratch / "model.qdq.onnx"
            quantize.pre_process(onnx_path, prep)
            calib = calibration_samples(recipe)
            method = spec.calibration or "minmax"
            unbounded = quantize.quantize_static_qdq(prep, qdq, calib, method, [], symmetric=True)
            fields["quantization"] = {"mode": "int8", "format": "QDQ", "per_channel": True, "calibration": {"method": method, **calib.to_dict()}}
            if unbounded:
                fields["quantization"]["kept_float_why"] = {n: "a tensor it writes or reads calibrated to a range that is not finite" for n in unbounded}
            fields["warnings"] = [calib.warning] if calib.warning else []
            onnx_path = qdq
        shapes = profile_shapes(recipe)
        plan = workdir / PLAN
        plan.write_bytes(build_engine(onnx_path, shapes, spec.precision, cache))
        signature = onnx_signature(onnx_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    fields["tensorrt"] = {
        **env,
        "precision": spec.precision,
        "profile": {name: dict(zip(("min", "opt", "max"), s)) for name, s in shapes.items()},
        "timing_cache": cache.name,
    }
    return Artifact(
        files=[plan],
        signature=signature,
        runner=RunnerSpec(runner=RUNNER, path=str(plan), inputs=source.input_names, outputs=source.output_names, device="cuda", options={"built_with": env}),
        device="cuda",
        extra=fields,
    )


TENSORRT_SCHEMA: dict = {
    "type": "object",
    "required": ["tensorrt", "compute_capability", "gpu", "precision", "profile", "timing_cache"],
    "properties": {
        "tensorrt": {"type": "string"},
        "compute_capability": {"type": "string", "pattern": "^[0-9]+\\.[0-9]+$"},
        "gpu": {"type": "string"},
        "precision": {"enum": ["fp32", "fp16", "int8"]},
        "profile": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["min", "opt", "max"],
                "properties": {level: {"type": "array", "items": {"type": "integer", "minimum": 0}} for level in ("min", "opt", "max")},
            },
        },
        "timing_cache": {"type": "string"},
    },
}


class TensorRTKind(Kind):
    name = "tensorrt"
    order = 50
    summary = "TensorRT engine (model.plan) for the GPU that builds it"
    options = TensorRTTarget
    frameworks = frozenset({"pytorch", "tensorflow"})
    tools = ("tensorrt",)
    runners = {RUNNER: "toolchain.runners.tensorrt:TensorRTRunner"}
    triton = TritonModel(platform="tensorrt_plan", backend="tensorrt", artifact=PLAN, native_only=True)
    manifest_fields = {"quantization": QUANTIZATION_SCHEMA, "tensorrt": TENSORRT_SCHEMA}

    def skip_reason(self, spec: TensorRTTarget) -> str | None:
        if importlib.util.find_spec("tensorrt") is None:
            return "the tensorrt Python package is not installed (pip install 'mlpack[tensorrt]' on a machine with NVIDIA's index)"
        return cuda_missing()

    def cache_parts(self, spec: TensorRTTarget) -> dict:
        return {"gpu": gpu_identity()}  # an engine is only valid on the GPU that built it

    def build(self, source, spec: TensorRTTarget, ctx: BuildContext) -> Artifact:
        return build(source, spec, ctx)

    def triton_instance_kind(self, device: str) -> str:
        return "KIND_GPU"  # an engine runs on the GPU model that built it

    def triton_comments(self, serve, backend: str) -> list[str]:
        lines = ["# A TensorRT plan runs only on the TensorRT version and GPU compute capability that built it (see manifest.json)."]
        if serve.backend == "python":
            lines.append("# serve.triton.backend: python does not apply to TensorRT plans; Triton's TensorRT backend serves them.")
        return lines


KIND = TensorRTKind()
