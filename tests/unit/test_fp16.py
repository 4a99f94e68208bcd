"""ONNX FP16 conversion (onnxtools/fp16.to_fp16) on graphs whose shape broke it in users'
models: a recurrent layer's while loop (Keras LSTM/GRU through tf2onnx), a batch-first RNN's
Transpose into its output head (ONNX Runtime crashed), an output made by an op kept in FP32."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto as T  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402

from toolchain.onnxtools.fp16 import to_fp16  # noqa: E402


def _save(graph, path):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    model = onnx.shape_inference.infer_shapes(model)  # declared types inside the loop body, as tf2onnx writes them
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _run(path, feed):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_a_while_loop_body_is_converted_and_its_counters_stay_exact(tmp_path):
    """tf2onnx's while loop: the step counter and the trip count are cast to float and compared
    (Less), and a mask is cast from bool. The converter typed the body's values FP16 and left those
    Casts on FP32 (invalid graph: every Keras LSTM/GRU failed); compared in FP16, a count past 2048
    rounds (2049 -> 2048) and the loop's last step is lost. The gate below is 1 at the last of 2049
    steps in FP32."""
    body = helper.make_graph(
        [
            helper.make_node("Cast", ["i"], ["i_f"], to=T.FLOAT, name="count"),
            helper.make_node("Cast", ["n"], ["n_f"], to=T.FLOAT, name="limit"),
            helper.make_node("Less", ["i_f", "n_f"], ["live"], name="live"),
            helper.make_node("Cast", ["live"], ["gate"], to=T.FLOAT, name="mask"),
            helper.make_node("Mul", ["h", "zero"], ["h0"]),
            helper.make_node("Add", ["h0", "gate"], ["h2"]),
            helper.make_node("Identity", ["c"], ["c2"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", T.INT64, []),
            helper.make_tensor_value_info("c", T.BOOL, []),
            helper.make_tensor_value_info("h", T.FLOAT, ["b", 4]),
        ],
        [helper.make_tensor_value_info("c2", T.BOOL, []), helper.make_tensor_value_info("h2", T.FLOAT, ["b", 4])],
        [numpy_helper.from_array(np.array(0.0, np.float32), "zero")],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["steps", "go", "x"], ["y"], body=body, name="loop")],
        "g",
        [helper.make_tensor_value_info("x", T.FLOAT, ["b", 4])],
        [helper.make_tensor_value_info("y", T.FLOAT, ["b", 4])],
        [
            numpy_helper.from_array(np.array(2049, np.int64), "steps"),
            numpy_helper.from_array(np.array(True), "go"),
            numpy_helper.from_array(np.array(2049, np.int64), "n"),
        ],
    )
    src = _save(graph, tmp_path / "loop.onnx")
    x = np.ones((2, 4), np.float32)
    assert (_run(src, {"x": x}) == 1.0).all()
    record = to_fp16(src, tmp_path / "fp16.onnx")
    assert (_run(tmp_path / "fp16.onnx", {"x": x}) == 1.0).all()
    assert {"count", "limit", "mask"} <= set(record["repaired_nodes"])
    converted = onnx.load(str(tmp_path / "fp16.onnx"))
    loop = next(n for n in converted.graph.node if n.op_type == "Loop")
    body = next(a.g for a in loop.attribute if a.name == "body")
    to = {n.name: next(a.i for a in n.attribute if a.name == "to") for n in body.node if n.op_type == "Cast" and n.name in ("count", "limit", "mask")}
    assert to == {"count": T.FLOAT, "limit": T.FLOAT, "mask": T.FLOAT16}


def test_a_transpose_into_a_matmul_stays_fp32_so_onnx_runtime_does_not_crash(tmp_path):
    """[seq, batch, d] -> Transpose -> MatMul (a batch-first RNN's head): in FP16, ONNX Runtime's
    CPU session crashed the process (SIGSEGV) at load. Run in a child process: a crash fails the test."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 5)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2], name="to_batch_first"), helper.make_node("MatMul", ["t", "W"], ["y"], name="head")],
        "g",
        [helper.make_tensor_value_info("x", T.FLOAT, ["s", "b", 8])],
        [helper.make_tensor_value_info("y", T.FLOAT, ["b", "s", 5])],
        [w],
    )
    src = _save(graph, tmp_path / "head.onnx")
    record = to_fp16(src, tmp_path / "fp16.onnx")
    assert record["nodes_kept_fp32"] == ["to_batch_first"]
    code = (
        "import sys, numpy as np, onnxruntime as ort\n"
        "x = np.random.default_rng(1).standard_normal((3, 2, 8)).astype(np.float32)\n"
        "run = lambda p: ort.InferenceSession(p, providers=['CPUExecutionProvider']).run(None, {'x': x})[0]\n"
        "a, b = run(sys.argv[1]), run(sys.argv[2])\n"
        "assert a.shape == (2, 3, 5) and np.allclose(a, b, atol=0.05), abs(a - b).max()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(src), str(tmp_path / "fp16.onnx")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])


def test_an_output_made_by_an_op_kept_in_fp32_is_still_declared_fp32(tmp_path):
    """keep_io_types keeps the graph's inputs and outputs FP32, but an output whose node the
    converter keeps in FP32 (a ReduceMean at the end: a pooled embedding) came out declared FP16."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 5)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("ReduceMean", ["h"], ["y"], keepdims=0, name="pool")],
        "g",
        [helper.make_tensor_value_info("x", T.FLOAT, ["b", 3, 8])],
        [helper.make_tensor_value_info("y", T.FLOAT, [])],
        [w],
    )
    src = _save(graph, tmp_path / "pool.onnx")
    to_fp16(src, tmp_path / "fp16.onnx")
    converted = onnx.load(str(tmp_path / "fp16.onnx"))
    assert converted.graph.output[0].type.tensor_type.elem_type == T.FLOAT
    x = np.random.default_rng(1).standard_normal((2, 3, 8)).astype(np.float32)
    got = _run(tmp_path / "fp16.onnx", {"x": x})
    assert got.dtype == np.float32 and np.allclose(got, _run(src, {"x": x}), atol=0.01)


def test_integer_math_done_in_float_stays_fp32(tmp_path):
    """torch.histc as torch.onnx lowers it (Mixtral's router counts tokens per expert): expert ids
    cast to float, compared with float bin edges, counted, cast back to int. In FP16 the last edge
    (3.0000002) became 3.0, every token of expert 3 was dropped, and ONNX Runtime failed further on
    (rows 5 by 8). The ids' float math, the comparison and its constant stay FP32."""
    from toolchain.onnxtools.fp16 import counting_in_float

    edges = numpy_helper.from_array(np.array([[0.0, 0.75, 1.5, 2.25, np.nextafter(np.float32(3.0), np.float32(4.0))]], np.float32).T, "edges")
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["ids"], ["ids_f"], to=T.FLOAT, name="ids_to_float"),
            helper.make_node("Unsqueeze", ["ids_f", "zero"], ["row"], name="row"),
            helper.make_node("Less", ["row", "edges"], ["below"], name="below"),  # [bins, tokens]
            helper.make_node("Cast", ["below"], ["below_f"], to=T.FLOAT, name="below_f"),
            helper.make_node("ReduceSum", ["below_f", "one"], ["cumulative"], keepdims=0, name="count"),
            helper.make_node("Cast", ["cumulative"], ["counts"], to=T.INT64, name="to_int"),
            helper.make_node("Less", ["row", "edges"], ["below2"], name="below2"),  # a second layer's router shares the edges
            helper.make_node("Cast", ["below2"], ["below2_f"], to=T.FLOAT, name="below2_f"),
            helper.make_node("ReduceSum", ["below2_f", "one"], ["cumulative2"], keepdims=0, name="count2"),
            helper.make_node("Cast", ["cumulative2"], ["counts2"], to=T.INT64, name="to_int2"),
            helper.make_node("MatMul", ["x", "w"], ["y"], name="dense"),  # real activations: still FP16
        ],
        "g",
        [helper.make_tensor_value_info("ids", T.INT64, ["tokens"]), helper.make_tensor_value_info("x", T.FLOAT, ["b", 4])],
        [helper.make_tensor_value_info(n, T.INT64, [5]) for n in ("counts", "counts2")] + [helper.make_tensor_value_info("y", T.FLOAT, ["b", 4])],
        [
            edges,
            numpy_helper.from_array(np.array([0], np.int64), "zero"),
            numpy_helper.from_array(np.array([1], np.int64), "one"),
            numpy_helper.from_array(np.eye(4, dtype=np.float32), "w"),
        ],  # fmt: skip
    )
    src = _save(graph, tmp_path / "histc.onnx")
    assert counting_in_float(onnx.load(str(src)))[:6] == ["ids_to_float", "row", "below", "below_f", "count", "to_int"]
    feed = {"ids": np.array([0, 1, 2, 3, 3, 3], np.int64), "x": np.ones((2, 4), np.float32)}
    assert _run(src, feed).tolist() == [0, 1, 2, 3, 6]  # tokens below each edge
    record = to_fp16(src, tmp_path / "fp16.onnx")
    session = ort.InferenceSession(str(tmp_path / "fp16.onnx"), providers=["CPUExecutionProvider"])
    assert [c.tolist() for c in session.run(["counts", "counts2"], feed)] == [[0, 1, 2, 3, 6]] * 2
    assert "dense" not in record["nodes_kept_fp32"]


