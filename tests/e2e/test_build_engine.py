"""The build engine under CI conditions: cache, isolation, parallelism, locks, signals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, mlpack

# Two ONNX targets of a tiny MLP: each step takes seconds, not minutes.
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
  - kind: onnx
    name: onnx-b
    opset: 17
    timeout: 120
parity:
  samples: 3
serve:
  triton: {max_batch_size: 4, targets: [onnx, onnx-b]}
"""

# forward() misbehaves only while the ONNX exporter traces onnx-b's step, chosen by
# MLPACK_TEST_MODE: crash (SIGSEGV), hang, or record when it ran (to show overlap).
MLP = """\
import os, signal, time, inspect
import torch

MODE = os.environ.get("MLPACK_TEST_MODE", "")

def _in_export():
    return any("torch/onnx" in f.filename or "torch/export" in f.filename for f in inspect.stack())

class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.l = torch.nn.Linear(8, 3)
    def forward(self, x):
        if _in_export():
            if MODE == "crash" and os.environ.get("MLPACK_TEST_VICTIM") in open("/proc/self/cmdline").read():
                os.kill(os.getpid(), signal.SIGSEGV)
            if MODE == "hang" and os.environ.get("MLPACK_TEST_VICTIM") in open("/proc/self/cmdline").read():
                time.sleep(600)
            if MODE == "hog" and os.environ.get("MLPACK_TEST_VICTIM") in open("/proc/self/cmdline").read():
                hog = bytearray(3 * 1024**3)  # zero pages are not resident: touch them
                for i in range(0, len(hog), 4096):
                    hog[i] = 1
                time.sleep(60)
            if MODE == "overlap":
                with open(os.environ["MLPACK_TEST_TRACE"], "a") as f:
                    f.write(f"{os.getpid()} {time.time()} start\\n")
                time.sleep(2)
                with open(os.environ["MLPACK_TEST_TRACE"], "a") as f:
                    f.write(f"{os.getpid()} {time.time()} end\\n")
        if MODE == "hang-eager" and not _in_export():
            time.sleep(600)
        return self.l(x)

def build():
    if MODE == "exit":
        import sys
        sys.exit(0)
    torch.manual_seed(0)
    return M().eval()
"""


def project(tmp_path: Path, text: str = RECIPE) -> Path:
    (tmp_path / "mlp.py").write_text(MLP)
    (tmp_path / "recipe.yaml").write_text(text)
    return tmp_path / "recipe.yaml"


def build(recipe: Path, out: Path, *extra: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, dict | None]:
    e = {**os.environ, "CI": "true", "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "toolchain", "build", str(recipe), "--out", str(out), "--json", *extra], env=e, capture_output=True, text=True, timeout=600
    )
    return proc, (json.loads(proc.stdout) if proc.stdout.strip() else None)


def hits(manifest: dict) -> dict[str, bool]:
    return {t["name"]: t["cache"]["hit"] for t in manifest["targets"]}


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """One built output whose cache the tests below reuse and perturb (each on a copy)."""
    root = tmp_path_factory.mktemp("cached")
    recipe = project(root)
    proc, m = build(recipe, root / "out")
    assert proc.returncode == 0, proc.stderr
    assert hits(m) == {"onnx": False, "onnx-b": False}
    return root


def copy_of(cached: Path, tmp_path: Path) -> tuple[Path, Path]:
    dst = tmp_path / "p"
    shutil.copytree(cached, dst, symlinks=True)  # hard links become copies: an independent cache
    return dst / "recipe.yaml", dst / "out"


def test_unchanged_rebuild_hits_cache_and_imports_no_framework(cached, tmp_path):
    recipe, out = copy_of(cached, tmp_path)
    e = {**os.environ, "CI": "true", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "toolchain", "build", str(recipe), "--out", str(out), "--json"],
        env=e,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout)
    assert hits(m) == {"onnx": True, "onnx-b": True}
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & {"torch", "tensorflow", "onnx", "onnxruntime", "transformers"}, sorted(imported & {"torch", "onnx"})
    # The reused files are the published ones, verified against the manifest.
    for t in m["targets"]:
        for f in t["files"]:
            from toolchain.manifest import sha256_file

            assert sha256_file(out / "mlp" / f["path"]) == f["sha256"]
    assert (out / "mlp" / "triton" / "mlp_onnx_b" / "1" / "model.onnx").is_file()
    assert (out / "mlp" / "logs" / "onnx.log").is_file()


