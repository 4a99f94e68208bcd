"""manifest.json: what was built, from what, with which tools, and how close it is."""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from importlib.resources import files as package_files
from pathlib import Path

SCHEMA_ID = "mlpack.manifest/1"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entries(root: Path, paths: list[Path]) -> list[dict]:
    """sha256 and size of each file, paths relative to the build root."""
    return [{"path": p.relative_to(root).as_posix(), "sha256": sha256_file(p), "bytes": p.stat().st_size} for p in sorted(paths)]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment(device: str) -> dict:
    """Versions of every tool that shapes an artifact; read from metadata, not imports."""
    ort = _version("onnxruntime-gpu") or _version("onnxruntime")
    return {
        "python": platform.python_version(),
        "mlpack": _version("mlpack"),
        "torch": _version("torch"),
        "tensorflow": _version("tensorflow"),
        "keras": _version("keras"),
        "tf2onnx": _version("tf2onnx"),
        "onnx": _version("onnx"),
        "onnxruntime": ort,
        "tensorrt": _version("tensorrt"),
        "platform": platform.platform(),
        "device": device,
    }


def schema() -> dict:
    return json.loads(package_files("toolchain").joinpath("manifest.schema.json").read_text())


def write(path: Path, manifest: dict) -> None:
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")


def read(path: Path) -> dict:
    return json.loads(Path(path).read_text())
