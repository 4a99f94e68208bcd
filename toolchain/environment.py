"""Tool versions: the one list that both the cache key and the manifest read.

Versions come from package metadata: reading them imports nothing.
"""

from __future__ import annotations

import platform
from functools import cache
from importlib import metadata

from toolchain import kinds

# What loads and runs the sources; each kind adds the tools that shape its artifacts.
SOURCE_TOOLS = ("numpy", "torch", "transformers", "safetensors", "tensorflow", "keras")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def tools() -> tuple[str, ...]:
    names = list(SOURCE_TOOLS)
    for k in kinds.kinds().values():
        names += [t for t in k.tools if t not in names]
    return tuple(names)


@cache
def tool_versions() -> dict[str, str | None]:
    return {name: _version(name) for name in tools()}


def environment(device: str) -> dict:
    """The manifest's `environment`: Python, mlpack, every tool's version, the platform and device."""
    versions = tool_versions()
    # The contract names one `onnxruntime` key: the GPU build's version where that is what is installed.
    ort = versions.get("onnxruntime-gpu") or versions.get("onnxruntime")
    return {
        "python": platform.python_version(),
        "mlpack": _version("mlpack"),
        **versions,
        "onnxruntime": ort,
        "platform": platform.platform(),
        "device": device,
    }
