"""How fast can BERT-base get on this CPU? The GEMM ceiling per precision, measured.

    python scripts/cpu_ceiling.py [--threads 1] [--rounds 9] [--seq 128] [--json FILE]

BERT-base at batch 1 spends almost all of its arithmetic (21.7 of 22.3 GFLOP at
sequence 128) in 72 linear layers of three shapes. This script times, in one
process and interleaved (median of rounds), eager FP32 BERT-base itself and
the 72 linears alone on the kernels mlpack's artifacts use: FP32 (oneDNN on
prepacked weights, what a frozen AOTI package calls), BF16 (the same with
bfloat16 weights and activations) and INT8 (oneDNN `qlinear_pointwise`, u8
activations x s8 per-channel weights: what an AOTI INT8 package calls). The
time of the linears alone at a precision is a lower bound on any artifact of
that precision that computes every linear, so `eager time / linears time` is
the ceiling on its speed-up over eager FP32: nothing else (attention, norms,
GELU, quantize/dequantize) is free in a real artifact.

Prints the CPU's features (AMX, AVX512-BF16, VNNI) because the ceiling depends
on them; needs transformers (installed by `make install`'s dev extra).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolchain.machine import cpu_identity  # noqa: E402
from toolchain.timing import interleaved  # noqa: E402

HIDDEN, FFN, LAYERS = 768, 3072, 12
# (in, out, per layer): query, key, value, attention output; FFN up; FFN down
LINEARS = ((HIDDEN, HIDDEN, 4), (HIDDEN, FFN, 1), (FFN, HIDDEN, 1))


def linear_flops(seq: int) -> float:
    return sum(2.0 * seq * k * n * count for k, n, count in LINEARS) * LAYERS


def _fp32_stack(seq: int, dtype):
    """One layer's six linears on oneDNN with prepacked weights (mkldnn._linear_pointwise), 12 times."""
    import torch

    layers = []
    for k, n, count in LINEARS:
        for _ in range(count):
            w = torch.randn(n, k, dtype=dtype) / k**0.5
            packed = torch.ops.mkldnn._reorder_linear_weight(w, seq)
            layers.append((torch.randn(seq, k, dtype=dtype), packed, torch.zeros(n, dtype=dtype)))

    def run():
        for _ in range(LAYERS):
            for x, w, b in layers:
                torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")

    return run


def _int8_stack(seq: int):
    """The same linears as oneDNN INT8 (u8 activations per tensor, s8 weights per channel, fp32 out)."""
    import torch

    layers = []
    for k, n, count in LINEARS:
        for _ in range(count):
            w = torch.randint(-127, 128, (n, k), dtype=torch.int8)
            packed = torch.ops.onednn.qlinear_prepack(w, [seq, k])
            x = torch.randint(0, 256, (seq, k), dtype=torch.uint8)
            layers.append((x, packed, torch.full((n,), 0.01), torch.zeros(n, dtype=torch.int64), torch.zeros(n)))

    def run():
        for _ in range(LAYERS):
            for x, w, ws, wz, b in layers:
                torch.ops.onednn.qlinear_pointwise(x, 0.02, 128, w, ws, wz, b, 1.0, 0, torch.float32, "none", [], "")

    return run


def _eager_bert(seq: int):
    import torch
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig()).eval()
    ids = torch.randint(0, 30522, (1, seq))
    mask = torch.ones(1, seq, dtype=torch.int64)

    def run():
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)

    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    info = cpu_identity()
    print(
        f"CPU: {info['model']}, {info['cores']} cores, features: {', '.join(info['features']) or 'none of AVX-512/AMX'}; load average {os.getloadavg()[0]:.2f}"
    )
    calls = {
        "eager BERT-base fp32": _eager_bert(args.seq),
        "72 linears fp32 (oneDNN, prepacked)": _fp32_stack(args.seq, torch.float32),
        "72 linears bf16 (oneDNN, prepacked)": _fp32_stack(args.seq, torch.bfloat16),
        "72 linears int8 (oneDNN qlinear)": _int8_stack(args.seq),
    }
    with torch.no_grad():
        times = interleaved(calls, rounds=args.rounds, seconds=0.5, warmup=2)
    eager = times["eager BERT-base fp32"].median_ms
    flops = linear_flops(args.seq)
    rows = []
    print(f"\nBERT-base, batch 1, sequence {args.seq}, {args.threads} thread(s); linears {flops / 1e9:.1f} GFLOP a call\n")
    print("| what | ms | GFLOP/s (linears) | ceiling vs eager fp32 |")
    print("| --- | --- | --- | --- |")
    for name, t in times.items():
        ms = t.median_ms
        row = {"what": name, "median_ms": round(ms, 2)}
        if name.startswith("72"):
            row |= {"gops": round(flops / ms / 1e6, 1), "ceiling": round(eager / ms, 2)}
        rows.append(row)
        print(f"| {name} | {ms:.2f} | {row.get('gops', '')} | {str(row['ceiling']) + 'x' if 'ceiling' in row else ''} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "threads": args.threads, "seq": args.seq, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
