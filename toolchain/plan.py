"""recipe -> the targets to build and each step's cache key. Pure: imports no framework."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolchain import cache
from toolchain.errors import UsageError
from toolchain.options import TargetOptions
from toolchain.recipe import Recipe
from toolchain.remote import RemoteCache


@dataclass
class Plan:
    recipe: Recipe
    specs: list[TargetOptions]
    source_key: str
    keys: dict[str, str]
    remote: RemoteCache | None = None  # a shared cache behind the local one (--cache / MLPACK_CACHE)
    executor: Any = None  # where steps run: toolchain.executors (LocalExecutor unless --executor ray)


def make_plan(recipe: Recipe, only: list[str] | None, out_root: Path | None = None) -> Plan:
    specs = recipe.targets
    if only:
        unknown = [n for n in only if n not in [t.target_name for t in specs]]
        if unknown:
            raise UsageError(f"--target {', '.join(unknown)}: not in {recipe.path}", f"targets are: {', '.join(t.target_name for t in specs)}")
        specs = [t for t in specs if t.target_name in only]
    skey = cache.source_key(recipe, out_root)
    return Plan(recipe, specs, skey, {t.target_name: cache.target_key(recipe, t, skey) for t in specs})


def default_jobs() -> int:
    """Cores, bounded by memory: a conversion step can take a few GB."""
    try:
        with open("/proc/meminfo") as f:
            avail_kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable"))
        by_mem = max(1, avail_kb // (4 * 1024 * 1024))
    except (OSError, StopIteration):
        by_mem = 2
    return max(1, min(os.cpu_count() or 1, by_mem))
