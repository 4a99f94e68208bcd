"""The example recipes, built by the CLI: artifacts, parity, manifest, Triton layout."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from tests.e2e.conftest import ROOT, mlpack
from toolchain.feeds import load_feeds
from toolchain.manifest import schema, sha256_file
from toolchain.serving.triton import check_config_against_signature
from toolchain.tensors import Signature, onnx_signature


@pytest.fixture(params=["cnn", "bert"])
def built(request, cnn_build, bert_build):
    return {"cnn": cnn_build, "bert": bert_build}[request.param]


def test_manifest_matches_schema_and_files(built):
    m = built.manifest
    jsonschema.validate(m, schema())
    assert json.loads((built.root / "manifest.json").read_text()) == m
    assert m["environment"]["torch"] and m["environment"]["onnxruntime"] and m["environment"]["device"] == "cpu"
    assert {t["name"]: t["status"] for t in m["targets"]} == {"onnx": "ok", "aoti": "ok"}
    for t in m["targets"]:
        assert t["parity"]["passed"] and t["parity"]["samples"] == 8
        assert t["files"], t
        for f in t["files"]:
            p = built.root / f["path"]
            assert sha256_file(p) == f["sha256"] and p.stat().st_size == f["bytes"]


def test_layout(built):
    name = built.manifest["name"].replace("-", "_")
    assert (built.root / "onnx" / "model.onnx").is_file()
    assert (built.root / "aoti" / "model.pt2").is_file()
    assert (built.root / "triton" / f"{name}_onnx" / "1" / "model.onnx").is_file()
    assert (built.root / "triton" / f"{name}_aoti" / "1" / "model.pt2").is_file()
    assert not list(built.root.parent.glob(".*tmp-*")), "a temporary build directory was left behind"


def test_triton_configs_parse_and_agree_with_artifacts(built):
    models = built.manifest["serving"]["models"]
    assert {m["target"] for m in models} == {"onnx", "aoti"}
    for model in models:
        text = (built.root / model["path"] / "config.pbtxt").read_text()
        cfg = text_format.Parse(text, mc.ModelConfig())  # Triton's own schema: unknown fields raise
        assert cfg.name == model["name"]
        target = built.target(model["target"])
        sig = Signature.from_dict(target["signature"])
        if target["kind"] == "onnx":  # the signature must be the ONNX graph's own
            assert onnx_signature(built.root / model["path"] / "1" / "model.onnx") == sig
        assert check_config_against_signature(text, sig, target["kind"]) == []


def test_cnn_triton_native_configs(cnn_build):
    onnx_cfg = text_format.Parse((cnn_build.root / "triton/tiny_cnn_onnx/config.pbtxt").read_text(), mc.ModelConfig())
    assert onnx_cfg.platform == "onnxruntime_onnx" and onnx_cfg.max_batch_size == 16
    assert list(onnx_cfg.input[0].dims) == [3, 32, 32] and onnx_cfg.input[0].data_type == mc.TYPE_FP32
    assert list(onnx_cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    aoti_cfg = text_format.Parse((cnn_build.root / "triton/tiny_cnn_aoti/config.pbtxt").read_text(), mc.ModelConfig())
    assert (aoti_cfg.platform, aoti_cfg.backend, aoti_cfg.max_batch_size) == ("torch_aoti", "pytorch", 0)
    assert [i.name for i in aoti_cfg.input] == ["INPUT__0"] and list(aoti_cfg.input[0].dims) == [-1, 3, 32, 32]


def test_parity_samples_span_dynamic_dims(bert_build):
    samples = load_feeds(bert_build.root / "parity" / "samples.npz")
    batches = {s["input_ids"].shape[0] for s in samples}
    seqs = {s["input_ids"].shape[1] for s in samples}
    assert {1, 8} <= batches and {4, 64} <= seqs and len(seqs) > 2


def test_aoti_runner_survives_non_contiguous_inputs(bert_build):
    """The AOTI layout pitfall: raw non-contiguous feeds go wrong; the runner's don't."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "scripts/check_aoti_layout.py"), str(bert_build.root), "aoti"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "through AotiRunner     : 1.000000" in proc.stdout


def test_python_backend_model_py_runs_the_built_package(bert_build, monkeypatch):
    """tiny-bert uses serve.triton.backend: python; drive its model.py with the parity samples."""
    from tests.triton_stub import StubPbUtils

    samples = load_feeds(bert_build.root / "parity" / "samples.npz")
    reference = load_feeds(bert_build.root / "parity" / "reference.npz")
    for target in ("aoti", "onnx"):
        model_dir = bert_build.root / "triton" / f"tiny_bert_{target}"
        text = (model_dir / "config.pbtxt").read_text()
        assert 'backend: "python"' in text
        from tests.triton_stub import load_model_py

        m = load_model_py(model_dir, text, monkeypatch)
        # Requests of one shape are merged by dynamic batching; one request of another shape runs alone.
        same = [s for s in samples if s["input_ids"].shape == samples[2]["input_ids"].shape][:1] * 2
        for batch in ([samples[0]], [samples[1]], same):
            reqs = [{k: StubPbUtils.Tensor(k, v) for k, v in s.items()} for s in batch]
            for s, resp in zip(batch, m.execute(reqs)):
                assert resp.error is None, resp.error and resp.error.msg
                ref = reference[next(i for i, x in enumerate(samples) if x is s)]["logits"]
                np.testing.assert_allclose(resp.outputs["logits"], ref, atol=1e-4, rtol=1e-3)


def test_inspect_prints_summary(cnn_build):
    proc = mlpack("inspect", str(cnn_build.root))
    assert proc.returncode == 0, proc.stderr
    assert "tiny-cnn" in proc.stdout and "onnx/model.onnx" in proc.stdout and "triton/tiny_cnn_onnx" in proc.stdout
