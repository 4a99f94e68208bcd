"""What ONNX Runtime's CPU provider runs an INT8 graph with, read from the graph it builds at load.

An INT8 ONNX file is only fast once ONNX Runtime rewrites it: each QDQ unit
(DequantizeLinear -> Conv/MatMul -> QuantizeLinear) into an integer kernel
(QLinearConv, QLinearMatMul, MatMulIntegerToFloat, ...), and a dynamic graph's
DynamicQuantizeLinear -> MatMulInteger into DynamicQuantizeMatMul. Those are
level-2 transformers: they run at ORT_ENABLE_EXTENDED and ORT_ENABLE_ALL (the
default of onnxruntime and of Triton's onnxruntime backend), not at
ORT_ENABLE_BASIC or ORT_DISABLE_ALL (Triton's `optimization { graph { level:
-1 } }` and `level: 2`), nor with the session entry `session.disable_quant_qdq`
set to 1. The integer kernels are MLAS's u8s8 GEMM and convolutions, which
dispatch on the CPU: AMX tiles, else AVX512-VNNI / AVX-VNNI, else AVX2's
vpmaddubsw (which can saturate: ONNX Runtime's quantization docs).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

from toolchain.errors import one_line
from toolchain.machine import cpu_identity

# Integer kernels ONNX Runtime's CPU provider has (contrib ops included).
INTEGER_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
    "QGemm", "QAttention", "DynamicQuantizeLSTM", "QEmbedLayerNormalization", "QLinearAdd", "QLinearMul",
    "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QLinearAveragePool", "QLinearGlobalAveragePool",
    "QLinearConcat", "QLinearWhere", "QLinearReduceMean", "NhwcQLinearConv",
})  # fmt: skip
# Compute-heavy float ops: where an INT8 graph still spends float time.
FLOAT_COMPUTE = frozenset({"Conv", "MatMul", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm", "NchwcConv", "Attention", "LSTM", "GRU"})
NEEDS = (
    "graph optimization at ORT_ENABLE_EXTENDED or ORT_ENABLE_ALL (the default of onnxruntime and of Triton's onnxruntime backend; "
    "not Triton's optimization { graph { level: -1 } } or { level: 2 }, not session.disable_quant_qdq=1)"
)

RUNTIME_SCHEMA: dict = {
    "type": "object",
    "required": ["integer_ops", "float_compute_ops", "qdq_left", "cpu_int8_path", "needs"],
    "properties": {
        "integer_ops": {"type": "object", "additionalProperties": {"type": "integer"}},
        "float_compute_ops": {"type": "object", "additionalProperties": {"type": "integer"}},
        "qdq_left": {"type": "integer", "minimum": 0},
        "cpu_int8_path": {"type": "string"},
        "needs": {"type": "string"},
        "error": {"type": "string"},
    },
}


def cpu_int8_path(features: list[str]) -> str:
    """The kernel family MLAS dispatches u8s8 GEMMs to on a CPU with these features (platform.cpp)."""
    if "amx_int8" in features:
        return "AMX tiles (u8s8)"
    if "avx512_vnni" in features:
        return "AVX512-VNNI (u8s8)"
    if "avx_vnni" in features:
        return "AVX-VNNI (u8s8)"
    if "avx2" in features:
        return "AVX2 vpmaddubsw (u8s8 can saturate; no VNNI)"
    return "no AVX2: generic kernels"


def _op_counts(graph) -> Counter:
    counts = Counter(n.op_type for n in graph.node)
    for node in graph.node:  # If/Loop/Scan bodies
        for attr in node.attribute:
            for g in [attr.g] if attr.HasField("g") else list(attr.graphs):
                counts += _op_counts(g)
    return counts


def ops_at_load(path: Path, level: str = "extended", config: dict[str, str] | None = None) -> Counter:
    """Op types of the graph ONNX Runtime's CPU provider runs, at an optimization level
    (`disable`, `basic`, `extended`; `all` adds layout changes that are not saved portably)."""
    import onnx
    import onnxruntime as ort

    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="mlpack-ort-") as tmp:
        out = Path(tmp) / "optimized.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = levels[level]
        opts.optimized_model_filepath = str(out)
        # Weights go beside the graph: only its structure is read, and a large model's would pass protobuf's 2 GB.
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", "weights.bin")
        opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        for key, value in (config or {}).items():
            opts.add_session_config_entry(key, value)
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return _op_counts(onnx.load(str(out), load_external_data=False).graph)


def runtime_kernels(path: Path) -> dict:
    """The manifest's `quantization.runtime`: integer and float compute ops after ONNX Runtime's
    load-time fusions, Q/DQ nodes left unfused, the CPU's int8 kernel path, and what serving needs."""
    record: dict = {"integer_ops": {}, "float_compute_ops": {}, "qdq_left": 0, "cpu_int8_path": cpu_int8_path(cpu_identity()["features"]), "needs": NEEDS}
    try:
        counts = ops_at_load(path)
    except Exception as e:  # a report, not a gate: the parity check already ran this graph
        return record | {"error": one_line(e)}
    return record | summarize(counts)


def summarize(counts: Counter) -> dict:
    """Integer kernels, float compute ops and unfused Q/DQ nodes among a graph's op counts."""
    return {
        "integer_ops": {op: n for op, n in sorted(counts.items()) if op in INTEGER_OPS},
        "float_compute_ops": {op: n for op, n in sorted(counts.items()) if op in FLOAT_COMPUTE},
        "qdq_left": counts["QuantizeLinear"] + counts["DequantizeLinear"] + counts["DynamicQuantizeLinear"],
    }
