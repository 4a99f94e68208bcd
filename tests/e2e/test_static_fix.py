"""Sizes computed from data (issue 26). A dim the model fixes to the example's size (a Python loop over the length,
which no exporter keeps symbolic): when no target builds with the dim dynamic, the build applies torch.export's fix,
a static size, builds every target again at it, and the manifest says which size the artifacts accept and what the
recipe said. A branch on a size that holds at sizes no range of multiples expresses: the hint names the model's line."""

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


ODD = """\
import torch


class Odd(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, x):
        half = x.shape[1] // 2
        if half % 2 == 1:
            x = x * 2
        return self.proj(x)


def build():
    return Odd().eval()
"""


def test_a_size_check_with_no_range_of_multiples_names_the_model_line(tmp_path):
    (tmp_path / "odd.py").write_text(ODD)
    recipe = RECIPE.replace("unrolled", "odd").replace("outputs: [h]", "outputs: [y]").replace("  - kind: onnx\n", "")
    (tmp_path / "recipe.yaml").write_text(recipe.replace("seq: {min: 4, opt: 8, max: 16}", "seq: {min: 4, opt: 10, max: 40}"))
    proc = mlpack("build", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 4, proc.stderr[-3000:]
    text = " ".join(proc.stderr.split())
    assert "the check comes from odd.py:12 in forward: `if half % 2 == 1:`" in text, text[-2000:]
    assert "holds at 18 of the 37 sizes of seq in [4, 40]" in text and "dims.seq: {min: 10, max: 10}" in text
