"""A chunked state-space-like scan (issue 26): it pads its sequence up to a multiple of its chunk (8) with `if pad > 0`,
so torch.export keeps the branch taken at the example size as a run-time assertion (`Mod(8 - Mod(s, 8), 8) <= 0`),
and every package fails off the multiples. The build reads the multiple from that assertion, builds again over
multiples of 8, and with `dims.seq.pad: true` the Triton model takes every size of the recipe, zero-padded up and
trimmed back, checked against the source in the build and over a real Triton server; without pad it refuses them.
A model whose outputs padding changes (a mean over the sequence) fails its pad check, naming it."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import mlpack

pytestmark = pytest.mark.triton

MODEL = """\
import torch
import torch.nn.functional as F


class ChunkScan(torch.nn.Module):
    def __init__(self, pooled=False):
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(4, 4)
        self.pooled = pooled

    def forward(self, x):
        b, s, d = x.shape
        pad = (8 - s % 8) % 8
        if pad > 0:
            x = F.pad(x, (0, 0, 0, pad))
        h = self.proj(x).reshape(b, -1, 8, d).cumsum(2).reshape(b, -1, d)
        h = h[:, :s]  # causal within chunks: zero padding at the end changes none of these rows
        return h.mean(1) if self.pooled else h  # but a mean over the rows counts padded ones


def build():
    return ChunkScan().eval()


def pooled():
    return ChunkScan(pooled=True).eval()
"""

RECIPE = """\
name: {name}
source:
  framework: pytorch
  factory: scan.py:{factory}
inputs:
  - {{name: x, dtype: float32, shape: [batch, seq, 4]}}
outputs: [h]
dims:
  batch: {{min: 1, max: 4}}
  seq: {{{seq}}}
targets:
  - kind: onnx
  - kind: aoti
parity:
  samples: 6
serve:
  triton: {{targets: [onnx, aoti], max_batch_size: 4}}
"""


def _recipe(tmp_path, name: str, seq: str, factory: str = "build"):
    (tmp_path / "scan.py").write_text(MODEL)
    path = tmp_path / f"{name}.yaml"
    path.write_text(RECIPE.format(name=name, seq=seq, factory=factory))
    return path


@pytest.mark.slow
def test_padding_served_model_takes_every_size_of_the_recipe(tmp_path):
    recipe = _recipe(tmp_path, "scan", "min: 1, opt: 16, max: 64, pad: true")
    proc = mlpack("build", str(recipe), "--out", str(tmp_path / "out"))
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch.export accepts seq multiples of 8 in [8, 64] (the recipe says [1, 64])" in err, err[-3000:]
    root = tmp_path / "out" / "scan"
    m = json.loads((root / "manifest.json").read_text())
    assert m["dims"]["seq"]["served"] == "any size in [1, 64], padded up to multiples of 8 in [8, 64] (outputs trimmed back)"
    for t in m["targets"]:
        assert t["pad"]["passed"] and t["pad"]["samples"] == ["seq 1 -> 8", "seq 63 -> 64"] and t["pad"]["trims"] == {"h": [[1, "seq"]]}, t
    for model in ("scan_onnx", "scan_aoti"):  # the config cannot say it: model.py (Python backend) pads and refuses
        assert 'backend: "python"' in (root / "triton" / model / "config.pbtxt").read_text()
    proc = mlpack("serve-check", str(root))
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((root / "manifest.json").read_text())
    for t in m["targets"]:
        sizes = t["serving_check"]["triton"]["sizes"]
        assert sizes["passed"] and sizes["pad"]["passed"] and sizes["pad"]["worst_cosine"] > 0.9999, sizes
        assert "has size 65; this model accepts seq: any size in [1, 64]" in sizes["refused"]["error"], sizes


@pytest.mark.slow
def test_without_pad_the_served_model_refuses_other_sizes(tmp_path):
    recipe = _recipe(tmp_path, "scan_strict", "min: 8, opt: 16, max: 64, multiple: 8")
    root = tmp_path / "out" / "scan_strict"
    proc = mlpack("build", str(recipe), "--out", str(tmp_path / "out"), "--target", "onnx")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = mlpack("serve-check", str(root))
    assert proc.returncode == 0, proc.stderr[-3000:]
    sizes = json.loads((root / "manifest.json").read_text())["targets"][0]["serving_check"]["triton"]["sizes"]
    assert sizes["refused"]["size"] == 9 and "has size 9; this model accepts seq: multiples of 8 in [8, 64]" in sizes["refused"]["error"], sizes


@pytest.mark.slow
def test_padding_that_changes_the_outputs_fails_naming_it(tmp_path):
    recipe = _recipe(tmp_path, "scan_pooled", "min: 1, opt: 16, max: 64, multiple: 8, pad: true", factory="pooled")
    proc = mlpack("build", str(recipe), "--out", str(tmp_path / "out"), "--target", "onnx")
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "pad check failed: zero padding changes the outputs" in err and "seq 1 -> 8" in err, err[-3000:]
    assert not (tmp_path / "out" / "scan_pooled").exists()
