"""The TF Serving loader check on a hand-made layout (the TensorFlow build path
writes the same layout; see SPEC "Output layout"). Needs TensorFlow."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from toolchain.manifest import schema
from toolchain.serving.check import serve_check
from toolchain.serving.tfserving_check import LOADER, predict_inputs

pytestmark = pytest.mark.tf

MODELS_CONFIG = 'model_config_list {{ config {{ name: "tiny" base_path: "/models/tiny" model_platform: "tensorflow" {policy} }} }}\n'


def _save_model(vdir, seed: int) -> None:
    import tensorflow as tf

    class Tiny(tf.Module):
        def __init__(self):
            self.w = tf.Variable(tf.random.stateless_normal([12, 3], seed=[seed, 2]))

        @tf.function(input_signature=[tf.TensorSpec([None, 12], tf.float32, name="x")])
        def serve(self, x):
            return {"y": tf.nn.relu(tf.matmul(x, self.w))}

    m = Tiny()
    tf.saved_model.save(m, str(vdir), signatures={"serving_default": m.serve})


def _warmup_record(name: str, arr: np.ndarray) -> bytes:
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.inputs[name].CopyFrom(tf.make_tensor_proto(arr))
    return log.SerializeToString()


def _write_warmup(vdir, name: str = "x") -> None:
    import tensorflow as tf

    (vdir / "assets.extra").mkdir()
    with tf.io.TFRecordWriter(str(vdir / "assets.extra" / "tf_serving_warmup_requests")) as w:
        for b in (1, 4):
            w.write(_warmup_record(name, np.ones((b, 12), np.float32)))


@pytest.fixture
def layout(tmp_path):
    """A published build whose one target is served by TF Serving, version 1."""
    import tensorflow as tf

    root = tmp_path / "tiny"
    vdir = root / "tfserving" / "tiny" / "1"
    _save_model(vdir, seed=1)
    _write_warmup(vdir)
    (root / "tfserving" / "models.config").write_text(MODELS_CONFIG.format(policy=""))
    rng = np.random.default_rng(0)
    samples = [{"x": rng.uniform(-1, 1, (b, 12)).astype(np.float32)} for b in (1, 5, 2)]
    fn = tf.saved_model.load(str(vdir)).signatures["serving_default"]
    reference = [{"y": fn(x=tf.constant(s["x"]))["y"].numpy()} for s in samples]
    (root / "parity").mkdir()
    np.savez(root / "parity" / "samples.npz", **{f"{i}/x": s["x"] for i, s in enumerate(samples)})
    np.savez(root / "parity" / "reference.npz", **{f"{i}/y": r["y"] for i, r in enumerate(reference)})
    target = {
        "name": "savedmodel",
        "kind": "savedmodel",
        "status": "ok",
        "reason": None,
        "build_seconds": 0.0,
        "files": [],
        "signature": {"inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 12]}], "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 3]}]},
        "parity": {"passed": True, "samples": 3, "tolerance": {"atol": 1e-5, "rtol": 1e-4}, "outputs": {}},
    }
    manifest = {
        "schema": "mlpack.manifest/1",
        "name": "tiny",
        "version": 1,
        "framework": "tensorflow",
        "recipe": {"path": "tiny.yaml", "sha256": "0" * 64},
        "environment": {"python": "3", "torch": None, "tensorflow": tf.__version__, "onnx": None, "onnxruntime": None, "tensorrt": None, "device": "cpu"},
        "targets": [target],
        "serving": {
            "triton": None,
            "tfserving": "tfserving",
            "models": [{"server": "tfserving", "name": "tiny", "target": "savedmodel", "path": "tfserving/tiny"}],
        },
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def _check(root) -> tuple[int, dict]:
    result = serve_check(root)
    manifest = json.loads((root / "manifest.json").read_text())
    jsonschema.validate(manifest, schema())
    return result.exit_code, manifest["targets"][0]["serving_check"]["tfserving"]


def test_savedmodel_loads_like_tf_serving(layout):
    result = serve_check(layout)
    assert result.exit_code == 0 and "no Triton models" in result.skipped["triton"]
    code, c = _check(layout)
    assert code == 0 and c["status"] == "ok" and c["backend"] == LOADER
    assert c["requests"] == 3 + 2  # the samples, after the two warmup records
    assert c["parity"]["passed"] and c["parity"]["outputs"]["y"]["max_abs_err"] < 1e-5


def test_other_weights_in_the_served_version_mismatch(layout):
    _save_model(layout / "tfserving" / "tiny" / "2", seed=7)  # latest policy: version 2 is the one served
    code, c = _check(layout)
    assert code == 3 and c["status"] == "mismatch" and c["reason"].startswith("version 2:")


def test_specific_policy_serves_the_listed_versions_only(layout):
    _save_model(layout / "tfserving" / "tiny" / "2", seed=7)
    (layout / "tfserving" / "models.config").write_text(MODELS_CONFIG.format(policy="model_version_policy { specific { versions: 1 } }"))
    code, c = _check(layout)
    assert code == 0 and c["status"] == "ok"


def test_warmup_for_an_unknown_input_is_refused(layout):
    vdir = layout / "tfserving" / "tiny" / "1"
    (vdir / "assets.extra" / "tf_serving_warmup_requests").unlink()
    (vdir / "assets.extra").rmdir()
    _write_warmup(vdir, name="image")
    code, c = _check(layout)
    assert code == 4 and c["status"] == "refused" and "['image'] are not in signature 'serving_default'" in c["reason"]


def test_models_config_without_the_model_is_refused(layout):
    (layout / "tfserving" / "models.config").write_text(MODELS_CONFIG.replace('"tiny"', '"other"').format(policy=""))
    code, c = _check(layout)
    assert code == 4 and "models.config has no config named 'tiny'" in c["reason"]


def test_warmup_encoding_matches_tensorflow_serving():
    """The check reads warmup records with TF Serving's own PredictionLog; other log types are not predict warmups."""
    pl = pytest.importorskip("tensorflow_serving.apis.prediction_log_pb2", reason="tensorflow-serving-api is not installed")
    import tensorflow as tf

    arr = np.arange(24, dtype=np.float32).reshape(2, 12)
    log = pl.PredictionLog()
    log.predict_log.request.model_spec.name = "tiny"
    log.predict_log.request.inputs["x"].CopyFrom(tf.make_tensor_proto(arr))
    decoded = predict_inputs(log.SerializeToString())
    assert list(decoded) == ["x"] and np.array_equal(tf.make_ndarray(decoded["x"]), arr)
    assert predict_inputs(pl.PredictionLog(classify_log=pl.ClassifyLog()).SerializeToString()) is None
