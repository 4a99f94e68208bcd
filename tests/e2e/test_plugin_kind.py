"""A kind registered from outside the package, through a real `mlpack.kinds` entry point.

The plugin (tests/plugins/mlpack_copy_kind.py) is put on PYTHONPATH beside a
.dist-info folder whose entry_points.txt registers it, exactly as `pip install`
of a plugin would leave it. Nothing in toolchain/ names it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from tests.e2e.conftest import ROOT
from toolchain.manifest import base_schema

PLUGIN = ROOT / "tests" / "plugins" / "mlpack_copy_kind.py"

RECIPE = """\
name: mlp
source: {framework: pytorch, factory: mlp.py:build}
inputs: [{name: x, dtype: float32, shape: [batch, 8]}]
outputs: [y]
dims: {batch: {min: 1, max: 4}}
targets:
  - kind: onnx
  - {kind: copy, name: republished, of: onnx}
parity: {samples: 3}
serve:
  triton: {max_batch_size: 4, targets: [onnx, republished]}
"""

MLP = """\
import torch

def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A folder on PYTHONPATH holding the plugin and its installed-distribution metadata."""
    site = tmp_path_factory.mktemp("site")
    shutil.copy(PLUGIN, site / PLUGIN.name)
    info = site / "mlpack_copy_kind-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mlpack-copy-kind\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mlpack.kinds]\ncopy = mlpack_copy_kind:KIND\n")
    return site


def run(args: list[str], site: Path | None, cwd: Path, *pre: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(ROOT)] + ([str(site)] if site else []))
    env = {**os.environ, "CI": "true", "PYTHONPATH": path}
    return subprocess.run([sys.executable, *pre, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def built(site, tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin")
    (root / "mlp.py").write_text(MLP)
    (root / "recipe.yaml").write_text(RECIPE)
    proc = run(["-m", "toolchain", "build", "recipe.yaml", "--out", "out", "--json"], site, root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, json.loads(proc.stdout)


def test_unknown_without_the_plugin_and_valid_with_it(site, tmp_path):
    (tmp_path / "mlp.py").write_text(MLP)
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    without = run(["-m", "toolchain", "validate", "recipe.yaml"], None, tmp_path)
    assert without.returncode == 2 and "unknown kind 'copy'" in without.stderr and "Traceback" not in without.stderr
    assert run(["-m", "toolchain", "validate", "recipe.yaml"], site, tmp_path).returncode == 0
    # The plugin's own check runs as part of the recipe's: a key path under the target.
    (tmp_path / "recipe.yaml").write_text(RECIPE.replace("of: onnx", "of: onx"))
    bad = run(["-m", "toolchain", "validate", "recipe.yaml"], site, tmp_path)
    assert bad.returncode == 2 and "targets[1].of: no other target is named 'onx'" in bad.stderr


def test_plugin_kind_builds_serves_and_is_in_the_manifest(site, built):
    root, m = built
    copy = next(t for t in m["targets"] if t["name"] == "republished")
    assert (copy["kind"], copy["status"], copy["stage"], copy["copied_from"]) == ("copy", "ok", None, "onnx")
    assert copy["runner"]["runner"] == "onnxruntime" and copy["runner"]["path"] == "republished/model.onnx"
    assert copy["parity"]["passed"] and copy["parity"]["samples"] == 3
    jsonschema.validate(m, base_schema())  # the shipped schema accepts any registered kind
    # The schema for the kinds installed here names the plugin's kind and its field.
    code = "import json, sys; from toolchain.manifest import schema; s = schema(); t = s['$defs']['target']['properties']; print(json.dumps([t['kind']['enum'], 'copied_from' in t]))"
    kinds, has_field = json.loads(run(["-c", code], site, root).stdout)
    assert "copy" in kinds and has_field
    model = next(x for x in m["serving"]["models"] if x["target"] == "republished")
    assert model["name"] == "mlp_republished"
    config = (root / "out" / "mlp" / model["path"] / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and (root / "out" / "mlp" / model["path"] / "1" / "model.onnx").is_file()


def test_bench_runs_the_plugin_artifact_from_its_runner_spec(site, built):
    root, _ = built
    proc = run(["-m", "toolchain", "bench", "out/mlp", "--batch", "1,2", "--iters", "3", "--seconds", "0.2", "--warmup", "1", "--json"], site, root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert [r["name"] for r in report["runtimes"]] == ["eager", "onnx", "republished"]


@pytest.mark.triton
def test_serve_check_serves_the_plugin_model(site, built):
    root, _ = built
    proc = run(["-m", "toolchain", "serve-check", "out/mlp", "--json"], site, root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads(proc.stdout)
    check = next(t for t in m["targets"] if t["name"] == "republished")["serving_check"]["triton"]
    assert check["status"] == "ok" and check["backend"] == "python (stands in for onnxruntime)"
