"""A dim the model fixes to the example's size (issue 26): a Python loop over the sequence length, which no exporter
keeps symbolic. When no target builds with the dim dynamic, the build applies torch.export's fix, a static size,
builds every target again at it, and the manifest says which size the artifacts accept and what the recipe said."""

from __future__ import annotations

import json

from tests.e2e.conftest import mlpack

MODEL = """\
import torch


class Unrolled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.cell = torch.nn.Linear(8, 4)

    def forward(self, x):
        h = torch.zeros(x.shape[0], 4)
        for t in range(x.shape[1]):  # a loop over the length: export unrolls it at the example's size
            h = torch.tanh(self.cell(torch.cat([x[:, t], h], dim=1)))
        return h


def build():
    return Unrolled().eval()
"""

RECIPE = """\
name: unrolled
source: {framework: pytorch, factory: unrolled.py:build}
inputs:
  - {name: x, dtype: float32, shape: [batch, seq, 4]}
outputs: [h]
dims:
  batch: {min: 1, max: 4}
  seq: {min: 4, opt: 8, max: 16}
targets:
  - kind: onnx
  - kind: aoti
parity: {samples: 4}
"""


def test_a_dim_every_exporter_fixes_is_built_static(tmp_path):
    (tmp_path / "unrolled.py").write_text(MODEL)
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    proc = mlpack("build", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no target builds with seq dynamic" in proc.stderr and "dims.seq: {min: 8, max: 8}" in proc.stderr
    m = json.loads(proc.stdout)
    assert {t["name"]: t["status"] for t in m["targets"]} == {"onnx": "ok", "aoti": "ok"}
    seq = m["dims"]["seq"]
    assert (seq["min"], seq["max"], seq["recipe"]) == (8, 8, "[4, 16]"), seq
