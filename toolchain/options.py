"""Typed options: the strict base of every recipe section, and what every target kind shares.

Pure pydantic; imports no framework and no other toolchain module.
"""

from __future__ import annotations

import difflib
import os
import re
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, FiniteFloat, field_validator, model_validator
from pydantic_core import PydanticCustomError

NAME_RE = r"^[a-z0-9][a-z0-9_-]*$"


def _yaml_off(value: Any) -> Any:
    """YAML 1.1 reads a bare `off` as false and `on` as true: `fallback: off` and `freezing: on` mean the strings."""
    return "off" if value is False else "on" if value is True else value


# For option values that include "off": accepts what YAML made of a bare `off` (or `on`).
YamlOff = BeforeValidator(_yaml_off)


class Strict(BaseModel):
    """Base for every recipe section: unknown keys are errors with a hint."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = set(cls.model_fields)
            known |= {f.alias for f in cls.model_fields.values() if f.alias}
            for key in data:
                if key not in known:
                    close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
                    hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(sorted(known))}"
                    raise PydanticCustomError("unknown_key", "unknown key '{key}'; {hint}", {"key": str(key), "hint": hint})
        return data


GPU_TYPE_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$"  # as Ray names them: accelerator_type:<type> (H100, L4, A100-80G)
MEMORY_RE = r"^\s*\d+(\.\d+)?\s*(%|[KMGT]i?B)\s*$"
_UNITS = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def memory_bytes(text: str, total: int | None = None) -> int:
    """'8GB' (decimal), '8GiB' (binary) or '50%' of `total` (this machine's memory) in bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(%|([KMGT]i?)B)\s*", text)
    if not m:
        raise ValueError(f"'{text}' is not a size such as 8GB, 512MiB or 50%")
    value = float(m.group(1))
    if m.group(2) == "%":
        if not 0 < value <= 100:
            raise ValueError(f"'{text}': a share of memory is between 0% and 100%")
        return int(value / 100 * (total if total is not None else machine_memory()))
    return int(value * _UNITS[m.group(3)])


def machine_memory() -> int:
    """Physical memory in bytes (what a percentage is taken of)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class TargetOptions(Strict):
    """What every target accepts, whatever its kind.

    A kind's own options model derives from this and adds `kind: Literal["<kind>"]`
    plus its keys; the recipe's target union is made of those models.
    """

    # A kind's capabilities, declared once: the option naming its precision (None: always full
    # precision), that option's full-precision value, and the precisions that calibrate on data.
    precision_option: ClassVar[str | None] = None
    full_precision: ClassVar[str | None] = "fp32"
    calibrated_precisions: ClassVar[frozenset[str]] = frozenset({"int8"})

    name: Annotated[str, Field(pattern=NAME_RE, max_length=64)] | None = None
    timeout: Annotated[FiniteFloat, Field(gt=0, le=7 * 24 * 3600)] = 1800
    # The step's memory: a size ("8GB", "512MB") or a fraction of this machine's memory ("50%").
    # A step that exceeds it is stopped and fails only this target (default: 90% of the machine's).
    memory: Annotated[str, Field(pattern=MEMORY_RE)] = "90%"
    # Only matters when the target cannot run on this machine (no GPU, no
    # TensorRT): required targets then fail the build instead of being skipped.
    required: bool = False
    # A build matrix: one artifact per GPU type, each built on a node of that type (--executor ray),
    # named <name>-<type>. `gpu` is one such type (what `gpus` expands to).
    gpus: Annotated[list[Annotated[str, Field(pattern=GPU_TYPE_RE)]], Field(min_length=1)] | None = None
    gpu: Annotated[str, Field(pattern=GPU_TYPE_RE)] | None = None

    @field_validator("memory")
    @classmethod
    def _memory_size(cls, v: str) -> str:
        try:
            size = memory_bytes(v, total=1 << 40)
        except ValueError as e:
            raise PydanticCustomError("memory_size", str(e), {}) from None
        if size < 64 << 20 and not v.strip().endswith("%"):
            raise PydanticCustomError("memory_size", "'{v}' is less than 64MB; no step runs in that", {"v": v})
        return v

    @model_validator(mode="after")
    def _one_gpu_form(self):
        if self.gpus is not None and self.gpu is not None:
            raise PydanticCustomError("gpu_and_gpus", "give gpu (one type) or gpus (a matrix), not both", {})
        if self.gpus is not None and len(set(self.gpus)) != len(self.gpus):
            raise PydanticCustomError("gpus_twice", "gpus lists a type twice", {})
        return self

    @property
    def target_name(self) -> str:
        return self.name or self.kind  # type: ignore[attr-defined]

    @property
    def target_device(self) -> str:
        """Where the artifact runs: "cpu" unless the kind has a `device` option."""
        return getattr(self, "device", "cpu")

    @property
    def precision_mode(self) -> str | None:
        """The reduced precision this target builds (a key of the quantized budgets), or None."""
        value = getattr(self, self.precision_option) if self.precision_option else None
        return None if value == self.full_precision else value

    @property
    def calibrates(self) -> bool:
        """Whether the target calibrates on data (static INT8): the data split then keeps rows for it."""
        return self.precision_mode in self.calibrated_precisions
