"""The one precision search (`fallback: auto`) every quantizing kind uses: try a configuration,
judge it with the gate's own compare against the target's budget, keep the best (passing first,
then the largest margin), stop when the budget holds or the time is up. What a kind varies is
the configurations it proposes (toolchain.onnxtools.quantize, toolchain.torchtools.pt2e) and how
it quantizes and runs one. Also the `quantization` record's schema. Imports no framework.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from toolchain.onnxtools.kernels import RUNTIME_SCHEMA
from toolchain.records import ParityReport

C = TypeVar("C")  # a configuration
A = TypeVar("A")  # what evaluating it leaves (the model, or its outputs)


class CandidateError(Exception):
    """A configuration whose model cannot be built or run: the search records it as failed and goes on."""


@dataclass
class Tried(Generic[C, A]):
    score: float  # ParityReport.margin(): >= 0 meets every floor; -inf for a candidate that failed
    config: C
    report: ParityReport | None  # None: the candidate failed (error says why)
    artifact: A | None
    error: str | None = None


class PrecisionSearch(Generic[C, A]):
    """Evaluate configurations against the budget and keep the best.

    evaluate(config) -> (the gate's report, artifact); describe(config) -> the attempt's manifest
    fields; keep(tried) is called on every new best (to save its model, say)."""

    def __init__(self, evaluate: Callable[[C], tuple[ParityReport, A]], describe: Callable[[C], dict], deadline: float,
                 keep: Callable[[Tried[C, A]], None] | None = None):  # fmt: skip
        self.evaluate, self.describe, self.deadline, self.keep = evaluate, describe, deadline, keep
        self.attempts: list[dict] = []
        self.best: Tried[C, A] | None = None

    @property
    def passed(self) -> bool:
        return self.best is not None and self.best.report.passed

    def out_of_time(self) -> bool:
        return time.monotonic() > self.deadline

    def run(self, config: C) -> Tried[C, A]:
        try:
            report, artifact = self.evaluate(config)
        except CandidateError as e:
            self.attempts.append(self.describe(config) | {"passed": False, "error": str(e)})
            return Tried(float("-inf"), config, None, None, str(e))
        tried = Tried(report.margin(), config, report, artifact)
        self.attempts.append(self.describe(config) | report.summary())
        if self.best is None or (report.passed, tried.score) > (self.best.report.passed, self.best.score):
            self.best = tried
            if self.keep is not None:
                self.keep(tried)
        return tried


# The `quantization` field a reduced-precision target adds to its manifest entry (JSON Schema).
QUANTIZATION_SCHEMA: dict = {
    "type": "object",
    "required": ["mode"],
    "properties": {
        "mode": {"enum": ["fp16", "int8", "int8-dynamic", "int4", "int8-weight"]},
        "weight_only": {  # ONNX weight-only (onnxtools/weights.py); INT8's `weights` is a description string
            "type": "object",
            "required": ["bits", "block_size", "symmetric", "quantized", "kept_float", "layers"],
            "properties": {
                "bits": {"enum": [4, 8]},
                "block_size": {"type": "integer"},
                "symmetric": {"type": "boolean"},
                "compute": {"enum": ["int8", "float", "bfloat16"]},
                "quantized": {"type": "integer", "minimum": 0},
                "kept_float": {"type": "array", "items": {"type": "string"}},
                "layers": {"type": "array", "items": {"type": "object", "required": ["module", "node", "shape", "error"]}},
            },
        },
        "fallback": {"enum": ["off", "auto"]},
        "format": {"type": "string"},
        # INT8 for a fleet with CPUs without VNNI: ONNX 7-bit weights / PT2E 7-bit activations, whose products cannot saturate
        "reduce_range": {"type": "boolean"},
        "reduce_range_for": {"type": "array", "items": {"type": "string"}},
        "kept_float_why": {
            "type": "object",
            "additionalProperties": {"type": "string"},
        },  # AOTI int8-weight: layers the kernel cannot take; ONNX int8: non-finite ranges
        "nodes_kept_fp32": {"type": "array", "items": {"type": "string"}},  # fp16: Transposes into a MatMul (transposes_into_matmul)
        "calibration": {
            "type": "object",
            "required": ["method", "source", "samples", "seed"],
            "properties": {
                # histogram: PT2E's observers (AOTI int8); the others are ONNX Runtime's calibrators
                "method": {"enum": ["minmax", "entropy", "percentile", "histogram"]},
                "source": {"enum": ["data", "generated"]},
                "samples": {"type": "integer", "minimum": 1},
                "rows": {"type": ["array", "null"], "items": {"type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 2},
                "parity_rows": {"type": ["array", "null"], "items": {"type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 2},
                "seed": {"type": "array", "items": {"type": "integer"}},
                "warning": {"type": ["string", "null"]},
            },
        },
        "runtime": RUNTIME_SCHEMA,  # ONNX: the kernels ONNX Runtime runs the graph with
        "compiled_checks": {  # AOTI int8: the compiled package judged after the (eager) search
            "type": "array",
            "items": {
                "type": "object",
                "required": ["eager_cosine", "compiled_cosine", "passed", "floor"],
                "properties": {
                    "eager_cosine": {"type": ["number", "null"]},
                    "compiled_cosine": {"type": "number"},
                    "passed": {"type": "boolean"},
                    "floor": {"type": ["number", "null"]},
                },
            },
        },
        # AOTI int8: weights computed by parametrizations (weight_norm, spectral_norm) baked into parameters first
        "parametrizations_baked": {"type": "integer", "minimum": 1},
        "quantized_layers": {"type": "integer", "minimum": 0},  # AOTI int8: layers with INT8 weights in the chosen model
        "kept_float_for_lowering": {  # AOTI int8: modules the compiler would get wrong (pt2e.lowering_hazards)
            "type": "array",
            "items": {"type": "object", "required": ["module", "why"], "properties": {"module": {"type": "string"}, "why": {"type": "string"}}},
        },
        "attempts": {
            "type": "array",
            "items": {
                "anyOf": [
                    {
                        "type": "object",
                        "required": ["excluded", "passed", "cosine", "top1"],
                        "properties": {
                            "excluded": {"type": "integer", "minimum": 0},
                            "passed": {"type": "boolean"},
                            "cosine": {"type": "number"},
                            "top1": {"type": ["number", "null"]},
                        },
                    },
                    {  # a candidate whose model failed to build or run (search.CandidateError)
                        "type": "object",
                        "required": ["excluded", "passed", "error"],
                        "properties": {"excluded": {"type": "integer", "minimum": 0}, "passed": {"const": False}, "error": {"type": "string"}},
                    },
                ]
            },
        },
        "node_report": {
            "type": ["array", "null"],
            "items": {
                "anyOf": [
                    {  # ONNX: one row per graph node
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
                    {  # AOTI (PT2E): one row per module, its worst signal-to-quantization-noise ratio
                        "type": "object",
                        "required": ["module", "sqnr_db", "node"],
                        "properties": {"module": {"type": "string"}, "sqnr_db": {"type": "number"}, "node": {"type": "string"}},
                    },
                ]
            },
        },
    },
}
