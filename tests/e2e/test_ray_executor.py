"""Steps dispatched on a real Ray cluster: two nodes started here, each with a resource that stands
for a GPU type (accelerator_type:type_a / type_b, as Ray names real GPU models), stopped after.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT

ray_bin = Path(sys.executable).parent / "ray"
pytestmark = pytest.mark.skipif(not ray_bin.is_file(), reason="ray is not installed (make install adds the distributed extra)")

RECIPE = """\
name: mlp
source:
  framework: pytorch
  factory: mlp.py:build
inputs:
  - {name: x, dtype: float32, shape: [batch, 8]}
outputs: [y]
dims:
  batch: {min: 1, max: 4}
targets:
  - kind: onnx
    gpus: [type_a, type_b]
parity:
  samples: 3
serve:
  triton: {max_batch_size: 4, targets: [onnx]}
"""
MLP = """\
import os, time, inspect
import torch

HANG = {hang!r}  # while this file exists, the onnx-type_b step hangs in export (to be killed)

def _in_export():
    return any("torch/onnx" in f.filename or "torch/export" in f.filename for f in inspect.stack())

class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.l = torch.nn.Linear(8, 3)
    def forward(self, x):
        if HANG and os.path.exists(HANG) and _in_export() and "onnx-type_b.step.json" in open("/proc/self/cmdline").read():
            time.sleep(600)
        return self.l(x)

def build():
    torch.manual_seed(0)
    return M().eval()
