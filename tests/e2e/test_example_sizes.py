"""A model with its own fast path for one input size (transformers' DINOv2 skips interpolating its
position embeddings at its configured image size): exported at that size, the dims get fixed to
it. The exporters are tried again at other example sizes, and the build checks the example size
itself, where such a program may not hold."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import mlpack

MODEL = """\
import torch


class FastPath(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.table = torch.nn.Parameter(torch.randn(8, 4))

    def forward(self, x):
        n = x.shape[1]
        table = self.table if n == 8 else torch.nn.functional.interpolate(self.table.T[None], size=n, mode="linear")[0].T
        return x @ table  # [batch, n] @ [n, 4]


def build():
    return FastPath().eval()
"""

RECIPE = """\
name: fastpath
source: {framework: pytorch, factory: fastpath.py:build}
inputs: [{name: x, dtype: float32, shape: [batch, n]}]
outputs: [y]
dims: {batch: {min: 1, max: 4}, n: {min: 4, opt: 8, max: 16}}
targets: [{kind: onnx}, {kind: aoti}]
parity: {samples: 6}
"""


@pytest.mark.slow
def test_dims_fixed_at_the_example_size_are_exported_again_and_the_example_size_is_checked(tmp_path):
    (tmp_path / "fastpath.py").write_text(MODEL)
    (tmp_path / "r.yaml").write_text(RECIPE)
    proc = mlpack("build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--json")
    targets = {t["name"]: t for t in json.loads(proc.stdout)["targets"]}
    onnx = targets["onnx"]
    # the first export fixed n to 8 without a word; the graph is checked and exported again
    assert onnx["status"] == "ok", onnx.get("reason")
    assert onnx["export"]["strategy"].endswith("other example sizes")
    assert "x[1] (n) = 8" in onnx["export"]["tried"][0]["error"]
    # AOTI: the program exported at another size asserts n != 8; found at the example size, with a fix
    aoti = targets["aoti"]
    assert aoti["status"] == "failed" and "opt" in aoti["reason"] and "onnx target" in aoti["hint"], aoti
    assert proc.returncode == 4


TRACED = MODEL.replace("if n == 8 else", "if not torch.jit.is_tracing() and n == 8 else")


@pytest.mark.slow
def test_a_fast_path_its_author_skips_when_tracing_exports_as_traced(tmp_path):
    """transformers' DINOv2 takes its native-size fast path unless torch.jit.is_tracing(): AOTI
    exports it as traced, so the package takes the general path at every size (resizing the table
    to its own size is the identity, so it equals eager at n == 8 too: the probes and gate check)."""
    (tmp_path / "fastpath.py").write_text(TRACED)
    (tmp_path / "r.yaml").write_text(RECIPE.replace("targets: [{kind: onnx}, {kind: aoti}]", "targets: [{kind: aoti}]"))
    proc = mlpack("build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--json")
    aoti = json.loads(proc.stdout)["targets"][0]
    assert proc.returncode == 0 and aoti["parity"]["passed"], aoti
    assert aoti["export"]["strategy"].endswith("as traced (torch.jit.is_tracing() true)"), aoti["export"]
