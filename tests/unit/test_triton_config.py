"""Triton config.pbtxt rendering, parsed back with Triton's own proto."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from toolchain.recipe import TritonServe
from toolchain.serving.triton import (
    check_config_against_signature,
    render_config,
    render_model_py,
    triton_model_name,
    write_triton_model,
)
from toolchain.tensors import Signature, TensorSig


def sig() -> Signature:
    return Signature(
        inputs=[TensorSig("image", "float32", [-1, 3, -1, 224]), TensorSig("mask", "int64", [-1, 7])],
        outputs=[TensorSig("logits", "float32", [-1, 10]), TensorSig("score", "bool", [-1])],
    )


def serve(**over) -> TritonServe:
    base = {
        "max_batch_size": 8,
        "dynamic_batching": {"preferred_batch_size": [4, 2], "max_queue_delay_microseconds": 100},
        "instance_group": {"count": 2, "kind": "auto"},
        "targets": ["onnx"],
    }
    base.update(over)
    return TritonServe.model_validate(base)


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def test_model_name():
    assert triton_model_name("res-net", "onnx-int8") == "res_net_onnx_int8"


@pytest.mark.parametrize(
    "kind,backend,batch,dyn,policy,inst,device",
    list(
        itertools.product(
            ["onnx", "aoti"],
            ["native", "python"],
            [0, 8],
            [True, False],
            ["latest", "all", {"specific": [3, 1]}],
            ["auto", "cpu", "gpu"],
            ["cpu", "cuda"],
        )
    ),
)
def test_every_combination_parses(kind, backend, batch, dyn, policy, inst, device):
    s = serve(
        max_batch_size=batch,
        dynamic_batching={"preferred_batch_size": [2, 4]} if dyn else None,
        version_policy=policy,
        instance_group={"count": 3, "kind": inst},
        backend=backend,
    )
    text = render_config("m_" + kind, kind, sig(), s, device)
    assert text == render_config("m_" + kind, kind, sig(), s, device)  # deterministic
    cfg = parse(text)
    assert cfg.name == "m_" + kind
    native_aoti = kind == "aoti" and backend == "native"
    want_mbs = 0 if native_aoti else batch
    assert cfg.max_batch_size == want_mbs
    if backend == "python":
        assert (cfg.backend, cfg.platform) == ("python", "")
    elif kind == "onnx":
        assert (cfg.backend, cfg.platform) == ("onnxruntime", "onnxruntime_onnx")
    else:
        assert (cfg.backend, cfg.platform) == ("pytorch", "torch_aoti")
        assert text.startswith("#") and "26.03" in text.splitlines()[0]
        assert "image->INPUT__0" in text and "score->OUTPUT__1" in text
    names = [t.name for t in cfg.input] + [t.name for t in cfg.output]
    assert names == (["INPUT__0", "INPUT__1", "OUTPUT__0", "OUTPUT__1"] if native_aoti else ["image", "mask", "logits", "score"])
    assert [mc.DataType.Name(t.data_type) for t in cfg.input] == ["TYPE_FP32", "TYPE_INT64"]
    assert [mc.DataType.Name(t.data_type) for t in cfg.output] == ["TYPE_FP32", "TYPE_BOOL"]
    if want_mbs:
        assert list(cfg.input[0].dims) == [3, -1, 224]
        assert list(cfg.output[1].dims) == [1] and list(cfg.output[1].reshape.shape) == []
    else:
        assert list(cfg.input[0].dims) == [-1, 3, -1, 224]
        assert list(cfg.output[1].dims) == [-1] and not cfg.output[1].HasField("reshape")
    assert cfg.HasField("dynamic_batching") == (dyn and want_mbs > 0)
    if cfg.HasField("dynamic_batching"):
        assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 4]
    which = cfg.version_policy.WhichOneof("policy_choice")
    if isinstance(policy, dict):
        assert which == "specific" and list(cfg.version_policy.specific.versions) == [1, 3]
    else:
        assert which == policy
        if policy == "latest":
            assert cfg.version_policy.latest.num_versions == 1
    assert len(cfg.instance_group) == 1 and cfg.instance_group[0].count == 3
    if inst == "auto":
        want = "KIND_GPU" if device == "cuda" else ("KIND_CPU" if kind == "aoti" else "KIND_AUTO")
    else:
        want = f"KIND_{inst.upper()}"
    assert mc.ModelInstanceGroup.Kind.Name(cfg.instance_group[0].kind) == want
    assert check_config_against_signature(text, sig(), kind) == []


def test_dynamic_batching_fields():
    cfg = parse(render_config("m", "onnx", sig(), serve(), "cpu"))
    assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 4]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 100


def test_preferred_batch_over_max_raises():
    with pytest.raises(ValueError, match="preferred_batch_size"):
        render_config("m", "onnx", sig(), serve(dynamic_batching={"preferred_batch_size": [4, 16]}), "cpu")


def test_batching_needs_dynamic_first_dim():
    static = Signature([TensorSig("x", "float32", [1, 3])], [TensorSig("y", "float32", [-1, 2])])
    with pytest.raises(ValueError, match="batch"):
        render_config("m", "onnx", static, serve(), "cpu")
    # without batching the static shape is served as is
    cfg = parse(render_config("m", "onnx", static, serve(max_batch_size=0, dynamic_batching=None), "cpu"))
    assert list(cfg.input[0].dims) == [1, 3]
    # native aoti never batches, so it does not care either
    cfg = parse(render_config("m", "aoti", static, serve(), "cpu", backend="native"))
    assert cfg.max_batch_size == 0 and list(cfg.input[0].dims) == [1, 3]


def test_bad_kind_and_dtype_raise():
    with pytest.raises(ValueError, match="tflite"):
        render_config("m", "tflite", sig(), serve(), "cpu")
    bad = Signature([TensorSig("x", "complex64", [-1])], [TensorSig("y", "float32", [-1])])
    with pytest.raises(ValueError, match="complex64"):
        render_config("m", "onnx", bad, serve(), "cpu")


def test_check_config_reports_mismatches():
    text = render_config("m", "onnx", sig(), serve(), "cpu")
    assert check_config_against_signature(text, sig(), "onnx") == []
    other = Signature(
        inputs=[TensorSig("pixels", "float16", [-1, 3, 224, 224]), TensorSig("mask", "int64", [2, 7])],
        outputs=[TensorSig("logits", "float32", [-1, 10])],
    )
    problems = check_config_against_signature(text, other, "onnx")
    joined = "\n".join(problems)
    assert "'pixels'" in joined  # name
    assert "TYPE_FP16" in joined  # dtype
    assert "pixels: config dims" in joined  # -1 vs 224
    assert "mask: max_batch_size 8" in joined  # batch-dim rule
    assert "output: config has 2, artifact has 1" in joined
    assert check_config_against_signature(text, sig(), "aoti")  # wrong platform for the kind
    assert check_config_against_signature("nonsense_field: 1", sig(), "onnx")[0].startswith("config does not parse")


def test_check_config_aoti_positional_names():
    text = render_config("m", "aoti", sig(), serve(), "cuda", backend="native")
    assert check_config_against_signature(text, sig(), "aoti") == []
    renamed = text.replace("INPUT__1", "mask")
    assert any("INPUT__1" in p for p in check_config_against_signature(renamed, sig(), "aoti"))
    batched = parse(text)
    batched.max_batch_size = 4
    assert any("no batching" in p for p in check_config_against_signature(text_format.MessageToString(batched), sig(), "aoti"))


@pytest.mark.parametrize("backend", ["native", "python"])
def test_tensorrt_plan_config(backend):
    text = render_config("m_trt", "tensorrt", sig(), serve(backend=backend), "cuda")
    cfg = parse(text)
    assert (cfg.platform, cfg.backend, cfg.max_batch_size) == ("tensorrt_plan", "tensorrt", 8)
    assert [t.name for t in cfg.input] == ["image", "mask"] and list(cfg.input[0].dims) == [3, -1, 224]
    assert mc.ModelInstanceGroup.Kind.Name(cfg.instance_group[0].kind) == "KIND_GPU"  # an engine needs its GPU
    assert ("backend: python does not apply" in text) == (backend == "python")
    assert check_config_against_signature(text, sig(), "tensorrt") == []
    onnx_text = render_config("m", "onnx", sig(), serve(), "cuda")
    assert check_config_against_signature(onnx_text, sig(), "tensorrt") == ["tensorrt artifact served by platform='onnxruntime_onnx' backend='onnxruntime'"]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnx_runtime_tensorrt_accelerator(precision):
    cfg = parse(render_config("m", "onnx", sig(), serve(onnx_tensorrt=precision), "cpu"))
    (acc,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "tensorrt" and dict(acc.parameters) == {"precision_mode": precision.upper()}
    assert cfg.platform == "onnxruntime_onnx"
    # only ONNX models get it, and only when asked
    assert not parse(render_config("m", "onnx", sig(), serve(), "cpu")).HasField("optimization")
    assert not parse(render_config("m", "tensorrt", sig(), serve(onnx_tensorrt=precision), "cuda")).HasField("optimization")


def test_write_tensorrt_copies_the_plan_only(tmp_path):
    art = tmp_path / "tensorrt"
    art.mkdir()
    (art / "model.plan").write_bytes(b"plan")
    model_dir = write_triton_model(tmp_path / "repo", "net_trt", 2, "tensorrt", art, sig(), serve(backend="python"), "cuda")
    assert sorted(p.name for p in (model_dir / "2").iterdir()) == ["model.plan"]
    assert parse((model_dir / "config.pbtxt").read_text()).platform == "tensorrt_plan"


def _artifact(tmp_path: Path, kind: str) -> Path:
    d = tmp_path / kind
    d.mkdir()
    if kind == "onnx":
        (d / "model.onnx").write_bytes(b"\x08\x07graph")
        (d / "model.onnx.data").write_bytes(b"\x00\x01weights" * 10)
    else:
        (d / "model.pt2").write_bytes(b"PK\x03\x04pt2")
    return d


@pytest.mark.parametrize("backend", ["native", "python"])
def test_write_onnx_copies_external_data(tmp_path, backend):
    art = _artifact(tmp_path, "onnx")
    model_dir = write_triton_model(tmp_path / "triton", "net_onnx", 3, "onnx", art, sig(), serve(backend=backend), "cpu")
    assert model_dir == tmp_path / "triton" / "net_onnx"
    v = model_dir / "3"
    assert (v / "model.onnx").read_bytes() == (art / "model.onnx").read_bytes()
    assert (v / "model.onnx.data").read_bytes() == (art / "model.onnx.data").read_bytes()
    assert (v / "model.py").exists() == (backend == "python")
    text = (model_dir / "config.pbtxt").read_text()
    assert parse(text).name == "net_onnx"
    assert check_config_against_signature(text, sig(), "onnx") == []


@pytest.mark.parametrize("backend", ["native", "python"])
def test_write_aoti(tmp_path, backend):
    art = _artifact(tmp_path, "aoti")
    model_dir = write_triton_model(tmp_path / "repo", "net_aoti", 1, "aoti", art, sig(), serve(), "cuda", backend=backend)
    files = sorted(p.name for p in (model_dir / "1").iterdir())
    assert files == (["model.pt2", "model.py"] if backend == "python" else ["model.pt2"])
    cfg = parse((model_dir / "config.pbtxt").read_text())
    assert cfg.backend == ("python" if backend == "python" else "pytorch")
    if backend == "python":
        body = (model_dir / "1" / "model.py").read_text()
        compile(body, "model.py", "exec")
        assert "RUNTIME = 'aoti'" in body and "DEVICE = 'cuda'" in body


def test_write_missing_artifact_raises(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        write_triton_model(tmp_path / "repo", "m", 1, "onnx", tmp_path / "empty", sig(), serve(), "cpu")
    assert not (tmp_path / "repo" / "m" / "config.pbtxt").exists()


@pytest.mark.parametrize("kind,device", [("onnx", "cpu"), ("onnx", "cuda"), ("aoti", "cpu"), ("aoti", "cuda")])
def test_model_py_compiles_and_is_one_template(kind, device):
    body = render_model_py(kind, device)
    compile(body, "model.py", "exec")
    assert "@" + "RUNTIME@" not in body and "@DEVICE@" not in body and "@ARTIFACT@" not in body
    assert f"RUNTIME = {kind!r}" in body
    # One template; the loader is the kind's own: only its runtime is imported.
    assert ("aoti_load_package" in body) == (kind == "aoti") and ("import onnxruntime" in body) == (kind == "onnx")
    assert (".contiguous()" in body) == (kind == "aoti") and 'args["model_config"]' in body
    assert "import triton_python_backend_utils as pb_utils" in body


from tests.triton_stub import StubPbUtils  # noqa: E402


def test_python_backend_model_py_runs_onnx(tmp_path, monkeypatch):
    """Drive the generated model.py with ONNX Runtime: per-request and merged batches."""
    import json
    import sys
    import types

    np = pytest.importorskip("numpy")
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    # y = a + b and s = rowsum(y): two inputs, two outputs, a batch-only output.
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"]), helper.make_node("ReduceSum", ["y", "ax"], ["s"], keepdims=0)],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", 3]) for n in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3]), helper.make_tensor_value_info("s", TensorProto.FLOAT, ["n"])],
        initializer=[helper.make_tensor("ax", TensorProto.INT64, [1], [1])],
    )
    art = tmp_path / "art"
    art.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), art / "model.onnx")
    s = Signature(
        [TensorSig("a", "float32", [-1, 3]), TensorSig("b", "float32", [-1, 3])], [TensorSig("y", "float32", [-1, 3]), TensorSig("s", "float32", [-1])]
    )
    model_dir = write_triton_model(tmp_path / "repo", "add", 1, "onnx", art, s, serve(backend="python"), "cpu", threads=3)
    cfg = parse((model_dir / "config.pbtxt").read_text())
    config_json = {
        "max_batch_size": cfg.max_batch_size,
        "input": [{"name": t.name, "data_type": mc.DataType.Name(t.data_type)} for t in cfg.input],
        "output": [{"name": t.name, "data_type": mc.DataType.Name(t.data_type)} for t in cfg.output],
        "parameters": {k: {"string_value": v.string_value} for k, v in cfg.parameters.items()},  # as Triton hands them over
    }
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", StubPbUtils)
    mod = types.ModuleType("generated_model")
    exec(compile((model_dir / "1" / "model.py").read_text(), "model.py", "exec"), mod.__dict__)
    m = mod.TritonPythonModel()
    m.initialize(
        {
            "model_config": json.dumps(config_json),
            "model_repository": str(model_dir),
            "model_version": "1",
            "model_instance_kind": "CPU",
            "model_instance_device_id": "0",
        }
    )
    # serve.threads (3) reached the session model.py runs, through the config's parameter
    import inspect

    assert inspect.getclosurevars(m._run).nonlocals["session"].get_session_options().intra_op_num_threads == 3
    rng = np.random.default_rng(0)
    reqs = []
    for n in (1, 3, 2):
        a, b = rng.random((n, 3), dtype=np.float32), rng.random((n, 3), dtype=np.float32)
        reqs.append({"a": StubPbUtils.Tensor("a", a), "b": StubPbUtils.Tensor("b", b)})
    for batch in (reqs, reqs[:1]):  # merged across requests, and a single request
        responses = m.execute(batch)
        assert len(responses) == len(batch)
        for req, resp in zip(batch, responses):
            assert resp.error is None, resp.error and resp.error.msg
            want = req["a"].array + req["b"].array
            np.testing.assert_allclose(resp.outputs["y"], want, rtol=1e-6)
            np.testing.assert_allclose(resp.outputs["s"], want.sum(axis=1), rtol=1e-5)
    bad = m.execute([{"a": StubPbUtils.Tensor("a", np.zeros((1, 4), np.float32)), "b": reqs[0]["b"]}])
    assert bad[0].error is not None


def _model_py(kind, monkeypatch):
    import sys
    import types

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", StubPbUtils)
    mod = types.ModuleType("generated_model")
    exec(compile(render_model_py(kind, "cpu"), "model.py", "exec"), mod.__dict__)
    return mod


def _initialize(mod, parameters: dict):
    import json

    config = {"max_batch_size": 0, "input": [{"name": "x", "data_type": "TYPE_FP32"}], "output": [{"name": "y", "data_type": "TYPE_FP32"}],
              "parameters": {k: {"string_value": v} for k, v in parameters.items()}}  # fmt: skip
    m = mod.TritonPythonModel()
    m.initialize({"model_config": json.dumps(config), "model_repository": "/nowhere", "model_version": "1", "model_instance_kind": "CPU"})
    return m


def test_aoti_model_py_gives_torch_the_configs_thread_count(monkeypatch):
    """The AOTI loader sets torch's intra-op threads from INTRA_OP_THREAD_COUNT (serve.threads) before it loads the
    package (torch._inductor.aoti_load_package stubbed: no package is built here)."""
    import torch
    import torch._inductor

    loaded = []
    monkeypatch.setattr(torch._inductor, "aoti_load_package", lambda path, device_index: loaded.append((path, device_index)) or (lambda *a: a))
    before = torch.get_num_threads()
    try:
        _initialize(_model_py("aoti", monkeypatch), {"INTRA_OP_THREAD_COUNT": "1" if before > 1 else "2"})
        assert torch.get_num_threads() == (1 if before > 1 else 2) and loaded == [("/nowhere/1/model.pt2", -1)]
    finally:
        torch.set_num_threads(before)


def test_a_six_argument_plugin_loader_still_loads_where_no_thread_count_is_set(monkeypatch):
    """model.py passes `threads` by keyword and only when the config sets it: a plugin kind's loader written before
    the argument existed keeps working on recipes without serve.threads."""
    mod = _model_py("onnx", monkeypatch)
    mod.load = lambda path, device, on_gpu, device_id, input_names, output_names: lambda arrays: arrays
    assert _initialize(mod, {})._run([1]) == [1]
    with pytest.raises(TypeError):
        _initialize(mod, {"intra_op_thread_count": "2"})


@pytest.mark.parametrize("kind", ["xla", "savedmodel"])
@pytest.mark.parametrize("batch", [0, 8])
def test_tensorflow_savedmodel_config(tmp_path, kind, batch):
    art = tmp_path / kind / "saved_model"
    (art / "variables").mkdir(parents=True)
    (art / "saved_model.pb").write_bytes(b"\x12pb")
    (art / "variables" / "variables.index").write_bytes(b"idx")
    s = serve(max_batch_size=batch, dynamic_batching=None)
    model_dir = write_triton_model(tmp_path / "repo", f"net_{kind}", 2, kind, tmp_path / kind, sig(), s, "cpu")
    served = model_dir / "2" / "model.savedmodel"
    assert (served / "saved_model.pb").read_bytes() == b"\x12pb" and (served / "variables" / "variables.index").is_file()
    text = (model_dir / "config.pbtxt").read_text()
    cfg = parse(text)
    assert (cfg.platform, cfg.backend, cfg.max_batch_size) == ("tensorflow_savedmodel", "tensorflow", batch)
    assert [t.name for t in cfg.input] == ["image", "mask"] and [t.name for t in cfg.output] == ["logits", "score"]
    assert "25.03" in text.splitlines()[0]
    assert ("XLA" in text) == (kind == "xla")
    assert check_config_against_signature(text, sig(), kind) == []
    assert check_config_against_signature(render_config("m", "onnx", sig(), s, "cpu"), sig(), kind)  # wrong platform


def test_tensorflow_kinds_have_no_python_backend(tmp_path):
    with pytest.raises(ValueError, match="backend: native"):
        render_config("m", "savedmodel", sig(), serve(backend="python"), "cpu")


def test_tensorflow_kind_needs_the_saved_model_directory(tmp_path):
    (tmp_path / "xla").mkdir()
    with pytest.raises(FileNotFoundError, match="saved_model"):
        write_triton_model(tmp_path / "repo", "m", 1, "xla", tmp_path / "xla", sig(), serve(), "cpu")


@pytest.mark.parametrize("backend", ["native", "python"])
def test_serve_threads_reach_the_configs_of_cpu_models_under_each_backends_key(backend):
    """serve.threads: an AOTI package's autotuned GEMMs are split for it, so its instance is given that many intra-op
    threads (the pytorch backend's INTRA_OP_THREAD_COUNT), and an ONNX model's session as many (the onnxruntime
    backend's per-model intra_op_thread_count); model.py's loaders apply the same."""
    cfg = parse(render_config("m", "aoti", sig(), serve(backend=backend), "cpu", threads=6))
    assert list(cfg.parameters) == ["INTRA_OP_THREAD_COUNT"] and cfg.parameters["INTRA_OP_THREAD_COUNT"].string_value == "6"
    onnx = parse(render_config("m", "onnx", sig(), serve(backend=backend), "cpu", threads=6)).parameters
    assert list(onnx) == ["intra_op_thread_count"] and onnx["intra_op_thread_count"].string_value == "6"
    for kind in ("aoti", "onnx"):
        assert not parse(render_config("m", kind, sig(), serve(backend=backend), "cpu")).parameters
        assert not parse(render_config("m", kind, sig(), serve(backend=backend), "cuda", threads=6)).parameters
