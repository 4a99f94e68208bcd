"""Reduced precision for ONNX models: FP16 conversion and INT8 quantization.

FP16 uses onnxconverter-common's converter (FP32 inputs/outputs kept, ops
that lose accuracy in FP16 kept in FP32). INT8 uses ONNX Runtime's tools:
pre-processing, then static QDQ quantization calibrated on samples disjoint
from the parity samples, or dynamic quantization for transformer-style
models. An INT8 model is checked against the parity budget here, so that a
miss can name the nodes that cost the most and, with `fallback: auto`,
keep them in float and try again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolchain.onnxtools.files import save_model
from toolchain.onnxtools.node_report import node_errors
from toolchain.parity import CalibrationSet, ParityReport, calibration_samples, compare, cosine
from toolchain.runners import run_all
from toolchain.runners.onnxruntime import OnnxRuntimeRunner

# Ops kept in FP32 on top of the converter's defaults: reductions, exponentials
# and normalisations overflow or lose precision in FP16 (the same ops PyTorch
# autocast keeps in FP32).
FP16_BLOCK_LIST = [
    "Pow", "Exp", "Log", "Sqrt", "Reciprocal", "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum",
    "ReduceSumSquare", "ReduceProd", "ReduceL2", "ReduceLogSumExp", "LayerNormalization",
    "GroupNormalization", "InstanceNormalization", "CumSum",
]  # fmt: skip

CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
# fallback: auto quantizes and checks up to this many times. Each retry keeps
# as many more of the worst nodes in float as are already kept (at least 2):
# 0, 2, 4, 8, 16, 32 nodes, since error in a deep model is spread thin.
FALLBACK_ATTEMPTS = 6
MIN_NODES_PER_ATTEMPT = 2
REPORT_NODES = 10  # nodes listed in the manifest's node_report


def to_fp16(src: Path, dst: Path) -> dict:
    """FP16 weights and compute, FP32 at the inputs and outputs; returns the manifest record."""
    import onnx
    from onnxconverter_common import float16

    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP16_BLOCK_LIST))
    model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, op_block_list=block)
    save_model(model, dst)
    kept = sorted({n.op_type for n in model.graph.node if n.op_type in block})
    return {"mode": "fp16", "converter": "onnxconverter-common float16", "io": "float32", "ops_kept_fp32": kept}


def pre_process(src: Path, dst: Path) -> None:
    """ONNX Runtime's pre-quantization step: shape inference and graph cleanup.

    Symbolic shape inference is incomplete on some dynamo exports (e.g. BERT);
    auto_merge lets it reconcile the symbolic dims it cannot prove equal.
    """
    import onnx
    from onnxruntime.quantization import quant_pre_process

    quant_pre_process(str(src), str(dst), auto_merge=True)
    model = onnx.load(str(dst))
    unnamed = [n for n in model.graph.node if not n.name]
    if unnamed:  # nodes_to_exclude and the node report address nodes by name
        for i, n in enumerate(unnamed):
            n.name = f"{n.op_type}_{i}_unnamed"
        onnx.save(model, str(dst))


class _Reader:
    """A CalibrationDataReader over a list of feeds, readable in ranges.

    Calibration feeds span the dims like parity samples, so their shapes
    differ; ORT's histogram calibrators stack the outputs of one collection
    pass, so the quantizer collects feed by feed (CalibStridedMinMax: 1) and
    merges the ranges or histograms across passes.
    """

    def __init__(self, feeds: list[dict]):
        self._feeds = feeds
        self.set_range(0, len(feeds))

    def __len__(self) -> int:
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self._feeds[start_index:end_index])

    def get_next(self) -> dict | None:
        return next(self._it, None)


def quantize_static_qdq(prep: Path, dst: Path, calib: CalibrationSet, method: str, excluded: list[str], symmetric: bool, cache: Path | None = None) -> None:
    """Static QDQ with per-channel weights.

    symmetric=True (TensorRT) puts every zero point at 0, as TensorRT requires;
    otherwise activations are asymmetric uint8, ONNX Runtime's CPU choice.
    `cache` keeps the calibrated ranges so fallback rounds skip recalibrating.
    """
    from onnxruntime import quantization as q

    q.quantize_static(
        str(prep),
        str(dst),
        _Reader(calib.feeds),
        quant_format=q.QuantFormat.QDQ,
        per_channel=True,
        activation_type=q.QuantType.QInt8 if symmetric else q.QuantType.QUInt8,
        weight_type=q.QuantType.QInt8,
        calibrate_method=getattr(q.CalibrationMethod, CALIBRATION_METHODS[method]),
        nodes_to_exclude=excluded,
        extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True, "CalibStridedMinMax": 1},
        calibration_cache_path=str(cache) if cache else None,
    )


def quantize_dynamic(prep: Path, dst: Path, excluded: list[str]) -> None:
    """Weights INT8 ahead of time, activations quantized per batch at run time."""
    from onnxruntime import quantization as q

    q.quantize_dynamic(str(prep), str(dst), weight_type=q.QuantType.QInt8, nodes_to_exclude=excluded)


def _evaluate(path: Path, input_names: list[str], output_names: list[str], device: str, samples, reference, tol) -> tuple[ParityReport, list[dict]]:
    """The parity gate's own check (same runner, same compare) run inside the build."""
    outputs = run_all(OnnxRuntimeRunner(path, input_names, output_names, device), samples)
    return compare(reference, outputs, tol), outputs


