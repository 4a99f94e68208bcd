"""How fast can BERT-base get on this CPU? The GEMM ceiling per precision, measured.

    python scripts/cpu_ceiling.py [--threads 1] [--rounds 9] [--seq 128] [--json FILE]

BERT-base at batch 1 spends almost all of its arithmetic (21.7 of 22.3 GFLOP at
sequence 128) in 72 linear layers of three shapes. This script times, in one
process and interleaved (median of rounds), eager FP32 BERT-base itself and
the 72 linears alone on the kernels mlpack's artifacts use: FP32 (oneDNN on
prepacked weights, what a frozen AOTI package calls), BF16 (the same with
bfloat16 weights and activations) and INT8 (oneDNN `qlinear_pointwise`, u8
activations x s8 per-channel weights: what an AOTI INT8 package calls). Each
of the 72 has weights of its own, as in the model (85 MB in INT8, more than
any cache here): until 2026-12-06 one layer's six were run 12 times, which kept
7 MB of INT8 weights in cache and overstated the ceiling; that row is still
printed, labelled. The
time of the linears alone at a precision is a lower bound on any artifact of
that precision that computes every linear, so `eager time / linears time` is
the ceiling on its speed-up over eager FP32: nothing else (attention, norms,
GELU, quantize/dequantize) is free in a real artifact. INT8 has a second row:
the same linears quantized by PT2E and compiled with Inductor's max-autotune,
each GEMM shape on the faster of Inductor's C++ GEMM (AMX tiles) and oneDNN's
qlinear, as INT8 AOTI packages on AMX are built (toolchain/torchtools/gemm.py).
The faster of the two INT8 rows is the INT8 ceiling.

Prints the CPU's features (AMX, AVX512-BF16, VNNI) because the ceiling depends
on them; needs transformers (installed by `make install`'s dev extra).

    python scripts/cpu_ceiling.py --classes all     # also each weaker CPU class, emulated

With --classes, the script runs again in a fresh process per class below this
machine's, with the ISA oneDNN and ATen use capped to it (ONEDNN_MAX_CPU_ISA,
ATEN_CPU_CAPABILITY: toolchain/cpuclass.py), and prints one table per class.
Such figures are this machine's cores running the class's kernels, labelled
"emulated", not a measurement of a real CPU of that class. A row that cannot
run (BF16 kernels need AVX512-BW) says why; a class above this machine's is
listed as not measurable here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolchain import cpuclass  # noqa: E402
from toolchain.machine import cpu_identity  # noqa: E402
from toolchain.timing import interleaved  # noqa: E402

HIDDEN, FFN, LAYERS = 768, 3072, 12
# (in, out, per layer): query, key, value, attention output; FFN up; FFN down
LINEARS = ((HIDDEN, HIDDEN, 4), (HIDDEN, FFN, 1), (FFN, HIDDEN, 1))


def linear_flops(seq: int) -> float:
    return sum(2.0 * seq * k * n * count for k, n, count in LINEARS) * LAYERS


def _shapes(distinct: bool):
    """(in, out) of the linears one run calls, and how many times the list is run: the 72 with weights of their own
    (as a model has: 85 MB in INT8 on BERT-base, streamed from memory) or one layer's six, 12 times (7 MB, which
    stays in cache: a bound for no real model, the figure published before 2026-12-06)."""
    one_layer = [(k, n) for k, n, count in LINEARS for _ in range(count)]
    return (one_layer * LAYERS, 1) if distinct else (one_layer, LAYERS)


def _fp32_stack(seq: int, dtype, distinct: bool = True):
    """BERT-base's linears on oneDNN with prepacked weights (mkldnn._linear_pointwise)."""
    import torch

    shapes, repeat = _shapes(distinct)
    layers = []
    for k, n in shapes:
        w = torch.randn(n, k, dtype=dtype) / k**0.5
        packed = torch.ops.mkldnn._reorder_linear_weight(w, seq)
        layers.append((torch.randn(seq, k, dtype=dtype), packed, torch.zeros(n, dtype=dtype)))

    def run():
        for _ in range(repeat):
            for x, w, b in layers:
                torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")

    return run


