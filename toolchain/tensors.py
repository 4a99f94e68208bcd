"""Tensor signatures and dtype names across numpy, torch, ONNX and Triton.

Pure data; torch/onnx are imported only inside the helpers that need them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

# recipe dtype -> numpy dtype name (bfloat16 has no numpy type: fed as float32)
NUMPY_DTYPE = {
    "float32": "float32",
    "float16": "float16",
    "bfloat16": "float32",
    "int64": "int64",
    "int32": "int32",
    "bool": "bool",
    "uint8": "uint8",
}

# numpy dtype name -> Triton model_config DataType
TRITON_DTYPE = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "int16": "TYPE_INT16",
    "int8": "TYPE_INT8",
    "uint8": "TYPE_UINT8",
    "bool": "TYPE_BOOL",
}

# ONNX TensorProto elem_type -> numpy dtype name
ONNX_DTYPE = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 11: "float64", 16: "bfloat16"}


@dataclass
class TensorSig:
    """One input or output as an artifact sees it; -1 marks a dynamic dim."""

    name: str
    dtype: str  # numpy dtype name
    shape: list[int] = field(default_factory=list)


@dataclass
class Signature:
    inputs: list[TensorSig]
    outputs: list[TensorSig]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Signature:
        return cls([TensorSig(**t) for t in d["inputs"]], [TensorSig(**t) for t in d["outputs"]])


def torch_dtype(name: str):
    import torch

    return {
        "float32": torch.float32,
        "float16": torch.float16,
        "bfloat16": torch.bfloat16,
        "int64": torch.int64,
        "int32": torch.int32,
        "bool": torch.bool,
        "uint8": torch.uint8,
    }[name]


def to_numpy(t) -> np.ndarray:
    """A torch tensor as numpy, widening bfloat16 (numpy has no bfloat16)."""
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.contiguous().numpy()


def onnx_signature(model_path) -> Signature:
    """Inputs/outputs of an ONNX file without loading its weights."""
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    init = {i.name for i in m.graph.initializer}

    def sig(v) -> TensorSig:
        tt = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        return TensorSig(v.name, ONNX_DTYPE.get(tt.elem_type, str(tt.elem_type)), dims)

    return Signature([sig(v) for v in m.graph.input if v.name not in init], [sig(v) for v in m.graph.output])
