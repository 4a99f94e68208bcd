"""A named dim's sizes: the range, and the step the model's shape logic needs (issue 26: torch.export's `k*Dim`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, PrivateAttr, StrictInt, model_validator
from pydantic_core import PydanticCustomError

from toolchain.options import Strict
from toolchain.records import AcceptedDim


class DimSpec(Strict):
    min: Annotated[StrictInt, Field(ge=1)]
    opt: Annotated[StrictInt, Field(ge=1)] | None = None
    max: Annotated[StrictInt, Field(ge=1)]
    # the sizes are multiples of this (a model that reshapes into windows or chunks): what torch.export's `k*Dim` says
    multiple: Annotated[StrictInt, Field(ge=2)] | None = None
    # served models take any size in [min, max] and zero-pad it up to one the artifacts accept, trimming the outputs
    # back; the build checks that padding leaves the outputs as the source gives them
    pad: bool = False
    _pad_from: int | None = PrivateAttr(None)  # with pad, the recipe's own min: what served models take from

    @model_validator(mode="after")
    def _ordered(self) -> DimSpec:
        if self.opt is None:
            self.opt = self.min
        if self.pad and self.multiple and self.min % self.multiple:  # served from min, built from the first multiple
            k, self._pad_from = self.multiple, self.min
            self.min, self.opt = -(-self.min // k) * k, -(-self.opt // k) * k
        if not self.min <= self.opt <= self.max:
            raise PydanticCustomError("dim_order", "needs min <= opt <= max (got {a}, {b}, {c})", {"a": self.min, "b": self.opt, "c": self.max})
        if self.multiple and any(v % self.multiple for v in (self.min, self.opt, self.max)):
            raise PydanticCustomError("dim_multiple", "min, opt and max must be multiples of {k} (got {a}, {b}, {c}); or add pad: true, and served models take sizes from min up, padded",
                                      {"k": self.multiple, "a": self.min, "b": self.opt, "c": self.max})  # fmt: skip
        return self

    def accepts(self, size: int) -> bool:
        return AcceptedDim(self.min, self.max, self.multiple).accepts(size)

    def nearest(self, size: int) -> int:
        """The accepted size closest to `size` (down on a tie)."""
        k = self.multiple or 1
        return min(max(size - size % k if size % k * 2 <= k else size + k - size % k, self.min), self.max)

    def describe(self) -> str:
        return AcceptedDim(self.min, self.max, self.multiple).text

    def accepted(self) -> AcceptedDim:
        return AcceptedDim(self.min, self.max, self.multiple, pad=(self._pad_from or self.min) if self.pad else None)