"""


def _free_port(lo: int = 20000) -> int:
    for port in range(lo, lo + 2000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port")


@pytest.fixture(scope="module")
def cluster():
    """`ray start --head` and a second `ray start --address`, each in its own process group."""
    port = _free_port(20000 + os.getpid() % 1000)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--block", "--disable-usage-stats"]
    # not under pytest's tmp folder: Ray's socket paths must fit AF_UNIX's 107 bytes (xdist adds popen-gwN/)
    temp = Path(tempfile.mkdtemp(prefix="ray-"))
    head = subprocess.Popen([str(ray_bin), "start", "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}",
                             '--resources={"accelerator_type:type_a": 1}', *common],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    procs = [head]
    try:
        time.sleep(3)
        worker = subprocess.Popen([str(ray_bin), "start", f"--address=127.0.0.1:{port}", '--resources={"accelerator_type:type_b": 1}', *common],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        procs.append(worker)
        address = f"127.0.0.1:{port}"
        nodes = _nodes(address, wait_for=2)
        yield address, nodes
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=8)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(temp, ignore_errors=True)


def _nodes(address: str, wait_for: int) -> dict[str, dict]:
    """{node id: resources} of the live nodes, once `wait_for` of them are up."""
    code = (
        "import json, sys, time, ray; ray.init(address=sys.argv[1], logging_level='ERROR'); t = time.time()\n"
        "while len([n for n in ray.nodes() if n['Alive']]) < int(sys.argv[2]) and time.time() - t < 120: time.sleep(1)\n"
        "print(json.dumps({n['NodeID']: n['Resources'] for n in ray.nodes() if n['Alive']}))"
    )
    proc = subprocess.run([sys.executable, "-c", code, address, str(wait_for)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    nodes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(nodes) >= wait_for, nodes
    return nodes


def project(folder: Path, text: str = RECIPE, hang: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mlp.py").write_text(MLP.format(hang=hang))
    (folder / "recipe.yaml").write_text(text)
    return folder / "recipe.yaml"


def build(recipe: Path, out: Path, *extra: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, dict | None]:
    e = {**os.environ, "CI": "true", "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "toolchain", "build", str(recipe), "--out", str(out), "--json", *extra],
                          env=e, capture_output=True, text=True, timeout=900, cwd=ROOT)  # fmt: skip
    return proc, (json.loads(proc.stdout) if proc.stdout.strip() else None)


def test_a_matrix_lands_each_artifact_on_the_node_of_its_type(cluster, tmp_path):
    address, nodes = cluster
    proc, m = build(project(tmp_path), tmp_path / "out", "--executor", "ray", env={"RAY_ADDRESS": address})
    assert proc.returncode == 0, proc.stderr[-4000:]
    by = {t["name"]: t for t in m["targets"]}
    assert set(by) == {"onnx-type_a", "onnx-type_b"}
    for gpu in ("type_a", "type_b"):
        t = by[f"onnx-{gpu}"]
        assert t["status"] == "ok" and t["parity"]["passed"]
        assert f"accelerator_type:{gpu}" in nodes[t["node"]["id"]], (t["node"], nodes)
    assert by["onnx-type_a"]["cache"]["key"] != by["onnx-type_b"]["cache"]["key"]
    served = {x["name"] for x in m["serving"]["models"]}
    assert served == {"mlp_onnx_type_a", "mlp_onnx_type_b"}
    assert (tmp_path / "out" / "mlp" / "onnx-type_a" / "model.onnx").is_file()
    import jsonschema

    from toolchain.manifest import schema

    jsonschema.validate(m, schema())
    # A rebuild is all cache hits: nothing is dispatched.
    proc, m = build(project(tmp_path), tmp_path / "out", "--executor", "ray", env={"RAY_ADDRESS": address})
    assert proc.returncode == 0 and all(t["cache"]["hit"] for t in m["targets"]), proc.stderr[-2000:]


def test_a_type_with_no_node_is_skipped_or_fails_when_required(cluster, tmp_path):
    address, _ = cluster
    text = RECIPE.replace("gpus: [type_a, type_b]", "gpus: [type_a, type_c]")
    proc, m = build(project(tmp_path / "a", text), tmp_path / "a" / "out", "--executor", "ray", env={"RAY_ADDRESS": address})
    by = {t["name"]: t for t in m["targets"]}
    assert proc.returncode == 0 and by["onnx-type_a"]["status"] == "ok", proc.stderr[-3000:]
    assert by["onnx-type_c"]["status"] == "skipped" and "no node of type type_c" in by["onnx-type_c"]["reason"]
    # ray://HOST:PORT names the head without RAY_ADDRESS
    proc, m = build(
        project(tmp_path / "b", text.replace("    gpus:", "    required: true\n    gpus:")), tmp_path / "b" / "out", "--executor", f"ray://{address}"
    )
    assert proc.returncode == 4 and "no node of type type_c" in proc.stderr


def test_a_step_killed_on_its_node_fails_only_its_target(cluster, tmp_path):
    address, _ = cluster
    hang = tmp_path / "hang"
    hang.touch()
    recipe = project(tmp_path, hang=str(hang))
    e = {**os.environ, "CI": "true", "PYTHONPATH": str(ROOT), "RAY_ADDRESS": address, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "toolchain", "build", str(recipe), "--out", str(tmp_path / "out"), "--json", "--executor", "ray"],
                            env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
    victim = None
    deadline = time.time() + 300
    while victim is None and time.time() < deadline and proc.poll() is None:
        pids = subprocess.run(["pgrep", "-f", "onnx-type_b.step.json"], capture_output=True, text=True).stdout.split()
        victim = int(pids[0]) if pids else None
        time.sleep(0.05)
    assert victim, "the onnx-type_b step never started"
    time.sleep(2)  # into its export, where it hangs
    os.kill(victim, signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    m = json.loads(out)
    by = {t["name"]: t for t in m["targets"]}
    assert proc.returncode == 4 and by["onnx-type_a"]["status"] == "ok", err[-3000:]
    assert "SIGKILL" in by["onnx-type_b"]["reason"] and "on node" in by["onnx-type_b"]["reason"]
    assert (tmp_path / "out" / "mlp.failed" / "logs" / "onnx-type_b.log").is_file()


def test_without_ray_a_matrix_target_is_skipped_with_the_way_to_build_it(tmp_path):
    proc, m = build(project(tmp_path), tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert all(t["status"] == "skipped" and "--executor ray" in t["reason"] for t in m["targets"])


def test_an_unreachable_cluster_is_a_usage_error(tmp_path):
    proc, _ = build(project(tmp_path), tmp_path / "out", "--executor", "ray", env={"RAY_ADDRESS": f"127.0.0.1:{_free_port(29000)}"})
    assert proc.returncode == 2 and "cannot reach a Ray cluster" in proc.stderr
