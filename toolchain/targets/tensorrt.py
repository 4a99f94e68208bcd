"""TensorRT engines built from the target's ONNX with the TensorRT 10 Python API.

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

from toolchain.errors import StepError
from toolchain.recipe import Recipe, TensorRTTarget
from toolchain.targets import Artifact
from toolchain.tensors import onnx_signature

OPSET = 18  # per-channel QDQ needs opset >= 13; 18 is what the onnx target exports by default


def skip_reason(spec: TensorRTTarget) -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt Python package is not installed (pip install 'mlpack[tensorrt]' on a machine with NVIDIA's index)"
    from toolchain.targets.aoti import cuda_missing

    return cuda_missing()


def profile_shapes(recipe: Recipe) -> dict[str, tuple[list[int], list[int], list[int]]]:
    """(min, opt, max) shape of every input from the recipe's dims: the one optimization profile."""
    out = {}
    for spec in recipe.inputs:
        out[spec.name] = tuple(
            [getattr(recipe.dims[d], level) if isinstance(d, str) else d for d in spec.shape] for level in ("min", "opt", "max")
        )
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


def build(source, spec: TensorRTTarget, workdir: Path) -> Artifact:
    from toolchain.parity import calibration_samples
    from toolchain.targets import quantize
    from toolchain.targets.onnx import export

    recipe = source.recipe
    env = engine_env()
    cache = timing_cache_path(workdir.parent.parent, env)  # <out>/, beside the published builds
    scratch = workdir / "onnx"  # the ONNX the engine is built from; not part of the artifact
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
            quantize.quantize_static_qdq(prep, qdq, calib, method, [], symmetric=True)
            fields["quantization"] = {"mode": "int8", "format": "QDQ", "per_channel": True, "calibration": {"method": method, **calib.to_dict()}}
            fields["warnings"] = [calib.warning] if calib.warning else []
            onnx_path = qdq
        shapes = profile_shapes(recipe)
        plan = workdir / "model.plan"
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
        kind="tensorrt",
        files=[plan],
        signature=signature,
        runner="tensorrt",
        runner_args={"path": plan, "output_names": source.output_names, "built_with": env},
        device="cuda",
        extra=fields,
    )
