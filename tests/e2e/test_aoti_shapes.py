"""AOTInductor over dynamic spatial dims where Inductor decides a shape from the example input.

SqueezeNet's stem (a stride-2 conv, then MaxPool2d(ceil_mode=True)): compiled with the example
input's sizes as hints, Inductor took the "ceil mode changes nothing" branch that holds at an
odd feature-map height only, and the package, which cannot check that guard, returned feature
maps one row short at half the heights (cosine 0.997, no error). The build must compile it
size-obliviously, as it was exported, and must compare values at sizes of both parities."""

from __future__ import annotations

import json
import sys

import pytest

from tests.e2e.conftest import mlpack

MODEL = """\
import torch


class Stem(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.pool = torch.nn.MaxPool2d(3, 2, ceil_mode=True)

    def forward(self, x):
        y = self.pool(torch.relu(self.conv(x)))
        return y.mean((2, 3)) + y[:, :, -1, -1]  # the last row/column counts, as later layers' do


def build():
    return Stem().eval()
"""

RECIPE = """\
name: stem
source:
  framework: pytorch
  factory: stem.py:build
inputs:
  - {name: image, dtype: float32, shape: [1, 3, height, 16]}
outputs: [features]
dims:
  height: {min: 32, opt: 32, max: 40}
targets:
  - {kind: aoti, freezing: "off"}
parity:
  samples: 4
"""


@pytest.mark.slow
def test_a_ceil_mode_pool_package_is_right_at_every_height(tmp_path):
    import torch
    import torch._inductor

    (tmp_path / "stem.py").write_text(MODEL)
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    proc = mlpack("build", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    target = json.loads(proc.stdout)["targets"][0]
    assert target["status"] == "ok", target
    sys.path.insert(0, str(tmp_path))
    try:
        from stem import build
    finally:
        sys.path.pop(0)
    model = build()
    package = torch._inductor.aoti_load_package(str(tmp_path / "out/stem" / target["files"][0]["path"]))
    with torch.no_grad():
        for height in range(32, 41):  # 32: conv out 15, ceil adds nothing; 33: conv out 16, ceil adds a row
            x = torch.rand(1, 3, height, 16)
            got, want = package(x), model(x)
            got = got[0] if isinstance(got, (list, tuple)) else got
            assert torch.allclose(got, want, atol=1e-5), (height, (got - want).abs().max())
