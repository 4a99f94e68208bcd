"""Every decoder family, built with its KV cache and judged token by token: which ones mlpack generates with.

    python scripts/decoder_families.py [--out DIR] [--only llama,gpt2] [--targets onnx,aoti,genai] [--json FILE]

For each family a tiny random-weight causal LM (the zoo's sizes, recipes/zoo/models/hf.py, with
initializer std 0.2 so greedy decoding does not repeat one token) is saved with `save_pretrained`
beside the tiny BPE tokenizer of recipes/models/tiny-llama, and a `task: text-generation` recipe
builds it: ONNX with its cache, AOTInductor prefill + decode, and the ORT GenAI folder (Mamba: its
state step, ONNX and AOTI; ORT GenAI has no state-space type). The table
gives each target's status and its greedy-token agreement with transformers' `generate`; a failure
gives the first line of its reason. docs/zoo.md quotes the result, with the CPU it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "recipes" / "models" / "tiny-llama"
VOCAB = 300  # the tokenizer's

# model_type -> extra config (beyond the zoo's size); sizes for families the zoo lacks
FAMILIES: dict[str, dict] = {
    "gpt2": {},
    "llama": {},
    "mistral": dict(sliding_window=8),  # shorter than prompt + new tokens: the window is exercised
    "qwen2": {},
    "qwen3": dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=128, max_position_embeddings=128
    ),  # fmt: skip
    "phi": {},
    "phi3": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128),
    "gemma": {},
    "gemma2": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        intermediate_size=128,
        max_position_embeddings=128,
        sliding_window=8,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
    ),  # fmt: skip
    "gemma3_text": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        intermediate_size=128,
        max_position_embeddings=128,
        sliding_window=8,
    ),  # fmt: skip
    "opt": {},
    "bloom": {},
    "gpt_neox": {},
    "falcon": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, new_decoder_architecture=False, multi_query=True),
    "mixtral": {},
    "mamba": {},  # a state-space decoder: per-layer conv and recurrent states instead of keys and values, one step program
}
NO_GENAI = {"mamba": "ONNX Runtime GenAI has no state-space decoder type"}  # families a genai folder is refused for


def make_model(family: str, folder: Path, seed: int = 0) -> None:
    sys.path.insert(0, str(ROOT / "recipes" / "zoo" / "models"))
    import torch
    from hf import SIZES  # the zoo's sizes
    from transformers import AutoConfig, AutoModelForCausalLM

    size = SIZES.get(family, {}) | FAMILIES[family]
    config = AutoConfig.for_model(family, vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=2, initializer_range=0.2,
                                  tie_word_embeddings=False, **size)  # fmt: skip
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.generation_config.pad_token_id = 2
    model.save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(TOKENIZER / name, folder / name)


RECIPE = """\
name: gen-{slug}
task: text-generation
source: {{framework: pytorch, transformers: model}}
generation:
  prompts: ["a small dog with", "the fruit of a tree"]
  max_new_tokens: 12
  max_length: 48
  max_batch: 2
targets:
{targets}
parity:
  default: {{atol: 1.0e-4, rtol: 1.0e-3}}
{per_target}"""
TARGETS = {
    "onnx": "  - {kind: onnx}",
    "aoti": "  - {kind: aoti, device: cpu}",
    "genai": "  - {kind: genai, of: onnx}",
    # Weight-only rows on random weights: they show that the family quantizes, builds and runs, and how many greedy
    # tokens survive; random weights lose far more than trained ones, so the budgets are lifted (tokens are reported).
    "onnx-int4": "  - {kind: onnx, name: onnx-int4, quantize: int4}",
    "aoti-int8w": "  - {kind: aoti, name: aoti-int8w, precision: int8-weight}",
    # BF16 compute, held to every token as FP32 is (not lifted: a miss on random weights is reported as one)
    "aoti-bf16": "  - {kind: aoti, name: aoti-bf16, precision: bf16}",
}
LIFTED = {"onnx-int4", "aoti-int8w"}


def recipe_text(family: str, targets: list[str]) -> str:
    lifted = [t for t in targets if t in LIFTED]
    per_target = "  per_target:\n" + "".join(f"    {t}: {{tokens: 0.0, perplexity: 100.0, cosine: -1.0, top1: 0.0}}\n" for t in lifted) if lifted else ""
    return RECIPE.format(slug=family.replace("_", "-"), targets="\n".join(TARGETS[t] for t in targets), per_target=per_target)


def run(family: str, out: Path, targets: list[str]) -> dict:
    if family in NO_GENAI and "genai" in targets:  # refused by the recipe, with this reason: not built, not a failure
        return run(family, out, [t for t in targets if t != "genai"]) | {"genai": {"status": "n/a", "tokens": None, "why": NO_GENAI[family]}}
    work = out / family
    shutil.rmtree(work, ignore_errors=True)
    (work / "model").mkdir(parents=True)
    row: dict = {"family": family}
    try:
        make_model(family, work / "model")
    except Exception as e:  # a config transformers refuses: the family is not tried
        return row | {"error": f"model: {type(e).__name__}: {e}"[:300]}
    (work / "r.yaml").write_text(recipe_text(family, targets))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "toolchain", "build", str(work / "r.yaml"), "--out", str(work / "out"), "--json"],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=3600)  # fmt: skip
    row["seconds"] = round(time.perf_counter() - t0, 1)
    row["exit"] = proc.returncode
    folder = work / "out" / f"gen-{family.replace('_', '-')}"
    manifest = folder / "manifest.json" if folder.is_dir() else folder.with_name(folder.name + ".failed") / "manifest.json"
    if not manifest.is_file():
        return row | {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    for t in json.loads(manifest.read_text())["targets"]:
        g = t.get("generation") or {}
        why = t.get("reason") or "; ".join(g.get("failures", [])[:1])
        row[t["name"]] = {"status": t["status"], "tokens": g.get("token_match"), "why": (why or "").splitlines()[0][:200] if why else None}
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/mlpack-families"))
    ap.add_argument("--only")
    ap.add_argument("--targets", default="onnx,aoti,genai")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    families = a.only.split(",") if a.only else list(FAMILIES)
    targets = a.targets.split(",")
    rows = []
    for family in families:
        row = run(family, a.out, targets)
        rows.append(row)
        cells = [f"{row[t]['status']} {row[t]['tokens']:.2f}" if t in row and row[t]["tokens"] is not None else row.get(t, {}).get("status", "-")
                 for t in targets]  # fmt: skip
        why = row.get("error") or "; ".join(f"{t}: {row[t]['why']}" for t in targets if t in row and row[t]["why"])
        print(f"| {family} | " + " | ".join(cells) + f" | {row.get('seconds', '-')} | {why} |", flush=True)
        if a.json:
            a.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
