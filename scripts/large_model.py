"""Build a model past protobuf's 2 GB limit to ONNX and report time and memory.

A BERT encoder built from a config (random weights, no download) of about
2.7 GB in float32 goes through `mlpack build`: the ONNX target must write its
weights as external data (model.onnx.data beside model.onnx, also in the Triton
version directory) and pass parity. Prints the weights' size, each step's peak
RSS (recorded by the worker) and wall time, and their ratio to the weights.

    python scripts/large_model.py [--layers 12] [--hidden 2048] [--out DIR]

Needs about 3x the weights in free memory and disk; takes minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FACTORY = """\
import torch

def build(hidden, layers):
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=16,
                     intermediate_size=4 * hidden, max_position_embeddings=512)
    return BertModel(cfg).eval()
"""

RECIPE = """\
name: large-bert
source:
  framework: pytorch
  factory: large.py:build
  kwargs: {{hidden: {hidden}, layers: {layers}}}
inputs:
  - {{name: input_ids, dtype: int64, shape: [batch, seq], range: [0, 30522]}}
  - {{name: attention_mask, dtype: int64, shape: [batch, seq], range: [1, 2]}}
outputs: [last_hidden_state]
dims:
  batch: {{min: 1, opt: 2, max: 2}}
  seq: {{min: 8, opt: 16, max: 16}}
targets:
  - kind: onnx
    timeout: 3600
parity:
  samples: 2
  default: {{atol: 1.0e-3, rtol: 1.0e-3}}
serve:
  triton: {{max_batch_size: 2, targets: [onnx]}}
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    h, n = args.hidden, args.layers
    params = 30522 * h + 512 * h + 2 * h + n * (4 * h * h + 4 * h + 2 * 4 * h * h + 5 * h + 4 * h) + h * h + h
    weights_gb = params * 4 / 1e9
    print(f"model: BERT hidden {h}, {n} layers, {params / 1e6:.0f}M parameters, {weights_gb:.2f} GB float32")
    work = Path(tempfile.mkdtemp(prefix="mlpack-large-"))
    (work / "large.py").write_text(FACTORY)
    (work / "recipe.yaml").write_text(RECIPE.format(hidden=h, layers=n))
    out = args.out or work / "out"
    env = {**os.environ, "CI": "true"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "toolchain", "build", str(work / "recipe.yaml"), "--out", str(out), "--json", "--jobs", "1"],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    sys.stderr.write(proc.stderr[-3000:])
    if not proc.stdout.strip():
        print(f"build failed (exit {proc.returncode})")
        return 1
    m = json.loads(proc.stdout)
    t = m["targets"][0]
    root = out / ("large-bert" if proc.returncode == 0 else "large-bert.failed")
    files = {f["path"]: f["bytes"] for f in t["files"]}
    print(f"exit {proc.returncode}, wall {wall:.0f}s, target status {t['status']}, build {t['build_seconds']:.0f}s")
    print("files: " + ", ".join(f"{p} {b / 1e9:.2f} GB" for p, b in files.items()))
    ref_rss = (
        json.loads((root / "logs" / "reference.result.json").read_text()).get("peak_rss_mb") if (root / "logs" / "reference.result.json").exists() else None
    )
    if ref_rss:
        print(f"reference step peak RSS {ref_rss / 1e3:.2f} GB ({ref_rss / 1e3 / weights_gb:.2f}x weights)")
    print(f"onnx step peak RSS {t['peak_rss_mb'] / 1e3:.2f} GB ({t['peak_rss_mb'] / 1e3 / weights_gb:.2f}x weights)")
    if t.get("parity"):
        o = t["parity"]["outputs"]["last_hidden_state"]
        print(f"parity passed={t['parity']['passed']}: max_abs_err {o['max_abs_err']:.2e}, cosine {o['cosine']:.6f}")
    external = [p for p in files if p.endswith(".data")]
    triton_dir = root / "triton" / "large_bert_onnx" / "1"
    print(f"external data: {external}; in the Triton version dir: {sorted(p.name for p in triton_dir.iterdir()) if triton_dir.is_dir() else 'missing'}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