def _int8_stack(seq: int, distinct: bool = True):
    """The same linears as oneDNN INT8 (u8 activations per tensor, s8 weights per channel, fp32 out)."""
    import torch

    shapes, repeat = _shapes(distinct)
    layers = []
    for k, n in shapes:
        w = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        packed = torch.ops.onednn.qlinear_prepack(w, [seq, k])
        x = torch.randint(0, 256, (seq, k), dtype=torch.uint8)
        layers.append((x, packed, torch.full((n,), 0.01), torch.zeros(n, dtype=torch.int64), torch.zeros(n)))

    def run():
        for _ in range(repeat):
            for x, w, ws, wz, b in layers:
                torch.ops.onednn.qlinear_pointwise(x, 0.02, 128, w, ws, wz, b, 1.0, 0, torch.float32, "none", [], "")

    return run


def _autotuned(seq: int, precision: str = "int8"):
    """The same 72 linears compiled by Inductor with max-autotune, as an INT8 or BF16 AOTI package on AMX is
    (toolchain/torchtools/gemm.py): each GEMM shape on the faster of Inductor's C++ GEMM (AMX tiles where the CPU has
    them) and oneDNN's, timed at compile time. INT8: quantized by PT2E (u8 activations per tensor, s8 weights per
    channel, fp32 out); BF16: weights and activations in bfloat16. Where the template wins, this is below the oneDNN
    row, and it is the ceiling a package can reach."""
    import torch
    import torch._inductor
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    shapes, _ = _shapes(True)

    class Linears(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList(torch.nn.Linear(k, n) for k, n in shapes)

        def forward(self, x768, x3072):
            return [m(x768 if m.in_features == HIDDEN else x3072) for m in self.layers]

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    xs = (torch.randn(seq, HIDDEN, dtype=dtype), torch.randn(seq, FFN, dtype=dtype))
    with torch.no_grad():
        module = Linears().eval().to(dtype)
        if precision == "int8":
            program = torch.export.export(module, xs, strict=False).module()
            quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
            prepared = prepare_pt2e(program, quantizer)
            prepared(*xs)
            module = convert_pt2e(prepared)
        configs = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}
        with tempfile.TemporaryDirectory() as tmp:  # a package, as the artifacts are: its wrapper is C++, not Python
            path = torch._inductor.aoti_compile_and_package(torch.export.export(module, xs, strict=False), package_path=f"{tmp}/linears.pt2",
                                                            inductor_configs=configs)  # fmt: skip
            compiled = torch._inductor.aoti_load_package(path)
        compiled(*xs)

    def run():
        with torch.no_grad():
            compiled(*xs)

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


def _runnable(calls: dict) -> tuple[dict, dict[str, str]]:
    """The calls that run once without an error, and why the others cannot (a kernel the ISA lacks)."""
    ok, failed = {}, {}
    for name, make in calls.items():
        try:
            run = make()
            run()
            ok[name] = run
        except Exception as e:  # oneDNN refuses a kernel its capped ISA lacks: a row that says why
            failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return ok, failed


