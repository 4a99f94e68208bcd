"""Pure parts of serve-check: the Python stand-in config, the TF Serving layout
(models.config, version policy, warmup records). No server, no framework."""

from __future__ import annotations

import json

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from toolchain.recipe import TritonServe
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
    configs = {c["name"][0]: c for c in tfs.model_configs(MODELS_CONFIG)}
    assert set(configs) == {"tiny", "other", "third"}
    assert configs["tiny"]["base_path"] == ["/models/tiny"] and configs["tiny"]["model_platform"] == ["tensorflow"]
    for v in (1, 2, 3, 4):
        (tmp_path / str(v)).mkdir()
    (tmp_path / "notes").mkdir()
    assert tfs.served_versions(tmp_path, configs["tiny"]) == [1, 3]
    assert tfs.served_versions(tmp_path, configs["other"]) == [1, 2, 3, 4]
    assert tfs.served_versions(tmp_path, configs["third"]) == [4]  # default: the latest one
    with pytest.raises(ValueError, match="no model_config_list"):
        tfs.model_configs('config { name: "x" }')
    with pytest.raises(ValueError, match="unclosed"):
        tfs.model_configs("model_config_list { config { name: 'x' }")


def _field(num: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2), written independently of the decoder."""
    key, n, out = (num << 3) | 2, len(payload), b""
    for v in (key, n):
        while v > 0x7F:
            out += bytes([(v & 0x7F) | 0x80])
            v >>= 7
        out += bytes([v])
    return out + payload


def test_warmup_record_decoding():
    tensor = b"\x08\x01\x12\x04\x12\x02\x08\x02"  # an arbitrary TensorProto payload: passed through as bytes
    entry = _field(1, b"image") + _field(2, tensor)
    request = _field(1, _field(1, b"tiny")) + _field(2, entry)  # model_spec, inputs map entry
    record = _field(6, _field(1, request))  # PredictionLog.predict_log.request
    assert tfs.predict_inputs(record) == {"image": tensor}
    assert tfs.predict_inputs(_field(2, b"")) is None  # a ClassifyLog: not a predict warmup


def test_tfserving_skips_with_the_reason(tmp_path, monkeypatch):
    manifest = {"serving": {"triton": None, "tfserving": None, "models": []}, "targets": []}
    assert tfs.check_tfserving(tmp_path, manifest, [], [], [], None) == ([], "this build has no tfserving section (serve.tfserving not in the recipe)")
    model = {"server": "tfserving", "name": "tiny", "target": "xla", "path": "tfserving/tiny"}
    monkeypatch.setattr(tfs.importlib.util, "find_spec", lambda name: None)
    checks, skip = tfs.check_tfserving(tmp_path, {**manifest, "serving": {"tfserving": "tfserving", "models": [model]}}, [model], [], [], None)
    assert skip is None and len(checks) == 1
    d = checks[0].to_dict()
    assert (d["status"], d["backend"]) == ("skipped", "tensorflow (no tensorflow_model_server here)")
    assert d["reason"].startswith("tensorflow is not installed")
    json.dumps(d)
