"""TF Serving text files parsed with the server's own protos (tensorflow-serving-api)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from toolchain.recipe import TFServingServe
from toolchain.serving.protos import batching_parameters_class
from toolchain.serving.tfserving import XLA_FLAG, command_line, render_batching, render_models_config, served_names, write_warmup

pytestmark = pytest.mark.tf


def parse_models_config(text: str):
    from tensorflow_serving.config import model_server_config_pb2

    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


@pytest.mark.parametrize("policy,which,versions", [("latest", "latest", None), ("all", "all", None), ({"specific": [3, 1, 3]}, "specific", [1, 3])])
def test_models_config_parses_with_each_version_policy(policy, which, versions):
    vp = TFServingServe.model_validate({"version_policy": policy}).version_policy
    text = render_models_config([("net", Path("/srv/m/net")), ("net_savedmodel", Path("/srv/m/net_savedmodel"))], vp)
    cfg = parse_models_config(text)
    configs = cfg.model_config_list.config
    assert [(c.name, c.base_path, c.model_platform) for c in configs] == [
        ("net", "/srv/m/net", "tensorflow"),
        ("net_savedmodel", "/srv/m/net_savedmodel", "tensorflow"),
    ]
    for c in configs:
        assert c.model_version_policy.WhichOneof("policy_choice") == which
        if versions:
            assert list(c.model_version_policy.specific.versions) == versions
        if which == "latest":
            assert c.model_version_policy.latest.num_versions == 1


def test_batching_parameters_parse_as_the_server_reads_them():
    b = TFServingServe.model_validate(
        {
            "batching": {
                "max_batch_size": 16,
                "batch_timeout_micros": 500,
                "num_batch_threads": 2,
                "allowed_batch_sizes": [4, 16],
                "pad_variable_length_inputs": True,
            }
        }
    ).batching
    msg = text_format.Parse(render_batching(b), batching_parameters_class()())
    assert (msg.max_batch_size.value, msg.batch_timeout_micros.value, msg.num_batch_threads.value) == (16, 500, 2)
    assert not msg.HasField("max_enqueued_batches")  # unset: the server's default
    assert list(msg.allowed_batch_sizes) == [4, 16] and msg.pad_variable_length_inputs


def test_command_line_flags():
    repo = Path("/srv/out/net/tfserving")
    plain = command_line(repo, xla=False, batching=False)
    assert plain.startswith("tensorflow_model_server ") and f"--model_config_file={repo}/models.config" in plain
    assert XLA_FLAG not in plain and "batching" not in plain
    full = command_line(repo, xla=True, batching=True)
    assert full.endswith(XLA_FLAG)
    assert f"--enable_batching=true --batching_parameters_file={repo}/batching_parameters.txt" in full
    assert "parallelism" not in full  # serve.threads unset: the server's default
    assert "--tensorflow_intra_op_parallelism=4" in command_line(repo, xla=False, batching=False, threads=4).split()


def test_served_names_first_target_takes_the_recipe_name():
    assert served_names("net-a", ["xla", "plain-sm"]) == ["net-a", "net-a_plain-sm"]


def test_warmup_has_one_request_per_distinct_shape(tmp_path):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    rng = np.random.default_rng(0)
    samples = [{"x": rng.random((b, 3), dtype=np.float32), "ids": np.arange(b, dtype=np.int64)} for b in (1, 4, 1, 2, 4)]
    path = tmp_path / "assets.extra" / "tf_serving_warmup_requests"
    assert write_warmup(path, "net", samples) == 3
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path))]
    assert len(logs) == 3
    for log, want in zip(logs, (samples[0], samples[1], samples[3])):
        req = log.predict_log.request
        assert (req.model_spec.name, req.model_spec.signature_name) == ("net", "serving_default")
        assert sorted(req.inputs) == ["ids", "x"]
        for name, value in want.items():
            np.testing.assert_array_equal(tf.make_ndarray(req.inputs[name]), value)
