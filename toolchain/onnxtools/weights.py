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
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, StrictBool, StrictInt

from toolchain import generation
from toolchain.judge import judge
from toolchain.options import Strict
from toolchain.runners.onnxruntime import OnnxRuntimeRunner

WEIGHT_BITS = {"int4": 4, "int8-weight": 8}
ACCURACY_LEVEL = {"int8": 4, "float": 0}  # MatMulNBits' accuracy_level: the type its CPU kernel computes in
SEARCH_SHARE = 0.5  # of the target's timeout, for fallback: auto
REPORT_LAYERS = 8


class WeightOnly(Strict):
    """`weights:` of an onnx target with quantize: int4 or int8-weight."""

    block_size: Annotated[StrictInt, Field(ge=16, le=256, multiple_of=16)] = 32
    symmetric: StrictBool = True
    # fnmatch patterns over module names; lm_head by default: the last projection decides every token
    keep_float: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=lambda: ["lm_head"])
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


def gate_for(source, spec, ctx) -> Callable[[Path], Verdict]:
    """The target's own gate for one candidate model: the parity samples, and for a generator its greedy tokens (teacher-forced
    on the source's) and its perplexity on the text sample, as the parity step will judge them."""
    recipe = source.recipe
    samples, reference = ctx.parity_data()
    tol = recipe.tolerance(spec)
    refs = generation.load_references(ctx.root / generation.GENERATION_FILE) if recipe.generates else []
    text = generation.load_text_sample(ctx.root / generation.TEXT_FILE) if recipe.generates else None

    def gate(path: Path) -> Verdict:
        runner = OnnxRuntimeRunner(path, source.input_names, source.output_names, spec.device)
        report, _ = judge(runner, samples, reference, tol, recipe.parity.scores)
        summary, failures, score = report.summary(), [f"samples: {report.first_failure()}"] if not report.passed else [], report.margin()
        if text is not None:
            with runner as active:
                decoder = generation.decoder_for(active, recipe)
                logits = [decoder.teacher_forced(r.prompt, r.tokens) for r in refs]
                nll = generation.artifact_nll(decoder, text.chunks)
            g = generation.judge(refs, logits, tol, "", generation.perplexity_check(text, nll, tol.perplexity) if text.chunks else None)
            ppl = g.perplexity
            summary |= {"tokens": g.token_match, "perplexity_delta": ppl.delta if ppl else None}
            failures += g.failures
            score = min(score, g.token_match - g.floor)
            if ppl is not None and ppl.budget is not None:
                score = min(score, ppl.budget - ppl.delta if ppl.delta is not None else -1e9)
        return Verdict(not failures, score, summary | {"passed": not failures}, "; ".join(failures))

    return gate


def to_weight_only(source, spec, src: Path, dst: Path, ctx) -> dict:
    """Quantize `src`'s MatMul weights into `dst`; judge each try with the target's own gate (a generator's greedy tokens
    and perplexity, else the parity samples) and, with fallback: auto, keep layers in float until it passes."""
    import onnx

    opts, bits = spec.weights or WeightOnly(), WEIGHT_BITS[spec.quantize]
    model = onnx.load(str(src))
    layers = rank(model, layers_of(model), bits, opts.block_size)
    del model
    kept = [x for x in layers if any(fnmatch.fnmatchcase(x.module, p) for p in opts.keep_float)]
    unmatched = [p for p in opts.keep_float if not any(fnmatch.fnmatchcase(x.module, p) for x in layers)]
    candidates = [x for x in layers if x not in kept]
    gate = gate_for(source, spec, ctx)
    scratch = dst.parent / "fp32"
    attempts: list[dict] = []
    best: tuple | None = None
    deadline = time.monotonic() + spec.timeout * SEARCH_SHARE

    def attempt(extra: list[Layer], why: str) -> bool:
        nonlocal best
        path = scratch / f"attempt{len(attempts)}.onnx"
        quantize(src, path, bits, opts, [x.node for x in kept + extra])
        verdict = gate(path)
        attempts.append({"excluded": len(kept) + len(extra), "why": why, **verdict.summary})
        if best is None or (verdict.passed, verdict.score) > (best[0].passed, best[0].score):
            best = (verdict, path, extra)
        return verdict.passed

    ok = attempt([], "as configured")
    if not ok and spec.fallback == "auto":
        k = 1
        while not ok and k < len(candidates) and time.monotonic() < deadline:  # all of them in float would be the FP32 model
            ok = attempt(candidates[:k], f"{k} layers with the largest weight error in float")
            k *= 2
    verdict, path, extra = best
    shutil.copyfile(path, dst)
    for data in path.parent.glob(path.name + ".data"):
        shutil.copyfile(data, dst.parent / (dst.name + ".data"))
    floats = kept + extra
    record = {
        "mode": spec.quantize,
        "fallback": spec.fallback,
        "format": "MatMulNBits (weight-only, onnxruntime contrib op)",
        "weight_only": {
            "bits": bits,
            "block_size": opts.block_size,
            "symmetric": opts.symmetric,
            "compute": opts.compute,
            "quantized": len(layers) - len(floats),
            "kept_float": [x.module for x in floats],
            "layers": [{"module": x.module, "node": x.node, "shape": list(x.shape), "error": round(x.error, 6)} for x in layers[:REPORT_LAYERS]],
        },
        "attempts": attempts,
    }
    warnings = [f"weights.keep_float: '{p}' matches no layer (layers are named like {layers[0].module})" for p in unmatched if layers]
    if not verdict.passed:
        left = [x for x in candidates if x not in extra][:3]
        names = ", ".join(f"{x.module} ({x.error:.3g})" for x in left) or "none: every candidate was tried in float"
        floated = f"with {len(extra)} more layers in float ({', '.join(x.module for x in extra)}) " if extra else ""
        advice = "set fallback: auto to keep the worst layers in float, " if spec.fallback == "off" else f"after {len(attempts)} attempts; "
        warnings.append(f"{spec.quantize} misses its budget {floated}({verdict.failure}); the quantized layers that lose the most: {names}; "
                        f"{advice}name layers in weights.keep_float, or raise the budget")  # fmt: skip
    return {"quantization": record, "excluded_nodes": [x.node for x in floats], "warnings": warnings}
