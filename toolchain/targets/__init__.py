"""Target registry: one module per artifact kind.

A target module defines `skip_reason(spec) -> str | None` (why it cannot run on
this machine) and `build(source, spec, workdir) -> Artifact`. Built-ins are
import strings so `import toolchain` stays framework-free; third-party targets
register through the `mlpack.targets` entry-point group.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

from toolchain.tensors import Signature

TARGETS: dict[str, str] = {
    "onnx": "toolchain.targets.onnx",
    "aoti": "toolchain.targets.aoti",
    "tensorrt": "toolchain.targets.tensorrt",
}


@dataclass
class Artifact:
    """What a target built: its files, its I/O signature, and how to run it."""

    kind: str
    files: list[Path]
    signature: Signature
    runner: str  # key in toolchain.runners.RUNNERS
    runner_args: dict
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # target-specific manifest fields (added, never renamed)


def target_module(kind: str) -> ModuleType:
    if kind in TARGETS:
        return importlib.import_module(TARGETS[kind])
    for ep in entry_points(group="mlpack.targets"):
        if ep.name == kind:
            return ep.load()
    raise KeyError(kind)