def test_changing_one_target_rebuilds_only_it(cached, tmp_path):
    recipe, out = copy_of(cached, tmp_path)
    recipe.write_text(RECIPE.replace("opset: 17", "opset: 16"))
    proc, m = build(recipe, out)
    assert proc.returncode == 0, proc.stderr
    assert hits(m) == {"onnx": True, "onnx-b": False}
    import onnx

    assert onnx.load(str(out / "mlp" / "onnx-b" / "model.onnx")).opset_import[0].version == 16


def test_force_rebuilds_everything(cached, tmp_path):
    recipe, out = copy_of(cached, tmp_path)
    proc, m = build(recipe, out, "--force")
    assert proc.returncode == 0 and hits(m) == {"onnx": False, "onnx-b": False}


def test_model_file_change_invalidates_everything(cached, tmp_path):
    recipe, out = copy_of(cached, tmp_path)
    (recipe.parent / "mlp.py").write_text(MLP.replace("torch.manual_seed(0)", "torch.manual_seed(1)"))
    proc, m = build(recipe, out)
    assert proc.returncode == 0 and hits(m) == {"onnx": False, "onnx-b": False}


def test_corrupted_cached_file_is_rebuilt_not_served(cached, tmp_path):
    recipe, out = copy_of(cached, tmp_path)
    m0 = json.loads((out / "mlp" / "manifest.json").read_text())
    key = next(t["cache"]["key"] for t in m0["targets"] if t["name"] == "onnx")
    cached_file = out / ".mlpack-cache" / key / "files" / "onnx" / "model.onnx"
    with open(cached_file, "ab") as f:
        f.write(b"\0corrupt")
    proc, m = build(recipe, out)
    assert proc.returncode == 0, proc.stderr
    assert hits(m) == {"onnx": False, "onnx-b": True}
    from toolchain.manifest import sha256_file

    t = next(t for t in m["targets"] if t["name"] == "onnx")
    assert sha256_file(out / "mlp" / "onnx" / "model.onnx") == t["files"][0]["sha256"]


def test_failed_target_is_not_cached(tmp_path):
    recipe = project(tmp_path, RECIPE.replace("parity:\n  samples: 3", "parity:\n  samples: 3\n  per_target:\n    onnx-b: {atol: 0.0, rtol: 0.0, cosine: 1.0}"))
    proc, m = build(recipe, tmp_path / "out")
    t = next(t for t in m["targets"] if t["name"] == "onnx-b")
    if proc.returncode == 0:
        pytest.skip("ONNX Runtime matched eager bit for bit; the strict budget held")
    assert proc.returncode == 3 and t["status"] == "failed"
    assert not (tmp_path / "out" / ".mlpack-cache" / t["cache"]["key"]).exists()


def test_crashing_converter_fails_only_its_target(tmp_path):
    recipe = project(tmp_path)
    proc, m = build(recipe, tmp_path / "out", env={"MLPACK_TEST_MODE": "crash", "MLPACK_TEST_VICTIM": "onnx-b.step.json"})
    assert proc.returncode == 4, proc.stderr
    by = {t["name"]: t for t in m["targets"]}
    assert by["onnx"]["status"] == "ok"
    assert by["onnx-b"]["status"] == "failed" and "SIGSEGV" in by["onnx-b"]["reason"]
    assert "in forward" in by["onnx-b"]["reason"]  # faulthandler's frames: where in the model it died
    log = tmp_path / "out" / "mlp.failed" / by["onnx-b"]["log"]
    assert log.is_file() and str(log) in proc.stderr
    assert (tmp_path / "out" / "mlp.failed" / "logs" / "onnx-b.reproduce.sh").is_file()
    assert "Traceback" not in proc.stderr


def test_hanging_converter_times_out(tmp_path):
    recipe = project(tmp_path, RECIPE.replace("timeout: 120", "timeout: 8"))
    t0 = time.time()
    proc, m = build(recipe, tmp_path / "out", env={"MLPACK_TEST_MODE": "hang", "MLPACK_TEST_VICTIM": "onnx-b.step.json"})
    assert time.time() - t0 < 120
    by = {t["name"]: t for t in m["targets"]}
    assert proc.returncode == 4 and by["onnx"]["status"] == "ok"
    assert "timed out after 8s" in by["onnx-b"]["reason"]


