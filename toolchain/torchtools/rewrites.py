"""Export-time rewrites: torch layers whose own implementation exports badly, computed by an
equivalent the exporters take, on the model's module instances and only while an export runs
(the parity reference stays the user's model, unchanged).

nn.EmbeddingBag given a 2-D [batch, bag] input (the usual recommender form): F.embedding_bag
flattens it and builds offsets with arange, and the bag count that comes out is a size
expression export cannot prove equal to the batch. torch.export then asserts bag != 1 (or
batch >= 2) at run time, so no AOTI package served a batch of 1; torch.onnx lowers the op to a
Loop, which the FP16 converter and ONNX Runtime's INT8 quantizer both break on. As embedding +
a reduction over the bag it is the same arithmetic, with none of that.
"""

from __future__ import annotations

import contextlib
import types


def _bag_forward(self, input, offsets=None, per_sample_weights=None):
    import torch
    import torch.nn.functional as F

    if input.dim() != 2 or offsets is not None or self.max_norm is not None or self.mode not in ("sum", "mean", "max"):
        return type(self).forward(self, input, offsets, per_sample_weights)
    rows = F.embedding(input, self.weight)  # [batch, bag, dim]
    keep = None if self.padding_idx is None else (input != self.padding_idx).unsqueeze(-1)
    if per_sample_weights is not None:  # mode "sum" only, as embedding_bag itself requires
        rows = rows * per_sample_weights.unsqueeze(-1).to(rows.dtype)
    if self.mode == "max":
        if keep is None:
            return rows.amax(dim=1)
        out = rows.masked_fill(~keep, float("-inf")).amax(dim=1)
        return torch.where(keep.any(dim=1), out, torch.zeros_like(out))  # an all-padding bag is zeros
    if keep is not None:
        rows = rows * keep.to(rows.dtype)
    total = rows.sum(dim=1)
    if self.mode == "sum":
        return total
    count = input.shape[1] if keep is None else keep.sum(dim=1).to(rows.dtype).clamp(min=1)
    return total / count


def found(module) -> list[str]:
    """What the rewrites change in `module`, for the manifest's export record ([] when nothing)."""
    import torch

    bags = [name for name, m in module.named_modules() if isinstance(m, torch.nn.EmbeddingBag)]
    return [f"EmbeddingBag as embedding + a reduction over the bag, for 2-D inputs: {', '.join(bags)}"] if bags else []


@contextlib.contextmanager
def exporting(module):
    """The rewrites in place on `module`'s layers for the duration of an export."""
    import torch

    patched = [m for m in module.modules() if isinstance(m, torch.nn.EmbeddingBag) and "forward" not in m.__dict__]
    for m in patched:
        m.forward = types.MethodType(_bag_forward, m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward
