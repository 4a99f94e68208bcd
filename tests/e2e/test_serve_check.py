"""mlpack serve-check against a real Triton server (make triton installs it).

Each check works on a copy of a session build: serve-check rewrites the
manifest, and other tests compare the original with the build's output.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from tests.e2e.conftest import ROOT, mlpack
from toolchain.manifest import schema

pytestmark = pytest.mark.triton


def _copy(built, dest: Path) -> Path:
    root = dest / built.root.name
    shutil.copytree(built.root, root)
    return root


def _checks(manifest: dict, server: str = "triton") -> dict:
    return {t["name"]: t["serving_check"][server] for t in manifest["targets"] if server in t.get("serving_check", {})}


def _server_processes(marker: str) -> list[int]:
    """Live processes whose command line contains `marker`."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker.encode() in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


@pytest.fixture(scope="module")
def cnn_checked(cnn_build, tmp_path_factory):
    root = _copy(cnn_build, tmp_path_factory.mktemp("sc"))
    return root, mlpack("serve-check", str(root), "--json")


@pytest.fixture(scope="module")
def other_cnn(tmp_path_factory):
    """Another model with tiny-cnn's signature (other width and seed), built with --serve-check."""
    d = tmp_path_factory.mktemp("other")
    text = (ROOT / "recipes/cnn.yaml").read_text()
    text = text.replace("factory: models/cnn.py:build", f"factory: {ROOT / 'recipes/models/cnn.py'}:build")
    text = text.replace("kwargs: {channels: 16, classes: 10}", "kwargs: {channels: 8, classes: 10, seed: 1}")
    assert "seed: 1" in text and str(ROOT) in text
    (d / "cnn-other.yaml").write_text(text)
    proc = mlpack("build", str(d / "cnn-other.yaml"), "--out", str(d / "out"), "--target", "onnx", "--serve-check", "--json")
    return d / "out" / "tiny-cnn", proc


def test_server_found_from_its_environment_or_binary(monkeypatch, tmp_path):
    from toolchain.serving.server import ServerError, find_triton

    found = find_triton()
    monkeypatch.chdir(tmp_path)  # relative --server paths resolve from the cwd, results do not depend on it
    env_root = Path(found.env["PATH"]).parent
    for given in (env_root, found.binary, Path(os.path.relpath(env_root, tmp_path))):
        assert find_triton(given) == found, given
    assert found.binary.is_absolute() and "python" in found.available_backends()
    with pytest.raises(ServerError, match="no tritonserver in it"):
        find_triton(tmp_path)


def test_cnn_onnx_and_aoti_served_through_python_stand_ins(cnn_checked):
    root, proc = cnn_checked
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads(proc.stdout)
    jsonschema.validate(m, schema())
    assert json.loads((root / "manifest.json").read_text()) == m
    checks = _checks(m)
    assert checks["onnx"]["backend"] == "python (stands in for onnxruntime)" and checks["onnx"]["native_backend"] == "onnxruntime"
    assert checks["aoti"]["backend"] == "python (stands in for pytorch)" and checks["aoti"]["native_backend"] == "pytorch"
    for c in checks.values():
        assert c["status"] == "ok" and c["reason"] is None and c["native_check"] == []
        assert c["server_version"].startswith("2.") and c["requests"] == 8
        assert c["parity"]["passed"] and c["parity"]["outputs"]["logits"]["max_abs_err"] < 1e-4
    assert checks["aoti"]["parity"]["tolerance"]["cosine"] == 0.9999  # the recipe's per-target tolerance
    assert "tfserving: not checked - this build has no tfserving section" in proc.stderr
    assert "Started HTTPService at 127.0.0.1:" in (root / checks["onnx"]["log"]).read_text()


