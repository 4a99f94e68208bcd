"""Runners: one shape for every runtime (Polygraphy-style).

A runner loads lazily in __enter__ and maps a feed dict of numpy arrays to an
ordered dict of numpy arrays named by the recipe's outputs. Artifact runners
are registered by the kinds that build their artifacts (`Kind.runners`) and
opened from a `RunnerSpec`, the one saved in each target's manifest entry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from toolchain.kinds import runner_class
from toolchain.kinds.base import RunnerSpec
from toolchain.records.steps import PREFILL
from toolchain.runners.pair import TwoPrograms


class Runner(Protocol):
    def __enter__(self) -> Runner: ...
    def __exit__(self, *exc) -> None: ...
    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def open_runner(spec: RunnerSpec | dict, root: Path | None = None, threads: int | None = None) -> Runner:
    """The runner a spec names, its relative path resolved against `root` (a build's root).

    Every artifact runner takes (path, input_names, output_names, device, threads, **options).
    """
    spec = RunnerSpec.model_validate(spec)
    path = Path(spec.path)
    if root is not None and not path.is_absolute():
        path = Path(root) / path
    cls = runner_class(spec.runner)
    options = dict(spec.options)
    prefill = options.pop(PREFILL, None)
    main = cls(path, spec.inputs, spec.outputs, device=spec.device, threads=threads, **options)
    if prefill is None:
        return main
    first = RunnerSpec.model_validate({**prefill, "path": str(path.parent / prefill["path"]), "device": spec.device})
    return TwoPrograms(open_runner(first, threads=threads), main)


def run_all(runner: Runner, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    with runner:
        return [runner.infer(f) for f in feeds]
