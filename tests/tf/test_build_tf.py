"""The TensorFlow example recipes built by the CLI: parity, XLA, ONNX, TF Serving and Triton layouts."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from toolchain.feeds import load_feeds
from toolchain.manifest import schema, sha256_file
from toolchain.serving.protos import batching_parameters_class
from toolchain.serving.triton import check_config_against_signature
from toolchain.tensors import Signature

pytestmark = pytest.mark.tf

TARGETS = {"keras-mobilenet": {"xla", "savedmodel", "onnx"}, "tf-scorer": {"xla", "savedmodel", "onnx"}}


def must_compile(saved_model_dir: Path) -> list[str]:
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel.FromString((saved_model_dir / "saved_model.pb").read_bytes())
    return [f.signature.name for mg in sm.meta_graphs for f in mg.graph_def.library.function if f.attr["_XlaMustCompile"].b]


def tfserving_models(built) -> list[dict]:
    return [m for m in built.manifest["serving"]["models"] if m["server"] == "tfserving"]


def test_manifest_schema_targets_and_parity(tf_built):
    m = tf_built.manifest
    jsonschema.validate(m, schema())
    assert json.loads((tf_built.root / "manifest.json").read_text()) == m
    assert m["framework"] == "tensorflow" and m["environment"]["tensorflow"] and m["environment"]["tf2onnx"]
    assert {t["name"]: t["status"] for t in m["targets"]} == {t: "ok" for t in TARGETS[m["name"]]}
    for t in m["targets"]:
        assert t["parity"]["passed"], t
        for f in t["files"]:
            p = tf_built.root / f["path"]
            assert sha256_file(p) == f["sha256"] and p.stat().st_size == f["bytes"]


def test_reference_outputs_are_not_vanishing(tf_built):
    """Parity on near-zero outputs would pass anything: the example models must produce real signal."""
    for ref in load_feeds(tf_built.root / "parity" / "reference.npz"):
        for name, value in ref.items():
            assert np.abs(value).max() > 0.1, name


def test_parity_samples_span_the_batch_dim(tf_built):
    batches = [s[next(iter(s))].shape[0] for s in load_feeds(tf_built.root / "parity" / "samples.npz")]
    assert batches[0] == 1 and batches[1] == max(batches) > 1


def test_xla_graph_must_compile_and_savedmodel_does_not(tf_built):
    assert must_compile(tf_built.root / "xla" / "saved_model")
    name = tf_built.manifest["name"]
    assert must_compile(tf_built.root / "tfserving" / name / "1")  # the served copy too
    assert must_compile(tf_built.root / "savedmodel" / "saved_model") == []


def test_input_mapping_is_reported_when_names_differ(keras_build, scorer_build):
    # MobileNetV2's input is unnamed in Keras; the recipe calls it `image`.
    assert "source: inputs mapped by position (names differ): image -> " in keras_build.proc.stderr
    assert "inputs mapped by position" in (keras_build.root / "logs" / "reference.log").read_text()
    assert "mapped by position" not in scorer_build.proc.stderr  # features/mask are the module's own names


def test_onnx_keeps_dynamic_dims_opset_and_output_order(tf_built):
    import onnx

    model = onnx.load(str(tf_built.root / "onnx" / "model.onnx"))
    want_opset = 17 if tf_built.manifest["name"] == "keras-mobilenet" else 18
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {want_opset}
    for value in model.graph.input:
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    recipe_outputs = {"keras-mobilenet": ["logits"], "tf-scorer": ["scores", "norm"]}[tf_built.manifest["name"]]
    assert [o.name for o in model.graph.output] == recipe_outputs


def test_tfserving_models_config(tf_built):
    from tensorflow_serving.config import model_server_config_pb2

    repo = tf_built.root / "tfserving"
    cfg = text_format.Parse((repo / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())
    configs = list(cfg.model_config_list.config)
    assert [c.name for c in configs] == [m["name"] for m in tfserving_models(tf_built)]
    assert configs[0].name == tf_built.manifest["name"]
    for c in configs:
        assert c.model_platform == "tensorflow"
        assert Path(c.base_path) == repo.resolve() / c.name and (Path(c.base_path) / "1" / "saved_model.pb").is_file()
    policy = configs[0].model_version_policy
    if tf_built.manifest["name"] == "tf-scorer":
        assert list(policy.specific.versions) == [1]
    else:
        assert policy.latest.num_versions == 1


def test_tfserving_warmup_requests_parse_and_hold_parity_samples(tf_built):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    samples = load_feeds(tf_built.root / "parity" / "samples.npz")
    for model in tfserving_models(tf_built):
        path = tf_built.root / model["path"] / "1" / "assets.extra" / "tf_serving_warmup_requests"
        logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path))]
        shapes = {tuple(s[n].shape for n in sorted(s)) for s in samples}
        assert len(logs) == len(shapes)
        for log in logs:
            req = log.predict_log.request
            assert (req.model_spec.name, req.model_spec.signature_name) == (model["name"], "serving_default")
            feed = {n: tf.make_ndarray(t) for n, t in req.inputs.items()}
            assert any(all(np.array_equal(feed[n], s[n]) for n in s) and feed.keys() == s.keys() for s in samples)


def test_tfserving_savedmodel_loads_fresh_and_matches_reference(tf_built):
    import tensorflow as tf

    samples = load_feeds(tf_built.root / "parity" / "samples.npz")[:2]
    reference = load_feeds(tf_built.root / "parity" / "reference.npz")[:2]
    for model in tfserving_models(tf_built):
        fn = tf.saved_model.load(str(tf_built.root / model["path"] / "1")).signatures["serving_default"]
        for feed, ref in zip(samples, reference):
            out = fn(**{n: tf.constant(v) for n, v in feed.items()})
            for name, want in ref.items():
                np.testing.assert_allclose(out[name].numpy(), want, atol=1e-4, rtol=1e-3)


def test_tfserving_readme_has_the_exact_command(tf_built):
    repo = (tf_built.root / "tfserving").resolve()
    text = (repo / "README.md").read_text()
    cmd = next(line for line in text.splitlines() if line.startswith("tensorflow_model_server "))
    assert f"--model_config_file={repo / 'models.config'}" in cmd
    assert "--xla_cpu_compilation_enabled=true" in cmd  # both examples serve an xla target
    batching = tf_built.manifest["name"] == "keras-mobilenet"
    assert (f"--batching_parameters_file={repo / 'batching_parameters.txt'}" in cmd) == batching
    assert (repo / "batching_parameters.txt").exists() == batching


def test_tfserving_batching_parameters(keras_build):
    text = (keras_build.root / "tfserving" / "batching_parameters.txt").read_text()
    msg = text_format.Parse(text, batching_parameters_class()())
    assert (msg.max_batch_size.value, msg.batch_timeout_micros.value, list(msg.allowed_batch_sizes)) == (8, 1000, [2, 4, 8])


def test_triton_configs(tf_built):
    models = [m for m in tf_built.manifest["serving"]["models"] if m["server"] == "triton"]
    assert {m["target"] for m in models} >= {"onnx"} and len(models) == 2
    for model in models:
        text = (tf_built.root / model["path"] / "config.pbtxt").read_text()
        cfg = text_format.Parse(text, mc.ModelConfig())
        target = tf_built.target(model["target"])
        assert check_config_against_signature(text, Signature.from_dict(target["signature"]), target["kind"]) == []
        if target["kind"] != "onnx":
            assert cfg.platform == "tensorflow_savedmodel"
            assert (tf_built.root / model["path"] / "1" / "model.savedmodel" / "saved_model.pb").is_file()
            assert (
                f"triton: {model['name']}: platform tensorflow_savedmodel: Triton deprecated its TensorFlow backend from release 25.03" in tf_built.proc.stderr
            )


def test_unchanged_rebuild_imports_no_tensorflow(scorer_build):
    """A cache hit re-creates both repositories (warmup records included) without TensorFlow."""
    import json
    import os
    import subprocess
    import sys

    from tests.e2e.conftest import ROOT

    env = {**os.environ, "CI": "true", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "toolchain", "build", "recipes/tf-scorer.yaml", "--out", str(scorer_build.root.parent), "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all(t["cache"]["hit"] for t in json.loads(proc.stdout)["targets"])
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & {"tensorflow", "keras", "tf2onnx", "torch", "onnx", "onnxruntime"}
    assert (scorer_build.root / "tfserving" / "tf-scorer" / "1" / "assets.extra" / "tf_serving_warmup_requests").stat().st_size > 0