def _worst_sample(reference: list[dict], outputs: list[dict]) -> int:
    """Index of the sample whose outputs are least like the reference (lowest cosine)."""
    scores = [min(cosine(r[k], o[k]) for k in r if k in o) for r, o in zip(reference, outputs)]
    return int(np.argmin(scores))


def _summary(report: ParityReport, excluded: list[str]) -> dict:
    outs = report.outputs.values()
    top1 = [d.top1 for d in outs if d.top1 is not None]
    return {
        "excluded": len(excluded),
        "passed": report.passed,
        "cosine": min((d.cosine for d in outs), default=1.0),
        "top1": min(top1) if top1 else None,
    }


def to_int8(source, spec, src: Path, dst: Path, scratch: Path, ctx) -> dict:
    """Quantize `src` into `dst`, check the budget, fall back node by node.

    `ctx` is the step's BuildContext (the parity data lies under its root).
    Returns the manifest fields: `quantization` (mode, calibration, attempts,
    node_report), `excluded_nodes` and `warnings`.
    """
    recipe = source.recipe
    method = spec.calibration or "minmax"
    prep = scratch / "prep.onnx"
    pre_process(src, prep)
    record: dict = {"mode": spec.quantize, "fallback": spec.fallback}
    warnings: list[str] = []
    calib = None
    if spec.quantize == "int8":
        calib = calibration_samples(recipe)
        record |= {"format": "QDQ", "per_channel": True, "activations": "uint8 asymmetric", "weights": "int8 symmetric"}
        record["calibration"] = {"method": method, **calib.to_dict()}
        if calib.warning:
            warnings.append(calib.warning)
    else:
        record |= {"format": "dynamic (QOperator)", "weights": "int8"}
    samples, reference = ctx.parity_data()
    tol = recipe.parity.tolerance_for(spec.target_name, spec.quantize)
    excluded: list[str] = []
    attempts: list[dict] = []
    node_report: list[dict] | None = None
    for attempt in range(FALLBACK_ATTEMPTS if spec.fallback == "auto" else 1):
        if calib is not None:
            quantize_static_qdq(prep, dst, calib, method, excluded, symmetric=False, cache=scratch / "calibration.json")
        else:
            quantize_dynamic(prep, dst, excluded)
        report, outputs = _evaluate(dst, source.input_names, source.output_names, spec.device, samples, reference, tol)
        attempts.append(_summary(report, excluded))
        if report.passed:
            break
        errors = node_errors(prep, dst, samples[_worst_sample(reference, outputs)], spec.device)
        if node_report is None:  # the first miss: what the plain quantization got wrong
            node_report = [e.to_dict() for e in errors[:REPORT_NODES]]
        step = max(MIN_NODES_PER_ATTEMPT, len(excluded))
        worst = [e.node for e in errors if e.quantized and e.node not in excluded][:step]
        if spec.fallback != "auto" or not worst or attempt == FALLBACK_ATTEMPTS - 1:
            break
        excluded = excluded + worst
    if not attempts[-1]["passed"]:
        names = ", ".join(f"{r['node']} ({r['op_type']}, +{r['added_error']:.3g})" for r in (node_report or [])[:3])
        hint = "set fallback: auto to keep the worst nodes in float" if spec.fallback == "off" else f"fallback: auto stopped after {len(attempts)} attempts"
        warnings.append(f"{spec.quantize} misses its budget; nodes adding the most error: {names}; {hint}")
    record |= {"attempts": attempts, "node_report": node_report}
    return {"quantization": record, "excluded_nodes": excluded, "warnings": warnings}


# The `quantization` field a reduced-precision target adds to its manifest entry (JSON Schema).
QUANTIZATION_SCHEMA: dict = {
    "type": "object",
    "required": ["mode"],
    "properties": {
        "mode": {"enum": ["fp16", "int8", "int8-dynamic"]},
        "fallback": {"enum": ["off", "auto"]},
        "format": {"type": "string"},
        "calibration": {
            "type": "object",
            "required": ["method", "source", "samples", "seed"],
            "properties": {
                "method": {"enum": ["minmax", "entropy", "percentile"]},
                "source": {"enum": ["data", "generated"]},
                "samples": {"type": "integer", "minimum": 1},
                "rows": {"type": ["array", "null"], "items": {"type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 2},
                "parity_rows": {"type": ["array", "null"], "items": {"type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 2},
                "seed": {"type": "array", "items": {"type": "integer"}},
                "warning": {"type": ["string", "null"]},
            },
        },
        "attempts": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["excluded", "passed", "cosine", "top1"],
                "properties": {
                    "excluded": {"type": "integer", "minimum": 0},
                    "passed": {"type": "boolean"},
                    "cosine": {"type": "number"},
                    "top1": {"type": ["number", "null"]},
                },
            },
        },
        "node_report": {
            "type": ["array", "null"],
            "items": {
                "type": "object",
                "required": ["node", "op_type", "added_error", "output_error", "quantized"],
                "properties": {
                    "node": {"type": "string"},
                    "op_type": {"type": "string"},
                    "added_error": {"type": "number", "minimum": 0},
                    "output_error": {"type": "number", "minimum": 0},
                    "quantized": {"type": "boolean"},
                },
            },
        },
    },
}
