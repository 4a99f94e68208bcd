"""The TensorRT target's plumbing, without TensorRT.

TensorRT cannot be installed in this workplace, so the engine path has never
run here. These tests check what can be checked without it: the optimization
profile taken from the recipe's dims, the version/compute-capability check, the
timing cache's name, and, through FakeTensorRT (a TEST DOUBLE that records
calls in the shape of the TensorRT 10 Python API, not TensorRT), that the
builder is driven as documented. A test marked `tensorrt` runs the real thing
where TensorRT and a GPU exist.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from toolchain.errors import StepError
from toolchain.kinds import tensorrt as trt_target
from toolchain.recipe import Recipe


def recipe() -> Recipe:
    return Recipe.model_validate(
        {
            "name": "t",
            "source": {"framework": "pytorch", "factory": "m.py:build"},
            "inputs": [
                {"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]},
                {"name": "image", "dtype": "float32", "shape": ["batch", 3, 224, 224]},
            ],
            "dims": {"batch": {"min": 1, "opt": 8, "max": 32}, "seq": {"min": 16, "max": 128}},
            "targets": [{"kind": "tensorrt", "precision": "int8"}],
        }
    )


def test_profile_from_dims():
    assert trt_target.profile_shapes(recipe()) == {
        "input_ids": ([1, 16], [8, 16], [32, 128]),  # seq's opt defaults to its min
        "image": ([1, 3, 224, 224], [8, 3, 224, 224], [32, 3, 224, 224]),
    }


ENV = {"tensorrt": "10.9.0.34", "compute_capability": "9.0", "gpu": "NVIDIA H100"}


def test_compatible_engine_has_no_problem():
    assert trt_target.compatibility_problem(ENV, dict(ENV)) is None


def test_engine_from_another_tensorrt_or_gpu_is_refused_with_both_named():
    here = {"tensorrt": "10.11.0.33", "compute_capability": "8.0", "gpu": "NVIDIA A100"}
    assert trt_target.compatibility_problem(ENV, here) == (
        "built with TensorRT 10.9.0.34, this machine has 10.11.0.33; "
        "built for compute capability 9.0 (NVIDIA H100), this GPU is 8.0 (NVIDIA A100); rebuild the engine on this machine"
    )
    assert "TensorRT" not in trt_target.compatibility_problem(ENV, {**ENV, "compute_capability": "8.9"})


def test_timing_cache_is_per_version_and_compute_capability(tmp_path):
    assert trt_target.timing_cache_path(tmp_path, ENV) == tmp_path / ".mlpack-trt-timing-10.9.0.34-sm90.cache"


# ------------------------------------------------------------ test double


class FakeTensorRT(types.ModuleType):
    """TEST DOUBLE of the `tensorrt` module: records builder calls; builds nothing."""

    def __init__(self, parse_ok: bool = True, plan: bytes | None = b"PLAN"):
        super().__init__("tensorrt")
        fake = self
        self.calls: list[tuple] = []
        self.__version__ = "10.9.0.34"

        class Logger:
            WARNING = "warning"

            def __init__(self, severity):
                pass

        class NetworkDefinitionCreationFlag:
            STRONGLY_TYPED = 5

        class BuilderFlag:
            FP16, TF32 = "FP16", "TF32"

        class TimingCache:
            def __init__(self, data: bytes):
                self.data = data

            def serialize(self) -> bytes:
                return self.data + b"+timings"

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                fake.calls.append(("set_shape", name, list(lo), list(opt), list(hi)))

        class Config:
            def add_optimization_profile(self, profile):
                fake.calls.append(("add_optimization_profile",))

            def set_flag(self, flag):
                fake.calls.append(("set_flag", flag))

            def clear_flag(self, flag):
                fake.calls.append(("clear_flag", flag))

            def create_timing_cache(self, data: bytes):
                fake.calls.append(("create_timing_cache", bytes(data)))
                self.cache = TimingCache(bytes(data))
                return self.cache

            def set_timing_cache(self, cache, ignore_mismatch):
                fake.calls.append(("set_timing_cache", ignore_mismatch))

            def get_timing_cache(self):
                return self.cache

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.calls.append(("create_network", flags))
                return object()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return plan

        class OnnxParser:
            num_errors = 0 if parse_ok else 1

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                fake.calls.append(("parse_from_file", Path(path).name))
                return parse_ok

            def get_error(self, i):
                return "In node 3 (Where): unsupported broadcast"

        for cls in (Logger, NetworkDefinitionCreationFlag, BuilderFlag, Builder, OnnxParser):
            setattr(self, cls.__name__, cls)


SHAPES = {"x": ([1, 4], [2, 4], [8, 4])}


@pytest.mark.parametrize(
    "precision, flags, flag_call",
    [("fp16", 0, ("set_flag", "FP16")), ("fp32", 0, ("clear_flag", "TF32")), ("int8", 1 << 5, None)],
)
def test_builder_is_driven_as_documented(monkeypatch, tmp_path, precision, flags, flag_call):
    fake = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    cache = tmp_path / "timing.cache"
    plan = trt_target.build_engine(tmp_path / "model.onnx", SHAPES, precision, cache)
    assert plan == b"PLAN"
    assert fake.calls[0] == ("create_network", flags)  # int8: strongly typed, following the QDQ graph
    assert ("parse_from_file", "model.onnx") in fake.calls
    assert ("set_shape", "x", [1, 4], [2, 4], [8, 4]) in fake.calls and ("add_optimization_profile",) in fake.calls
    precision_calls = [c for c in fake.calls if c[0] in ("set_flag", "clear_flag")]
    assert precision_calls == ([flag_call] if flag_call else [])
    assert ("create_timing_cache", b"") in fake.calls and ("set_timing_cache", False) in fake.calls
    assert cache.read_bytes() == b"+timings"
    # The next build starts from the saved cache and extends it.
    trt_target.build_engine(tmp_path / "model.onnx", SHAPES, precision, cache)
    assert ("create_timing_cache", b"+timings") in fake.calls
    assert cache.read_bytes() == b"+timings+timings"
    assert not list(tmp_path.glob("*.tmp"))


def test_parser_errors_become_the_step_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT(parse_ok=False))
    with pytest.raises(StepError, match=r"rejected model.onnx: In node 3 \(Where\): unsupported broadcast"):
        trt_target.build_engine(tmp_path / "model.onnx", SHAPES, "fp16", tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_failed_build_is_a_step_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT(plan=None))
    with pytest.raises(StepError, match="could not build an engine"):
        trt_target.build_engine(tmp_path / "model.onnx", SHAPES, "fp16", tmp_path / "c")


def test_runner_refuses_a_foreign_engine_before_loading_it(monkeypatch, tmp_path):
    from toolchain.runners.tensorrt import TensorRTRunner

    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT())
    monkeypatch.setattr(trt_target, "engine_env", lambda: {**ENV, "tensorrt": "10.11.0.33"})
    plan = tmp_path / "model.plan"  # never read: the check comes first
    with pytest.raises(StepError, match="built with TensorRT 10.9.0.34, this machine has 10.11.0.33"):
        TensorRTRunner(plan, ["x"], ["y"], built_with=ENV).__enter__()


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_real_engine_round_trip(tmp_path):
    """Where TensorRT and a GPU exist: a two-op ONNX through the builder and the runner."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from toolchain.runners.tensorrt import TensorRTRunner

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    env = trt_target.engine_env()
    plan = tmp_path / "model.plan"
    plan.write_bytes(trt_target.build_engine(tmp_path / "m.onnx", SHAPES, "fp32", trt_target.timing_cache_path(tmp_path, env)))
    x = np.array([[-1.0, 2.0, -3.0, 4.0]] * 3, dtype=np.float32)
    with TensorRTRunner(plan, ["x"], ["y"], built_with=env) as runner:
        np.testing.assert_allclose(runner.infer({"x": x})["y"], np.maximum(x, 0) + x)
