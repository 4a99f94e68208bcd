"""Pure parts of serve-check: the Python stand-in config, the TF Serving layout
(models.config, version policy, warmup records). No server, no framework."""

from __future__ import annotations

import json

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from toolchain.recipe import TritonServe
from toolchain.records import Manifest, ServedModel, Serving
from toolchain.serving import tfserving_check as tfs
from toolchain.serving.standin import native_backend, standin_config
from toolchain.serving.triton import render_config
from toolchain.tensors import Signature, TensorSig

SIG = Signature([TensorSig("image", "float32", [-1, 3, 32, 32])], [TensorSig("logits", "float32", [-1, 10])])
SERVE = TritonServe(max_batch_size=16, dynamic_batching={"preferred_batch_size": [4, 8]}, version_policy={"specific": [1, 3]})


@pytest.mark.parametrize("kind, native", [("onnx", "onnxruntime"), ("aoti", "pytorch")])
def test_standin_keeps_everything_but_the_backend(kind, native):
    text = render_config("m", kind, SIG, SERVE, "cpu")
    orig = text_format.Parse(text, mc.ModelConfig())
    assert native_backend(text) == native
    stand = text_format.Parse(standin_config(text), mc.ModelConfig())
    assert (stand.backend, stand.platform) == ("python", "")
    orig.ClearField("platform")
    orig.backend = "python"
    assert stand == orig  # names (INPUT__0 for aoti), dims, dtypes, batching, version policy, instances
    if kind == "aoti":
        assert [i.name for i in stand.input] == ["INPUT__0"] and stand.max_batch_size == 0


MODELS_CONFIG = """
# written by a build
model_config_list {
  config {
    name: "tiny"
    base_path: "/models/tiny"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 versions: 3 } }
  }
  config { name: 'other' base_path: "/models/other" model_version_policy: { all: {} } }
  config { name: "third" base_path: "/models/third" }
}
"""


def test_models_config_and_version_policies(tmp_path):
    pytest.importorskip("tensorflow_serving.config.model_server_config_pb2")  # the tensorflow extra's protos (no TensorFlow import)
    configs = {c.name: c for c in tfs.model_configs(MODELS_CONFIG)}
    assert set(configs) == {"tiny", "other", "third"}
    assert configs["tiny"].base_path == "/models/tiny" and configs["tiny"].model_platform == "tensorflow"
    for v in (1, 2, 3, 4):
        (tmp_path / str(v)).mkdir()
    (tmp_path / "notes").mkdir()
    assert tfs.served_versions(tmp_path, configs["tiny"]) == [1, 3]
    assert tfs.served_versions(tmp_path, configs["other"]) == [1, 2, 3, 4]
    assert tfs.served_versions(tmp_path, configs["third"]) == [4]  # default: the latest one
    with pytest.raises(ValueError, match="no model_config_list"):
        tfs.model_configs("")
    with pytest.raises(ValueError, match="does not parse as tensorflow.serving.ModelServerConfig"):
        tfs.model_configs('config { name: "x" }')
    with pytest.raises(ValueError, match="does not parse"):
        tfs.model_configs("model_config_list { config { name: 'x' }")


def test_tfserving_skips_with_the_reason(tmp_path, monkeypatch):
    manifest = Manifest("tiny", 1, "tensorflow", "r.yaml", "0" * 64, {}, [])
    assert tfs.check_tfserving(tmp_path, manifest, [], [], [], None) == ([], "this build has no tfserving section (serve.tfserving not in the recipe)")
    model = ServedModel("tfserving", "tiny", "xla", "tfserving/tiny")
    monkeypatch.setattr(tfs.importlib.util, "find_spec", lambda name: None)
    manifest.serving = Serving(None, "tfserving", [model])
    checks, skip = tfs.check_tfserving(tmp_path, manifest, [model], [], [], None)
    assert skip is None and len(checks) == 1
    d = checks[0].to_dict()
    assert (d["status"], d["backend"]) == ("skipped", "tensorflow (no tensorflow_model_server here)")
    assert d["reason"].startswith("tensorflow is not installed")
    json.dumps(d)
