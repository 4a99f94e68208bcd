"""Reduced precision end to end: FP16 and INT8 ONNX on a small CNN and a small
transformer, their budgets, the calibration split, the node report and the
fallback, and the TensorRT target where it cannot run."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from tests.e2e.conftest import mlpack
from tests.e2e.test_build_failures import write_recipe
from toolchain.machine import cpu_identity
from toolchain.manifest import schema
from toolchain.onnxtools.kernels import INTEGER_OPS, cpu_int8_path, ops_at_load
from toolchain.recipe import QUANTIZED_TOLERANCE
from toolchain.serving.triton import check_config_against_signature
from toolchain.tensors import Signature


def ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.fixture(params=["cnn", "bert"])
def built(request, cnn_precision_build, bert_precision_build):
    return {"cnn": cnn_precision_build, "bert": bert_precision_build}[request.param]


def test_reduced_precision_targets_hold_their_budgets(built):
    m = built.manifest
    jsonschema.validate(m, schema())
    for t in m["targets"]:
        if t["kind"] == "tensorrt":
            continue
        assert t["status"] == "ok" and t["parity"]["passed"], t
        assert [f["path"] for f in t["files"]] == [f"{t['name']}/model.onnx"]  # intermediates are gone
        assert sorted(p.name for p in (built.root / t["name"]).iterdir()) == ["model.onnx"]
        mode = (t.get("quantization") or {}).get("mode")
        tol = t["parity"]["tolerance"]
        if mode:  # judged by floors, not FP32's elementwise atol/rtol
            assert "atol" not in tol and "rtol" not in tol and tol["cosine"] >= QUANTIZED_TOLERANCE[mode]["cosine"]
            assert t["parity"]["outputs"]["logits"]["cosine"] >= tol["cosine"]
        else:
            assert tol == {"atol": 1e-4, "rtol": 1e-3}


def test_fp16_keeps_fp32_at_the_boundary(built):
    t = built.target("onnx-fp16")
    model = onnx.load(str(built.root / "onnx-fp16" / "model.onnx"))
    weights = [i for i in model.graph.initializer if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    fp16 = [i for i in weights if i.data_type == onnx.TensorProto.FLOAT16]
    assert sum(np.prod(i.dims) for i in fp16) > 0.9 * sum(np.prod(i.dims) for i in weights)
    assert t["quantization"]["ops_kept_fp32"] and set(t["quantization"]["ops_kept_fp32"]) <= ops(built.root / "onnx-fp16" / "model.onnx")
    sig = Signature.from_dict(t["signature"])
    assert [o.dtype for o in sig.outputs] == ["float32"]
    assert {i.dtype for i in sig.inputs} <= {"float32", "int64"}
    assert "Cast" in ops(built.root / "onnx-fp16" / "model.onnx")


def test_static_int8_is_qdq_calibrated_apart_from_parity(built):
    t = built.target("onnx-int8")
    q = t["quantization"]
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops(built.root / "onnx-int8" / "model.onnx")
    assert q["format"] == "QDQ" and q["per_channel"] is True
    cal = q["calibration"]
    assert cal["source"] == "generated" and cal["seed"] == [0, 1] and cal["samples"] == 32
    assert "not meaningful" in cal["warning"] and cal["warning"] in t["warnings"]
    assert f"warning onnx-int8: {cal['warning'][:40]}" in " ".join(built.proc.stderr.split())


def test_int8_runs_on_integer_kernels_only_with_level_2_fusions(built):
    """The manifest says which integer kernels ONNX Runtime runs the QDQ graph with and what a
    server must keep for them: below ORT_ENABLE_EXTENDED, or with QDQ fusion off, there are none."""
    path = built.root / "onnx-int8" / "model.onnx"
    rt = built.target("onnx-int8")["quantization"]["runtime"]
    assert rt["cpu_int8_path"] == cpu_int8_path(cpu_identity()["features"]) and "ORT_ENABLE_EXTENDED" in rt["needs"]
    assert {"QLinearConv", "QLinearMatMul"} & set(rt["integer_ops"]) and rt["integer_ops"] == {k: v for k, v in ops_at_load(path).items() if k in INTEGER_OPS}
    assert not INTEGER_OPS & set(ops_at_load(path, "basic"))
    assert not INTEGER_OPS & set(ops_at_load(path, "extended", {"session.disable_quant_qdq": "1"}))


def test_cnn_precision_manifest_and_triton(cnn_precision_build):
    b = cnn_precision_build
    assert {t["name"]: t["status"] for t in b.manifest["targets"]} == {"onnx": "ok", "onnx-fp16": "ok", "onnx-int8": "ok", "tensorrt": "skipped"}
    assert "tensorrt Python package is not installed" in b.target("tensorrt")["reason"]
    assert b.target("onnx-int8")["parity"]["tolerance"] == {"cosine": 0.999, "top1": 0.98}
    assert b.target("onnx-int8")["excluded_nodes"] == []  # fallback: auto had nothing to do
    assert b.target("onnx-fp16")["parity"]["tolerance"] == QUANTIZED_TOLERANCE["fp16"]
    served = {m["target"] for m in b.manifest["serving"]["models"]}
    assert served == {"onnx", "onnx-fp16", "onnx-int8"}  # not the skipped engine
    for model in b.manifest["serving"]["models"]:
        text = (b.root / model["path"] / "config.pbtxt").read_text()
        text_format.Parse(text, mc.ModelConfig())
        assert check_config_against_signature(text, Signature.from_dict(b.target(model["target"])["signature"]), "onnx") == []


def test_bert_optimize_and_dynamic_int8(bert_precision_build):
    b = bert_precision_build
    opt = b.target("onnx-opt")["optimization"]
    assert opt["method"] == "onnxruntime.transformers" and opt["model_type"] == "bert"
    assert opt["fused"].get("SkipLayerNormalization") and opt["nodes"]["after"] < opt["nodes"]["before"]
    assert "SkipLayerNormalization" in ops(b.root / "onnx-opt" / "model.onnx")
    dyn = b.target("onnx-int8-dynamic")
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops(b.root / "onnx-int8-dynamic" / "model.onnx")
    assert dyn["quantization"]["mode"] == "int8-dynamic" and "calibration" not in dyn["quantization"]
    # ONNX Runtime fuses DynamicQuantizeLinear + MatMulInteger into one kernel at load (level 2).
    assert {"DynamicQuantizeMatMul", "MatMulIntegerToFloat"} & set(dyn["quantization"]["runtime"]["integer_ops"])
    assert b.target("onnx-int8")["quantization"]["calibration"]["method"] == "percentile"


# ------------------------------------------- a budget INT8 cannot meet, real data

TIGHT = """\
name: tight
source:
  framework: pytorch
  factory: cnn.py:build
  kwargs: {channels: 8, classes: 5}
