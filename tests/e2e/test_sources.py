"""Source models as users write them: factories that import siblings late, define dataclasses."""

from __future__ import annotations

import json

from tests.e2e.conftest import mlpack

RECIPE = """\
name: late
source: {framework: pytorch, factory: net.py:build}
inputs: [{name: x, dtype: float32, shape: [batch, 4]}]
dims: {batch: {min: 1, max: 4}}
targets: [{kind: onnx}]
parity: {samples: 2}
"""
NET = """\
from dataclasses import dataclass

@dataclass
class Sizes:  # a dataclass needs its module registered in sys.modules
    hidden: int = 8

def build():
    from layers import make  # a sibling, imported only when the factory runs
    return make(Sizes())
"""
LAYERS = """\
import torch

def make(sizes):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, sizes.hidden), torch.nn.Tanh(), torch.nn.Linear(sizes.hidden, 2)).eval()
"""


def test_factory_imports_a_sibling_when_called_and_defines_a_dataclass(tmp_path):
    (tmp_path / "net.py").write_text(NET)
    (tmp_path / "layers.py").write_text(LAYERS)
    (tmp_path / "r.yaml").write_text(RECIPE)
    proc = mlpack("build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["targets"][0]["status"] == "ok"
