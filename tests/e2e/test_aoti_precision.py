"""AOTInductor in FP32 (freezing chosen by measurement), BF16 (autocast) and INT8 (PT2E),
and the selection of the fastest artifact, which Triton then serves under the model's name."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tests.e2e.conftest import mlpack
from tests.e2e.test_build_failures import write_recipe
from toolchain import cpuclass
from toolchain.manifest import schema
from toolchain.torchtools import gemm

RECIPE = """\
name: fast
source:
  framework: pytorch
  factory: cnn.py:build
  kwargs: {channels: 8, classes: 5}
inputs:
  - {name: image, dtype: float32, shape: [batch, 3, 16, 16]}
outputs: [logits]
dims:
  batch: {min: 1, opt: 2, max: 4}
targets:
  - kind: onnx
  - kind: aoti
  - {kind: aoti, name: aoti-bf16, precision: bf16}
  - {kind: aoti, name: aoti-int8, precision: int8, fallback: auto}
parity:
  samples: 6
  scores: [logits]
select: {metric: latency, batch: 1}
serve:
  triton: {max_batch_size: 4, targets: [onnx, aoti, aoti-bf16, aoti-int8], backend: python}
  threads: 2
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fast")
    recipe = write_recipe(folder, RECIPE)
    proc = mlpack("build", str(recipe), "--out", str(folder / "out"), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder, recipe, json.loads(proc.stdout), proc


def target(m: dict, name: str) -> dict:
    return next(t for t in m["targets"] if t["name"] == name)


def test_fp32_keeps_the_faster_freezing_that_passes(built):
    _, _, m, _ = built
    a = target(m, "aoti")["aoti"]
    assert a["precision"] == "fp32" and a["timed_threads"] == 1
    choice = {c["freezing"]: c for c in a["freezing_choice"]}
    assert set(choice) == {True, False} and all(c["passed"] and c["median_ms"] > 0 for c in choice.values())
    fastest = min(choice.values(), key=lambda c: c["median_ms"])["freezing"]
    assert a["freezing"] == fastest
    # What the choice compiled shows in the package: frozen weights run on oneDNN, unfrozen on ATen.
    k = a["kernels"]
    assert (k["onednn_float"] > 0) if a["freezing"] else (k["aten_float"] > 0 and k["onednn_float"] == 0), k


def test_bf16_keeps_fp32_inputs_and_outputs_within_budget(built):
    _, _, m, _ = built
    t = target(m, "aoti-bf16")
    kernels, tuned = t["aoti"].pop("kernels"), t["aoti"].pop("gemm")
    assert t["aoti"] == {"precision": "bf16", "autocast": "bfloat16", "io": "float32", "freezing": True, "compiled_for": None}  # no fleet: this machine
    import torch

    # on AMX each linear was timed on Inductor's C++ GEMM (AMX BF16 tiles) and oneDNN's (torchtools/gemm.py)
    assert tuned["autotuned"] == (cpuclass.machine_class() in gemm.TEMPLATE_ON), tuned
    assert tuned.get("threads") == (2 if tuned["autotuned"] else None), tuned  # serve.threads
    if tuned["autotuned"]:  # the convolutions stay on oneDNN; the classifier's linear on whichever was faster
        assert kernels["onednn_float"] > 0 and kernels["aten_float"] == 0 and kernels["int8"] == kernels["int8_template"] == 0, kernels
    elif torch.ops.mkldnn._is_mkldnn_bf16_supported():  # Frozen: every conv/linear runs on oneDNN with prepacked weights, none on plain ATen.
        assert kernels["onednn_float"] > 0 and kernels["aten_float"] == 0 and kernels["int8"] == 0
    else:  # AVX2 (a Zen 1): oneDNN has no BF16 path, so Inductor keeps them on ATen
        assert kernels["aten_float"] > 0 and kernels["onednn_float"] == 0 and kernels["int8"] == 0
    assert t["parity"]["tolerance"] == {"cosine": 0.999, "top1": 0.99}
    assert [s["dtype"] for s in t["signature"]["inputs"] + t["signature"]["outputs"]] == ["float32", "float32"]


def test_int8_is_pt2e_calibrated_apart_from_parity(built):
    _, _, m, _ = built
    t = target(m, "aoti-int8")
    q = t["quantization"]
    assert q["mode"] == "int8" and q["format"].startswith("PT2E") and q["attempts"][0]["why"] == "plain"
    assert q["calibration"]["source"] == "generated" and q["calibration"]["seed"] == [0, 1]  # never the parity stream
    assert t["parity"]["passed"] and t["parity"]["tolerance"] == {"cosine": 0.99, "top1": 0.95}
    # The compiled package was judged before the gate, and saw what the gate sees.
    check = q["compiled_checks"][-1]
    assert check["passed"] and check["floor"] == 0.99
    assert abs(check["compiled_cosine"] - min(o["cosine"] for o in t["parity"]["outputs"].values())) < 1e-5
    # The package really computes in INT8: Inductor lowered the q/dq pairs to oneDNN qconv/qlinear
    # and prepacked the weights (no kernel dequantizes weights per call).
    kernels = t["aoti"]["kernels"]
    assert kernels["int8"] > 0 and kernels["weight_dequant_per_call"] == 0, kernels
    assert not any("INT8 kernel" in w for w in t.get("warnings", []))


def test_selection_ranks_every_artifact_and_triton_serves_the_winner(built):
    folder, _, m, proc = built
    sel = m["selection"]
    assert [r["target"] for r in sel["ranking"]] and {r["target"] for r in sel["ranking"]} == {"onnx", "aoti", "aoti-bf16", "aoti-int8"}
    times = [r["median_ms"] for r in sel["ranking"]]
    assert sel["winner"] == sel["ranking"][0]["target"] and sel["tie"] == 0.03
    assert times[1:] == sorted(times[1:])  # the winner first, the rest in speed order
    if sel["tie_break"] is None:
        assert times[0] == min(times)
    else:  # a slower artifact within select.tie of the fastest came closer to the source
        assert min(times) < times[0] <= min(times) * 1.03 and "closer to the source" in sel["tie_break"]
    assert (sel["metric"], sel["batch"], sel["threads"]) == ("latency", 1, 1) and sel["machine"]["cores"] >= 1
    assert all(r["vs_eager"] > 0 for r in sel["ranking"]) and sel["eager"]["median_ms"] > 0
    models = {x["name"]: x["target"] for x in m["serving"]["models"]}
    assert sel["served_as"] == "fast" and models["fast"] == sel["winner"]
    assert f"fast_{sel['winner'].replace('-', '_')}" not in models and len(models) == 4
    assert (folder / "out" / "fast" / "triton" / "fast" / "config.pbtxt").is_file()
    jsonschema.validate(m, schema())
    assert "selection: latency at batch 1" in proc.stderr
    shown = mlpack("inspect", str(folder / "out" / "fast"))
    assert shown.returncode == 0 and "selection" in shown.stdout and sel["winner"] in shown.stdout


def test_a_rebuild_reuses_the_timings_on_the_same_machine_type_only(built):
    folder, recipe, m, _ = built
    again = mlpack("build", str(recipe), "--out", str(folder / "out"), "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["selection"]["cache"]["hit"]
    assert json.loads(again.stdout)["selection"]["ranking"] == m["selection"]["ranking"]
    other = mlpack("build", str(recipe), "--out", str(folder / "out"), "--json", env={"MLPACK_MACHINE_TYPE": "another-cpu"})
    sel = json.loads(other.stdout)["selection"]
    assert other.returncode == 0 and not sel["cache"]["hit"] and sel["machine"]["model"] == "another-cpu"


@pytest.mark.triton
def test_serve_check_passes_on_the_served_winner(built):
    folder, _, _, _ = built
    proc = mlpack("serve-check", str(folder / "out" / "fast"), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads(proc.stdout)
    winner = m["selection"]["winner"]
    assert target(m, winner)["serving_check"]["triton"]["status"] == "ok"
    assert target(m, winner)["serving_check"]["triton"]["model"] == "fast"
    # serve.threads reaches the torch-run models' configs (model.py sets torch's threads from it), and they serve
    for name in ("aoti", "aoti-bf16", "aoti-int8"):
        model = "fast" if name == winner else f"fast_{name.replace('-', '_')}"
        config = (folder / "out" / "fast" / "triton" / model / "config.pbtxt").read_text()
        assert 'key: "INTRA_OP_THREAD_COUNT"' in config and 'string_value: "2"' in config, config
        assert target(m, name)["serving_check"]["triton"]["status"] == "ok", target(m, name)["serving_check"]
    # and the ONNX model's, under the onnxruntime backend's key (model.py's loader gives its session as many)
    onnx = "fast" if winner == "onnx" else "fast_onnx"
    config = (folder / "out" / "fast" / "triton" / onnx / "config.pbtxt").read_text()
    assert 'key: "intra_op_thread_count"' in config and "INTRA_OP_THREAD_COUNT" not in config, config
    assert target(m, "onnx")["serving_check"]["triton"]["status"] == "ok", target(m, "onnx")["serving_check"]