def measure(threads: int, rounds: int, seq: int) -> dict:
    """This process's table: rows with the time and ceiling of each call that runs, and the reason of each that cannot."""
    import torch

    torch.set_num_threads(threads)
    calls = {
        "eager BERT-base fp32": lambda: _eager_bert(seq),
        "72 linears fp32 (oneDNN, prepacked)": lambda: _fp32_stack(seq, torch.float32),
        "72 linears bf16 (oneDNN, prepacked)": lambda: _fp32_stack(seq, torch.bfloat16),
        "72 linears int8 (oneDNN qlinear)": lambda: _int8_stack(seq),
        "72 linears bf16 (autotuned: Inductor's C++ GEMM or oneDNN, the faster per shape)": lambda: _autotuned(seq, "bf16"),
        "72 linears int8 (autotuned: Inductor's C++ GEMM or oneDNN, the faster per shape)": lambda: _autotuned(seq, "int8"),
        # the figure published before 2026-12-06: one layer's weights 12 times, in cache (a bound for no model)
        "72 linears int8, one layer's weights 12 times (cache-resident)": lambda: _int8_stack(seq, distinct=False),
    }
    with torch.no_grad():
        runs, failed = _runnable(calls)
        times = interleaved(runs, rounds=rounds, seconds=0.5, warmup=2)
    eager = times["eager BERT-base fp32"].median_ms if "eager BERT-base fp32" in times else None
    flops = linear_flops(seq)
    rows = []
    for name in calls:
        if name in failed:
            rows.append({"what": name, "error": failed[name]})
            continue
        ms = times[name].median_ms
        row = {"what": name, "median_ms": round(ms, 2)}
        if name.startswith("72"):
            row |= {"gops": round(flops / ms / 1e6, 1), "ceiling": round(eager / ms, 2) if eager else None}
        rows.append(row)
    return {"threads": threads, "seq": seq, "rows": rows, "load_average": round(os.getloadavg()[0], 2)}


def _print(table: dict, title: str) -> None:
    flops = linear_flops(table["seq"])
    print(f"\n{title}: BERT-base, batch 1, sequence {table['seq']}, {table['threads']} thread(s); linears {flops / 1e9:.1f} GFLOP a call; "
          f"load average {table['load_average']}\n")  # fmt: skip
    print("| what | ms | GFLOP/s (linears) | ceiling vs eager fp32 |")
    print("| --- | --- | --- | --- |")
    for row in table["rows"]:
        if "error" in row:
            print(f"| {row['what']} | cannot run: {row['error']} | | |")
            continue
        ceiling = f"{row['ceiling']}x" if row.get("ceiling") else ""
        print(f"| {row['what']} | {row['median_ms']:.2f} | {row.get('gops', '')} | {ceiling} |")


def _as_class(cls: str, args) -> dict:
    """The table measured in a fresh process with the ISA capped to `cls`, or why there is none."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "table.json"
        cmd = [sys.executable, __file__, "--threads", str(args.threads), "--rounds", str(args.rounds), "--seq", str(args.seq), "--table", str(out)]
        proc = subprocess.run(cmd, env={**os.environ, **cpuclass.emulation_env(cls)}, capture_output=True, text=True)
        if proc.returncode != 0 or not out.is_file():
            last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or [f"exit status {proc.returncode}"]
            return {"error": f"the process died as {cls}: {last[0][:200]}"}
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--classes", default="", help="'all' or a comma-separated list of CPU classes to measure as well, emulated (toolchain/cpuclass.py)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--table", type=Path, help=argparse.SUPPRESS)  # the child of --classes: this process's table as JSON
    args = ap.parse_args(argv)
    if args.table:
        args.table.write_text(json.dumps(measure(args.threads, args.rounds, args.seq)))
        return 0
    info = cpu_identity()
    here = cpuclass.machine_class()
    print(f"CPU: {info['model']}, {info['cores']} cores, class {here}, features: {', '.join(info['features']) or 'none of AVX-512/AMX'}; "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    tables = {here or "this machine": measure(args.threads, args.rounds, args.seq) | {"how": "native"}}
    wanted = list(cpuclass.CLASSES) if args.classes == "all" else [c for c in args.classes.split(",") if c]
    for cls in wanted:
        if cls == here:
            continue
        if cls not in cpuclass.CLASSES:
            raise SystemExit(f"--classes: unknown class {cls!r}; use {', '.join(cpuclass.CLASSES)} or all")
        if here is None or cpuclass.rank(cls) > cpuclass.rank(here):
            tables[cls] = {"error": f"not measurable here: this machine is {here}, and a class above it cannot be emulated"}
            continue
        tables[cls] = _as_class(cls, args) | {"how": f"emulated on {info['model']} ({', '.join(f'{k}={v}' for k, v in cpuclass.emulation_env(cls).items())})"}
    for cls, table in tables.items():
        if "rows" in table:
            _print(table, f"{cls} ({table['how']})")
        else:
            print(f"\n{cls}: {table['error']}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "class": here, "tables": tables}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