def test_bert_python_backend_served_as_is(bert_build, tmp_path):
    root = _copy(bert_build, tmp_path)
    proc = mlpack("serve-check", str(root), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    checks = _checks(json.loads(proc.stdout))
    assert set(checks) == {"onnx", "aoti"}
    for c in checks.values():
        assert (c["backend"], c["native_backend"], c["status"]) == ("python", "python", "ok")
        assert c["native_check"] == [] and c["requests"] == 8  # max_batch_size 8 = dims max: no sample is split


def test_build_with_serve_check(other_cnn):
    root, proc = other_cnn
    assert proc.returncode == 0, proc.stderr[-3000:]
    c = _checks(json.loads(proc.stdout))["onnx"]
    assert c["status"] == "ok" and c["parity"]["passed"]
    assert _checks(json.loads((root / "manifest.json").read_text()))["onnx"] == c


def test_wrong_dims_are_refused_quoting_triton(cnn_build, tmp_path):
    root = _copy(cnn_build, tmp_path)
    cfg = root / "triton/tiny_cnn_onnx/config.pbtxt"
    config = text_format.Parse(cfg.read_text(), mc.ModelConfig())
    assert list(config.input[0].dims) == [3, 32, 32]
    config.input[0].dims[2] = 31
    cfg.write_text(text_format.MessageToString(config))
    proc = mlpack("serve-check", str(root), "--target", "onnx")
    assert proc.returncode == 4, proc.stderr[-3000:]
    triton_says = "unexpected shape for input 'image' for model 'tiny_cnn_onnx'. Expected [-1,3,32,31], got [1,3,32,32]"
    assert triton_says in " ".join(proc.stderr.split())  # rich wraps the table cell
    c = _checks(json.loads((root / "manifest.json").read_text()))["onnx"]
    assert c["status"] == "refused" and triton_says in c["reason"]
    assert c["native_check"] == ["input image: config dims [3, 32, 31] (+batch), artifact shape [-1, 3, 32, 32]"]


def test_swapped_artifact_is_a_mismatch(cnn_build, other_cnn, tmp_path):
    other_root, other_proc = other_cnn
    assert other_proc.returncode == 0, other_proc.stderr[-3000:]
    root = _copy(cnn_build, tmp_path)
    dst = root / "triton/tiny_cnn_onnx/1/model.onnx"
    dst.unlink()  # never write through a hard link into the original build
    shutil.copyfile(other_root / "onnx/model.onnx", dst)
    proc = mlpack("serve-check", str(root), "--target", "onnx")
    assert proc.returncode == 3, proc.stderr[-3000:]
    c = _checks(json.loads((root / "manifest.json").read_text()))["onnx"]
    assert c["status"] == "mismatch" and not c["parity"]["passed"]
    assert c["parity"]["outputs"]["logits"]["failures"] and c["native_check"] == []  # same signature, other numbers
    assert "tiny_cnn_onnx: mismatch" in proc.stderr


def test_native_backend_missing_is_refused_and_server_stopped(cnn_build, tmp_path):
    root = _copy(cnn_build, tmp_path)
    proc = mlpack("serve-check", str(root), "--native", "--target", "onnx")
    assert proc.returncode == 4, proc.stderr[-3000:]
    c = _checks(json.loads((root / "manifest.json").read_text()))["onnx"]
    assert c["backend"] == "onnxruntime" and "unable to find backend library for backend 'onnxruntime'" in c["reason"]
    assert _server_processes(str(root / "triton")) == []


def test_sigterm_stops_the_server(bert_build, tmp_path):
    """A serve-check killed while a model loads still stops the server and its stubs."""
    root = _copy(bert_build, tmp_path)
    log = root / "logs" / "serve-check-triton.log"
    env = {**os.environ, "CI": "true", "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen(
        [sys.executable, "-m", "toolchain", "serve-check", str(root), "--native"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    marker = str(root / "triton")  # the server and its stubs (model.py paths) alike
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "loading: tiny_bert_onnx" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.05)
    assert _server_processes(marker), "the server never started"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err[-2000:]
    assert _server_processes(marker) == []
