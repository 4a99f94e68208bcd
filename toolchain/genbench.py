"""mlpack bench for a generator (task: text-generation): every artifact against transformers' `generate` with its cache.

Each artifact that passed runs mlpack's generation loop over its runner (ONNX Runtime sessions, the
AOTInductor prefill and decode packages); a kind with its own generator runs it (the `genai` folder: onnxruntime_genai's); the
source runs transformers' greedy `generate` (its DynamicCache). All take the same seeded prompt of
`prompt` tokens and make exactly `new` tokens (no end-of-sequence stop), timed interleaved in one
process (toolchain.timing: rotating order, median of rounds):

- time to first token (TTFT): the prefill of the prompt, whose last logits choose the first token;
- prefill tokens/s: batch x prompt / TTFT;
- decode tokens/s: batch x (new - 1) / (time for `new` tokens - TTFT);
- peak memory: the peak resident set (VmHWM) of a fresh process that loads that one runtime and generates
  at the largest batch, the interpreter and its libraries included.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from toolchain import kinds
from toolchain.generation import Decoder, decoder_for
from toolchain.machine import cpu_identity, peak_rss_mb
from toolchain.progress import Progress
from toolchain.recipe import Recipe, load_recipe
from toolchain.records import Manifest, RunnerSpec
from toolchain.runners import open_runner
from toolchain.runners.torch_eager import TorchEagerRunner
from toolchain.sources.decoder import is_transformers_lm, load_causal_lm, step_function
from toolchain.timing import interleaved

SCHEMA_ID = "mlpack.bench-generate/1"
EAGER = "eager"  # transformers' generate with its cache
ROUNDS = 5

Generate = Callable[[np.ndarray, int], None]  # (prompt ids [batch, prompt], new tokens) -> None


def runtimes(root: Path, manifest: Manifest, recipe: Recipe, threads: int, only: str | None = None) -> dict[str, Generate]:
    """name -> a generation over an opened runtime: the eager source first, then every target that passed."""
    out: dict[str, Generate] = {}
    if only in (None, EAGER):
        out[EAGER] = eager_generate(recipe, threads)
    for t in manifest.targets:
        if t.status == "ok" and only in (None, t.name):
            out[t.name] = artifact_generate(t.kind, t.runner, root, recipe, threads)
    return out


def artifact_generate(kind: str, runner: RunnerSpec, root: Path, recipe: Recipe, threads: int) -> Generate:
    """Generation through one artifact: its kind's own generator where it has one (ORT GenAI: the folder its runner's
    model sits in), else mlpack's loop over its runner."""
    path = Path(runner.path) if Path(runner.path).is_absolute() else root / runner.path
    own = kinds.get(kind).generator(path.parent, threads)
    if own is not None:
        return own
    return _loop(decoder_for(open_runner(runner, root, threads=threads).__enter__(), recipe))


def eager_generate(recipe: Recipe, threads: int) -> Generate:
    import torch

    torch.set_num_threads(threads)
    lm = load_causal_lm(recipe)
    if not is_transformers_lm(lm):  # a step function: mlpack's loop over it, eagerly
        runner = TorchEagerRunner(step_function(lm, recipe), [i.name for i in recipe.inputs], recipe.outputs)
        return _loop(decoder_for(runner.__enter__(), recipe))

    def generate(ids: np.ndarray, new: int) -> None:
        t = torch.from_numpy(ids)
        with torch.no_grad():
            lm.generate(t, attention_mask=torch.ones_like(t), max_new_tokens=new, min_new_tokens=new, do_sample=False, use_cache=True, pad_token_id=0)

    def transcribe(features: np.ndarray, new: int) -> None:  # a speech model: the base generate, as its reference is made
        from transformers.generation.utils import GenerationMixin

        with torch.no_grad():
            GenerationMixin.generate(lm, torch.from_numpy(features), max_new_tokens=new, min_new_tokens=new, do_sample=False, use_cache=True, pad_token_id=0)

    return transcribe if recipe.decoder.audio else generate


def random_prompt(recipe: Recipe, rng: np.random.Generator, batch: int, prompt: int) -> np.ndarray:
    """A seeded prompt to time generation on: `prompt` token ids per row, or a speech model's log-mel features (its one length)."""
    d = recipe.decoder
    if d.audio:
        return rng.uniform(-1.0, 1.0, size=(batch, d.mels, 2 * d.encoded)).astype(np.float32)
    return rng.integers(0, d.vocab, size=(batch, prompt)).astype(np.int64)


