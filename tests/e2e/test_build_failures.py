"""Failure paths as a user meets them: exit codes, messages, nothing lost."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.conftest import ROOT, mlpack

CNN_RECIPE = """\
name: {name}
source:
  framework: pytorch
  factory: cnn.py:build
  kwargs: {{channels: 4, classes: 5}}
inputs:
  - name: image
    dtype: float32
    shape: [batch, 3, 16, 16]
outputs: [logits]
dims:
  batch: {{min: 1, opt: 2, max: 4}}
targets:
  - kind: onnx
parity:
  samples: 4
  default: {tol}
"""


def write_recipe(folder: Path, text: str, name: str = "recipe.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "recipes/models/cnn.py", folder / "cnn.py")
    (folder / name).write_text(text)
    return folder / name


def cnn_recipe(folder: Path, name: str = "small", tol: str = "{atol: 1.0e-4, rtol: 1.0e-3}") -> Path:
    return write_recipe(folder, CNN_RECIPE.format(name=name, tol=tol))


def test_typo_key_exits_2_naming_key_and_line(tmp_path):
    recipe = write_recipe(tmp_path, CNN_RECIPE.format(name="small", tol="{atol: 1.0e-4}").replace("  factory:", "  factroy:"))
    proc = mlpack("build", str(recipe), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert f"{recipe}:4: source.factroy: unknown key 'factroy'" in proc.stderr
    assert "did you mean 'factory'?" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_missing_recipe_exits_2(tmp_path):
    proc = mlpack("build", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2 and "recipe not found" in proc.stderr and "Traceback" not in proc.stderr


def test_impossible_tolerance_exits_3_and_keeps_last_good_output(tmp_path):
    out = tmp_path / "out"
    good = cnn_recipe(tmp_path / "good")
    assert mlpack("build", str(good), "--out", str(out)).returncode == 0
    published = (out / "small" / "manifest.json").read_bytes()

    strict = cnn_recipe(tmp_path / "strict", tol="{atol: 0.0, rtol: 0.0}")
    proc = mlpack("build", str(strict), "--out", str(out))
    assert proc.returncode == 3, proc.stderr
    assert "parity failures" in proc.stderr and "logits" in proc.stderr and "Traceback" not in proc.stderr
    assert (out / "small" / "manifest.json").read_bytes() == published  # untouched
    failed = json.loads((out / "small.failed" / "manifest.json").read_text())
    t = failed["targets"][0]
    assert t["status"] == "failed" and t["parity"]["passed"] is False and t["reason"] == "parity failed"
    assert t["parity"]["outputs"]["logits"]["max_abs_err"] > 0
    assert not list(out.glob(".small.tmp-*"))


def test_factory_that_raises_exits_4_with_reason(tmp_path):
    recipe = write_recipe(tmp_path, CNN_RECIPE.format(name="small", tol="{atol: 1.0e-4}").replace("cnn.py:build", "bad.py:build"))
    (tmp_path / "bad.py").write_text("def build(**kw):\n    raise RuntimeError('weights server unreachable')\n")
    proc = mlpack("build", str(recipe), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 4
    t = json.loads(proc.stdout)["targets"][0]
    assert t["status"] == "failed" and "weights server unreachable" in t["reason"]
    assert "Traceback" not in proc.stderr


def test_unexportable_model_exits_4_with_log(tmp_path):
    """An operator no ONNX exporter strategy can take: exit 4, every strategy named, the log kept."""
    recipe = write_recipe(tmp_path, CNN_RECIPE.format(name="small", tol="{atol: 1.0e-4}").replace("cnn.py:build", "dyn.py:build"))
    (tmp_path / "dyn.py").write_text(
        "import torch\n"
        "class M(torch.nn.Module):\n"
        "    def forward(self, image):\n"
        "        x = image.flatten(1)[:, :5]\n"
        "        return torch.linalg.eigvalsh(x.unsqueeze(2) * x.unsqueeze(1) + torch.eye(5))  # no ONNX op\n"
        "def build(**kw):\n    return M()\n"
    )
    proc = mlpack("build", str(recipe), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 4, proc.stderr
    t = json.loads(proc.stdout)["targets"][0]
    assert t["status"] == "failed" and t["stage"] == "convert" and t["log"] == "logs/onnx.log"
    assert "dynamo:" in t["reason"] and "torchscript:" in t["reason"] and "eigvalsh" in t["reason"]
    assert (tmp_path / "out" / "small.failed" / t["log"]).read_text().strip()
    assert "log:" in proc.stderr and "Traceback" not in proc.stderr


def test_a_wrong_fallback_export_is_caught_before_publishing(tmp_path):
    """A data-dependent shape defeats torch.export; the TorchScript fallback bakes one shape in.

    The traced graph is run at the dims' other corners before it is accepted, so the build fails at
    convert, names the shape that differs and publishes nothing."""
    recipe = write_recipe(tmp_path, CNN_RECIPE.format(name="small", tol="{atol: 1.0e-4}").replace("cnn.py:build", "dyn.py:build"))
    (tmp_path / "dyn.py").write_text(
        "import torch\n"
        "class M(torch.nn.Module):\n"
        "    def forward(self, image):\n"
        "        n = int(image.flatten()[0].item() * 10) + 1  # data-dependent shape\n"
        "        return image.flatten(1)[:, :n].sum(1, keepdim=True).repeat(1, n)\n"
        "def build(**kw):\n    return M()\n"
    )
    out = tmp_path / "out"
    proc = mlpack("build", str(recipe), "--out", str(out), "--json")
    assert proc.returncode == 4, proc.stderr
    t = json.loads(proc.stdout)["targets"][0]
    assert (t["status"], t["stage"]) == ("failed", "convert")
    assert "torchscript: StepError: the graph is right only at the traced sizes" in t["reason"]
    assert re.search(r"output logits has shape \[1, \d+\], the model's \[1, \d+\]", t["reason"])
    assert not (out / "small").exists() and (out / "small.failed").is_dir()
    assert "Traceback" not in proc.stderr


def test_required_cuda_target_without_gpu_exits_4(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the target would build")
    text = CNN_RECIPE.format(name="small", tol="{atol: 1.0e-4}").replace("  - kind: onnx\n", "  - kind: aoti\n    device: cuda\n    required: true\n")
    proc = mlpack("build", str(write_recipe(tmp_path, text)), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 4
    t = json.loads(proc.stdout)["targets"][0]
    assert t["status"] == "failed" and "CUDA" in t["reason"] and "required" in t["reason"]


def test_exported_program_source(tmp_path):
    import torch

    sys.path.insert(0, str(ROOT / "recipes/models"))
    try:
        from cnn import build
    finally:
        sys.path.pop(0)
    model = build(channels=4, classes=5)
    batch = torch.export.Dim("batch", min=1, max=4)
    ep = torch.export.export(model, (torch.rand(2, 3, 16, 16),), dynamic_shapes=({0: batch},))
    torch.export.save(ep, tmp_path / "model.pt2")
    text = CNN_RECIPE.format(name="exp", tol="{atol: 1.0e-4, rtol: 1.0e-3}").replace(
        "  factory: cnn.py:build\n  kwargs: {channels: 4, classes: 5}\n", "  exported: model.pt2\n"
    )
    proc = mlpack("build", str(write_recipe(tmp_path, text)), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["targets"][0]["parity"]["passed"]


def test_weights_are_loaded_into_the_factory_module(tmp_path):
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT / "recipes/models"))
    try:
        from cnn import build
    finally:
        sys.path.pop(0)
    trained = build(channels=4, classes=5, seed=7)  # differs from the factory's seed-0 weights
    save_file(trained.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    for weights in ("w.safetensors", "w.pt"):
        text = CNN_RECIPE.format(name="w", tol="{atol: 1.0e-4, rtol: 1.0e-3}").replace("  kwargs:", f"  weights: {weights}\n  kwargs:")
        out = tmp_path / f"out-{weights}"
        proc = mlpack("build", str(write_recipe(tmp_path, text)), "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        data = np.load(out / "w" / "parity" / "samples.npz")
        ref = np.load(out / "w" / "parity" / "reference.npz")
        with torch.no_grad():
            want = trained(torch.from_numpy(data["0/image"])).numpy()
        np.testing.assert_allclose(ref["0/logits"], want, rtol=1e-5, atol=1e-6)


def test_dict_outputs_follow_recipe_names(tmp_path):
    (tmp_path / "two.py").write_text(
        "import torch\n"
        "class M(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.l = torch.nn.Linear(4, 3)\n"
        "    def forward(self, x):\n        y = self.l(x)\n        return {'scores': y, 'norm': y.norm(dim=1, keepdim=True)}\n"
        "def build():\n    torch.manual_seed(0)\n    return M()\n"
    )
    text = (
        "name: two\nsource: {framework: pytorch, factory: two.py:build}\n"
        "inputs: [{name: x, dtype: float32, shape: [batch, 4]}]\noutputs: [norm, scores]\n"
        "dims: {batch: {min: 1, max: 6}}\ntargets: [{kind: onnx}]\n"
        "serve: {triton: {max_batch_size: 6, targets: [onnx]}}\n"
    )
    (tmp_path / "r.yaml").write_text(text)
    proc = mlpack("build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stderr
    sig = json.loads(proc.stdout)["targets"][0]["signature"]
    assert [o["name"] for o in sig["outputs"]] == ["norm", "scores"]
    assert [o["shape"] for o in sig["outputs"]] == [[-1, 1], [-1, 3]]
    ref = np.load(tmp_path / "out" / "two" / "parity" / "reference.npz")
    np.testing.assert_allclose(ref["0/norm"][:, 0], np.linalg.norm(ref["0/scores"], axis=1), rtol=1e-5)


def test_killed_build_leaves_last_good_output(tmp_path):
    out = tmp_path / "out"
    recipe = cnn_recipe(tmp_path / "r")
    assert mlpack("build", str(recipe), "--out", str(out)).returncode == 0
    before = (out / "small" / "manifest.json").read_bytes()
    env = {**os.environ, "CI": "true", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "toolchain", "build", str(recipe), "--out", str(out), "--force"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob(".small.tmp-*/parity")):
        time.sleep(0.05)
    assert list(out.glob(".small.tmp-*")), "the build never started writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "small" / "manifest.json").read_bytes() == before
    # The next build cleans the dead build's temporary directory.
    assert mlpack("build", str(recipe), "--out", str(out)).returncode == 0
    assert not list(out.glob(".small.tmp-*"))


def test_relative_out_dir(tmp_path):
    """The default --out is the relative `artifacts/`: steps must still find their files."""
    recipe = cnn_recipe(tmp_path / "r")
    proc = mlpack("build", str(recipe), "--out", "rel-out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "rel-out" / "small" / "onnx" / "model.onnx").is_file()


def test_serving_failure_after_parity_is_exit_4_at_stage_serving(tmp_path):
    """A Triton config that cannot hold the artifact fails the target at the serving stage (exit 4), not parity (3)."""
    # dims.batch min == max: the export pins the batch dim, so Triton batching has no dynamic dim to use.
    text = CNN_RECIPE.format(name="pinned", tol="{atol: 1.0e-4}").replace("{min: 1, opt: 2, max: 4}", "{min: 2, max: 2}")
    recipe = write_recipe(tmp_path, text + "serve:\n  triton: {max_batch_size: 2, targets: [onnx]}\n")
    junit = tmp_path / "junit.xml"
    proc = mlpack("build", str(recipe), "--out", str(tmp_path / "out"), "--json", "--junit", str(junit))
    assert proc.returncode == 4, proc.stderr[-2000:]
    t = json.loads(proc.stdout)["targets"][0]
    assert (t["status"], t["stage"]) == ("failed", "serving") and t["parity"]["passed"]
    assert "needs a dynamic first (batch) dimension" in t["reason"]
    assert 'type="serving"' in junit.read_text() and "<failure" not in junit.read_text()


def test_usage_error_inside_a_step_keeps_its_fix_and_exits_2(tmp_path):
    """Found in a worker (the INT8 calibration split), a recipe problem is still exit 2 with its fix."""
    rng = np.random.default_rng(0)
    # One row: parity takes it, none is left to calibrate on (calibration never reuses parity rows).
    np.savez(tmp_path / "data.npz", image=rng.random((1, 3, 16, 16), dtype=np.float32))
    text = CNN_RECIPE.format(name="calib", tol="{atol: 1.0e-4}").replace("  - kind: onnx\n", "  - {kind: onnx, quantize: int8}\n")
    recipe = write_recipe(tmp_path, text + "data: {path: data.npz}\n")
    proc = mlpack("build", str(recipe), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 2, proc.stderr[-2000:]
    t = json.loads(proc.stdout)["targets"][0]
    assert (t["status"], t["stage"]) == ("failed", "recipe")
    assert "too few are left to calibrate INT8 on" in t["reason"] and "calibration never reuses parity rows" in t["hint"]
    assert "fix: add rows to the data or lower parity.samples" in proc.stderr and "Traceback" not in proc.stderr
