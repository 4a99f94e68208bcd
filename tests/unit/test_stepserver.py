"""The step server (toolchain.stepserver, toolchain.zygote): a real server process forking real worker steps.

The steps here fail early (a recipe that is missing, a factory that hangs while it is imported), so no model is
built; the e2e suites build through the server (test_build_engine: crashes, hangs, SIGTERM, memory limits)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from toolchain.recipe import load_recipe
from toolchain.records import StepSpec
from toolchain.steps import Children, run_step, server_for, step_env
from toolchain.stepserver import StepServer, preload_for

HANGING_FACTORY = "import time\ntime.sleep(600)\ndef build():\n    pass\n"
RECIPE = """\
name: hangs
source: {{framework: pytorch, factory: {factory}}}
inputs: [{{name: x, dtype: float32, shape: [1, 4]}}]
outputs: [y]
targets: [{targets}]
"""


def staging_of(tmp_path: Path) -> Path:
    staging = tmp_path / f".hangs.tmp-{os.getpid()}-0123abcd"
    staging.mkdir()
    return staging


def recipe_file(tmp_path: Path, factory: str = "def build():\n    pass\n", targets: str = "{kind: onnx}") -> Path:
    (tmp_path / "model.py").write_text(factory)
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(factory="model.py:build", targets=targets))
    return path


def run_missing_recipe(tmp_path: Path, staging: Path, children: Children) -> str:
    """A reference step of a recipe that is not there: the worker reports the usage error (exit 0). Its log."""
    try:
        out = run_step(StepSpec("reference", str(tmp_path / "missing.yaml")), staging, "reference", 60, children)
    finally:
        children.close()
    assert out.result is None and out.usage and "missing.yaml" in out.reason, out
    return (staging / "logs" / "reference.log").read_text()


def test_a_forked_step_is_the_worker_step_with_its_log(tmp_path):
    staging = staging_of(tmp_path)
    children = Children(StepServer(staging, ["json"], step_env(staging)))
    log = run_missing_recipe(tmp_path, staging, children)
    assert "forked by the build's step server" in log and "imported json once" in log, log
    assert children.server.proc.poll() == 0  # closed with the run, cleanly


def test_a_timed_out_step_is_killed_with_its_group_and_the_server_ends_with_the_run(tmp_path):
    staging = staging_of(tmp_path)
    recipe = recipe_file(tmp_path, HANGING_FACTORY)
    children = Children(StepServer(staging, ["json"], step_env(staging)))
    t0 = time.monotonic()
    try:
        out = run_step(StepSpec("reference", str(recipe)), staging, "reference", 6, children)
    finally:
        children.close()
    assert time.monotonic() - t0 < 60
    assert out.result is None and out.reason.startswith("timed out after 6s"), out.reason
    assert children.server.proc.poll() is not None


def test_a_step_whose_server_dies_fails_saying_so_and_dies_too(tmp_path):
    staging = staging_of(tmp_path)
    recipe = recipe_file(tmp_path, HANGING_FACTORY)
    server = StepServer(staging, ["json"], step_env(staging))
    children = Children(server)
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(out=run_step(StepSpec("reference", str(recipe)), staging, "reference", 300, children)))
    runner.start()
    log = staging / "logs" / "reference.log"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (children._procs and "forked by" in (log.read_text() if log.exists() else "")):
        time.sleep(0.1)
    step = next(iter(children._procs))
    step_pid = step.pid
    assert step.poll() is None  # running: Popen's answer
    cmdline = Path(f"/proc/{step_pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[1:4] == [b"-m", b"toolchain.worker", str(staging / "logs" / "reference.step.json").encode()], cmdline[:5]  # as ps shows it
    os.kill(server.proc.pid, signal.SIGKILL)
    runner.join(60)
    children.close()
    assert not runner.is_alive()
    out = outcome["out"]
    assert out.result is None and "step server" in out.reason and "died" in out.reason and "MLPACK_STEP_SERVER=0" in out.hint, out
    time.sleep(1.0)
    assert not Path(f"/proc/{step_pid}").exists() or "Z" in Path(f"/proc/{step_pid}/stat").read_text().split(")")[1][:3]


def test_a_server_that_cannot_start_leaves_the_steps_to_fresh_interpreters(tmp_path):
    staging = staging_of(tmp_path)
    broken = {**step_env(staging), "PYTHONHOME": str(tmp_path / "nowhere")}  # its interpreter cannot start
    log = run_missing_recipe(tmp_path, staging, Children(StepServer(staging, ["json"], broken)))
    assert "the step server did not come up" in log and "this step runs in a fresh interpreter" in log and "forked by" not in log, log


def test_what_the_server_preloads(tmp_path, monkeypatch):
    monkeypatch.delenv("MLPACK_STEP_SERVER", raising=False)
    onnx = load_recipe(recipe_file(tmp_path, targets="{kind: onnx}, {kind: aoti}"))
    assert preload_for(onnx) == ["torch", "torch.export", "torch._inductor.compile_fx", "onnx", "onnxscript", "torch.onnx._internal.exporter._core"]
    hf = load_recipe(recipe_file(tmp_path, "from transformers import BertModel\ndef build():\n    pass\n", targets="{kind: onnx}"))
    assert preload_for(hf)[:2] == ["torch", "transformers"]
    # a fork cannot carry a CUDA context: a recipe with a CUDA target keeps fresh interpreters
    cuda = load_recipe(recipe_file(tmp_path, targets="{kind: onnx}, {kind: aoti, device: cuda}"))
    assert preload_for(cuda) == [] and server_for(tmp_path, cuda) is None
    monkeypatch.setenv("MLPACK_STEP_SERVER", "0")
    assert preload_for(onnx) == []


@pytest.mark.parametrize("framework", ["tensorflow"])
def test_tensorflow_steps_keep_fresh_interpreters(tmp_path, framework):
    (tmp_path / "model.py").write_text("def build():\n    pass\n")
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(factory="model.py:build", targets="{kind: onnx}").replace("pytorch", framework))
    assert preload_for(load_recipe(path)) == []
