"""One FP32 ONNX export per build: onnx, onnx-fp16 and onnx-int8 of one opset all start from the export the first of
them made (toolchain/onnxtools/export.py shared_export); another opset exports again; nothing shared is published."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import ROOT

RECIPE = """\
name: mlp
source:
  framework: pytorch
  factory: mlp.py:build
inputs:
  - {name: x, dtype: float32, shape: [batch, 16]}
outputs: [y]
dims:
  batch: {min: 1, max: 8}
targets:
  - kind: onnx
  - {kind: onnx, name: onnx-fp16, quantize: fp16}
  - {kind: onnx, name: onnx-int8, quantize: int8}
  - {kind: onnx, name: onnx-17, opset: 17}
parity:
  samples: 4
  per_target:
    onnx-fp16: {atol: 0.01, rtol: 0.01, cosine: 0.999}
    onnx-int8: {atol: 0.2, rtol: 0.2, cosine: 0.99}
"""

# forward() notes each process that runs it inside an exporter; MLPACK_TEST_VICTIM's step is killed there instead.
MLP = """\
import inspect, os, signal
import torch

class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(16, 32), torch.nn.Linear(32, 4)
    def forward(self, x):
        if any("torch/onnx" in f.filename or "torch/export" in f.filename for f in inspect.stack()):
            if os.environ.get("MLPACK_TEST_VICTIM", "@") in open("/proc/self/cmdline").read():
                os.kill(os.getpid(), signal.SIGKILL)
            with open(os.environ["MLPACK_TEST_TRACE"], "a") as f:
                f.write(open("/proc/self/cmdline").read().split("/logs/")[-1].split(".step.json")[0] + "\\n")
            if os.environ.get("MLPACK_TEST_RAISE"):
                raise RuntimeError("this model cannot be exported")
        return self.b(torch.relu(self.a(x)))

def build():
    torch.manual_seed(0)
    return M().eval()
"""


def _build(tmp_path: Path, *extra: str, victim: str | None = None, env: dict | None = None) -> tuple[subprocess.CompletedProcess, dict, set[str]]:
    (tmp_path / "mlp.py").write_text(MLP)
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    trace = tmp_path / "exports.txt"
    env = {
        **os.environ,
        "CI": "true",
        "PYTHONPATH": str(ROOT),
        "MLPACK_TEST_TRACE": str(trace),
        **({"MLPACK_TEST_VICTIM": victim} if victim else {}),
        **(env or {}),
    }
    cmd = [sys.executable, "-m", "toolchain", "build", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "out"), "--json", *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    exporters = set(trace.read_text().split()) if trace.exists() else set()
    return proc, json.loads(proc.stdout), exporters


def test_targets_of_one_opset_share_one_export(tmp_path):
    proc, m, exporters = _build(tmp_path, "--jobs", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {t["name"]: t["status"] for t in m["targets"]} == dict.fromkeys(["onnx", "onnx-fp16", "onnx-int8", "onnx-17"], "ok")
    # one process exported opset 18 (whichever of the three got there first), another opset 17
    assert len(exporters) == 2 and "onnx-17" in exporters and len(exporters & {"onnx", "onnx-fp16", "onnx-int8"}) == 1, exporters
    root = tmp_path / "out" / "mlp"
    reused = [n for n in ("onnx", "onnx-fp16", "onnx-int8") if "not exported again" in (root / "logs" / f"{n}.log").read_text()]
    assert len(reused) == 2 and not set(reused) & exporters, (reused, exporters)
    (first,) = exporters - {"onnx-17"}
    assert all(f"(opset 18) {first} made for this build" in (root / "logs" / f"{n}.log").read_text() for n in reused)
    assert "not exported again" not in (root / "logs" / "onnx-17.log").read_text()
    assert {json.dumps(t["export"]) for t in m["targets"]} == {json.dumps({"strategy": "dynamo", "tried": []})}
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")]  # .shared, or any other hidden leftover
    # a step's reproduce.sh exports alone, even into a folder inside the build, and leaves nothing shared there
    env, before = {**os.environ, "MLPACK_TEST_TRACE": str(tmp_path / "exports.txt")}, (tmp_path / "exports.txt").read_text().split().count("onnx-int8")
    repro = subprocess.run([str(root / "logs" / "onnx-int8.reproduce.sh"), str(root / "again")], env=env, capture_output=True, text=True, timeout=300)
    assert repro.returncode == 0 and json.loads((root / "again" / "result.json").read_text())["ok"], repro.stderr[-2000:]
    assert (tmp_path / "exports.txt").read_text().split().count("onnx-int8") > before and not (root / ".shared").exists()


def test_an_exporter_killed_holding_the_export_leaves_nothing_half_made(tmp_path):
    """--jobs 1: onnx exports first and is killed inside the exporter; onnx-fp16 finds no finished export (the lock
    went with the dead process, its partial files are not read), exports itself, and onnx-int8 takes that one."""
    proc, m, exporters = _build(tmp_path, "--jobs", "1", victim="/onnx.step.json")
    status = {t["name"]: t["status"] for t in m["targets"]}
    assert status == {"onnx": "failed", "onnx-fp16": "ok", "onnx-int8": "ok", "onnx-17": "ok"}, (status, proc.stderr[-3000:])
    assert exporters == {"onnx-fp16", "onnx-17"}, exporters
    assert "(opset 18) onnx-fp16 made for this build, not exported again" in (tmp_path / "out" / "mlp.failed" / "logs" / "onnx-int8.log").read_text()


def test_an_export_that_fails_fails_the_other_targets_of_its_opset_at_once(tmp_path):
    """The ladder fails for onnx: onnx-fp16 and onnx-int8 fail with its reason without climbing it again (each wait
    would eat into their timeouts); opset 17 is another export, tried on its own."""
    proc, m, exporters = _build(tmp_path, "--jobs", "1", env={"MLPACK_TEST_RAISE": "1"})
    targets = {t["name"]: t for t in m["targets"]}
    assert {n: t["status"] for n, t in targets.items()} == dict.fromkeys(["onnx", "onnx-fp16", "onnx-int8", "onnx-17"], "failed"), proc.stderr[-3000:]
    assert exporters == {"onnx", "onnx-17"}, exporters
    for name in ("onnx-fp16", "onnx-int8"):
        assert "(the FP32 export of opset 18 onnx tried for this build: logs/onnx.log has its tracebacks)" in targets[name]["reason"], targets[name]
        assert "this model cannot be exported" in targets[name]["reason"], targets[name]["reason"]
