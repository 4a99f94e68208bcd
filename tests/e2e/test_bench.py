"""mlpack bench on the example builds, with small counts."""

from __future__ import annotations

import json
import shutil
import struct

import pytest

from tests.e2e.conftest import mlpack


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_bench_cnn(cnn_build, tmp_path):
    root = tmp_path / "tiny-cnn"
    shutil.copytree(cnn_build.root, root)
    proc = mlpack("bench", str(root), "--batch", "1,4,64", "--iters", "5", "--warmup", "1", "--seconds", "1", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((root / "bench.json").read_text())
    assert json.loads(proc.stdout) == report
    assert report["batches"] == [1, 4, 16] and report["latency_batch"] == 1  # 64 clipped to dims.batch.max
    assert any("clipped" in n for n in report["notes"]) and report["threads"] >= 1 and len(report["load_average"]) == 3
    runtimes = {r["name"]: r for r in report["runtimes"]}
    assert list(runtimes) == ["eager", "onnx", "aoti"]
    eager = runtimes["eager"]
    for r in runtimes.values():
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] and 1 <= lat["runs"] <= 5
        assert set(r["throughput"]) == {"1", "4", "16"} and all(v > 0 for v in r["throughput"].values())
        for q in ("p50", "p90", "p99"):
            assert r["vs_eager"]["latency_ms"][q] == pytest.approx(lat[q] / eager["latency_ms"][q])
        for b, v in r["throughput"].items():
            assert r["vs_eager"]["throughput"][b] == pytest.approx(v / eager["throughput"][b])
    assert all(v == 1.0 for v in eager["vs_eager"]["throughput"].values())
    assert report["server"] is None
    assert _png_size(root / "bench.png") == (700, 450)
    assert "p50 ms" in proc.stderr and "b16 samples/s" in proc.stderr  # the table; stdout is the JSON


@pytest.mark.triton
def test_bench_through_server(bert_build, tmp_path):
    root = tmp_path / "tiny-bert"
    shutil.copytree(bert_build.root, root)
    proc = mlpack("bench", str(root), "--batch", "1,2", "--iters", "4", "--warmup", "1", "--seconds", "1", "--through-server")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((root / "bench.json").read_text())
    assert [s["model"] for s in report["server"]] == ["tiny_bert_onnx", "tiny_bert_aoti"]
    for s in report["server"]:
        assert s["backend"] == "python" and s["batch"] == 1
        assert [lv["concurrency"] for lv in s["concurrency"]] == [1, 2, 4]
        for lv in s["concurrency"]:
            assert 1 <= lv["requests"] <= 4 * lv["concurrency"] and lv["requests_per_s"] > 0 and lv["vs_eager"] > 0
            assert lv["latency_ms"]["p50"] <= lv["latency_ms"]["p90"] <= lv["latency_ms"]["p99"]
    assert "through Triton tiny_bert_onnx" in proc.stdout