def step_spans(trace: Path) -> list[tuple[float, float]]:
    """(first, last) time each step process wrote to the trace, in start order."""
    times: dict[str, list[float]] = {}
    for line in trace.read_text().splitlines():
        pid, t, _ = line.split()
        times.setdefault(pid, []).append(float(t))
    return sorted((min(ts), max(ts)) for ts in times.values())


def test_jobs_2_runs_targets_concurrently(tmp_path):
    recipe = project(tmp_path)
    trace = tmp_path / "trace.txt"
    proc, m = build(recipe, tmp_path / "out", "--jobs", "2", env={"MLPACK_TEST_MODE": "overlap", "MLPACK_TEST_TRACE": str(trace)})
    assert proc.returncode == 0, proc.stderr
    spans = step_spans(trace)
    assert len(spans) == 2
    (a0, a1), (b0, b1) = spans
    assert a0 < b1 and b0 < a1, "the two target steps did not overlap"


def test_jobs_1_runs_targets_one_after_another(tmp_path):
    recipe = project(tmp_path)
    trace = tmp_path / "trace.txt"
    proc, _ = build(recipe, tmp_path / "out", "--jobs", "1", env={"MLPACK_TEST_MODE": "overlap", "MLPACK_TEST_TRACE": str(trace)})
    assert proc.returncode == 0, proc.stderr
    intervals = step_spans(trace)
    assert len(intervals) == 2 and all(prev[1] <= nxt[0] for prev, nxt in zip(intervals, intervals[1:]))


