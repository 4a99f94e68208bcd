"""Typed options: the strict base of every recipe section, and what every target kind shares.

Pure pydantic; imports no framework and no other toolchain module.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

NAME_RE = r"^[a-z0-9][a-z0-9_-]*$"


def _yaml_off(value: Any) -> Any:
    """YAML 1.1 reads a bare `off` as false: `fallback: off` means the string."""
    return "off" if value is False else value


# For option values that include "off": accepts what YAML made of a bare `off`.
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


class TargetOptions(Strict):
    """What every target accepts, whatever its kind.

    A kind's own options model derives from this and adds `kind: Literal["<kind>"]`
    plus its keys; the recipe's target union is made of those models.
    """

    name: Annotated[str, Field(pattern=NAME_RE, max_length=64)] | None = None
    timeout: Annotated[float, Field(gt=0)] = 1800
    # Only matters when the target cannot run on this machine (no GPU, no
    # TensorRT): required targets then fail the build instead of being skipped.
    required: bool = False

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
        return None

    @property
    def calibrates(self) -> bool:
        """Whether the target calibrates on data (static INT8): the data split then keeps rows for it."""
        return False
