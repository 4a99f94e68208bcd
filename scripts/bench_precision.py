"""Every precision x runtime mlpack builds, against eager FP32, side by side in one process.

    python scripts/bench_precision.py [--model bert-base|resnet50|both] [--threads 1,all] [--rounds 7] [--out DIR] [--json FILE]

For each model it builds, with `mlpack build` (every artifact passing its
parity gate): ONNX FP32, ONNX INT8 dynamic, ONNX INT8 static (QDQ), AOTInductor
FP32 (freezing chosen by measurement), AOTInductor BF16 (autocast) and
AOTInductor INT8 (PT2E). Then, per thread setting, it times the eager FP32
source and every artifact interleaved (timing.interleaved: rounds in a
rotating order, the median of per-round figures), latency at batch 1 and
throughput at batch 8, each as a ratio to eager FP32, and each one's cosine to
eager FP32 on a held-out input. BERT-base is BertConfig() defaults (random
weights, sequence 128); the CNN is torchvision's ResNet-50 (random weights,
batch-norm statistics measured on random inputs, 224x224; needs `make zoo-deps`).

The build itself selects (`select: {metric: latency, batch: 1, threads: 1}`)
and writes a Triton repository serving the winner under the model's name
(Python backend): the script prints the selection and the `mlpack serve-check`
command that checks it on a real server. The CPU's features are printed first:
what wins depends on them (AMX tiles for BF16/INT8, AVX512-BF16, VNNI). With
--out, a later run reuses the build.

    --cpus avx2,avx512,avx512_vnni,avx512_bf16,amx   the fleet the build proves each artifact for (serve.cpus)
    --ceiling   BERT-base: the 72 linears alone at FP32, BF16 and INT8 (scripts/cpu_ceiling.py) timed in the
                same interleaved run; each artifact is also shown as a percentage of the ceiling of its precision
    --peers     OpenVINO FP32, OpenVINO at its own default precision, OpenVINO + NNCF INT8 (`make peers`) and
                ONNX Runtime's own best settings for the model (its transformer fusions, FP32 and dynamic INT8), on
                the same ONNX file mlpack exported, timed in the same run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = """\
targets:
  - {kind: onnx, name: onnx-fp32}
  - {kind: onnx, name: onnx-fp32-fused, optimize: true}
  - {kind: onnx, name: onnx-int8-dynamic, quantize: int8-dynamic, fallback: auto}
  - {kind: onnx, name: onnx-int8-fused, optimize: true, quantize: int8-dynamic, fallback: auto}
  - {kind: onnx, name: onnx-int8-static, quantize: int8, fallback: auto}
  - {kind: aoti, name: aoti-fp32}
  - {kind: aoti, name: aoti-bf16, precision: bf16}
  - {kind: aoti, name: aoti-int8, precision: int8, fallback: auto}
select: {metric: latency, batch: 1, threads: 1}
serve: {cpus: CPUS, triton: {backend: python, max_batch_size: 8, targets: SERVED}}
"""
CACHED = "cached int8"
AUTOTUNED = {p: f"ceiling {p} autotuned" for p in ("bf16", "int8")}  # split()[1] is its precision
# -fused: `optimize: true`, ONNX Runtime's transformer fusions (attention, LayerNorm, GELU), as its best peer row has
DEFAULT_TARGETS = ["onnx-fp32", "onnx-fp32-fused", "onnx-int8-dynamic", "onnx-int8-fused", "onnx-int8-static", "aoti-fp32", "aoti-bf16", "aoti-int8"]
# built only when --targets names it: INT8 with ATen's FP32 attention, beside aoti-int8's choice (torchtools/attention.py)
EXTRA_TARGETS = {"aoti-int8-float-attention": "  - {kind: aoti, name: aoti-int8-float-attention, precision: int8, fallback: auto, attention: float}\n"}


def targets_yaml(names: list[str]) -> str:
    """TARGETS with the named targets only (in its order, extras after)."""
    head, rest = TARGETS.split("select:")
    lines = [ln for ln in head.splitlines(keepends=True) if "name: " not in ln or ln.split("name: ")[1].split(",")[0].rstrip("}\n") in names]
    lines += [EXTRA_TARGETS[n] for n in names if n in EXTRA_TARGETS]
    return "".join(lines) + "select:" + rest.replace("SERVED", "[" + ", ".join(n for n in DEFAULT_TARGETS + list(EXTRA_TARGETS) if n in names) + "]")


MODELS = {
    "bert-base": {
        "factory": """\
import torch