def test_concurrent_builds_never_interleave(tmp_path):
    recipe = project(tmp_path)
    out = tmp_path / "out"
    e = {**os.environ, "CI": "true", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "toolchain", "build", str(recipe), "--out", str(out), "--force"]
    procs = [subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert any("holds" in err and "waiting" in err for _, err in outs), "the second build did not wait for the lock"
    m = json.loads((out / "mlp" / "manifest.json").read_text())
    from toolchain.manifest import sha256_file

    for t in m["targets"]:
        for f in t["files"]:
            assert sha256_file(out / "mlp" / f["path"]) == f["sha256"]
    assert not list(out.glob(".mlp.tmp-*"))


def test_sigterm_stops_children_and_keeps_last_good_output(cached, tmp_path):
    recipe, out = copy_of(cached, tmp_path)
    before = (out / "mlp" / "manifest.json").read_bytes()
    e = {**os.environ, "CI": "true", "PYTHONPATH": str(ROOT), "MLPACK_TEST_MODE": "hang", "MLPACK_TEST_VICTIM": "onnx-b.step.json"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "toolchain", "build", str(recipe), "--out", str(out), "--force"],
        env=e,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    step_log = None
    while time.time() < deadline:
        logs = list(out.glob(".mlp.tmp-*/logs/onnx-b.log"))
        if logs and logs[0].stat().st_size > 0:
            step_log = logs[0]
            break
        time.sleep(0.1)
    assert step_log, "the onnx-b step never started"
    time.sleep(1.0)
    workers = [str(pid) for pid in staged_processes(out)]  # this build's only: other tests may run beside it
    assert workers, "no worker process found"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "Traceback" not in err
    time.sleep(0.5)
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    assert not alive, f"worker processes survived: {alive}"
    assert (out / "mlp" / "manifest.json").read_bytes() == before
    assert not list(out.glob(".mlp.tmp-*"))


def test_junit_report(tmp_path):
    recipe = project(tmp_path)
    junit = tmp_path / "report.xml"
    proc, _ = build(recipe, tmp_path / "out", "--junit", str(junit), env={"MLPACK_TEST_MODE": "crash", "MLPACK_TEST_VICTIM": "onnx-b.step.json"})
    assert proc.returncode == 4
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("tests") == "2" and suite.get("errors") == "1"
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert "max_abs_err" in cases["onnx"].find("system-out").text
    assert "SIGSEGV" in cases["onnx-b"].find("error").get("message")


def test_name_cannot_escape_out(tmp_path):
    recipe = project(tmp_path, RECIPE.replace("name: mlp", "name: ../../etc"))
    proc = mlpack("build", str(recipe), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "'../../etc' does not match" in proc.stderr
    recipe = project(tmp_path, RECIPE.replace("name: onnx-b", "name: a/b"))
    proc = mlpack("build", str(recipe), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "targets[1].name" in proc.stderr


def test_output_inside_the_model_folder_does_not_invalidate_the_cache(tmp_path):
    """artifacts/ beside the model code holds generated model.py files; they are not source."""
    recipe = project(
        tmp_path,
        RECIPE.replace(
            "serve:\n  triton: {max_batch_size: 4, targets: [onnx, onnx-b]}", "serve:\n  triton: {max_batch_size: 4, targets: [onnx], backend: python}"
        ),
    )
    proc, m = build(recipe, tmp_path / "artifacts")
    assert proc.returncode == 0, proc.stderr
    assert list((tmp_path / "artifacts").rglob("model.py"))
    proc, m = build(recipe, tmp_path / "artifacts")
    assert proc.returncode == 0 and hits(m) == {"onnx": True, "onnx-b": True}


# ------------------------------------------------ kills, limits and publishing (issue 12)


def staged_processes(out: Path) -> list[int]:
    """Live processes that carry a build's staging marker for `out` (workers and what they started)."""
    marker = f"MLPACK_STAGING={out}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def wait_for_step(out: Path, name: str, timeout: float = 120) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        logs = list(out.glob(f".mlp.tmp-*/logs/{name}.log"))
        if logs and logs[0].stat().st_size > 0:
            return logs[0]
        time.sleep(0.1)
    raise AssertionError(f"the {name} step never started")


def test_sigkill_of_the_build_takes_its_workers_along(cached, tmp_path):
    """SIGKILL leaves no handler to run: the workers see their parent die and end their process group."""
    recipe, out = copy_of(cached, tmp_path)
    e = {**os.environ, "CI": "true", "PYTHONPATH": str(ROOT), "MLPACK_TEST_MODE": "hang", "MLPACK_TEST_VICTIM": "onnx-b.step.json"}
    proc = subprocess.Popen([sys.executable, "-m", "toolchain", "build", str(recipe), "--out", str(out), "--force"],
                            env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    wait_for_step(out, "onnx-b")
    time.sleep(1.0)
    assert staged_processes(out), "no worker found"
    os.killpg(proc.pid, signal.SIGKILL)  # mlpack's own process group; the workers lead groups of their own
    proc.wait()
    deadline = time.time() + 10
    while staged_processes(out) and time.time() < deadline:
        time.sleep(0.2)
    assert not staged_processes(out), "worker processes outlived the killed build"
    proc2, m = build(recipe, out)  # the next build cleans the dead build's folder and publishes
    assert proc2.returncode == 0, proc2.stderr
    assert not list(out.glob(".mlp.tmp-*"))


def test_the_next_build_reaps_orphans_of_a_dead_build(cached, tmp_path):
    """A process left by a build that died (say, with the machine's OOM killer) is stopped by the next one."""
    recipe, out = copy_of(cached, tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    orphan = subprocess.Popen(["sleep", "300"], env={**os.environ, "MLPACK_STAGING": str(out / f".mlp.tmp-{dead.pid}-deadbeef")}, start_new_session=True)
    try:
        proc, m = build(recipe, out)
        assert proc.returncode == 0, proc.stderr
        assert orphan.wait(timeout=10) == -signal.SIGKILL
    finally:
        orphan.kill()


def test_a_step_over_its_memory_limit_fails_only_its_target(tmp_path):
    recipe = project(tmp_path, RECIPE.replace("timeout: 120", "timeout: 120\n    memory: 2GB"))
    proc, m = build(recipe, tmp_path / "out", env={"MLPACK_TEST_MODE": "hog", "MLPACK_TEST_VICTIM": "onnx-b.step.json"})
    by = {t["name"]: t for t in m["targets"]}
    assert proc.returncode == 4 and by["onnx"]["status"] == "ok", proc.stderr[-2000:]
    assert "over the step's memory limit of 2000 MB" in by["onnx-b"]["reason"] and "raise `memory:`" in by["onnx-b"]["reason"]


def test_the_reference_step_obeys_the_targets_timeout(tmp_path):
    """A model that hangs in eager mode used to stall the build for a fixed 30 minutes."""
    recipe = project(
        tmp_path, RECIPE.replace("  - kind: onnx\n  - kind: onnx", "  - kind: onnx\n    timeout: 10\n  - kind: onnx").replace("timeout: 120", "timeout: 10")
    )
    t0 = time.time()
    proc, m = build(recipe, tmp_path / "out", env={"MLPACK_TEST_MODE": "hang-eager"})
    assert time.time() - t0 < 60
    assert proc.returncode == 4 and all("timed out after 10s" in t["reason"] for t in m["targets"]), proc.stderr[-2000:]


def test_a_factory_calling_sys_exit_fails_with_that_reason(tmp_path):
    proc, m = build(project(tmp_path), tmp_path / "out", env={"MLPACK_TEST_MODE": "exit"})
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert all("called sys.exit(0)" in t["reason"] for t in m["targets"]) and "unexpected error" not in proc.stderr


def test_all_hits_with_the_reference_entry_gone_recompute_it(cached, tmp_path):
    recipe, out = copy_of(cached, tmp_path)
    entries = [p.parents[2] for p in (out / ".mlpack-cache").glob("*/files/parity/reference.npz")]
    assert len(entries) == 1
    original = (entries[0] / "files" / "parity" / "reference.npz").read_bytes()
    (entries[0] / "files" / "parity" / "reference.npz").write_bytes(b"")  # emptied
    proc, m = build(recipe, out)
    assert proc.returncode == 0, proc.stderr
    assert hits(m) == {"onnx": True, "onnx-b": True} and "recomputing them" in proc.stderr
    assert (out / "mlp" / "parity" / "reference.npz").read_bytes() == original


def test_published_files_share_no_inode_with_the_cache(cached, tmp_path):
    recipe, out = copy_of(cached, tmp_path)
    proc, m = build(recipe, out)
    assert proc.returncode == 0 and hits(m) == {"onnx": True, "onnx-b": True}
    cache_inodes = {p.stat().st_ino for p in (out / ".mlpack-cache").rglob("*") if p.is_file()}
    published = [out / "mlp" / f["path"] for t in m["targets"] for f in t["files"]] + [out / "mlp" / "parity" / "reference.npz"]
    assert published and not {p.stat().st_ino for p in published} & cache_inodes


def test_a_users_own_folder_at_the_output_path_is_never_replaced(tmp_path):
    recipe = project(tmp_path)
    (tmp_path / "out" / "mlp").mkdir(parents=True)
    (tmp_path / "out" / "mlp" / "notes.txt").write_text("mine")
    proc, _ = build(recipe, tmp_path / "out")
    assert proc.returncode == 2 and "not an mlpack output" in proc.stderr
    assert (tmp_path / "out" / "mlp" / "notes.txt").read_text() == "mine"


def test_a_symlink_at_the_lock_path_is_refused(tmp_path):
    recipe = project(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".mlp.lock").symlink_to(victim)
    proc, _ = build(recipe, tmp_path / "out")
    assert proc.returncode == 2 and "symbolic link" in proc.stderr and "Traceback" not in proc.stderr
    assert victim.read_text() == "precious"


def test_out_and_junit_paths_that_cannot_work_fail_before_building(tmp_path):
    recipe = project(tmp_path)
    (tmp_path / "file").write_text("x")
    proc, _ = build(recipe, tmp_path / "file")
    assert proc.returncode == 2 and "is a file, not a folder" in proc.stderr
    proc, _ = build(recipe, tmp_path / "out", "--junit", str(tmp_path / "file" / "report.xml"))
    assert proc.returncode == 2 and "--junit" in proc.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("text", ["[]", "{}", '{"schema": "mlpack.manifest/1", "targets": "x"}', "null"])
def test_inspect_refuses_what_is_not_a_manifest(tmp_path, text):
    (tmp_path / "manifest.json").write_text(text)
    proc = mlpack("inspect", str(tmp_path))
    assert proc.returncode == 2 and "not" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_serve_check_without_the_serve_extra_names_it(cached, tmp_path):
    """Without mlpack[serve], tritonclient (a core dependency, for its config proto) lacks its HTTP client's packages."""
    code = "import sys; sys.modules['geventhttpclient'] = None; from toolchain.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "serve-check", str(cached / "out" / "mlp")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 2 and "pip install 'mlpack[serve]'" in proc.stderr, proc.stderr


def test_a_gate_that_compares_nothing_fails(tmp_path):
    """All-NaN outputs on both sides used to pass as "max_abs_err 0, cosine 1.000000"."""
    recipe = project(tmp_path, RECIPE.replace("serve:\n  triton: {max_batch_size: 4, targets: [onnx, onnx-b]}\n", ""))
    (tmp_path / "mlp.py").write_text(MLP.replace("        return self.l(x)", "        return self.l(x) * float('nan')"))
    proc, m = build(recipe, tmp_path / "out", "--target", "onnx")
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "nothing compared" in m["targets"][0]["parity"]["outputs"]["y"]["failures"][0]
