"""TensorFlow sources and failures as a user meets them: the CLI in a subprocess."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import mlpack

pytestmark = pytest.mark.tf

SEGMENT_MODULE = '''\
import tensorflow as tf


class Pooled(tf.Module):
    """SegmentSum runs in TensorFlow and converts to ONNX, but XLA has no kernel for it."""

    @tf.function
    def __call__(self, x):
        pooled = tf.math.segment_sum(tf.transpose(x), tf.constant([0, 0, 1, 1]))
        return tf.transpose(pooled) * 2.0


def build():
    return Pooled()
'''

SEGMENT_RECIPE = """\
name: pooled
source: {framework: tensorflow, factory: pooled.py:build}
inputs: [{name: x, dtype: float32, shape: [batch, 4]}]
outputs: [y]
dims: {batch: {min: 1, max: 4}}
targets: [{kind: xla}, {kind: onnx}]
parity: {samples: 3}
serve:
  tfserving: {targets: [xla]}
  triton: {max_batch_size: 4, targets: [onnx]}
"""


def test_xla_uncompilable_model_fails_only_its_xla_target(tmp_path):
    (tmp_path / "pooled.py").write_text(SEGMENT_MODULE)
    (tmp_path / "r.yaml").write_text(SEGMENT_RECIPE)
    proc = mlpack("build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 4, proc.stderr[-3000:]
    m = json.loads(proc.stdout)
    xla, onnx = (next(t for t in m["targets"] if t["name"] == n) for n in ("xla", "onnx"))
    assert xla["status"] == "failed" and xla["parity"] is None
    assert xla["reason"].startswith("XLA cannot compile the model:") and "SegmentSum" in xla["reason"]
    assert "_XlaMustCompile=true,config_proto" not in xla["reason"]  # TF's attribute noise is trimmed
    assert onnx["status"] == "ok" and onnx["parity"]["passed"]
    assert [s["server"] for s in m["serving"]["models"]] == ["triton"]  # no TF Serving model for a failed target
    assert "Traceback" not in proc.stderr and not (tmp_path / "out" / "pooled").exists()


def test_savedmodel_source_maps_inputs_by_position(tmp_path, scorer_build):
    """A SavedModel's signature as the source; the recipe renames its inputs and reorders its outputs."""
    recipe = f"""\
name: from-savedmodel
source: {{framework: tensorflow, savedmodel: {scorer_build.root / "savedmodel" / "saved_model"}}}
inputs:
  - {{name: feats, dtype: float32, shape: [batch, 16]}}
  - {{name: m, dtype: int32, shape: [batch, 16], range: [0, 2]}}
outputs: [norm, scores]
dims: {{batch: {{min: 1, max: 4}}}}
targets: [{{kind: savedmodel}}, {{kind: onnx}}]
parity: {{samples: 3}}
"""
    (tmp_path / "r.yaml").write_text(recipe)
    proc = mlpack("build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "source: inputs mapped by position (names differ): feats -> features, m -> mask" in proc.stderr
    m = json.loads(proc.stdout)
    sm = next(t for t in m["targets"] if t["name"] == "savedmodel")
    assert [t["name"] for t in sm["signature"]["inputs"]] == ["feats", "m"]
    assert [t["name"] for t in sm["signature"]["outputs"]] == ["norm", "scores"]
    assert [t["shape"] for t in sm["signature"]["outputs"]] == [[-1], [-1, 4]]

    wrong = recipe.replace("savedmodel: ", "signature: predict, savedmodel: ")
    (tmp_path / "wrong.yaml").write_text(wrong)
    proc = mlpack("build", str(tmp_path / "wrong.yaml"), "--out", str(tmp_path / "out2"), "--json")
    assert proc.returncode == 4
    reason = json.loads(proc.stdout)["targets"][0]["reason"]
    assert "has no signature 'predict' (it has: serving_default)" in reason

    (tmp_path / "dtype.yaml").write_text(recipe.replace("name: m, dtype: int32", "name: m, dtype: float32"))
    proc = mlpack("build", str(tmp_path / "dtype.yaml"), "--out", str(tmp_path / "out3"), "--json")
    assert proc.returncode == 4
    assert "inputs: 'm' is float32 in the recipe but the signature's 'mask' takes int32" in json.loads(proc.stdout)["targets"][0]["reason"]


def test_xla_savedmodel_source_stays_xla(tmp_path, scorer_build):
    """An XLA SavedModel as the source: tf2onnx cannot see into it, a plain SavedModel would keep it."""
    (tmp_path / "r.yaml").write_text(
        "name: from-xla\n"
        f"source: {{framework: tensorflow, savedmodel: {scorer_build.root / 'xla' / 'saved_model'}}}\n"
        "inputs: [{name: features, dtype: float32, shape: [batch, 16]}, {name: mask, dtype: int32, shape: [batch, 16]}]\n"
        "dims: {batch: {min: 1, max: 2}}\n"
        "targets: [{kind: savedmodel}, {kind: onnx}, {kind: xla}]\n"
        "parity: {samples: 2}\n"
    )
    proc = mlpack("build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 4, proc.stderr[-3000:]
    got = {t["name"]: (t["status"], t["reason"]) for t in json.loads(proc.stdout)["targets"]}
    assert got["savedmodel"][0] == "failed" and "has XLA-compiled functions" in got["savedmodel"][1]
    assert got["onnx"][0] == "failed" and "does not inline XLA-compiled (jit_compile=True) functions" in got["onnx"][1]
    assert got["xla"] == ("ok", None)


def test_keras_file_source_with_dict_inputs(tmp_path):
    import keras

    a, b = keras.Input((3,), name="a"), keras.Input((3,), name="b")
    model = keras.Model({"a": a, "b": b}, {"total": keras.layers.Dense(2)(a * b), "diff": a - b})
    model.save(tmp_path / "model.keras")
    (tmp_path / "r.yaml").write_text(
        "name: dict-model\n"
        "source: {framework: tensorflow, keras: model.keras}\n"
        "inputs: [{name: b, dtype: float32, shape: [batch, 3]}, {name: a, dtype: float32, shape: [batch, 3]}]\n"
        "outputs: [total, diff]\n"
        "dims: {batch: {min: 1, max: 3}}\n"
        "targets: [{kind: xla}, {kind: onnx}]\n"
        "parity: {samples: 3}\n"
    )
    proc = mlpack("build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mapped by position" not in proc.stderr  # matched by name, whatever the order
    m = json.loads(proc.stdout)
    assert all(t["parity"]["passed"] for t in m["targets"])
    # `diff` = a - b is sign-sensitive: swapped inputs would fail parity against the Keras model.
    assert [o["name"] for o in m["targets"][1]["signature"]["outputs"]] == ["total", "diff"]


def test_factory_returning_the_wrong_type_exits_4(tmp_path):
    (tmp_path / "m.py").write_text("def build():\n    return object()\n")
    (tmp_path / "r.yaml").write_text(SEGMENT_RECIPE.replace("pooled.py:build", "m.py:build"))
    proc = mlpack("build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 4
    assert "returned object; expected a keras.Model or a tf.Module with a tf.function" in json.loads(proc.stdout)["targets"][0]["reason"]


SUBCLASSED = '''\
import keras


class Pair(keras.Model):
    """A subclassed model whose call takes two tensors, through an exact gelu (Erfc in TF)."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(4, activation="gelu")

    def call(self, left, right):
        return self.dense(left) - right


def build():
    keras.utils.set_random_seed(0)
    model = Pair()
    model(keras.ops.zeros((1, 3)), keras.ops.zeros((1, 4)))
    return model
'''


def test_subclassed_keras_model_with_two_call_arguments_builds_every_kind(tmp_path):
    """call(self, left, right) used to be called with one list (TypeError: missing 'right'), the
    SavedModel kinds then failed in Keras's own one-argument serving_default, and tf2onnx had
    no handler for the Erfc an exact gelu computes."""
    (tmp_path / "pair.py").write_text(SUBCLASSED)
    (tmp_path / "r.yaml").write_text(
        "name: pair\n"
        "source: {framework: tensorflow, factory: pair.py:build}\n"
        # named in the reverse order of call(): matched by name (a swap feeds 4 features to a Dense built for 3)
        "inputs: [{name: right, dtype: float32, shape: [batch, 4]}, {name: left, dtype: float32, shape: [batch, 3]}]\n"
        "outputs: [y]\n"
        "dims: {batch: {min: 1, max: 3}}\n"
        "targets: [{kind: savedmodel}, {kind: xla}, {kind: onnx}]\n"
        "parity: {samples: 3}\n"
    )
    proc = mlpack("build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads(proc.stdout)
    assert [t["status"] for t in m["targets"]] == ["ok"] * 3 and all(t["parity"]["passed"] for t in m["targets"])


VIDEO = '''\
import keras


def build():
    """A small CNN applied to each frame with TimeDistributed, then a GRU over a dynamic number of frames."""
    keras.utils.set_random_seed(0)
    frames = keras.Input(shape=(None, 16, 16, 3), name="frames")
    cnn = keras.Sequential([keras.layers.Conv2D(4, 3, strides=2, activation="relu"), keras.layers.GlobalAveragePooling2D()])
    x = keras.layers.GRU(8)(keras.layers.TimeDistributed(cnn)(frames))
    return keras.Model(frames, keras.layers.Dense(3)(x))
'''


def test_time_distributed_over_dynamic_frames_then_a_gru_builds_savedmodel_and_fp16_onnx(tmp_path):
    """With the time axis dynamic, Keras's TimeDistributed mapped its layer over the batch instead of
    the frames in a traced graph (wrong numbers from every traced target); the GRU's while loop then
    broke the FP16 converter (its body's Casts left on FP32)."""
    (tmp_path / "video.py").write_text(VIDEO)
    (tmp_path / "r.yaml").write_text(
        "name: video\n"
        "source: {framework: tensorflow, factory: video.py:build}\n"
        "inputs: [{name: frames, dtype: float32, shape: [batch, time, 16, 16, 3], range: [0.0, 1.0]}]\n"
        "outputs: [logits]\n"
        "dims: {batch: {min: 1, opt: 2, max: 3}, time: {min: 2, opt: 4, max: 6}}\n"
        "targets: [{kind: savedmodel}, {kind: onnx, name: onnx-fp16, quantize: fp16}]\n"
        "parity: {samples: 4}\n"
    )
    proc = mlpack("build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    targets = {t["name"]: t for t in json.loads(proc.stdout)["targets"]}
    assert all(t["parity"]["passed"] for t in targets.values())
    for t in targets.values():
        assert any(r.startswith("keras TimeDistributed") for r in t["export"]["rewrites"]), t["export"]
    assert any("while" in n for n in targets["onnx-fp16"]["quantization"]["repaired_nodes"])


STRUCTURED = '''\
import keras
import numpy as np


def build():
    """Preprocessing inside the model: a raw integer code through an IntegerLookup (a hash table)."""
    keras.utils.set_random_seed(0)
    numeric = keras.Input(shape=(2,), name="numeric")
    code = keras.Input(shape=(1,), dtype="int64", name="code")
    lookup = keras.layers.IntegerLookup(vocabulary=np.array([3, 7, 11], dtype="int64"), output_mode="one_hot")
    x = keras.layers.concatenate([numeric, lookup(code)])
    return keras.Model([numeric, code], keras.layers.Dense(1)(x))
'''


def test_an_integer_lookup_in_the_model_converts_to_onnx_and_xla_says_why_not(tmp_path):
    """tf2onnx left the Keras IntegerLookup's hash table as a graph input no client feeds; mlpack
    reads the table out and writes an ONNX-ML LabelEncoder. XLA compiles no table op: its
    failure names the fix."""
    (tmp_path / "structured.py").write_text(STRUCTURED)
    (tmp_path / "r.yaml").write_text(
        "name: structured\n"
        "source: {framework: tensorflow, factory: structured.py:build}\n"
        "inputs: [{name: numeric, dtype: float32, shape: [batch, 2]}, {name: code, dtype: int64, shape: [batch, 1], range: [0, 12]}]\n"
        "outputs: [y]\n"
        "dims: {batch: {min: 1, max: 3}}\n"
        "targets: [{kind: savedmodel}, {kind: xla}, {kind: onnx}, {kind: onnx, name: onnx-int8, quantize: int8-dynamic}]\n"
        "parity: {samples: 6}\n"
    )
    proc = mlpack("build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 4, proc.stderr[-3000:]
    targets = {t["name"]: t for t in json.loads(proc.stdout)["targets"]}
    for name in ("savedmodel", "onnx", "onnx-int8"):
        assert targets[name]["status"] == "ok" and targets[name]["parity"]["passed"], targets[name]
    import onnx

    graph = onnx.load(str(tmp_path / "out" / "structured.failed" / "onnx" / "model.onnx")).graph  # the xla target failed: not published
    assert [n.op_type for n in graph.node if n.domain == "ai.onnx.ml"] == ["LabelEncoder"]
    assert [i.name for i in graph.input] == ["numeric", "code"]
    assert "LookupTableFindV2" in targets["xla"]["reason"] and targets["xla"]["hint"].startswith("the model looks values up in a table")
    assert "Traceback" not in proc.stderr


GROUPED = '''\
import keras


def build():
    """ConvNeXt's depthwise 7x7 as Keras writes it (Conv2D with groups == channels), and a two-group conv."""
    keras.utils.set_random_seed(0)
    image = keras.Input(shape=(16, 16, 8), name="image")
    x = keras.layers.Conv2D(8, 7, padding="same", groups=8)(image)
    x = keras.layers.Conv2D(6, 3, strides=2, groups=2)(x)
    return keras.Model(image, keras.layers.GlobalAveragePooling2D()(x))
'''


def test_grouped_convolutions_build_without_an_xla_function(tmp_path):
    """Keras's TensorFlow backend runs a grouped convolution as a jit_compile=True function (TF's CPU
    kernels have none): the savedmodel target refused the XLA function and tf2onnx left the call
    unconverted, so Keras ConvNeXt failed every target but xla."""
    (tmp_path / "grouped.py").write_text(GROUPED)
    (tmp_path / "r.yaml").write_text(
        "name: grouped\n"
        "source: {framework: tensorflow, factory: grouped.py:build}\n"
        "inputs: [{name: image, dtype: float32, shape: [batch, 16, 16, 8]}]\n"
        "outputs: [y]\n"
        "dims: {batch: {min: 1, max: 3}}\n"
        "targets: [{kind: savedmodel}, {kind: onnx}]\n"
        "parity: {samples: 3}\n"
    )
    proc = mlpack("build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for t in json.loads(proc.stdout)["targets"]:
        assert t["parity"]["passed"] and any(r.startswith("keras grouped convolution") for r in t["export"]["rewrites"]), t
