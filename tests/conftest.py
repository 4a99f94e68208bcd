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


# Seconds each work unit took (`--durations=0`, AMD EPYC Zen 1, 2 workers, 2026-12-07): the longest start first, so
# the two workers end together (longest-processing-time-first). Units not listed are short and go last, in file order.
# The ratios matter, not the figures: on a faster CPU every unit shrinks alike.
WEIGHTS = {
    "tests/e2e/test_generation.py": 896,
    "tests/e2e/test_zoo.py": 664,
    "tf": 495,
    "tests/e2e/test_build_engine.py": 418,
    "tests/e2e/test_seq2seq.py": 417,
    "example-builds": 334,
    "tests/e2e/test_shared_cache.py": 224,
    "tests/e2e/test_aoti_fallbacks.py": 220,
    "tests/e2e/test_pipeline.py": 202,
    "tests/e2e/test_build_failures.py": 198,
    "tests/e2e/test_aoti_precision.py": 155,
    "tests/e2e/test_precision.py": 154,
    "tests/e2e/test_tfserving_raw.py": 129,
    "tests/e2e/test_dim_multiples.py": 123,
    "tests/e2e/test_dim_pad.py": 120,
    "tests/e2e/test_ray_executor.py": 113,
    "tests/e2e/test_model_inputs.py": 99,
    "tests/e2e/test_static_fix.py": 93,
    "tests/unit/test_pt2e.py": 76,
    "tests/e2e/test_cpu_classes.py": 74,
    "tests/e2e/test_example_sizes.py": 61,
    "tests/e2e/test_shared_export.py": 56,
    "tests/e2e/test_plugin_kind.py": 55,
    "tests/e2e/test_int8_attention.py": 50,
}


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    # xdist would queue the units by their number of tests (the zoo's 12 builds started 25 minutes in, on a Zen 1):
    # keep the order of pytest_collection_modifyitems, the longest first
    config.option.loadscopereorder = False
    return ByWorkUnit(config, log)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: -WEIGHTS.get(work_unit(item.nodeid), 0))  # stable: a unit's tests keep their order
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
