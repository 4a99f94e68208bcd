"""Weight-only INT4 and INT8 for ONNX (`quantize: int4 | int8-weight`): each MatMul whose weight is a
constant is replaced by ONNX Runtime's `MatMulNBits`, its weight stored in blocks of `block_size`
values along the input axis with one scale per block; activations stay float. This is the format
ONNX Runtime GenAI's builder writes for LLMs.

Layers are named by the module they came from (the exporter's `name_scopes`: `model.layers.0.mlp.down_proj`,
`lm_head`), so `keep_float` patterns and the reports speak the model's own names. Embeddings are
Gathers, not MatMuls: they stay float. With `fallback: auto`, a miss keeps the layers whose weights
lose the most to quantization (1, 2, 4, ... of them) in float until the target's budget holds; a final
miss names those layers.
"""

from __future__ import annotations

import fnmatch
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, StrictBool, StrictInt

from toolchain import generation
from toolchain.judge import judge
from toolchain.options import Strict
from toolchain.runners.onnxruntime import OnnxRuntimeRunner
from toolchain.runners.pair import TwoPrograms

WEIGHT_BITS = {"int4": 4, "int8-weight": 8}
ACCURACY_LEVEL = {"int8": 4, "float": 0}  # MatMulNBits' accuracy_level: the type its CPU kernel computes in
SEARCH_SHARE = 0.5  # of the target's timeout, for fallback: auto
REPORT_LAYERS = 8


class WeightOnly(Strict):
    """`weights:` of an onnx target with quantize: int4 or int8-weight."""

    block_size: Annotated[StrictInt, Field(ge=16, le=256, multiple_of=16)] = 32
    symmetric: StrictBool = True
    # fnmatch patterns over module names; unset: the model's output projection (head_modules), whatever it is named
    # (lm_head, Whisper's proj_out), because the last projection decides every token
    keep_float: list[Annotated[str, Field(min_length=1)]] | None = None
    # int8: ONNX Runtime quantizes activations to int8 per block at run time (accuracy_level 4), its fast CPU path; float:
    # weights are decoded to float32 (accuracy_level 0). On an AMD Zen 4, 8-bit weights decoded 23x slower as float.
    compute: Literal["int8", "float"] = "int8"


@dataclass
class Layer:
    node: str
    module: str
    weight: str
    shape: tuple[int, int]  # [in, out]
    error: float = 0.0  # relative Frobenius error of the weight after quantization


def _module_of(node) -> str | None:
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = [s.strip(" '\"") for s in prop.value.strip("[]").split(",")]
            if len(scopes) >= 2:
                name = scopes[-2]
                return name.removeprefix("inner.")  # the with-cache wrapper's attribute (sources/decoder.py)
    if node.name.startswith("/") and node.name.count("/") >= 2:  # the TorchScript exporter's /inner/decoder/block.0/.../q/MatMul
        return ".".join(node.name.strip("/").split("/")[:-1]).removeprefix("inner.")
    return None


def layers_of(model) -> list[Layer]:
    """The MatMuls with a constant 2-D weight: what MatMulNBits can take."""
    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2 or node.input[1] not in inits:
            continue
        w = inits[node.input[1]]
        if len(w.dims) != 2:
            continue
        out.append(Layer(node.name, _module_of(node) or node.name, w.name, (int(w.dims[0]), int(w.dims[1]))))
    return out


# ops between an output projection and the graph output it writes (a bias, a scale, a softcap, a reshape)
_TO_OUTPUT = {"Add", "Mul", "Div", "Cast", "Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze", "Tanh"}


