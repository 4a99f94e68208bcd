"""`optimize: true`: ONNX Runtime graph fusions, judged by the same parity gate.

Transformer families that onnxruntime.transformers knows (bert, gpt2, vit, ...)
get its fusion passes (attention, LayerNorm, GELU), told the head count and
hidden size from the Hugging Face config. Other graphs get ONNX Runtime's
extended graph optimizations, saved offline. The extended level, not "all":
layout changes at the "all" level are specific to the machine that made them.
"""

from __future__ import annotations

from pathlib import Path

from toolchain.onnxtools.files import save_model


def hf_config(source):
    """The Hugging Face config of the source model, when it is one."""
    return getattr(getattr(source.module, "inner", None), "config", None)


def _node_count(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


def optimize(source, src: Path, dst: Path, device: str) -> dict:
    """Write an optimized copy of `src` to `dst`; returns the manifest record."""
    from onnxruntime.transformers.optimizer import MODEL_TYPES, optimize_model

    cfg = hf_config(source)
    model_type = getattr(cfg, "model_type", None)
    if model_type in MODEL_TYPES:
        model = optimize_model(
            str(src),
            model_type=model_type,
            num_heads=int(getattr(cfg, "num_attention_heads", 0) or 0),
            hidden_size=int(getattr(cfg, "hidden_size", 0) or 0),
            use_gpu=device == "cuda",
        )
        save_model(model.model, dst)
        fused = {k: v for k, v in model.get_fused_operator_statistics().items() if v}
        record = {"method": "onnxruntime.transformers", "model_type": model_type, "fused": fused}
    else:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(dst)
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        ort.InferenceSession(str(src), opts, providers=providers)
        record = {"method": "onnxruntime graph optimization", "level": "extended"}
    return record | {"nodes": {"before": _node_count(src), "after": _node_count(dst)}}


# The `optimization` field an optimized target adds to its manifest entry (JSON Schema).
OPTIMIZATION_SCHEMA: dict = {
    "type": "object",
    "required": ["method", "nodes"],
    "properties": {
        "method": {"type": "string"},
        "model_type": {"type": "string"},
        "fused": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 1}},
        "nodes": {"type": "object", "required": ["before", "after"], "properties": {"before": {"type": "integer"}, "after": {"type": "integer"}}},
    },
}
