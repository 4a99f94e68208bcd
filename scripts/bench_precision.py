"""CPU benchmark of a BERT-base-sized encoder across mlpack's artifacts.

Builds BertModel from transformers' BertConfig defaults (random weights, no
download) with `mlpack build` (AOTInductor, ONNX FP32 plain and with ONNX
Runtime's transformer fusions, FP16, INT8 dynamic), then prints in one run the
latency at batch 1 and the throughput at batch 8 (sequence 128) of each, as
ratios to eager PyTorch, with each one's cosine to the eager output.

    python scripts/bench_precision.py [--runs 10] [--out DIR]

Takes several minutes on 2 cores (the AOTInductor compile and four ONNX
exports of a 110M-parameter model dominate).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEQ = 128
FACTORY = '''\
import torch


def build(seed: int = 0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    return BertModel(BertConfig()).eval()  # BERT-base: 12 layers, hidden 768, 12 heads
'''
RECIPE = f"""\
name: bert-base-bench
source:
  framework: pytorch
  factory: bert_base.py:build
inputs:
  - name: input_ids
    dtype: int64
    shape: [batch, seq]
    range: [0, 30522]
  - name: attention_mask
    dtype: int64
    shape: [batch, seq]
    range: [1, 2]
outputs: [last_hidden_state]
dims:
  batch: {{min: 1, opt: 8, max: 8}}
  seq: {{min: 16, opt: {SEQ}, max: {SEQ}}}
targets:
  - kind: aoti
  - kind: onnx
    name: onnx-fp32
  - kind: onnx
    name: onnx-fp32-opt
    optimize: true
  - kind: onnx
    name: onnx-fp16
    quantize: fp16
    optimize: true
  - kind: onnx
    name: onnx-int8
    quantize: int8-dynamic
    optimize: true
parity:
  samples: 4
  per_target:
    aoti: {{atol: 1.0e-3, rtol: 1.0e-3}}
    onnx-fp32: {{atol: 1.0e-3, rtol: 1.0e-3}}
    onnx-fp32-opt: {{atol: 1.0e-3, rtol: 1.0e-3}}
"""


def feed(batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "input_ids": rng.integers(0, 30522, size=(batch, SEQ)).astype(np.int64),
        "attention_mask": np.ones((batch, SEQ), dtype=np.int64),
    }


def timed(runner, x: dict, runs: int) -> tuple[float, dict]:
    """Median seconds per call after two warm-up calls, and the last outputs."""
    out = runner.infer(x)
    runner.infer(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = runner.infer(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10, help="timed calls per measurement (median reported)")
    ap.add_argument("--out", type=Path, help="keep the build here (default: a temporary folder)")
    args = ap.parse_args()

    import torch

    from toolchain.build import build
    from toolchain.progress import Progress
    from toolchain.recipe import load_recipe
    from toolchain.runners import make_runner
    from toolchain.runners.torch_eager import TorchEagerRunner
    from toolchain.sources.pytorch import TorchSource

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "bert_base.py").write_text(FACTORY)
        (work / "recipe.yaml").write_text(RECIPE)
        recipe = load_recipe(work / "recipe.yaml")
        out = args.out or work / "out"
        t0 = time.perf_counter()
        result = build(recipe, out, progress=Progress())
        print(f"build: {time.perf_counter() - t0:.0f}s, exit code {result.exit_code}", file=sys.stderr)
        if result.exit_code != 0:
            print(f"build failed; see {result.path}", file=sys.stderr)
            return result.exit_code

        source = TorchSource(recipe)
        runners = {"eager PyTorch": TorchEagerRunner(source.module, source.input_names, source.output_names)}
        for t in result.manifest["targets"]:
            art = result.path / t["name"]
            if t["kind"] == "aoti":
                runners["AOTInductor"] = make_runner("aoti", path=art / "model.pt2", input_names=source.input_names, output_names=source.output_names)
            else:
                runners[t["name"]] = make_runner("onnxruntime", path=art / "model.onnx", output_names=source.output_names)

        one, eight = feed(1, 1), feed(8, 2)
        rows = []
        for name, runner in runners.items():
            with runner:
                lat, _ = timed(runner, one, args.runs)
                thr, out8 = timed(runner, eight, max(3, args.runs // 2))
            rows.append((name, lat, 8 / thr, out8["last_hidden_state"]))
            print(f"measured {name}", file=sys.stderr)

    base_lat, base_thr, ref = rows[0][1], rows[0][2], rows[0][3]
    print(f"BERT-base (BertConfig defaults, random weights), seq {SEQ}, CPU threads {torch.get_num_threads()}, median of {args.runs}")
    print(f"{'artifact':<16} {'batch-1 ms':>10} {'speedup':>8} {'batch-8 seq/s':>13} {'speedup':>8} {'cosine':>10}")
    for name, lat, thr, out in rows:
        print(f"{name:<16} {lat * 1e3:>10.1f} {base_lat / lat:>8.2f} {thr:>13.1f} {thr / base_thr:>8.2f} {cosine(out, ref):>10.6f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
