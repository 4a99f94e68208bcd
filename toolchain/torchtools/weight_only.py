"""Weight-only INT8 for AOTInductor on CPU: each eligible nn.Linear becomes int8 weights with one scale per output
channel, multiplied by ATen's `_weight_int8pack_mm` with bfloat16 activations.

Why not torchao: its Int8WeightOnlyConfig exports and compiles, but the package dequantizes the weights every call
(or, frozen, stores FP32 weights again); it never reaches `_weight_int8pack_mm` (docs/generators.md). Here the op is
in the exported graph, so AOTInductor calls it as an extern kernel and keeps the weights as int8 constants.
Activations go in as bfloat16 because that is the kernel's fast path: on an AMD Zen 4, one thread, a 1024x1024
layer at one token took 71 us with bfloat16 activations, 128 us as an FP32 linear, and 1213 us with FP32 activations.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from toolchain.errors import StepError

K_MULTIPLE = 16  # the kernel gives wrong sums when in_features is not a multiple of 16 (torch 2.13, measured), and crashed at 13
SELF_CHECK_REL = 2e-2  # a layer whose int8 output moves more than this (relative to its largest output) stays float
REPORT_LAYERS = 8


@dataclass
class Layer:
    module: str
    shape: tuple[int, int]  # [in, out]
    error: float  # relative Frobenius error of the weight after quantization


def _linear_class():
    import torch

    class Int8WeightLinear(torch.nn.Module):
        """y = (x in bfloat16) @ (int8 weight * per-channel scale)^T + bias, in the input's dtype."""

        def __init__(self, linear: torch.nn.Linear):
            super().__init__()
            w = linear.weight.detach().float()
            scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
            self.register_buffer("weight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
            self.register_buffer("scales", scale.to(torch.bfloat16))
            self.bias = linear.bias
            self.in_features, self.out_features = linear.in_features, linear.out_features

        def forward(self, x):
            flat = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
            y = torch.ops.aten._weight_int8pack_mm(flat, self.weight, self.scales).to(x.dtype)
            y = y.reshape(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias

        def dequantized(self):
            return self.weight.float() * self.scales.float()[:, None]

    return Int8WeightLinear


_CLASS = None


def int8_linear_class():
    """One class per process: export and Inductor see the same module type for every layer."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _linear_class()
    return _CLASS


def contiguous_activations() -> None:
    """Make Inductor hand `_weight_int8pack_mm` a row-major activation. Its lowering (mm_args) takes any layout, but
    the ATen kernel refuses one whose last dim is not contiguous, and Inductor picks column-major for a buffer that
    follows a permute (Whisper's encoder after its convolutions: "A must be contiguous on the last dimension" at
    run time); the module's own `.contiguous()` is a no-op in the exported graph. Process-wide, and idempotent."""
    import torch
    from torch._inductor import lowering

    lowering.add_layout_constraint(torch.ops.aten._weight_int8pack_mm.default, lowering.require_contiguous)


def _as_linear(module):
    """An nn.Linear, or the same layer as one: transformers' Conv1D (GPT-2's projections) is y = x @ W + b with W
    [in, out]; anything else None."""
    import torch

    if isinstance(module, torch.nn.Linear):  # subclasses too (FalconLinear): the self-check runs the module's own forward
        return module
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None and module.weight.dim() == 2:
        n_in, n_out = module.weight.shape
        linear = torch.nn.Linear(n_in, n_out, bias=module.bias is not None)
        linear.weight = torch.nn.Parameter(module.weight.detach().T.contiguous(), requires_grad=False)
        linear.bias = module.bias
        return linear
    return None


def output_projection(model) -> list[str]:
    """The name of the model's output projection, the layer kept float by default because it decides every token:
    transformers' `get_output_embeddings()` (lm_head; Whisper's proj_out), else a module named lm_head, else none."""
    try:
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    except (NotImplementedError, AttributeError):
        head = None
    names = [name for name, m in model.named_modules() if name and (m is head if head is not None else name == "lm_head")]
    return names[:1]


def quantize_linears(model, keep_float: list[str]) -> dict:
    """Replace `model`'s eligible nn.Linear layers in place; the manifest's `quantization` record.

    Kept float: layers whose names match a `keep_float` pattern (fnmatch over module names such as
    model.layers.0.mlp.down_proj), layers whose in_features the kernel cannot take, and layers that fail the self-check."""
    import torch

    cls = int8_linear_class()
    layers: list[Layer] = []
    kept: list[str] = []
    reasons: dict[str, str] = {}
    targets = [(name, m, lin) for name, m in model.named_modules() if (lin := _as_linear(m)) is not None]
    for name, module, linear in targets:
        if any(fnmatch.fnmatchcase(name, p) for p in keep_float):
            kept.append(name)
            continue
        if linear.in_features % K_MULTIPLE:
            kept.append(name)
            reasons[name] = f"in_features {linear.in_features} is not a multiple of {K_MULTIPLE}"
            continue
        q = cls(linear)
        w = linear.weight.detach().float()
        error = float(torch.linalg.norm(q.dequantized() - w) / torch.linalg.norm(w).clamp(min=1e-12))
        with torch.no_grad():  # against the layer's own forward: a wrong kernel or a layer that is not x @ W^T + b stays float
            x = torch.randn(3, linear.in_features, generator=torch.Generator().manual_seed(0), dtype=linear.weight.dtype)
            got, want = q(x), module(x)
            off = float((got - want).abs().max() / want.abs().max().clamp(min=1e-12))
        if off > SELF_CHECK_REL:
            kept.append(name)
            reasons[name] = f"its int8 form is {off:.3g} off its own forward (more than {SELF_CHECK_REL:g})"
            continue
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, q)
        layers.append(Layer(name, (linear.in_features, linear.out_features), error))
    if not layers:
        raise StepError(f"int8-weight found no layer to quantize ({len(targets)} linear layers, all kept float: "
                        + "; ".join(f"{n}: {reasons.get(n, 'keep_float')}" for n in kept[:4]) + ")",
                        hint="build fp32, or an onnx target with quantize: int8-weight (MatMulNBits takes any MatMul)")  # fmt: skip
    layers.sort(key=lambda x: -x.error)
    return {
        "mode": "int8-weight",
        "fallback": "off",
        "format": "int8 weights, one scale per output channel, aten._weight_int8pack_mm with bfloat16 activations",
        "weight_only": {
            "bits": 8,
            "block_size": 0,  # 0: one block per output channel (the whole row)
            "symmetric": True,
            "compute": "bfloat16",
            "quantized": len(layers),
            "kept_float": kept,
            "layers": [{"module": x.module, "node": x.module, "shape": list(x.shape), "error": round(x.error, 6)} for x in layers[:REPORT_LAYERS]],
        },
        **({"kept_float_why": reasons} if reasons else {}),
    }