inputs:
  - name: image
    dtype: float32
    shape: [batch, 3, 16, 16]
outputs: [logits]
dims:
  batch: {min: 1, opt: 2, max: 4}
data:
  path: samples.npz
targets:
  - kind: onnx
    name: int8-strict
    quantize: int8
  - kind: onnx
    name: int8-auto
    quantize: int8
    fallback: auto
parity:
  samples: 6
  per_target:
    int8-strict: {cosine: 0.9999999}
    int8-auto: {cosine: 0.9999999}
"""


@pytest.fixture(scope="module")
def tight(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tight")
    recipe = write_recipe(folder, TIGHT)
    rows = np.random.default_rng(7).uniform(0, 1, size=(64, 3, 16, 16)).astype(np.float32)
    np.savez(folder / "samples.npz", image=rows)
    proc = mlpack("build", str(recipe), "--out", str(folder / "out"), "--json")
    return folder / "out" / "tight.failed", proc, {t["name"]: t for t in json.loads(proc.stdout)["targets"]}


def test_missed_budget_reports_the_offending_nodes(tight):
    root, proc, targets = tight
    assert proc.returncode == 3, proc.stderr
    t = targets["int8-strict"]
    assert t["status"] == "failed" and t["reason"] == "parity failed" and t["excluded_nodes"] == []
    report = t["quantization"]["node_report"]
    assert report and report[0]["added_error"] > 0 and report[0]["quantized"]
    assert report == sorted(report, key=lambda r: -r["added_error"])
    fp32_nodes = {"Conv", "Relu", "MaxPool", "ReduceMean", "Reshape", "Gemm"}
    assert {r["op_type"] for r in report} <= fp32_nodes
    assert any("misses its budget" in w and report[0]["node"] in w and "fallback: auto" in w for w in t["warnings"])
    assert "misses its budget" in proc.stderr


def test_fallback_searches_until_the_budget_holds(tight):
    """fallback: auto tries calibration methods, op-type choices and nodes ranked by their effect on the outputs."""
    root, proc, targets = tight
    t = targets["int8-auto"]
    assert t["status"] == "ok" and t["parity"]["passed"], t
    q = t["quantization"]
    attempts = q["attempts"]
    assert [a["passed"] for a in attempts] == [False] * (len(attempts) - 1) + [True]
    assert attempts[0]["why"] == "plain" and q["chosen"]["why"] == attempts[-1]["why"]
    assert attempts[-1]["excluded"] == len(t["excluded_nodes"])
    assert q["calibration"]["method"] == attempts[-1]["calibration"]
    # the excluded nodes really run in float: none reads a dequantized tensor
    model = onnx.load(str(root / "int8-auto" / "model.onnx"))
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    excluded = [n for n in model.graph.node if n.name in t["excluded_nodes"]]
    assert len(excluded) == len(t["excluded_nodes"])
    assert not any(dq & set(n.input) for n in excluded)


def test_calibration_uses_data_rows_the_parity_split_did_not(tight):
    root, proc, targets = tight
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["parity_data"]["source"] == "data"
    cal = targets["int8-auto"]["quantization"]["calibration"]
    parity_rows = sum(len(v) for k, v in np.load(root / "parity" / "samples.npz").items())
    assert cal["source"] == "data" and cal["warning"] is None and targets["int8-auto"]["warnings"] == []
    assert cal["parity_rows"] == [0, parity_rows] and cal["rows"][0] == parity_rows < cal["rows"][1] <= 64
    assert cal["samples"] >= 1


def test_required_tensorrt_without_it_exits_4(tmp_path):
    text = TIGHT.replace("data:\n  path: samples.npz\n", "").split("targets:")[0] + "targets:\n  - kind: tensorrt\n    required: true\n"
    proc = mlpack("build", str(write_recipe(tmp_path, text)), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 4, proc.stderr
    t = json.loads(proc.stdout)["targets"][0]
    assert t["status"] == "failed" and "tensorrt" in t["reason"] and "required: true" in t["reason"]
