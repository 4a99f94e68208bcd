"""TensorRT engines. The engine builder itself lands with the precision issue;
until then the target reports precisely why it cannot run here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from toolchain.errors import StepError
from toolchain.recipe import TensorRTTarget


def skip_reason(spec: TensorRTTarget) -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt Python package is not installed (pip install 'mlpack[tensorrt]' on a machine with NVIDIA's index)"
    from toolchain.targets.aoti import cuda_missing

    return cuda_missing()


def build(source, spec: TensorRTTarget, workdir: Path):
    raise StepError("the tensorrt engine builder is not implemented in this version of mlpack")
