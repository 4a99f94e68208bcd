"""Shapes computed from sizes (issue 26): a model that folds its sequence into windows of 8 runs at multiples of 8
only. torch.export says so in its suggested fixes (`seq = 8*_seq`); the build's hint turns them into the recipe's
`dims.seq.multiple`, and a recipe that has it builds ONNX and AOTInductor over exactly those sizes, with the
accepted sizes in the manifest and in `validate` and `inspect`."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import mlpack

MODEL = """\
import torch


class Windows(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, x):
        b, s, d = x.shape
        w = self.proj(x).reshape(b, s // 8, 8, d)  # windows of 8: only multiples of 8 fold
        return w.softmax(2).sum(2)


def build():
    return Windows().eval()
"""

RECIPE = """\
name: windows
source:
  framework: pytorch
  factory: windows.py:build
inputs:
  - {{name: x, dtype: float32, shape: [batch, seq, 4]}}
outputs: [pooled]
dims:
  batch: {{min: 1, max: 4}}
  seq: {{{seq}}}
targets:
  - kind: onnx
  - kind: aoti
parity:
  samples: 6
"""


def _write(tmp_path, seq: str):
    (tmp_path / "windows.py").write_text(MODEL)
    (tmp_path / "recipe.yaml").write_text(RECIPE.format(seq=seq))
    return tmp_path / "recipe.yaml"


def test_export_failure_names_the_multiple_torch_export_suggests(tmp_path):
    from toolchain.recipe import load_recipe
    from toolchain.sources import load_source
    from toolchain.torchtools import export_errors

    recipe = load_recipe(_write(tmp_path, "min: 8, opt: 16, max: 64"))
    source = load_source(recipe)
    import torch

    with pytest.raises(Exception) as e:  # the recipe's dims say every size from 8 to 64
        torch.export.export(source.module, source.example_args(), dynamic_shapes=source.dynamic_shapes(), strict=False)
    accepted = export_errors.suggested_dims(str(e.value), recipe.dims)
    assert {n: a.to_dict() for n, a in accepted.items()} == {"seq": {"min": 8, "max": 64, "multiple": 8, "accepts": "multiples of 8 in [8, 64]"}}
    hint = export_errors.suggested_hint([str(e.value)], recipe.dims)
    assert "set dims.seq: {min: 8, max: 64, multiple: 8} in the recipe" in hint, hint


@pytest.mark.slow
def test_a_recipe_of_multiples_builds_over_them(tmp_path):
    recipe = _write(tmp_path, "min: 8, opt: 16, max: 64, multiple: 8")
    proc = mlpack("validate", str(recipe))
    assert proc.returncode == 0 and "dims (the sizes the artifacts must accept): batch [1, 4], seq multiples of 8 in [8, 64]" in proc.stderr, proc.stderr
    proc = mlpack("build", str(recipe), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = json.loads(proc.stdout)
    assert m["dims"]["seq"] == {"min": 8, "max": 64, "multiple": 8, "accepts": "multiples of 8 in [8, 64]"}
    assert {t["name"]: t["status"] for t in m["targets"]} == {"onnx": "ok", "aoti": "ok"}
    import numpy as np

    with np.load(tmp_path / "out" / "windows" / "parity" / "samples.npz") as z:
        seqs = sorted({z[k].shape[1] for k in z.files})
    assert seqs[0] == 8 and seqs[-1] == 64 and all(s % 8 == 0 for s in seqs), seqs
    proc = mlpack("inspect", str(tmp_path / "out" / "windows"))
    assert "accepts: batch [1, 4], seq multiples of 8 in [8, 64]" in proc.stdout, proc.stdout


def test_a_dim_whose_sizes_are_not_multiples_is_an_error_naming_the_key(tmp_path):
    proc = mlpack("validate", str(_write(tmp_path, "min: 8, max: 60, multiple: 8")))
    assert proc.returncode == 2 and "dims.seq" in proc.stderr and "multiples of 8" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_the_build_takes_the_sizes_torch_export_accepts(tmp_path):
    # The recipe says every size from 8 to 64: the source fails at the first generated size that is not a multiple,
    # torch.export names the multiples, and the build runs again over them; nothing of the first attempt is published.
    recipe = _write(tmp_path, "min: 8, opt: 16, max: 64")
    proc = mlpack("build", str(recipe), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "torch.export accepts seq multiples of 8 in [8, 64] (the recipe says [8, 64]): building every target again" in proc.stderr, proc.stderr
    m = json.loads(proc.stdout)
    assert m["dims"]["seq"] == {"min": 8, "max": 64, "multiple": 8, "accepts": "multiples of 8 in [8, 64]", "recipe": "[8, 64]",
                                "by": "torch.export's suggested fix"}  # fmt: skip
    assert {t["name"]: t["status"] for t in m["targets"]} == {"onnx": "ok", "aoti": "ok"}
    assert not (tmp_path / "out" / "windows.failed").exists()
    step = json.loads((tmp_path / "out" / "windows" / "logs" / "aoti.step.json").read_text())
    assert step["dims"]["seq"]["multiple"] == 8  # reproduce.sh re-runs the step over the same sizes


def test_a_value_error_is_not_taken_for_a_size_error(tmp_path):
    # A model that fails on its values at every size: torch.export has no sizes to suggest, and the failure stays the model's.
    (tmp_path / "windows.py").write_text(MODEL.replace("return w.softmax(2).sum(2)", "assert (x < 0).any(), 'needs negatives'\n        return w.sum(2)"))
    (tmp_path / "recipe.yaml").write_text(RECIPE.format(seq="min: 8, max: 64, multiple: 8"))
    proc = mlpack("build", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "out"))
    assert proc.returncode != 0 and "needs negatives" in proc.stderr and "building every target again" not in proc.stderr, proc.stderr


LOOP = """\
import torch


class Steps(torch.nn.Module):
    def forward(self, x):
        h = x[:, 0]
        for i in range(x.shape[1]):  # a Python loop over the sequence: export fixes seq to the example's size
            h = torch.tanh(h + x[:, i])
        return h


def build():
    return Steps().eval()
"""


def test_a_dim_the_model_fixes_is_named_with_the_line_that_fixes_it(tmp_path):
    from toolchain.recipe import load_recipe
    from toolchain.sources import load_source
    from toolchain.torchtools import export_errors

    (tmp_path / "windows.py").write_text(LOOP)
    (tmp_path / "recipe.yaml").write_text(RECIPE.format(seq="min: 2, opt: 16, max: 64"))
    source = load_source(load_recipe(tmp_path / "recipe.yaml"))
    site = export_errors.specialization_site(source, ["seq"])
    assert site == "windows.py:7 in forward: `for i in range(x.shape[1]):  # a Python loop over the sequence: export fixes seq to the example's size`", site
