"""Which ONNX Runtime session settings make an INT8 ONNX model run on integer kernels, and what each costs.

    python scripts/ort_int8_kernels.py [--model bert-base|resnet50] [--out DIR] [--rounds 7] [--json FILE]

Takes the ONNX FP32, INT8 dynamic and INT8 static (QDQ) artifacts that
`scripts/bench_precision.py` builds (the same --out folder reuses its build),
adds two static forms (only MatMul/Gemm/Conv quantized; int8 activations), and for each graph optimization level (disable, basic, extended, all) and with
`session.disable_quant_qdq=1` reports the op types the CPU provider runs (from
the graph it optimizes at load: integer kernels, float compute ops, Q/DQ nodes
left) and the latency at batch 1 on one intra-op thread, interleaved with the
eager FP32 source in one process (median of rounds), as a ratio to eager.
The CPU's features decide MLAS's int8 kernels (AMX, AVX512-VNNI, AVX2): printed first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

SETTINGS = {  # name: (graph optimization level, session config entries)
    "disable": ("disable", {}),
    "basic": ("basic", {}),
    "extended": ("extended", {}),
    "all": ("all", {}),
    "all, disable_quant_qdq=1": ("all", {"session.disable_quant_qdq": "1"}),
}


class Session:
    def __init__(self, path: Path, level: str, config: dict[str, str], outputs: list[str]):
        import onnxruntime as ort

        levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}  # fmt: skip
        opts = ort.SessionOptions()
        opts.graph_optimization_level = levels[level]
        opts.intra_op_num_threads = 1
        for k, v in config.items():
            opts.add_session_config_entry(k, v)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.names, self.outputs = [i.name for i in self.session.get_inputs()], outputs

    def infer(self, feed):
        return self.session.run(self.outputs, {n: feed[n] for n in self.names})


def graph_forms(recipe, fp32: Path, folder: Path) -> dict[str, Path]:
    """Two more static QDQ forms of the FP32 export, calibrated as mlpack calibrates (minmax, the
    calibration split): only the compute-heavy ops quantized (MatMul, Gemm, Conv), and int8
    activations (S8S8, TensorRT's form; ONNX Runtime converts it to u8 on x86)."""
    from toolchain.onnxtools.quantize import COMPUTE_OPS, pre_process, quantize_static_qdq
    from toolchain.samples import calibration_samples

    folder.mkdir(parents=True, exist_ok=True)
    forms = {"onnx-int8-static, MatMul/Gemm/Conv only": folder / "static-compute-ops.onnx", "onnx-int8-static, S8S8": folder / "static-s8s8.onnx"}
    if all(p.is_file() for p in forms.values()):
        return forms
    prep = folder / "prep.onnx"
    pre_process(fp32, prep)
    calib = calibration_samples(recipe)
    quantize_static_qdq(prep, forms["onnx-int8-static, MatMul/Gemm/Conv only"], calib, "minmax", [], symmetric=False, op_types=COMPUTE_OPS)
    quantize_static_qdq(prep, forms["onnx-int8-static, S8S8"], calib, "minmax", [], symmetric=True)
    return forms


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["bert-base", "resnet50"], default="bert-base")
    ap.add_argument("--out", type=Path, required=True, help="bench_precision.py's --out folder (built there if missing)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    import torch
    from bench_precision import build_model, cosine, feeds

    from toolchain.machine import cpu_identity
    from toolchain.onnxtools.kernels import cpu_int8_path, ops_at_load, summarize
    from toolchain.sources import load_source
    from toolchain.timing import interleaved

    machine = cpu_identity()
    print(f"CPU: {machine['model']}, features: {', '.join(machine['features'])}; MLAS int8 path: {cpu_int8_path(machine['features'])}; "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    manifest, root, recipe = build_model(args.model, args.out)
    torch.set_num_threads(1)
    onnx_targets = {t["name"]: root / t["runner"]["path"] for t in manifest["targets"] if t["status"] == "ok" and t["kind"] == "onnx"}
    onnx_targets |= graph_forms(recipe, onnx_targets["onnx-fp32"], args.out / f"{args.model}-ort-forms")
    source = load_source(recipe)
    runners = {"eager fp32": source.reference_runner().__enter__()}
    rows = []
    for target, path in onnx_targets.items():
        for setting, (level, config) in SETTINGS.items():
            if "int8" not in target and setting.startswith("all,"):
                continue
            # `all` adds layout transforms that are not saved portably; its fusions are extended's.
            counts = ops_at_load(path, "extended" if level == "all" else level, config)
            runners[f"{target} @ {setting}"] = Session(path, level, config, source.output_names)
            rows.append({"artifact": target, "setting": setting, **summarize(counts)})
    b1, check = feeds(recipe, 1, seed=1), feeds(recipe, 2, seed=99)
    ref = next(iter(runners["eager fp32"].infer(check).values()))
    lat = interleaved({k: partial(r.infer, b1) for k, r in runners.items()}, rounds=args.rounds, seconds=0.5)
    eager = lat["eager fp32"].median_ms
    for row in rows:
        key = f"{row['artifact']} @ {row['setting']}"
        out = runners[key].infer(check)
        row |= {"latency_ms": lat[key].median_ms, "latency_x": eager / lat[key].median_ms, "cosine": cosine(next(iter(out.values())), ref)}
    print(f"\neager fp32 at batch 1, 1 thread: {eager:.2f} ms\n")
    print("| artifact | session setting | integer kernels at load | float compute ops | Q/DQ left | batch 1 ms | vs eager | cosine |\n|" + " --- |" * 8)
    for r in rows:
        ints = ", ".join(f"{k} {v}" for k, v in r["integer_ops"].items()) or "none"
        flts = ", ".join(f"{k} {v}" for k, v in r["float_compute_ops"].items()) or "none"
        print(f"| {r['artifact']} | {r['setting']} | {ints} | {flts} | {r['qdq_left']} | {r['latency_ms']:.2f} | {r['latency_x']:.2f}x | {r['cosine']:.6f} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "eager_ms": eager, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
