"""Decode speed of every generator artifact against transformers' `generate`, and what `select:` picks.

Builds an 8-layer Llama (hidden 512, GQA 8/2, vocabulary 2000, about 25M parameters, random weights:
`python recipes/models/tiny_llama.py DIR --small`) with every generator target mlpack has: ONNX FP32,
INT4 and INT8 weights, AOTInductor prefill/decode (FP32, BF16 and INT8 weights), and ORT GenAI folders by both strategies (mlpack's
export and ORT GenAI's own builder). Random weights say nothing about quantization accuracy, so the
weight-only budgets are lifted here (docs/generators.md quotes the trained tiny-llama for accuracy).
Then `select: {metric: throughput, threads: 1}` ranks them by whole greedy generations, and
`mlpack bench --threads 1` times TTFT, prefill and decode tokens/s and peak memory, interleaved in one
process. Record the CPU class with the figures: they hold for this machine only.

    python scripts/bench_generate.py [OUT] [--batch 1,8] [--targets aoti,aoti-bf16]   (--targets: those alone)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIFTED = "{tokens: 0.0, perplexity: 100.0, cosine: -1.0, top1: 0.0}"  # random weights: speed only

RECIPE = f"""\
name: small-llama
version: 1
task: text-generation
source:
  framework: pytorch
  transformers: model
generation:
  prompts: ["a small dog with", "the fruit of a tree"]
  max_new_tokens: 32
  max_length: 128
  max_batch: 8
targets:
  - {{kind: onnx, opset: 18}}
  - {{kind: onnx, name: onnx-int4, quantize: int4}}
  - {{kind: onnx, name: onnx-int8w, quantize: int8-weight}}
  - {{kind: aoti, device: cpu}}
  - {{kind: aoti, name: aoti-int8w, precision: int8-weight}}
  - {{kind: aoti, name: aoti-bf16, precision: bf16}}
  - {{kind: genai, of: onnx}}
  - {{kind: genai, name: genai-int4, of: onnx-int4}}
  - {{kind: genai, name: genai-builder, builder: fp32}}
  - {{kind: genai, name: genai-builder-int4, builder: int4}}
parity:
  default: {{atol: 1.0e-3, rtol: 1.0e-3}}
  per_target:
    onnx-int4: {LIFTED}
    onnx-int8w: {LIFTED}
    aoti-int8w: {LIFTED}
    aoti-bf16: {LIFTED}
    genai-int4: {LIFTED}
    genai-builder-int4: {LIFTED}
select: {{metric: throughput, threads: 1, batch: 1}}
"""


def _target_name(line: str) -> str:
    """The name of a one-line target entry: its `name`, else its kind."""
    fields = dict(part.split(": ", 1) for part in line.strip(" -{}").split(", "))
    return fields.get("name", fields["kind"])


def _only(recipe: str, keep: set[str]) -> str:
    """The recipe with the named targets alone (and their lifted budgets)."""
    out = []
    for line in recipe.split("\n"):
        if line.startswith("  - {") and _target_name(line) not in keep:
            continue
        if line.endswith(f": {LIFTED}") and line.split(":")[0].strip() not in keep:
            continue
        out.append(line)
    if out[out.index("  per_target:") + 1].startswith("select:"):  # nothing lifted is left: an empty mapping is not one
        out.remove("  per_target:")
    return "\n".join(out)


def main() -> int:
    args = [a for i, a in enumerate(sys.argv[1:], 1) if not a.startswith("--") and sys.argv[i - 1] not in ("--batch", "--targets")]
    batch = sys.argv[sys.argv.index("--batch") + 1] if "--batch" in sys.argv else "1,8"
    out = Path(args[0] if args else "out-bench-generate").resolve()
    work = out / "recipe"
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "model" / "config.json").is_file():
        subprocess.run([sys.executable, str(ROOT / "recipes" / "models" / "tiny_llama.py"), str(work / "model"), "--small"], check=True)
    recipe = RECIPE
    if "--targets" in sys.argv:
        recipe = _only(recipe, set(sys.argv[sys.argv.index("--targets") + 1].split(",")))
    (work / "small-llama.yaml").write_text(recipe)
    mlpack = [sys.executable, "-m", "toolchain"]
    build = subprocess.run([*mlpack, "build", str(work / "small-llama.yaml"), "--out", str(out), "--json"], capture_output=True, text=True)
    if build.returncode != 0:
        print(build.stderr[-4000:], file=sys.stderr)
        return build.returncode
    sel = json.loads(build.stdout)["selection"]
    print(f"select ({sel['metric']}, {sel['threads']} thread, {sel['shape']}):")
    for r in sel["ranking"]:
        print(f"  {r['target']:20s} {r['samples_per_s']:10.1f} tokens/s  {r['vs_eager']:.2f}x eager")
    print(f"  {'eager':20s} {sel['eager']['samples_per_s']:10.1f} tokens/s")
    bench = subprocess.run([*mlpack, "bench", str(out / "small-llama"), "--threads", "1", "--batch", batch], text=True)
    return bench.returncode


if __name__ == "__main__":
    raise SystemExit(main())