def test_a_constant_cast_back_to_fp32_keeps_its_fp32_value():
    """onnxconverter-common casts a kept-FP32 node's inputs before it decides which constants to
    keep FP32, so a constant read only by such nodes was still lowered to FP16 and cast back
    (Mixtral's bin edge 3.0000002 -> 3.0). The cast now reads the original."""
    from toolchain.onnxtools.fp16 import restore_fp32_constants

    edge = np.nextafter(np.float32(3.0), np.float32(4.0))
    original = numpy_helper.from_array(np.array([edge], np.float32), "edge")
    model = helper.make_model(
        helper.make_graph(
            [helper.make_node("Cast", ["edge"], ["edge32"], to=T.FLOAT, name="back"), helper.make_node("Less", ["x", "edge32"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", T.FLOAT, [1])],
            [helper.make_tensor_value_info("y", T.BOOL, [1])],
            [numpy_helper.from_array(np.array([edge], np.float16), "edge")],
        )
    )
    assert restore_fp32_constants(model, {"edge": original}) == ["back"]
    assert [t.name for t in model.graph.initializer] == ["edge_fp32"]
    assert numpy_helper.to_array(model.graph.initializer[0])[0] == edge
    assert restore_fp32_constants(model, {"edge": original}) == []  # nothing left to restore
