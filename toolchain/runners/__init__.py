"""Runners: one shape for every runtime (Polygraphy-style).

A runner loads lazily in __enter__ and maps a feed dict of numpy arrays to an
ordered dict of numpy arrays named by the recipe's outputs. Listed as import
strings so importing this package imports no framework.
"""

from __future__ import annotations

import importlib
from typing import Protocol

import numpy as np

RUNNERS = {
    "torch": "toolchain.runners.torch_eager:TorchEagerRunner",
    "onnxruntime": "toolchain.runners.onnxruntime:OnnxRuntimeRunner",
    "aoti": "toolchain.runners.aoti:AotiRunner",
    "tf_savedmodel": "toolchain.runners.tf:SavedModelRunner",
    "tensorrt": "toolchain.runners.tensorrt:TensorRTRunner",
}


class Runner(Protocol):
    def __enter__(self) -> "Runner": ...
    def __exit__(self, *exc) -> None: ...
    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def make_runner(key: str, **kwargs) -> Runner:
    module, cls = RUNNERS[key].split(":")
    return getattr(importlib.import_module(module), cls)(**kwargs)


def run_all(runner: Runner, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    with runner:
        return [runner.infer(f) for f in feeds]
