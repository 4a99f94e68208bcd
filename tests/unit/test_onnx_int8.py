"""ONNX static INT8 (onnxtools/quantize.quantize_static_qdq) on a graph whose calibration meets
an infinite value: MPNet's and T5's relative-position buckets take log(0) = -inf in a branch that
`Where` discards. Quantizing that tensor gave an infinite scale, nan after DequantizeLinear, and a
Gather index of INT64_MIN that stopped ONNX Runtime (an MPNet classifier's onnx-int8 target)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto as T  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402

from toolchain.onnxtools.quantize import _quantize_static, quantize_static_qdq, unbounded_tensors  # noqa: E402
from toolchain.samples import CalibrationSet  # noqa: E402


def _bucket_model(path):
    """y = (x + table[bucket(position)]) @ w, bucket as MPNet computes it: small positions as they
    are, large ones log-spaced, the log taken for every position (log(0) = -inf) and discarded."""
    rng = np.random.default_rng(0)
    const = lambda name, value: numpy_helper.from_array(np.asarray(value), name)  # noqa: E731
    inits = [const("table", rng.standard_normal((8, 4)).astype(np.float32)), const("w", rng.standard_normal((4, 4)).astype(np.float32)),
             const("zero", np.int64(0)), const("one", np.int64(1)), const("two", np.int64(2)), const("seven", np.int64(7)),
             const("three", np.float32(3.0)), const("axis1", np.array([1], np.int64))]  # fmt: skip
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "one"], ["seq"], name="seq", axis=0),
        helper.make_node("Range", ["zero", "seq", "one"], ["pos"], name="range"),
        helper.make_node("Cast", ["pos"], ["posf"], name="to_float", to=T.FLOAT),
        helper.make_node("Log", ["posf"], ["log"], name="log"),
        helper.make_node("Mul", ["log", "three"], ["scaled"], name="scale"),
        helper.make_node("Cast", ["scaled"], ["large"], name="to_int", to=T.INT64),
        helper.make_node("Add", ["large", "two"], ["shifted"], name="shift"),
        helper.make_node("Min", ["shifted", "seven"], ["capped"], name="cap"),
        helper.make_node("Less", ["pos", "two"], ["small"], name="is_small"),
        helper.make_node("Where", ["small", "pos", "capped"], ["bucket"], name="bucket"),
        helper.make_node("Gather", ["table", "bucket"], ["bias"], name="bias", axis=0),
        helper.make_node("Add", ["x", "bias"], ["biased"], name="add_bias"),
        helper.make_node("MatMul", ["biased", "w"], ["y"], name="proj"),
    ]
    graph = helper.make_graph(nodes, "buckets", [helper.make_tensor_value_info("x", T.FLOAT, ["batch", "seq", 4])],
                              [helper.make_tensor_value_info("y", T.FLOAT, ["batch", "seq", 4])], inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _feeds(seed, n=4):
    rng = np.random.default_rng(seed)
    # Bounded, so every evaluated value lies inside the calibrated ranges.
    return [{"x": rng.uniform(-1, 1, (2, int(s), 4)).astype(np.float32)} for s in rng.integers(3, 9, n)]


def _run(path, feed):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_nodes_on_an_infinite_range_stay_in_float_and_the_model_runs(tmp_path):
    src = _bucket_model(tmp_path / "model.onnx")
    calib = CalibrationSet(feeds=_feeds(1), source="generated", seed=[1])
    # The subject: ONNX Runtime's quantizer alone quantizes the -inf tensor, and the model cannot run.
    raw = tmp_path / "raw.onnx"
    _quantize_static(src, raw, calib, "minmax", [], False, None, None, False)
    assert "log" in unbounded_tensors(raw)
    with pytest.raises(Exception, match="out of data bounds|out of bounds"):
        _run(raw, _feeds(2, 1)[0])

    dst = tmp_path / "int8.onnx"
    # reduce_range: 7-bit weights, so the check holds on CPUs without VNNI too (u8 x s8 pairs saturate there)
    kept = quantize_static_qdq(src, dst, calib, "minmax", [], symmetric=False, cache=tmp_path / "ranges.json", reduce_range=True)
    assert "scale" in kept  # the Mul reading log(0)
    assert unbounded_tensors(dst) == []
    quantized = {n.input[0] for n in onnx.load(str(dst)).graph.node if n.op_type == "QuantizeLinear"}
    assert "biased" in quantized  # the rest is still INT8
    for feed in _feeds(3):
        want, got = _run(src, feed), _run(dst, feed)
        cos = float(np.dot(want.ravel(), got.ravel()) / (np.linalg.norm(want) * np.linalg.norm(got)))
        assert np.isfinite(got).all() and cos > 0.98, cos  # a 4-wide toy: INT8 error, not a wrong bucket (that gave nan or a crash)


def test_a_graph_without_infinite_ranges_keeps_nothing_extra(tmp_path):
    src = _bucket_model(tmp_path / "model.onnx")
    calib = CalibrationSet(feeds=_feeds(1), source="generated", seed=[1])
    # Keeping the Mul in float up front: nothing else calibrates to a non-finite range.
    assert quantize_static_qdq(src, tmp_path / "int8.onnx", calib, "minmax", ["scale", "log"], symmetric=False) == []


def test_a_candidate_onnx_runtime_cannot_run_is_a_failed_attempt_and_the_search_goes_on(tmp_path, monkeypatch):
    """The quantizer as it was (the -inf range quantized) makes the first candidate; ONNX Runtime
    refuses it. The search records that attempt with its error and judges the next one."""
    import time
    from types import SimpleNamespace

    from toolchain.onnxtools import quantize
    from toolchain.recipe import Tolerance

    src = _bucket_model(tmp_path / "model.onnx")
    calib = CalibrationSet(feeds=_feeds(1), source="generated", seed=[1])
    samples = _feeds(4, 2)
    reference = [{"y": _run(src, f)} for f in samples]
    fixed = quantize.quantize_static_qdq

    def first_as_it_was(prep, dst, calib, method, excluded, symmetric, **kw):
        if not excluded:
            _quantize_static(prep, dst, calib, method, excluded, symmetric, None, None, False)
            return []
        return fixed(prep, dst, calib, method, excluded, symmetric, **kw)

    monkeypatch.setattr(quantize, "quantize_static_qdq", first_as_it_was)
    source = SimpleNamespace(input_names=["x"], output_names=["y"], recipe=SimpleNamespace(parity=SimpleNamespace(scores=[])))
    job = quantize.Int8Job(source, SimpleNamespace(device="cpu"), src, tmp_path, calib, samples, reference, Tolerance(cosine=0.9), reduce_range=True)
    search = job.search(time.monotonic() + 60)
    failed = search.run(quantize.Config("minmax"))
    assert failed.report is None and search.best is None
    assert "bias" in failed.error and "out of" in failed.error  # names the Gather
    assert search.attempts[0]["passed"] is False and search.attempts[0]["error"] == failed.error
    ok = search.run(quantize.Config("minmax", None, ("proj",), "with the projection in float"))
    assert ok.report is not None and ok.report.passed and search.best is ok and job.best_path.exists()
