"""A generator's artifacts against transformers' `generate` with its cache, side by side in one process.

    python scripts/bench_generate.py BUILD_DIR [--threads 1] [--prompt 32] [--new 32] [--batches 1,8] [--rounds 5] [--json FILE]

BUILD_DIR is a published build of a `task: text-generation` recipe (artifacts/<name>). Every target
that passed is timed with mlpack's generation loop over its runner (ONNX Runtime sessions, the
AOTInductor prefill and decode packages), the `genai` folder with onnxruntime_genai's own generator,
and the source with transformers' greedy `generate` (its DynamicCache), all on the same random prompt
of `--prompt` tokens, interleaved (toolchain.timing: rotating order, median of rounds):

- time to first token (TTFT): the prefill of the prompt, whose last logits choose the first token;
- prefill tokens/s: batch x prompt / TTFT;
- decode tokens/s: batch x (new - 1) / (time for `new` tokens - TTFT), at each batch;
- peak memory: the resident set of a fresh process that loads that one runtime and generates at the
  largest batch (ru_maxrss; the Python process and its libraries included).

Every runtime generates exactly `new` tokens (no end-of-sequence stop). Ratios are against
transformers at the same batch. The CPU, its features and the thread count are printed first:
figures hold for that class only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toolchain import manifest as mf  # noqa: E402
from toolchain.generation import CacheLayout, Decoder  # noqa: E402
from toolchain.machine import cpu_identity  # noqa: E402
from toolchain.recipe import load_recipe  # noqa: E402
from toolchain.runners import open_runner  # noqa: E402
from toolchain.timing import interleaved  # noqa: E402

EAGER = "transformers generate"


def runtimes(build: Path, threads: int, only: str | None = None):
    """name -> a function (ids [batch, prompt], new) -> None over an opened runtime, and the recipe; `only`: that one alone."""
    man = mf.read(build / "manifest.json")
    recipe = load_recipe(Path(man.recipe_path))  # recorded relative to where the build ran: run from there
    import torch

    from toolchain.sources.decoder import load_causal_lm

    torch.set_num_threads(threads)
    lm = load_causal_lm(recipe) if only in (None, EAGER) else None

    def eager(ids: np.ndarray, new: int) -> None:
        t = torch.from_numpy(ids)
        with torch.no_grad():
            lm.generate(t, attention_mask=torch.ones_like(t), max_new_tokens=new, min_new_tokens=new, do_sample=False, use_cache=True,
                        pad_token_id=0)  # fmt: skip

    out = {EAGER: eager} if lm is not None else {}
    layout = CacheLayout.of(recipe)
    for t in man.targets:
        if t.status != "ok" or only not in (None, t.name):
            continue
        if t.kind == "genai":
            out[t.name] = _genai(build / t.name, threads)
            continue
        runner = open_runner(t.runner, build, threads=threads).__enter__()
        decoder = Decoder(runner, layout)

        def loop(ids: np.ndarray, new: int, decoder=decoder) -> None:
            decoder.start(ids.shape[0])
            logits = decoder.step(ids)[:, -1]
            for _ in range(new - 1):
                logits = decoder.step(logits.argmax(-1)[:, None])[:, -1]

        out[t.name] = loop
    return out, recipe


def _genai(folder: Path, threads: int):
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    config.clear_providers()
    model = og.Model(config)

    def loop(ids: np.ndarray, new: int) -> None:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=ids.shape[1] + new, min_length=ids.shape[1] + new, do_sample=False, batch_size=ids.shape[0])
        gen = og.Generator(model, params)
        gen.append_tokens(ids.astype(np.int32))
        for _ in range(new - 1):
            gen.generate_next_token()

    return loop


def peak_rss(build: Path, name: str, threads: int, ids: np.ndarray, new: int) -> float:
    """MB of resident memory at most, in a fresh process that loads one runtime and generates once."""
    ids_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_generate_ids_{os.getpid()}.npy"
    np.save(ids_path, ids)
    proc = subprocess.run([sys.executable, __file__, str(build), "--peak-of", name, "--threads", str(threads), "--ids", str(ids_path), "--new", str(new)],
                          capture_output=True, text=True, timeout=1800)  # fmt: skip
    ids_path.unlink(missing_ok=True)
    if proc.returncode != 0:
        return float("nan")
    return float(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("build", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--peak-of", help=argparse.SUPPRESS)
    ap.add_argument("--ids", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.peak_of:  # a child of peak_rss(): one runtime, one generation
        fns, _ = runtimes(a.build, a.threads, only=a.peak_of)
        fns[a.peak_of](np.load(a.ids), a.new)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return 0
    fns, recipe = runtimes(a.build, a.threads)
    gen = recipe.generation
    prompt = min(a.prompt, gen.max_length - a.new)
    batches = [b for b in (int(x) for x in a.batches.split(",")) if b <= gen.max_batch]
    cpu = cpu_identity()
    print(f"CPU: {cpu}; threads: {a.threads}; prompt {prompt} tokens, {a.new} new, batches {batches}")
    rng = np.random.default_rng(0)
    rows = []
    for batch in batches:
        ids = rng.integers(3, recipe.decoder.vocab, size=(batch, prompt)).astype(np.int64)
        calls = {}
        for name, fn in fns.items():
            calls[f"{name}|ttft"] = lambda fn=fn, ids=ids: fn(ids, 1)
            calls[f"{name}|all"] = lambda fn=fn, ids=ids: fn(ids, a.new)
        t = interleaved(calls, rounds=a.rounds, seconds=0.3, warmup=1)
        for name in fns:
            ttft, full = t[f"{name}|ttft"].median_ms / 1e3, t[f"{name}|all"].median_ms / 1e3
            rows.append({"runtime": name, "batch": batch, "ttft_ms": round(ttft * 1e3, 3), "prefill_tok_s": round(batch * prompt / ttft, 1),
                         "decode_tok_s": round(batch * (a.new - 1) / max(full - ttft, 1e-9), 1)})  # fmt: skip
    big = max(batches)
    ids = rng.integers(3, recipe.decoder.vocab, size=(big, prompt)).astype(np.int64)
    peaks = {name: peak_rss(a.build, name, a.threads, ids, a.new) for name in fns}
    eager = {r["batch"]: r for r in rows if r["runtime"] == EAGER}
    print(f"\n| runtime | batch | TTFT ms | prefill tok/s | decode tok/s | decode vs transformers | peak RSS MB (batch {big}) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        r["decode_ratio"] = round(r["decode_tok_s"] / eager[r["batch"]]["decode_tok_s"], 3)
        r["peak_rss_mb"] = round(peaks[r["runtime"]], 1)
        print(f"| {r['runtime']} | {r['batch']} | {r['ttft_ms']:.2f} | {r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.0f} | "
              f"{r['decode_ratio']:.2f}x | {r['peak_rss_mb']:.0f} |")  # fmt: skip
    if a.json:
        a.json.write_text(json.dumps({"cpu": cpu, "threads": a.threads, "prompt": prompt, "new": a.new, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
