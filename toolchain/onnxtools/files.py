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