def _loop(decoder: Decoder) -> Generate:
    """Greedy generation through mlpack's loop: a prefill, then one step per new token."""

    def loop(ids: np.ndarray, new: int) -> None:
        logits = decoder.begin(ids)[:, -1]
        for _ in range(new - 1):
            logits = decoder.step(logits.argmax(-1)[:, None])[:, -1]

    return loop


def _peak_rss_mb(root: Path, recipe: Path, name: str, threads: int, ids: np.ndarray, new: int) -> float | None:
    """The resident set at most, in MB, of a fresh process that loads one runtime and generates once (None: it failed)."""
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "ids.npy", ids)
        proc = subprocess.run([sys.executable, "-m", "toolchain.genbench", str(root), str(recipe), name, str(threads), str(Path(tmp) / "ids.npy"), str(new)],
                              capture_output=True, text=True, timeout=3600)  # fmt: skip
    lines = proc.stdout.strip().splitlines()
    return round(float(lines[-1]), 1) if proc.returncode == 0 and lines else None


def bench_generate(root: Path, manifest: Manifest, recipe: Recipe, batches: list[int], threads: int, prompt: int, new: int,
                   notes: list[str], progress: Progress) -> dict:  # fmt: skip
    gen = recipe.generation
    prompt = max(1, min(prompt, gen.max_length - new))
    if recipe.decoder.audio:  # a speech model's prompt is its encoder's one length (its "prefill tokens" are encoder positions)
        prompt = recipe.decoder.encoded
    sizes = sorted({b for b in batches if b <= gen.max_batch} or {1})
    if len(sizes) < len(set(batches)):
        notes.append(f"batches above the recipe's generation.max_batch ({gen.max_batch}) left out")
    fns = runtimes(root, manifest, recipe, threads)
    rng = np.random.default_rng(recipe.parity.seed)
    rows = []
    for batch in sizes:
        progress.start("bench", f"bench batch {batch}: {', '.join(fns)}")
        ids = random_prompt(recipe, rng, batch, prompt)
        calls = {}
        for name, fn in fns.items():
            calls[f"{name}|ttft"] = lambda fn=fn, ids=ids: fn(ids, 1)
            calls[f"{name}|all"] = lambda fn=fn, ids=ids: fn(ids, new)
        t = interleaved(calls, rounds=ROUNDS, seconds=0.3, warmup=1)
        for name in fns:
            ttft, full = t[f"{name}|ttft"].median_ms / 1e3, t[f"{name}|all"].median_ms / 1e3
            decode = batch * (new - 1) / max(full - ttft, 1e-9) if new > 1 else None
            rows.append({"name": name, "batch": batch, "ttft_ms": round(ttft * 1e3, 3), "prefill_tokens_per_s": round(batch * prompt / ttft, 1),
                         "decode_tokens_per_s": round(decode, 1) if decode else None})  # fmt: skip
        progress.end("bench", "ok", f"batch {batch}")
    eager = {r["batch"]: r for r in rows if r["name"] == EAGER}
    for r in rows:
        e = eager[r["batch"]]
        r["vs_eager"] = {"ttft": round(r["ttft_ms"] / e["ttft_ms"], 3),
                         "decode": round(r["decode_tokens_per_s"] / e["decode_tokens_per_s"], 3) if r["decode_tokens_per_s"] else None}  # fmt: skip
    ids = random_prompt(recipe, rng, sizes[-1], prompt)
    progress.start("memory", "peak memory, one runtime per process")
    peaks = {name: _peak_rss_mb(root, recipe.path, name, threads, ids, new) for name in fns}
    progress.end("memory", "ok", ", ".join(f"{n} {v} MB" for n, v in peaks.items()))
    return {
        "schema": SCHEMA_ID,
        "name": manifest.name,
        "task": "text-generation",
        "threads": threads,
        "cpu": cpu_identity(),
        "prompt_tokens": prompt,
        "new_tokens": new,
        "batches": sizes,
        "rounds": ROUNDS,
        "ratio": "vs_eager: ttft below 1 is faster; decode above 1 is faster (eager: transformers' generate with its cache)",
        "runtimes": rows,
        "peak_memory_mb": {"batch": sizes[-1], **peaks},
        "notes": notes,
    }


if __name__ == "__main__":  # a child of _peak_rss_mb: one runtime, one generation, then the peak resident set
    root, recipe_path, name, threads, ids, new = sys.argv[1:7]
    fns = runtimes(
        Path(root), Manifest.from_dict(json.loads((Path(root) / "manifest.json").read_text())), load_recipe(Path(recipe_path)), int(threads), only=name
    )
    fns[name](np.load(ids), int(new))
    print(peak_rss_mb())