def head_modules(model, layers: list[Layer]) -> list[str]:
    """The modules of the layers that write a graph output through elementwise and shape ops only: the output
    projection, whatever the model names it (lm_head; Whisper's proj_out). A layer followed by a norm or a residual
    add is not one: an encoder has none."""
    producer = {o: n for n in model.graph.node for o in n.output}
    constant = {i.name for i in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    module = {x.node: x.module for x in layers}
    heads = []
    for out in model.graph.output:
        node = producer.get(out.name)
        for _ in range(16):
            if node is None or node.name in module or node.op_type not in _TO_OUTPUT:
                break
            live = [i for i in node.input if i and i not in constant]
            node = producer.get(live[0]) if len(live) == 1 else None
        if node is not None and node.name in module and module[node.name] not in heads:
            heads.append(module[node.name])
    return heads


def _quantization_error(w: np.ndarray, bits: int, block: int) -> float:
    """The relative error of blockwise symmetric round-to-nearest on the input axis."""
    k, n = w.shape
    pad = (-k) % block
    x = np.pad(w.astype(np.float64), ((0, pad), (0, 0))).reshape(-1, block, n)
    top = 2 ** (bits - 1) - 1
    scale = np.abs(x).max(axis=1, keepdims=True) / top
    scale[scale == 0] = 1.0
    q = np.clip(np.round(x / scale), -top - 1, top) * scale
    return float(np.linalg.norm(q - x) / (np.linalg.norm(x) + 1e-30))


def rank(model, layers: list[Layer], bits: int, block: int) -> list[Layer]:
    """The layers, those whose weights lose the most first (symmetric round-to-nearest, as a guide)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    for layer in layers:
        layer.error = _quantization_error(numpy_helper.to_array(inits[layer.weight]), bits, block)
    return sorted(layers, key=lambda x: -x.error)


def quantize(src: Path, dst: Path, bits: int, opts: WeightOnly, exclude: list[str]) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(onnx.load(str(src)), bits=bits, block_size=opts.block_size, is_symmetric=opts.symmetric,
                             accuracy_level=ACCURACY_LEVEL[opts.compute], nodes_to_exclude=exclude, op_types_to_quantize=("MatMul",))  # fmt: skip
    logger = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = logger.level
    logger.setLevel(logging.WARNING)  # it logs a line per node at INFO
    try:
        q.process()
    finally:
        logger.setLevel(level)
    big = q.model.model.ByteSize() > 1_800_000_000  # protobuf's 2 GB limit: weights beside the graph
    for stale in dst.parent.glob(dst.name + ".data"):
        stale.unlink()
    q.model.save_model_to_file(str(dst), use_external_data_format=big)


@dataclass
class Verdict:
    passed: bool
    score: float  # larger is better; >= 0 meets every floor
    summary: dict  # the attempt's figures
    failure: str


@dataclass
class Program:
    """One ONNX program of the artifact: its FP32 file, where its weight-only form goes, and the source whose inputs and
    outputs it has (an encoder-decoder has two: prefill.onnx and model.onnx, quantized and judged together)."""

    src: Path
    dst: Path
    source: object
    layers: list[Layer] = field(default_factory=list)

    def exclude(self, modules: set[str]) -> list[str]:
        return [x.node for x in self.layers if x.module in modules]


def _runner(programs: list[Program], paths: list[Path], device: str):
    runners = [OnnxRuntimeRunner(path, p.source.input_names, p.source.output_names, device) for p, path in zip(programs, paths)]
    return TwoPrograms(*runners) if len(runners) == 2 else runners[0]


def gate_for(programs: list[Program], spec, ctx) -> Callable[[list[Path]], Verdict]:
    """The target's own gate for one candidate (a file per program): the parity samples, and for a generator its greedy tokens
    (teacher-forced on the source's) and its perplexity on the text sample, as the parity step will judge them."""
    recipe = programs[-1].source.recipe
    samples, reference = ctx.parity_data()
    tol = recipe.tolerance(spec)
    refs = generation.load_references(ctx.root / generation.GENERATION_FILE) if recipe.generates else []
    text = generation.load_text_sample(ctx.root / generation.TEXT_FILE) if recipe.generates else None

    def gate(paths: list[Path]) -> Verdict:
        runner = _runner(programs, paths, spec.device)
        report, _ = judge(runner, samples, reference, tol, recipe.parity.scores)
        summary, failures, score = report.summary(), [f"samples: {report.first_failure()}"] if not report.passed else [], report.margin()
        if refs:
            with runner as active:
                decoder = generation.decoder_for(active, recipe)
                logits = [decoder.teacher_forced(r.prompt, r.tokens) for r in refs]
                nll = generation.artifact_nll(decoder, text.chunks) if text is not None and text.chunks else None
            g = generation.judge(refs, logits, tol, "", generation.perplexity_check(text, nll, tol.perplexity) if nll is not None else None)
            ppl = g.perplexity
            summary |= {"tokens": g.token_match, "perplexity_delta": ppl.delta if ppl else None}
            failures += g.failures
            score = min(score, g.token_match - g.floor)
            if ppl is not None and ppl.budget is not None:
                score = min(score, ppl.budget - ppl.delta if ppl.delta is not None else -1e9)
        return Verdict(not failures, score, summary | {"passed": not failures}, "; ".join(failures))

    return gate


def to_weight_only(programs: list[Program], spec, ctx) -> dict:
    """Quantize the MatMul weights of each program's `src` into its `dst`; judge each try with the target's own gate (a
    generator's greedy tokens and perplexity, else the parity samples) and, with fallback: auto, keep layers in float until
    it passes. A layer is a module: one the programs share (an encoder-decoder's decoder) is kept in float in both."""
    import onnx

    opts, bits = spec.weights or WeightOnly(), WEIGHT_BITS[spec.quantize]
    heads: list[str] = []
    for p in programs:
        model = onnx.load(str(p.src))
        p.layers = rank(model, layers_of(model), bits, opts.block_size)
        heads += [m for m in head_modules(model, p.layers) if m not in heads]
        del model
    layers = sorted((x for p in programs for x in p.layers), key=lambda x: -x.error)
    modules = list(dict.fromkeys(x.module for x in layers))  # the largest weight error first
    if opts.keep_float is None:  # the default: the output projection, by the name it has
        kept, unmatched = [m for m in modules if m in heads], []
    else:
        kept = [m for m in modules if any(fnmatch.fnmatchcase(m, pat) for pat in opts.keep_float)]
        unmatched = [pat for pat in opts.keep_float if not any(fnmatch.fnmatchcase(m, pat) for m in modules)]
    candidates = [m for m in modules if m not in kept]
    gate = gate_for(programs, spec, ctx)
    scratch = programs[-1].dst.parent / "fp32"
    attempts: list[dict] = []
    best: tuple | None = None
    deadline = time.monotonic() + spec.timeout * SEARCH_SHARE

    def attempt(extra: list[str], why: str) -> bool:
        nonlocal best
        n, floats = len(attempts), set(kept + extra)
        paths = [scratch / f"attempt{n}.{p.dst.name}" for p in programs]
        for p, path in zip(programs, paths):
            quantize(p.src, path, bits, opts, p.exclude(floats))
        verdict = gate(paths)
        attempts.append({"excluded": len(kept) + len(extra), "why": why, **verdict.summary})
        if best is None or (verdict.passed, verdict.score) > (best[0].passed, best[0].score):
            best = (verdict, paths, extra)
        return verdict.passed

    ok = attempt([], "as configured")
    if not ok and spec.fallback == "auto":
        k = 1
        while not ok and k < len(candidates) and time.monotonic() < deadline:  # all of them in float would be the FP32 model
            ok = attempt(candidates[:k], f"{k} layers with the largest weight error in float")
            k *= 2
    verdict, paths, extra = best
    for p, path in zip(programs, paths):
        shutil.copyfile(path, p.dst)
        for data in path.parent.glob(path.name + ".data"):
            shutil.copyfile(data, p.dst.parent / (p.dst.name + ".data"))
    floats = kept + extra
    error = {x.module: x.error for x in reversed(layers)}  # a module's largest
    record = {
        "mode": spec.quantize,
        "fallback": spec.fallback,
        "format": "MatMulNBits (weight-only, onnxruntime contrib op)",
        "weight_only": {
            "bits": bits,
            "block_size": opts.block_size,
            "symmetric": opts.symmetric,
            "compute": opts.compute,
            "quantized": sum(1 for x in layers if x.module not in floats),
            "kept_float": floats,
            "layers": [
                {"module": x.module, "node": x.node, "shape": list(x.shape), "error": round(x.error, 6)}
                for x in {x.module: x for x in reversed(layers)}.values()
            ][::-1][:REPORT_LAYERS],  # fmt: skip
        },
        "attempts": attempts,
    }
    if len(programs) > 1:
        record["weight_only"]["programs"] = {p.dst.name: sum(1 for x in p.layers if x.module not in floats) for p in programs}
    warnings = [f"weights.keep_float: '{pat}' matches no layer (layers are named like {modules[0]})" for pat in unmatched if modules]
    if not verdict.passed:
        left = [m for m in candidates if m not in extra][:3]
        names = ", ".join(f"{m} ({error[m]:.3g})" for m in left) or "none: every candidate was tried in float"
        floated = f"with {len(extra)} more layers in float ({', '.join(extra)}) " if extra else ""
        advice = "set fallback: auto to keep the worst layers in float, " if spec.fallback == "off" else f"after {len(attempts)} attempts; "
        warnings.append(f"{spec.quantize} misses its budget {floated}({verdict.failure}); the quantized layers that lose the most: {names}; "
                        f"{advice}name layers in weights.keep_float, or raise the budget")  # fmt: skip
    prefix = (lambda p: f"{p.dst.name}:") if len(programs) > 1 else (lambda p: "")  # noqa: E731
    nodes = [prefix(p) + n for p in programs for n in p.exclude(set(floats))]
    return {"quantization": record, "excluded_nodes": nodes, "warnings": warnings}
