"""recipe -> the targets to build and each step's cache key. Pure: imports no framework."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from toolchain import cache
from toolchain.errors import UsageError
from toolchain.options import TargetOptions
from toolchain.recipe import Recipe, accepted_dims, with_dims
from toolchain.records import AcceptedDim, Machine


@dataclass(frozen=True)
class Plan:
    recipe: Recipe
    specs: list[TargetOptions]
    source_key: str  # the reference step: the samples and the source's outputs on them
    keys: dict[str, str]  # target name -> its step's key
    fixed: dict[str, AcceptedDim] = field(default_factory=dict)  # dims taken from torch.export's suggested fixes (recipe: the recipe's own)

    @property
    def accepted(self) -> dict[str, AcceptedDim]:
        """The sizes each named dim's artifacts accept (the recipe's, or torch.export's fix), with what served models pad."""
        return accepted_dims(self.recipe, self.fixed)

    def selection_key(self, candidates: list[str], machine: Machine) -> str:
        """The selection's timings: the artifacts timed (by their keys), how, and on which machine type. Not `tie`:
        it reorders the timings, it does not change them."""
        return cache.selection_key(self.recipe.select.model_dump(mode="json", exclude={"tie"}), {n: self.keys[n] for n in candidates}, machine.to_dict())


def make_plan(recipe: Recipe, only: list[str] | None, out_root: Path | None = None, fixed: dict[str, AcceptedDim] | None = None) -> Plan:
    """`fixed`: dims to build over instead of the recipe's (their keys follow from the changed dims)."""
    recipe = with_dims(recipe, fixed or {})
    specs = recipe.targets
    if only:
        unknown = [n for n in only if n not in [t.target_name for t in specs]]
        if unknown:
            raise UsageError(f"--target {', '.join(unknown)}: not in {recipe.path}", f"targets are: {', '.join(t.target_name for t in specs)}")
        specs = [t for t in specs if t.target_name in only]
    skey = cache.source_key(recipe, out_root)
    return Plan(recipe, specs, skey, {t.target_name: cache.target_key(recipe, t, skey) for t in specs}, dict(fixed or {}))


def default_jobs() -> int:
    """Cores, bounded by memory: a conversion step can take a few GB."""
    try:
        with open("/proc/meminfo") as f:
            avail_kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable"))
        by_mem = max(1, avail_kb // (4 * 1024 * 1024))
    except (OSError, StopIteration):
        by_mem = 2
    return max(1, min(os.cpu_count() or 1, by_mem))