def build(seed: int = 0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    return BertModel(BertConfig()).eval()  # BERT-base: 12 layers, hidden 768, 12 heads
""",
        "recipe": """\
name: bench-bert-base
source: {framework: pytorch, factory: model.py:build}
inputs:
  - {name: input_ids, dtype: int64, shape: [batch, seq], range: [0, 30522]}
  - {name: attention_mask, dtype: int64, shape: [batch, seq], range: [1, 2]}
outputs: [last_hidden_state]
dims:
  batch: {min: 1, opt: 8, max: 8}
  seq: {min: 16, opt: 128, max: 128}
parity: {samples: 4}
""",
        "shape": {"seq": 128},
    },
    "resnet50": {
        "factory": f"""\
import sys

sys.path.insert(0, {str(ROOT / "recipes" / "zoo" / "models")!r})
import vision


def build(seed: int = 0):
    return vision.torchvision_model("resnet50", classes=1000, size=224, seed=seed)
""",
        "recipe": """\
name: bench-resnet50
source: {framework: pytorch, factory: model.py:build}
inputs:
  - {name: image, dtype: float32, shape: [batch, 3, 224, 224]}
outputs: [logits]
dims:
  batch: {min: 1, opt: 8, max: 8}
parity: {samples: 4, scores: [logits]}
""",
        "shape": {},
    },
}


def build_model(name: str, out: Path, cpus: list[str] | None = None, targets: list[str] | None = None) -> tuple[object, Path, object]:
    from toolchain import manifest as mf
    from toolchain.build import build
    from toolchain.progress import Progress
    from toolchain.recipe import load_recipe

    work = out / f"{name}-src"
    work.mkdir(parents=True, exist_ok=True)
    (work / "model.py").write_text(MODELS[name]["factory"])
    (work / "recipe.yaml").write_text(MODELS[name]["recipe"] + targets_yaml(targets or DEFAULT_TARGETS).replace("CPUS", json.dumps(cpus or [])))
    recipe = load_recipe(work / "recipe.yaml")
    published = out / recipe.name
    if (published / "manifest.json").is_file() and mf.read(published / "manifest.json").recipe_sha256 == mf.sha256_file(recipe.path):
        return mf.read(published / "manifest.json"), published, recipe
    result = build(recipe, out, progress=Progress())
    if result.exit_code not in (0, 3):
        raise SystemExit(f"the build failed (exit {result.exit_code}); see {result.path}")
    for t in result.manifest.targets:  # a target that missed its budget is reported, not timed
        if not t.ok:
            print(f"{name}: {t.name} {t.status.value}: {t.reason}")
    return result.manifest, Path(result.path), recipe


def feeds(recipe, batch: int, seed: int) -> dict:
    from toolchain.samples import make_feed

    sizes = {n: d.opt for n, d in recipe.dims.items()} | {"batch": batch}
    return make_feed(recipe, sizes, np.random.default_rng(seed))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    from toolchain.parity import cosine as cos

    return cos(b, a)


def precision_of(artifact: str) -> str:
    """The precision whose GEMM ceiling an artifact is measured against (by its name)."""
    name = artifact.lower()
    return "int8" if "int8" in name else "bf16" if "bf16" in name or "bfloat16" in name else "fp32"


class _Peer:
    """A peer runtime on the same ONNX file, answering like mlpack's runners (infer: feed -> {name: array})."""

    def __init__(self, run):
        self.run = run

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def infer(self, feed: dict) -> dict:
        return self.run(feed)


def peers(onnx_path: Path, recipe, threads: int, work: Path) -> tuple[dict, dict[str, str]]:
    """OpenVINO (FP32, its default precision, NNCF INT8) and ONNX Runtime's best settings on the ONNX file mlpack
    exported: {name: runner}, and {name: why it is missing}."""
    out, missing = {}, {}
    calib = [feeds(recipe, 1, seed=1000 + i) for i in range(16)]
    try:
        import openvino as ov

        core = ov.Core()

        def ov_runner(model, config):
            compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", **config})
            request = compiled.create_infer_request()
            names = [o.get_any_name() for o in compiled.outputs]
            return _Peer(lambda feed: {n: request.infer(feed)[i].copy() for i, n in enumerate(names[:1])})

        model = core.read_model(str(onnx_path))
        out["openvino fp32"] = ov_runner(model, {"INFERENCE_PRECISION_HINT": "f32"})
        out[f"openvino default ({core.get_property('CPU', 'INFERENCE_PRECISION_HINT')})"] = ov_runner(core.read_model(str(onnx_path)), {})
        try:
            import nncf

            quantized = nncf.quantize(core.read_model(str(onnx_path)), nncf.Dataset(calib), model_type=nncf.ModelType.TRANSFORMER,
                                      subset_size=len(calib))  # fmt: skip
            out["openvino + nncf int8"] = ov_runner(quantized, {})
        except ImportError as e:
            missing["openvino + nncf int8"] = f"nncf is not installed (make peers): {e}"
    except ImportError as e:
        missing["openvino"] = f"openvino is not installed (make peers): {e}"
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.transformers.optimizer import optimize_model

        fused = work / "ort-best-fp32.onnx"
        optimize_model(str(onnx_path), model_type="bert", num_heads=12, hidden_size=768).save_model_to_file(str(fused))
        int8 = work / "ort-best-int8.onnx"
        quantize_dynamic(str(fused), str(int8), weight_type=QuantType.QInt8, per_channel=True)

        def ort_runner(path):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            first = sess.get_outputs()[0].name
            return _Peer(lambda feed: {first: sess.run([first], feed)[0]})

        out["onnxruntime best fp32 (bert fusions, all optimizations)"] = ort_runner(fused)
        out["onnxruntime best int8 (bert fusions + dynamic int8)"] = ort_runner(int8)
    except Exception as e:  # the transformer optimizer knows BERT-like graphs only
        missing["onnxruntime best"] = f"{type(e).__name__}: {e}"
    return out, missing


def measure(name: str, manifest, root: Path, recipe, threads: int, rounds: int, ceiling: bool = False, with_peers: bool = False) -> list[dict]:
    import torch

    from toolchain.runners import open_runner
    from toolchain.sources import load_source
    from toolchain.timing import interleaved

    torch.set_num_threads(threads)
    source = load_source(recipe)
    runners = {"eager fp32": source.reference_runner()}
    for t in manifest.targets:
        if t.ok:
            runners[t.name] = open_runner(t.runner, root, threads=threads)
    if with_peers:
        onnx = next((root / f.path for t in manifest.targets if t.ok and t.name == "onnx-fp32" for f in t.files if f.path.endswith(".onnx")), None)
        found, missing = peers(onnx, recipe, threads, Path(tempfile.mkdtemp())) if onnx else ({}, {"peers": "no onnx-fp32 artifact"})
        runners |= found
        for k, why in missing.items():
            print(f"{name}: peer {k} not timed: {why}")
    opened = {k: r.__enter__() for k, r in runners.items()}
    check = feeds(recipe, 2, seed=99)
    ref = next(iter(opened["eager fp32"].infer(check).values()))
    b1, b8 = feeds(recipe, 1, seed=1), feeds(recipe, 8, seed=2)
    stacks = {}
    if ceiling:  # the GEMM ceiling, in the same interleaved run: the 72 linears alone at each precision
        import cpu_ceiling

        seq = MODELS[name]["shape"]["seq"]
        makers = [("fp32", lambda: cpu_ceiling._fp32_stack(seq, torch.float32)), ("int8", lambda: cpu_ceiling._int8_stack(seq))]
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():  # oneDNN's BF16 linear needs AVX-512 (it raised on a Zen 1)
            makers.insert(1, ("bf16", lambda: cpu_ceiling._fp32_stack(seq, torch.bfloat16)))
        else:
            print(f"{name}: no BF16 ceiling: oneDNN has no BF16 linear on this CPU (no AVX-512)")
        stacks = {f"ceiling {p}": make() for p, make in makers}
        for p, key in AUTOTUNED.items():  # the packages' own GEMMs on AMX (gemm: auto): where Inductor's C++ GEMM wins, the bound
            try:
                stacks[key] = cpu_ceiling._autotuned(seq, p)
            except Exception as e:
                print(f"{name}: no autotuned {p.upper()} ceiling: {type(e).__name__}: {str(e)[:200]}")
        stacks[CACHED] = cpu_ceiling._int8_stack(seq, distinct=False)  # the former ceiling, beside it
    with torch.no_grad():
        lat = interleaved({k: partial(r.infer, b1) for k, r in opened.items()} | stacks, rounds=rounds, seconds=0.5)
    thr = interleaved({k: partial(r.infer, b8) for k, r in opened.items()}, rounds=rounds, seconds=0.5)
    eager = lat["eager fp32"].median_ms
    ceilings: dict[str, float] = {}  # each precision's fastest way to run the 72 linears
    for k in stacks:
        if k != CACHED:
            ceilings[k.split()[1]] = max(ceilings.get(k.split()[1], 0.0), eager / lat[k].median_ms)
    rows = []
    for k, r in opened.items():
        out = next(iter(r.infer(check).values()))
        row = {
            "model": name, "artifact": k, "threads": threads, "peer": k not in {t.name for t in manifest.targets} and k != "eager fp32",
            "latency_ms": lat[k].median_ms, "latency_x": eager / lat[k].median_ms,
            "throughput": 8 / (thr[k].median_ms / 1e3), "throughput_x": thr["eager fp32"].median_ms / thr[k].median_ms,
            "cosine": cosine(out, ref),
        }  # fmt: skip
        if ceilings and k != "eager fp32":
            p = precision_of(k)
            row |= {"precision": p, "ceiling_x": ceilings[p], "of_ceiling": row["latency_x"] / ceilings[p]}
        rows.append(row)
    for k in stacks:
        if k != CACHED:
            label = (
                f"ceiling {k.split()[1]} (72 linears alone, autotuned: Inductor's C++ GEMM or oneDNN)" if k in AUTOTUNED.values() else f"{k} (72 linears alone)"
            )
            rows.append({"model": name, "artifact": label, "threads": threads, "latency_ms": lat[k].median_ms,
                         "latency_x": eager / lat[k].median_ms, "ceiling": True})  # fmt: skip
    if CACHED in lat:
        rows.append({"model": name, "artifact": "int8, one layer's linears 12 times (the former ceiling: weights in cache)", "threads": threads,
                     "latency_ms": lat[CACHED].median_ms, "latency_x": eager / lat[CACHED].median_ms, "ceiling": True})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["bert-base", "resnet50", "both"], default="both")
    ap.add_argument("--threads", default="1,all", help="intra-op thread counts, comma-separated ('all' = every core)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, help="keep the builds here and reuse them next time (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    ap.add_argument("--cpus", default="", help="the fleet's CPU classes (serve.cpus), comma-separated: the manifest proves each artifact per class")
    ap.add_argument("--ceiling", action="store_true", help="BERT-base: time the GEMM ceilings alongside and show each artifact as a share of its own")
    ap.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                    help=f"the targets to build, comma-separated (--peers needs onnx-fp32); also: {', '.join(EXTRA_TARGETS)}")  # fmt: skip
    ap.add_argument("--peers", action="store_true", help="also OpenVINO (FP32, default, NNCF INT8) and ONNX Runtime's best settings (make peers)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # cpu_ceiling
    from toolchain.machine import cpu_identity

    machine = cpu_identity()
    print(f"CPU: {machine['model']}, {machine['cores']} cores, features: {', '.join(machine['features']) or 'none of AVX-512/AMX'}; "
          f"load average {os.getloadavg()[0]:.2f} at the start")  # fmt: skip
    threads = [os.cpu_count() if t == "all" else int(t) for t in args.threads.split(",")]
    models = ["bert-base", "resnet50"] if args.model == "both" else [args.model]
    rows, built = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        for name in models:
            manifest, root, recipe = build_model(name, out, [c for c in args.cpus.split(",") if c], args.targets.split(","))
            built[name] = (manifest, root)
            for n in threads:
                rows += measure(name, manifest, root, recipe, n, args.rounds, ceiling=args.ceiling and name == "bert-base", with_peers=args.peers)
    print(f"\n| model | artifact | threads | batch 1 ms | vs eager | of its ceiling | batch 8 samples/s | vs eager | cosine to eager |\n|{' --- |' * 9}")
    for r in rows:
        if r.get("ceiling"):
            print(f"| {r['model']} | {r['artifact']} | {r['threads']} | {r['latency_ms']:.2f} | {r['latency_x']:.2f}x | | | | |")
            continue
        share = f"{r['of_ceiling']:.0%} of {r['precision']} {r['ceiling_x']:.2f}x" if "of_ceiling" in r else ""
        print(f"| {r['model']} | {r['artifact']}{' (peer)' if r.get('peer') else ''} | {r['threads']} | {r['latency_ms']:.2f} | {r['latency_x']:.2f}x | "
              f"{share} | {r['throughput']:.1f} | {r['throughput_x']:.2f}x | {r['cosine']:.6f} |")  # fmt: skip
    for name, (manifest, _) in built.items():  # where each artifact was proved
        for t in manifest.targets:
            if t.cpu is not None:
                verdicts = ", ".join(f"{c.cls} {c.status}{'' if c.offered else ' (not offered)'}" for c in t.cpu.classes)
                print(f"{name}: {t.name}: code needs {t.cpu.needs or '-'}; {verdicts}")
    selections = {}
    for name, (manifest, root) in built.items():
        sel = manifest.selection
        selections[name] = sel.to_dict() if sel else {}
        ranking = ", ".join(f"{r.target} {r.median_ms:.2f} ms ({r.vs_eager:.2f}x)" for r in (sel.ranking if sel else []))
        print(f"\n{name}: the build selected {sel.winner if sel else None} (served by Triton as {sel.served_as if sel else None!r}); ranking: {ranking}")
        print(f"  check it on a server: mlpack serve-check {root}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": rows, "selection": selections}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
