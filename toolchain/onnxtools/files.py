"""Saving ONNX models: weights go beside the model only when protobuf cannot hold them."""

from __future__ import annotations

from pathlib import Path

# Protobuf cannot hold 2 GiB; stay clear of it when deciding to externalise weights.
EXTERNAL_DATA_BYTES = 1_800_000_000


def save_model(model, path: Path) -> None:
    """Save a ModelProto to `path` (+ `<name>.data` when it is too large for one protobuf)."""
    import onnx

    external = model.ByteSize() > EXTERNAL_DATA_BYTES
    onnx.save(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True, location=f"{path.name}.data")


def save_ir(model, path: Path) -> None:
    """Save an onnx_ir Model like save_model: external data only when protobuf could not hold it."""
    import onnx_ir as ir

    size = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    if size > EXTERNAL_DATA_BYTES:
        ir.save(model, path, external_data=f"{path.name}.data")
    else:
        ir.save(model, path)


def check(path: Path) -> None:
    """The ONNX checker on a saved file (by path, so external weights are found): raise on an invalid graph."""
    import onnx

    onnx.checker.check_model(str(path))
