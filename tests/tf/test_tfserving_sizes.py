"""TF Serving takes only the sizes its artifacts are built and checked for (issue 26). A SavedModel signature takes any
size, so a recipe that buckets its sequence (`dims.seq: {multiple: 4, pad: true}`: an XLA server then compiles one
program per multiple, not one per length) gets TF Serving models that pad other sizes up and trim the outputs, and
refuse a size beyond the range with the message Triton's model.py gives."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.e2e.conftest import mlpack

pytestmark = pytest.mark.tf

MODEL = """\
import tensorflow as tf


class Windows(tf.Module):
    \"\"\"Each position mixed with its own channels only.\"\"\"

    def __init__(self, seed: int = 0):
        super().__init__()
        self.w = tf.Variable(tf.random.stateless_normal([4, 4], seed=[seed, 1]))

    @tf.function
    def __call__(self, x):
        return {"y": tf.einsum("bsc,cd->bsd", x, self.w)}


def build(seed: int = 0):
    return Windows(seed)
"""
RECIPE = """\
name: windows
source: {framework: tensorflow, factory: windows.py:build}
inputs:
  - {name: x, dtype: float32, shape: [batch, seq, 4], range: [-1.0, 1.0]}
outputs: [y]
dims:
  batch: {min: 1, opt: 2, max: 4}
  seq: {min: 1, opt: 8, max: 16, multiple: 4, pad: true}
targets:
  - kind: xla
  - kind: savedmodel
parity: {samples: 4}
serve:
  tfserving: {targets: [xla, savedmodel]}
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("windows")
    (folder / "windows.py").write_text(MODEL)
    (folder / "recipe.yaml").write_text(RECIPE)
    proc = mlpack("build", str(folder / "recipe.yaml"), "--out", str(folder / "out"), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder / "out" / "windows", json.loads(proc.stdout), proc


def test_tfserving_models_pad_other_sizes_and_refuse_beyond_max(built):
    import tensorflow as tf

    from tests.tf.test_build_tf import must_compile

    root, m, proc = built
    assert {t["name"]: t["status"] for t in m["targets"]} == {"xla": "ok", "savedmodel": "ok"}
    assert "tfserving: windows takes batch: [1, 4]; seq: any size in [1, 16], padded up to multiples of 4 in [4, 16]" in proc.stderr
    w = np.array(tf.random.stateless_normal([4, 4], seed=[0, 1]))
    for model in ("windows", "windows_savedmodel"):  # the first target takes the plain name
        vdir = root / "tfserving" / model / "1"
        fn = tf.saved_model.load(str(vdir)).signatures["serving_default"]
        for seq in (8, 5, 1, 13):  # accepted, then padded up to 8, 4 and 16
            x = np.random.default_rng(seq).uniform(-1, 1, (2, seq, 4)).astype(np.float32)
            y = fn(x=tf.constant(x))["y"].numpy()
            assert y.shape == (2, seq, 4)
            np.testing.assert_allclose(y, x @ w, rtol=1e-4, atol=1e-5)
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"input x axis 1 \(seq\) has size 17; this model accepts seq: any size in \[1, 16\]"):
            fn(x=tf.zeros([1, 17, 4]))
    assert must_compile(root / "tfserving" / "windows" / "1"), "the wrapped XLA artifact keeps its jit_compile function"


def test_serve_check_sends_the_pad_samples_and_a_refused_size(built):
    root, _, _ = built
    proc = mlpack("serve-check", str(root), "--json")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    m = json.loads(proc.stdout)
    for c in (t["serving_check"]["tfserving"] for t in m["targets"]):
        assert c["status"] == "ok", c
        assert c["sizes"]["pad"]["passed"] and c["sizes"]["pad"]["worst_cosine"] > 0.9999
        assert c["sizes"]["refused"]["size"] == 17 and "this model accepts seq" in c["sizes"]["refused"]["error"]
