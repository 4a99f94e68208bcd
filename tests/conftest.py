"""Markers skip with the precise reason when what they need is missing."""

from __future__ import annotations

import importlib.util

import pytest


def _cuda_reason() -> str | None:
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    import torch

    return None if torch.cuda.is_available() else "no CUDA GPU visible to torch"


def _triton_reason() -> str | None:
    from toolchain.serving.server import ServerError, find_triton

    try:
        find_triton()
    except ServerError as e:
        return f"no Triton server: {e} (make test installs one with `make triton`)"
    return None


def _zoo_reason() -> str | None:
    from pathlib import Path

    site = Path(__file__).resolve().parents[1] / ".zoo" / "site"
    return None if (site / ".installed").is_file() else f"the zoo's packages are not in {site} (make zoo-deps installs them; make test does)"


# `make test` runs the suite on two xdist workers. A file is the unit of work (its
# module-scoped builds are made once); files that share a session-scoped build of the
# example recipes, and the TensorFlow files (session fixtures of their own, and
# TensorFlow's memory once), go to one worker together. Not xdist_group markers:
# --dist loadgroup ignores them under pytest 9 (every test was scheduled alone).
SHARED = {
    "tests/e2e/test_bench.py": "example-builds",
    "tests/e2e/test_serve_check.py": "example-builds",
    "tests/e2e/test_build_examples.py": "example-builds",
}


def work_unit(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return "tf" if path.startswith("tests/tf/") else SHARED.get(path, path)


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return ByWorkUnit(config, log)


def pytest_collection_modifyitems(config, items):
    # the longest unit first (the zoo's CI subset, ~5 min): started last, it alone outlasted the other worker
    items.sort(key=lambda item: work_unit(item.nodeid) != "tests/e2e/test_zoo.py")
    reasons = {
        "triton": _triton_reason,
        "gpu": _cuda_reason,
        "tensorrt": lambda: None if importlib.util.find_spec("tensorrt") else "tensorrt is not installed (not installable from this workplace's registries)",
        "tf": lambda: None if importlib.util.find_spec("tensorflow") else "tensorflow is not installed (pip install 'mlpack[tensorflow]')",
        "zoo": _zoo_reason,
    }
    cache: dict[str, str | None] = {}
    for item in items:
        for mark, probe in reasons.items():
            if item.get_closest_marker(mark) is not None:  # not keywords: a parametrize id may be "tensorrt"
                if mark not in cache:
                    cache[mark] = probe()
                if cache[mark]:
                    item.add_marker(pytest.mark.skip(reason=cache[mark]))
