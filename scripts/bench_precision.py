"""CPU benchmark of a BERT-base-sized encoder across mlpack's artifacts.

Builds BertModel from transformers' BertConfig defaults (random weights, no
download) with `mlpack build` (AOTInductor, ONNX FP32 plain and with ONNX
Runtime's transformer fusions, FP16, INT8 dynamic), then prints in one run the
latency at batch 1 and the throughput at batch 8 (sequence 128) of each, as
ratios to eager PyTorch, with each one's cosine to the eager output.

    python scripts/bench_precision.py [--rounds 4] [--out DIR]

Takes several minutes on 2 cores (the AOTInductor compile and four ONNX
exports of a 110M-parameter model dominate); with --out, a later run measures
the build kept there without rebuilding. The artifacts take turns in rounds
and each one's best call is reported, so load from other processes skews all
rows alike rather than whichever ran during it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEQ = 128
FACTORY = """\
import torch


def build(seed: int = 0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    return BertModel(BertConfig()).eval()  # BERT-base: 12 layers, hidden 768, 12 heads
"""
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


def best_times(runners: dict, x: dict, rounds: int, calls: int) -> tuple[dict[str, float], dict[str, dict]]:
    """Best seconds per call of each runner, and its outputs.

    Each round gives every runner a block: one untimed call (ONNX Runtime's and
    OpenMP's worker threads spin a while after a run and would slow whichever
    runner came next), then `calls` timed ones.
    """
    outputs: dict[str, dict] = {}
    best = dict.fromkeys(runners, float("inf"))
    for _ in range(rounds):
        for name, r in runners.items():
            outputs[name] = r.infer(x)
            for _ in range(calls):
                t0 = time.perf_counter()
                r.infer(x)
                best[name] = min(best[name], time.perf_counter() - t0)
    return best, outputs


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4, help="turns each artifact gets (its best call is reported)")
    ap.add_argument("--out", type=Path, help="keep the build here and reuse it next time (default: a temporary folder)")
    args = ap.parse_args()
    load_at_start = os.getloadavg()[0]  # what else was running: this machine may be shared

    import torch

    from toolchain import manifest as mf
    from toolchain.build import build
    from toolchain.progress import Progress
    from toolchain.recipe import load_recipe
    from toolchain.runners import open_runner
    from toolchain.runners.torch_eager import TorchEagerRunner
    from toolchain.sources.pytorch import TorchSource

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "bert_base.py").write_text(FACTORY)
        (work / "recipe.yaml").write_text(RECIPE)
        recipe = load_recipe(work / "recipe.yaml")
        out = args.out or work / "out"
        published = out / recipe.name
        if (published / "manifest.json").is_file() and mf.read(published / "manifest.json")["recipe"]["sha256"] == mf.sha256_file(recipe.path):
            manifest = mf.read(published / "manifest.json")
            print(f"measuring the build in {published}", file=sys.stderr)
        else:
            t0 = time.perf_counter()
            result = build(recipe, out, progress=Progress())
            print(f"build: {time.perf_counter() - t0:.0f}s, exit code {result.exit_code}", file=sys.stderr)
            if result.exit_code != 0:
                print(f"build failed; see {result.path}", file=sys.stderr)
                return result.exit_code
            manifest = result.manifest

        source = TorchSource(recipe)
        runners = {"eager PyTorch": TorchEagerRunner(source.module, source.input_names, source.output_names)}
        for t in manifest["targets"]:  # each artifact opened from the runner spec its manifest entry records
            runners["AOTInductor" if t["kind"] == "aoti" else t["name"]] = open_runner(t["runner"], published)
        with contextlib.ExitStack() as stack:
            for r in runners.values():
                stack.enter_context(r)
            latency, _ = best_times(runners, feed(1, 1), args.rounds, 3)
            batch8, outputs = best_times(runners, feed(8, 2), args.rounds, 1)

    ref = outputs["eager PyTorch"]["last_hidden_state"]
    base_lat, base_thr = latency["eager PyTorch"], 8 / batch8["eager PyTorch"]
    print(f"BERT-base (BertConfig defaults, random weights), seq {SEQ}, {torch.get_num_threads()} CPU threads, best call of {args.rounds} rounds")
    print(f"1-minute load average before this run: {load_at_start:.2f} on {os.cpu_count()} CPUs (other processes slow every row)")
    print(f"{'artifact':<16} {'batch-1 ms':>10} {'speedup':>8} {'batch-8 seq/s':>13} {'speedup':>8} {'cosine':>10}")
    for name in runners:
        lat, thr = latency[name], 8 / batch8[name]
        cos = cosine(outputs[name]["last_hidden_state"], ref)
        print(f"{name:<16} {lat * 1e3:>10.1f} {base_lat / lat:>8.2f} {thr:>13.1f} {thr / base_thr:>8.2f} {cos:>10.6f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
