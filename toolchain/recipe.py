"""The recipe: typed, strict, and explained when wrong.

`load_recipe` returns a validated `Recipe` or raises `RecipeError` listing every
problem with its key path, YAML line and a fix. Imports no ML framework.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import ConfigDict, Field, FiniteFloat, GetCoreSchemaHandler, StrictBool, StrictInt, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from toolchain import kinds, sniff
from toolchain.errors import Problem, RecipeError, UsageError
from toolchain.options import GPU_TYPE_RE, NAME_RE, Strict, TargetOptions, YamlOff

DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "bool", "uint8")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 4, "int64": 8, "int32": 4, "bool": 1, "uint8": 1}
MAX_SAMPLE_BYTES = 2 << 30  # one parity sample of one input, at every dim's max
# [low, high) of each integer dtype, for generated samples
INT_BOUNDS = {"int64": (-(2**63), 2**63), "int32": (-(2**31), 2**31), "uint8": (0, 256)}
TENSOR_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_.:-]*$"


class Source(Strict):
    framework: Literal["pytorch", "tensorflow"]
    factory: str | None = Field(None, description="file.py:callable, relative to the recipe")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    exported: str | None = Field(None, description="torch.export.save() .pt2 file")
    savedmodel: str | None = None
    keras: str | None = None
    weights: str | None = Field(None, description=".safetensors or a state_dict .pt/.pth")
    signature: str | None = Field(None, description="SavedModel signature (default serving_default)")
    allow_pickle: StrictBool = Field(
        False, description="exported: also unpickle the Python objects a .pt2 may hold (runs code from the file; trusted files only)"
    )

    @field_validator("factory")
    @classmethod
    def _factory_form(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[^:]+\.py:[A-Za-z_][A-Za-z0-9_]*", v):
            raise PydanticCustomError("factory_form", "'{v}' is not of the form path/to/file.py:callable", {"v": v})
        return v

    @model_validator(mode="after")
    def _one_source(self) -> Source:
        given = [k for k in ("factory", "exported", "savedmodel", "keras") if getattr(self, k)]
        if len(given) != 1:
            raise PydanticCustomError(
                "source_count",
                "give exactly one of factory, exported, savedmodel, keras (got {got})",
                {"got": ", ".join(given) or "none"},
            )
        allowed = {"pytorch": {"factory", "exported"}, "tensorflow": {"factory", "savedmodel", "keras"}}
        if given[0] not in allowed[self.framework]:
            raise PydanticCustomError(
                "source_framework",
                "'{kind}' is not a {fw} source; {fw} takes {ok}",
                {"kind": given[0], "fw": self.framework, "ok": " or ".join(sorted(allowed[self.framework]))},
            )
        if self.weights and not (self.framework == "pytorch" and self.factory):
            raise PydanticCustomError("weights_needs_factory", "weights are loaded into a pytorch factory's module; use them with source.factory", {})
        if self.signature and not self.savedmodel:
            raise PydanticCustomError("signature_needs_savedmodel", "signature names a signature of source.savedmodel; there is no savedmodel", {})
        if self.allow_pickle and not self.exported:
            raise PydanticCustomError("allow_pickle_needs_exported", "allow_pickle applies to source.exported (.pt2) files; there is none", {})
        if self.kwargs and not self.factory:
            raise PydanticCustomError("kwargs_needs_factory", "kwargs are passed to source.factory; there is no factory", {})
        return self


class InputSpec(Strict):
    name: Annotated[str, Field(pattern=TENSOR_NAME_RE)]
    dtype: Literal["float32", "float16", "bfloat16", "int64", "int32", "bool", "uint8"]
    shape: list[Annotated[StrictInt, Field(ge=0)] | Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]]
    range: tuple[FiniteFloat, FiniteFloat] | None = None

    @model_validator(mode="after")
    def _range_order(self) -> InputSpec:
        if self.range is None:
            return self
        lo, hi = self.range
        if not lo < hi:
            raise PydanticCustomError("range_order", "range [low, high] needs low < high", {})
        if self.dtype in INT_BOUNDS:
            low, high = INT_BOUNDS[self.dtype]
            if math.ceil(lo) >= hi:
                raise PydanticCustomError(
                    "range_int", "{d} samples are drawn from [low, high): [{lo}, {hi}) holds no integer", {"d": self.dtype, "lo": lo, "hi": hi}
                )
            if lo < low or hi > high:
                raise PydanticCustomError(
                    "range_bounds", "range [{lo}, {hi}) does not fit {d} ([{a}, {b}))", {"lo": lo, "hi": hi, "d": self.dtype, "a": low, "b": high}
                )
        elif self.dtype == "float16" and max(abs(lo), abs(hi)) > 65504:
            raise PydanticCustomError("range_bounds", "range [{lo}, {hi}] does not fit float16 (|x| <= 65504)", {"lo": lo, "hi": hi})
        return self


class DimSpec(Strict):
    min: Annotated[StrictInt, Field(ge=1)]
    opt: Annotated[StrictInt, Field(ge=1)] | None = None
    max: Annotated[StrictInt, Field(ge=1)]

    @model_validator(mode="after")
    def _ordered(self) -> DimSpec:
        if self.opt is None:
            self.opt = self.min
        if not self.min <= self.opt <= self.max:
            raise PydanticCustomError("dim_order", "needs min <= opt <= max (got {a}, {b}, {c})", {"a": self.min, "b": self.opt, "c": self.max})
        return self


class DataPart(Strict):
    """A data file, or a range of its rows."""

    path: str
    rows: tuple[Annotated[StrictInt, Field(ge=0)], Annotated[StrictInt, Field(ge=0)]] | None = Field(None, description="[start, stop) along axis 0")

    @model_validator(mode="after")
    def _ordered(self) -> DataPart:
        if self.rows is not None and not self.rows[0] < self.rows[1]:
            raise PydanticCustomError("rows_order", "rows [start, stop) needs start < stop (got {r})", {"r": list(self.rows)})
        return self


class DataSpec(Strict):
    """Real inputs: `path` (parity samples first, INT8 calibration from the rows after them),
    or `parity` and `calibration` named apart (files, or row ranges of one file)."""

    path: str | None = None
    parity: str | DataPart | None = None
    calibration: str | DataPart | None = None

    @model_validator(mode="after")
    def _one_parity_source(self) -> DataSpec:
        if self.path is None and self.parity is None:
            raise PydanticCustomError("data_source", "give data.path, or data.parity (and data.calibration)", {})
        if self.path is not None and self.parity is not None:
            raise PydanticCustomError("data_both", "data.path and data.parity both name the parity samples; keep one", {})
        return self

    def part(self, which: str) -> DataPart | None:
        """data.parity / data.calibration as a DataPart (data.path stands for parity)."""
        value = getattr(self, which) if which != "parity" or self.parity is not None else self.path
        return DataPart(path=value) if isinstance(value, str) else value

    def files(self) -> list[str]:
        return sorted({p.path for p in (self.part("parity"), self.part("calibration")) if p is not None})


class _KindTargets:
    """`targets[]` items: the union of every registered kind's options, tagged by `kind`.

    Resolved when the Recipe schema is first built (defer_build), so importing
    this module loads no kind.
    """

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler):
        return handler.generate_schema(kinds.target_union())


Target = Annotated[TargetOptions, _KindTargets]


class Tolerance(Strict):
    atol: Annotated[FiniteFloat, Field(ge=0)] | None = None
    rtol: Annotated[FiniteFloat, Field(ge=0)] | None = None
    cosine: Annotated[FiniteFloat, Field(ge=-1, le=1)] | None = None
    top1: Annotated[FiniteFloat, Field(ge=0, le=1)] | None = None


# Reduced precision cannot meet elementwise bounds meant for FP32, so these
# targets are judged by floors on cosine and top-1 agreement instead. They are
# starting points measured on random-weight models: set real budgets per target.
FP32_TOLERANCE = {"atol": 1e-4, "rtol": 1e-3}  # what a kind does not say otherwise
QUANTIZED_TOLERANCE: dict[str, dict[str, float]] = {
    "fp16": {"cosine": 0.999, "top1": 0.99},
    "bf16": {"cosine": 0.999, "top1": 0.99},
    "int8": {"cosine": 0.99, "top1": 0.95},
    "int8-dynamic": {"cosine": 0.99, "top1": 0.95},
}


class Parity(Strict):
    samples: Annotated[StrictInt, Field(ge=1, le=10000)] = 16
    # Outputs that are class scores (logits or probabilities, classes on the last axis): top-1 agreement is checked on these only.
    scores: list[Annotated[str, Field(pattern=TENSOR_NAME_RE)]] = Field(default_factory=list)
    seed: Annotated[StrictInt, Field(ge=0, le=2**32 - 1)] = 0
    # Unset: each kind's FP32 default (1e-4 / 1e-3; XLA, which reorders arithmetic, 1e-3 / 1e-3).
    default: Tolerance | None = None
    per_target: dict[str, Tolerance] = Field(default_factory=dict)

    def tolerance_for(self, target: str, precision: str | None = None, fp32: dict | None = None) -> Tolerance:
        """The target's tolerance: its overrides applied key by key on the default.

        The default is `parity.default` (its unset keys from `fp32`, the kind's FP32
        default) for full-precision targets, and QUANTIZED_TOLERANCE[precision]
        (no atol/rtol) for reduced-precision ones.
        """
        fp32 = fp32 or FP32_TOLERANCE
        if precision in QUANTIZED_TOLERANCE:
            base = {"atol": None, "rtol": None, **QUANTIZED_TOLERANCE[precision]}
        else:
            base = self.default.model_dump() if self.default is not None else {"atol": None, "rtol": None, "cosine": None, "top1": None}
            base["atol"] = fp32["atol"] if base["atol"] is None else base["atol"]
            base["rtol"] = fp32["rtol"] if base["rtol"] is None else base["rtol"]
        over = self.per_target.get(target)
        if over:
            base.update({k: v for k, v in over.model_dump().items() if v is not None})
        return Tolerance(**base)


class DynamicBatching(Strict):
    preferred_batch_size: list[Annotated[StrictInt, Field(ge=1)]] = Field(default_factory=list)
    max_queue_delay_microseconds: Annotated[StrictInt, Field(ge=0)] = 0


class InstanceGroup(Strict):
    count: Annotated[StrictInt, Field(ge=1)] = 1
    kind: Literal["auto", "cpu", "gpu"] = "auto"


class SpecificVersions(Strict):
    specific: list[Annotated[StrictInt, Field(ge=1)]] = Field(min_length=1)


VersionPolicy = Union[Literal["latest", "all"], SpecificVersions]


class TritonServe(Strict):
    max_batch_size: Annotated[StrictInt, Field(ge=0)] = 0
    dynamic_batching: DynamicBatching | None = None
    instance_group: InstanceGroup = Field(default_factory=InstanceGroup)
    targets: list[str] = Field(default_factory=list)
    backend: Literal["native", "python"] = "native"
    version_policy: VersionPolicy = "latest"
    onnx_tensorrt: Annotated[Literal["off", "fp32", "fp16"], YamlOff] = Field(
        "off", description="ONNX models: ONNX Runtime's TensorRT execution provider on GPU instances, at this precision"
    )

    @model_validator(mode="after")
    def _accelerator_native(self) -> TritonServe:
        if self.onnx_tensorrt != "off" and self.backend == "python":
            raise PydanticCustomError("onnx_tensorrt_native", "onnx_tensorrt applies to Triton's onnxruntime backend; it needs backend: native", {})
        return self


class TFServingBatching(Strict):
    """TF Serving's BatchingParameters; unset fields keep the server's defaults."""

    max_batch_size: Annotated[StrictInt, Field(ge=1)]
    batch_timeout_micros: Annotated[StrictInt, Field(ge=0)] | None = None
    max_enqueued_batches: Annotated[StrictInt, Field(ge=1)] | None = None
    num_batch_threads: Annotated[StrictInt, Field(ge=1)] | None = None
    allowed_batch_sizes: list[Annotated[StrictInt, Field(ge=1)]] = Field(default_factory=list)
    pad_variable_length_inputs: bool = False

    @model_validator(mode="after")
    def _allowed_sizes(self) -> TFServingBatching:
        # TF Serving refuses to load otherwise (batching_session.cc).
        sizes = self.allowed_batch_sizes
        if sizes and (sizes != sorted(set(sizes)) or sizes[-1] != self.max_batch_size):
            raise PydanticCustomError(
                "allowed_batch_sizes",
                "allowed_batch_sizes must increase and end with max_batch_size ({m}); got {s}",
                {"m": self.max_batch_size, "s": sizes},
            )
        return self


class TFServingServe(Strict):
    targets: list[str] = Field(default_factory=list)
    version_policy: VersionPolicy = "latest"
    batching: TFServingBatching | None = None


class Serve(Strict):
    triton: TritonServe | None = None
    tfserving: TFServingServe | None = None


class Select(Strict):
    """After the gate, time every artifact that passed on this machine; the fastest is served as the model's plain name."""

    metric: Literal["latency", "throughput"] = "latency"
    batch: Annotated[StrictInt, Field(ge=1)] | None = Field(None, description="rows per call (default: the batch dim's opt; other dims at opt)")
    threads: Annotated[StrictInt, Field(ge=1, le=1024)] = Field(1, description="intra-op threads while timing (1: figures a busy neighbour skews least)")
    rounds: Annotated[StrictInt, Field(ge=3, le=101)] = 7


class Recipe(Strict):
    # The target union comes from the kind registry: built on first use, not at import.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, defer_build=True)

    name: Annotated[str, Field(pattern=NAME_RE, max_length=64)]
    version: Annotated[StrictInt, Field(ge=1, le=2**31 - 1)] = 1
    source: Source
    inputs: list[InputSpec] = Field(min_length=1)
    outputs: list[Annotated[str, Field(pattern=TENSOR_NAME_RE)]] | None = None
    dims: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], DimSpec] = Field(default_factory=dict)
    data: DataSpec | None = None
    targets: list[Target] = Field(min_length=1)
    parity: Parity = Field(default_factory=Parity)
    serve: Serve = Field(default_factory=Serve)
    select: Select | None = None

    # Set by load_recipe: where relative paths resolve from. Not a recipe key.
    _path: Path | None = None

    @property
    def path(self) -> Path:
        assert self._path is not None, "recipe was not loaded from a file"
        return self._path

    @property
    def root(self) -> Path:
        return self.path.parent

    def resolve(self, rel: str) -> Path:
        return (self.root / rel).resolve()

    def tolerance(self, spec: TargetOptions) -> Tolerance:
        """What the parity gate holds this target to (its kind's FP32 default unless the recipe says otherwise)."""
        return self.parity.tolerance_for(spec.target_name, spec.precision_mode, kinds.get(spec.kind).fp32_tolerance)

    def target(self, name: str) -> TargetOptions:
        for t in self.targets:
            if t.target_name == name:
                return t
        raise KeyError(name)


# ---------------------------------------------------------------- cross checks


def _cross_check(r: Recipe) -> list[tuple[tuple, str, str | None]]:
    """Checks that relate sections; returns (loc, message, hint) triples."""
    out: list[tuple[tuple, str, str | None]] = []
    names = [t.target_name for t in r.targets]
    seen: set[str] = set()
    for i, t in enumerate(r.targets):
        n = t.target_name
        if n in seen:
            out.append((("targets", i, "name"), f"target name '{n}' is used twice", "give one of them a distinct `name:`"))
        seen.add(n)
        kind = kinds.get(t.kind)
        if r.source.framework not in kind.frameworks:
            ok = ", ".join(sorted(kinds.frameworks().get(r.source.framework, [])))
            out.append((("targets", i, "kind"), f"'{t.kind}' does not build from a {r.source.framework} source", f"use one of: {ok}"))
        else:
            out += [(("targets", i, *loc), msg, hint) for loc, msg, hint in kind.check(t, r)]
    in_names = [s.name for s in r.inputs]
    for i, spec in enumerate(r.inputs):
        if all(not isinstance(d, str) or d in r.dims for d in spec.shape):
            peak = math.prod(r.dims[d].max if isinstance(d, str) else d for d in spec.shape) * DTYPE_BYTES[spec.dtype]
            if peak > MAX_SAMPLE_BYTES:
                out.append((("inputs", i, "shape"), f"at every dim's max, one sample of '{spec.name}' is {peak / 2**30:.1f} GiB; parity samples that large do not fit in memory",
                            f"lower the dims' max so a sample stays under {MAX_SAMPLE_BYTES >> 30} GiB"))  # fmt: skip
        if in_names.count(spec.name) > 1 and in_names.index(spec.name) != i:
            out.append((("inputs", i, "name"), f"input name '{spec.name}' is used twice", None))
        for j, d in enumerate(spec.shape):
            if isinstance(d, str) and d not in r.dims:
                out.append((("inputs", i, "shape", j), f"dynamic dimension '{d}' has no entry under dims", f"add `dims: {{{d}: {{min: 1, opt: 8, max: 64}}}}`"))
    if r.outputs and len(set(r.outputs)) != len(r.outputs):
        out.append((("outputs",), "output names must be distinct", None))
    for j, name in enumerate(r.parity.scores):
        if r.outputs and name not in r.outputs:
            out.append((("parity", "scores", j), f"'{name}' is not one of the outputs ({', '.join(r.outputs)})", _did_you_mean(name, list(r.outputs))))
        elif not r.outputs and not re.fullmatch(r"output_\d+", name):
            out.append(
                (
                    ("parity", "scores", j),
                    f"'{name}' names no output: the recipe has no `outputs`, so they are output_0, output_1, ...",
                    "name the outputs under `outputs:`",
                )
            )
    for key in r.parity.per_target:
        if key not in names:
            out.append((("parity", "per_target", key), f"no target is named '{key}'", _did_you_mean(key, names)))
    if r.select and r.select.batch is not None:
        first = r.inputs[0].shape[0] if r.inputs[0].shape else None
        if not isinstance(first, str):
            out.append(
                (("select", "batch"), f"the inputs have no batch dim to size (input '{r.inputs[0].name}' has shape {r.inputs[0].shape})", "remove select.batch")
            )
        elif first in r.dims and not r.dims[first].min <= r.select.batch <= r.dims[first].max:
            d = r.dims[first]
            out.append((("select", "batch"), f"{r.select.batch} is outside dims.{first} [{d.min}, {d.max}]", f"pick a batch between {d.min} and {d.max}"))
    if r.serve.triton:
        tri = r.serve.triton
        for j, key in enumerate(tri.targets):
            if key not in names:
                out.append((("serve", "triton", "targets", j), f"no target is named '{key}'", _did_you_mean(key, names)))
            elif (served := kinds.get(r.target(key).kind).triton) is None:
                out.append(
                    (
                        ("serve", "triton", "targets", j),
                        f"Triton cannot serve the {r.target(key).kind} target '{key}'",
                        f"serve targets of these kinds: {', '.join(_servable('triton'))}",
                    )
                )
            elif tri.backend == "python" and served.python_backend is None and not served.native_only:
                out.append(
                    (
                        ("serve", "triton", "backend"),
                        f"backend: python has no model.py for the {r.target(key).kind} target '{key}'",
                        f"use backend: native ({served.platform or served.backend}), or {_with_python_backend(r)}",
                    )
                )
        out += _duplicates(tri.targets, ("serve", "triton", "targets"))
        model_names: dict[str, str] = {}
        for j, key in enumerate(tri.targets):
            model = f"{r.name}_{key}".replace("-", "_")
            if key in names and model in model_names and model_names[model] != key:
                out.append((("serve", "triton", "targets", j), f"targets '{model_names[model]}' and '{key}' would both be served as Triton model '{model}'",
                             "rename one of them: Triton model names turn '-' into '_'"))  # fmt: skip
            model_names.setdefault(model, key)
        if tri.max_batch_size > 0:
            out += _batching_checks(r, ("serve", "triton", "max_batch_size"), tri.max_batch_size, "set max_batch_size: 0, or ")
        elif tri.dynamic_batching is not None:
            out.append((("serve", "triton", "dynamic_batching"), "dynamic_batching needs max_batch_size > 0 (Triton batches nothing at 0)",
                        "set serve.triton.max_batch_size, or remove dynamic_batching"))  # fmt: skip
        out += _policy_check(r, tri.version_policy, ("serve", "triton", "version_policy"))
    if r.serve.tfserving and r.source.framework != "tensorflow":
        out.append((("serve", "tfserving"), f"TF Serving serves SavedModels, which only TensorFlow sources build; this recipe's source is {r.source.framework}",
                    "serve it with serve.triton, or remove serve.tfserving"))  # fmt: skip
    elif r.serve.tfserving:
        out += _duplicates(r.serve.tfserving.targets, ("serve", "tfserving", "targets"))
        out += _policy_check(r, r.serve.tfserving.version_policy, ("serve", "tfserving", "version_policy"))
        for j, key in enumerate(r.serve.tfserving.targets):
            if key not in names:
                out.append((("serve", "tfserving", "targets", j), f"no target is named '{key}'", _did_you_mean(key, names)))
            elif kinds.get(r.target(key).kind).tfserving is None:
                ok = " or ".join(_servable("tfserving"))
                out.append(
                    (
                        ("serve", "tfserving", "targets", j),
                        f"TF Serving serves SavedModels; '{key}' is a {r.target(key).kind} target",
                        f"list {ok} targets here",
                    )
                )
        if r.serve.tfserving.batching:
            loc = ("serve", "tfserving", "batching", "max_batch_size")
            out += _batching_checks(r, loc, r.serve.tfserving.batching.max_batch_size, "remove serve.tfserving.batching, or ")
    return out


def _duplicates(items: list[str], loc: tuple) -> list[tuple[tuple, str, str | None]]:
    seen: set[str] = set()
    out = []
    for j, item in enumerate(items):
        if item in seen:
            out.append(((*loc, j), f"'{item}' is listed twice", "list each target once"))
        seen.add(item)
    return out


def _policy_check(r: Recipe, policy, loc: tuple) -> list[tuple[tuple, str, str | None]]:
    """A specific-versions policy must serve the version this build writes."""
    if isinstance(policy, SpecificVersions) and r.version not in policy.specific:
        return [(loc, f"serves versions {sorted(set(policy.specific))}, but this build writes version {r.version}",
                 f"add {r.version} to specific, or set version: to one of them")]  # fmt: skip
    return []


def _with_python_backend(r: Recipe) -> str:
    """What to serve instead with backend: python: the recipe's targets whose kind has a model.py."""
    ok = [t.target_name for t in r.targets if (k := kinds.get(t.kind).triton) is not None and k.python_backend is not None]
    if len(ok) == 1:
        return f"serve the {ok[0]} target"
    if ok:
        return f"serve one of the targets {', '.join(ok)}"
    return "add a target of a kind with a Python backend (" + ", ".join(n for n, k in kinds.kinds().items() if k.triton and k.triton.python_backend) + ")"


def _servable(server: str) -> list[str]:
    """Kinds with a model for `server` (triton | tfserving)."""
    return [k.name for k in kinds.kinds().values() if getattr(k, server) is not None]


def _batching_checks(r: Recipe, loc: tuple, max_batch_size: int, off: str) -> list[tuple[tuple, str, str | None]]:
    """A server batching requests needs every input's first dim dynamic, shared, and large enough."""
    for spec in r.inputs:
        first = spec.shape[0] if spec.shape else None
        if not isinstance(first, str):
            return [
                (
                    loc,
                    f"batching needs a dynamic first dimension, but input '{spec.name}' has shape {spec.shape}",
                    f"{off}make the first dimension of every input a named dim such as `batch`",
                )
            ]
        if first in r.dims and max_batch_size > r.dims[first].max:
            return [
                (
                    loc,
                    f"{max_batch_size} exceeds dims.{first}.max ({r.dims[first].max})",
                    f"lower max_batch_size to at most {r.dims[first].max} or raise dims.{first}.max",
                )
            ]
    firsts = {s.shape[0] for s in r.inputs if s.shape}
    if len(firsts) > 1:
        return [(loc, f"inputs disagree on the batch dimension ({', '.join(sorted(map(str, firsts)))})", "name the first dimension of every input the same")]
    return []


def _check_files(r: Recipe) -> list[tuple[tuple, str, str | None]]:
    """Every path the recipe names must exist, relative to the recipe file."""
    out: list[tuple[tuple, str, str | None]] = []
    checks: list[tuple[tuple, str | None, str]] = [
        (("source", "exported"), r.source.exported, "file"),
        (("source", "savedmodel"), r.source.savedmodel, "dir"),
        (("source", "keras"), r.source.keras, "file"),
        (("source", "weights"), r.source.weights, "file"),
    ]
    if r.data:
        for key in ("path", "parity", "calibration"):
            value = getattr(r.data, key)
            if value is not None:
                checks.append((("data", key) if isinstance(value, str) else ("data", key, "path"), value if isinstance(value, str) else value.path, "file"))
    if r.source.factory:
        checks.append((("source", "factory"), r.source.factory.rsplit(":", 1)[0], "file"))
    for loc, rel, kind in checks:
        if rel is None:
            continue
        try:
            p = r.resolve(rel)
            ok = p.is_dir() if kind == "dir" else p.is_file()
        except (OSError, ValueError) as e:  # a NUL byte, a name longer than the filesystem takes
            out.append((loc, f"not a usable path: {e}", f"paths are relative to the recipe's folder ({r.root})"))
            continue
        if not ok:
            out.append((loc, f"{'directory' if kind == 'dir' else 'file'} not found: {p}", f"paths are relative to the recipe's folder ({r.root})"))
            continue
        why, fix = _content_problem(r, loc, p)
        if why:
            out.append((loc, why, fix))
    return out


def _content_problem(r: Recipe, loc: tuple, p: Path) -> tuple[str | None, str | None]:
    """Whether an existing file is what its key says, judged from its bytes (nothing is loaded or run)."""
    key = loc[1] if loc[0] == "source" else "data"
    if key == "factory":
        return sniff.factory_problem(p, r.source.factory.rsplit(":", 1)[1]), "source.factory is path/to/file.py:callable, a top-level function or class"
    if key == "weights":
        return sniff.weights_problem(p), "save the weights with torch.save(model.state_dict(), path) or safetensors.torch.save_file"
    if key == "exported":
        return sniff.zip_problem(p, "torch.export .pt2 archive"), "save it with torch.export.save(exported_program, 'model.pt2')"
    if key == "keras":
        return sniff.keras_problem(p), "save it with model.save('model.keras')"
    if key == "savedmodel":
        return sniff.savedmodel_problem(p), "point at the folder tf.saved_model.save() wrote"
    return sniff.zip_problem(p, ".npz file"), "save samples with numpy.savez(path, **{input_name: array})"


def _did_you_mean(word: str, choices: list[str]) -> str | None:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'?" if close else (f"targets are: {', '.join(choices)}" if choices else None)


# ------------------------------------------------------------ YAML positions


def _line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """1-based line of the deepest YAML node that `loc` reaches."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(part):
                    node = v
                    line = k.start_mark.line + 1
                    break
            else:
                continue  # a union tag pydantic adds to loc, not a YAML key
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _key_path(loc: tuple, data: Any) -> str:
    """'targets[1].opset' from ('targets', 1, 'onnx', 'opset'), dropping union tags.

    Pydantic inserts the branch of a union into `loc` (a target's kind, a
    Literal's repr, a model's class name); those are not keys in the YAML.
    """
    out = ""
    cur = data
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
            cur = cur[part] if isinstance(cur, list) and part < len(cur) else None
            continue
        absent = not (isinstance(cur, dict) and part in cur)
        union_tag = isinstance(cur, dict) and cur.get("kind") == part  # the target kind pydantic inserts
        if absent and ("[" in part or part[:1].isupper() or i < len(loc) - 1 or union_tag):
            continue
        out += ("." if out else "") + part
        cur = cur.get(part) if isinstance(cur, dict) else None
    return out


def _pydantic_problem(err: dict, data: Any, root: yaml.Node | None) -> Problem:
    loc = tuple(err["loc"])
    typ = err["type"]
    hint = None
    msg = err["msg"]
    if typ == "unknown_key":
        loc = loc + (err["ctx"]["key"],)
        msg = f"unknown key '{err['ctx']['key']}'"
        hint = err["ctx"]["hint"]
        if hint.startswith("known"):
            hint = "remove it; " + hint
    elif typ == "union_tag_invalid":
        tags = [t.strip(" '") for t in str(err["ctx"]["expected_tags"]).split(",")]
        close = difflib.get_close_matches(str(err["ctx"]["tag"]), tags, n=1, cutoff=0.5)
        msg = f"unknown kind '{err['ctx']['tag']}'"
        hint = f"did you mean '{close[0]}'?" if close else f"kind is one of: {', '.join(tags)}"
        loc = loc + ("kind",)
    elif typ == "union_tag_not_found":
        msg = "every target needs a `kind`"
        hint = f"kind is one of: {', '.join(kinds.names())}"
    elif typ == "string_pattern_mismatch":
        msg = f"{err.get('input')!r} does not match {err['ctx']['pattern']}"
        hint = {
            NAME_RE: "use lowercase letters, digits, '-' and '_', starting with a letter or digit",
            GPU_TYPE_RE: "a GPU type as Ray names it (accelerator_type:<type>): H100, L4, A100-80G",
        }.get(err["ctx"]["pattern"], "names are letters, digits and '_', starting with a letter")
    elif typ == "missing":
        msg = "required key is missing"
    elif typ == "literal_error":
        hint = msg.replace("Input should be", "use")
        msg = f"{err.get('input')!r} is not allowed"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return Problem(key=_key_path(loc, data), message=msg, line=_line_of(root, loc), hint=hint)


def _framework_first(problems: list[Problem], data: dict, root: yaml.Node | None) -> list[Problem]:
    """A target whose kind does not build from the recipe's framework gets that said, not its option errors
    (`xla` on a PyTorch recipe: 'needs a TensorFlow source', not 'unknown key opset')."""
    framework = (data.get("source") or {}).get("framework") if isinstance(data.get("source"), dict) else None
    targets = data.get("targets") if isinstance(data.get("targets"), list) else []
    registered = kinds.kinds()
    out = list(problems)
    for i, t in enumerate(targets):
        kind = registered.get(t.get("kind")) if isinstance(t, dict) and isinstance(t.get("kind"), str) else None
        if kind is None or framework not in ("pytorch", "tensorflow") or framework in kind.frameworks:
            continue
        prefix = f"targets[{i}]"
        mine = [p for p in out if p.key == prefix or p.key.startswith(prefix + ".")]
        if not mine:
            continue  # the cross-checks say it once the rest validates
        out = [p for p in out if p not in mine]
        ok = ", ".join(kinds.frameworks().get(framework, []))
        needs = " or ".join(sorted(kind.frameworks))
        out.append(
            Problem(
                f"{prefix}.kind",
                f"'{kind.name}' builds from a {needs} source; this recipe's source is {framework}",
                _line_of(root, ("targets", i, "kind")),
                f"use one of: {ok}",
            )
        )
    return out


def _dedupe(problems: list[Problem]) -> list[Problem]:
    """Pydantic reports a bad value once per union branch; keep the first per key."""
    seen: set[str] = set()
    out = []
    for p in problems:
        if p.key in seen:
            continue
        seen.add(p.key)
        out.append(p)
    return out


# Bounds checked before anything walks the YAML: a recipe is a page of settings, and an
# alias bomb or a 50 MB `kwargs` list would otherwise cost minutes and gigabytes.
MAX_RECIPE_BYTES = 1 << 20
MAX_VALUES = 100_000  # after expanding aliases
MAX_DEPTH = 64


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [v for pair in node.value for v in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _yaml_problems(root: yaml.Node) -> list[Problem]:
    """Duplicate or non-string keys, self-referencing aliases, too deep or too large (aliases expanded).

    Iterative, with the expanded size of each node computed once (aliases share nodes).
    """
    problems: list[Problem] = []
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            size[key] = 1 + sum(size.get(id(c), 1) for c in _children(node))
            if size[key] > MAX_VALUES:
                return [Problem("", f"the recipe expands to more than {MAX_VALUES:,} values (YAML aliases expanded)", node.start_mark.line + 1,
                                "a recipe is settings: keep large data in files the factory reads")]  # fmt: skip
            continue
        if key in size:
            continue
        if key in on_path:
            return [Problem("", "a YAML alias refers to itself (a recursive structure)", node.start_mark.line + 1, "remove the self-reference")]
        if depth > MAX_DEPTH:
            return [Problem("", f"the YAML is nested more than {MAX_DEPTH} levels deep", node.start_mark.line + 1, "flatten it: a recipe is a few levels deep")]
        on_path.add(key)
        stack.append((node, depth, True))
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, _ in node.value:
                line = k.start_mark.line + 1
                if not isinstance(k, yaml.ScalarNode) or k.tag != "tag:yaml.org,2002:str":
                    shown = k.value if isinstance(k, yaml.ScalarNode) else "a collection"
                    problems.append(
                        Problem("", f"key {shown!r} (line {line}) is not a string", line, "quote keys that YAML reads as numbers, booleans or null")
                    )
                elif k.value in seen:
                    problems.append(Problem("", f"duplicate key '{k.value}' (first at line {seen[k.value]})", line,
                                            "remove one of them: YAML would keep the last, not the one read first"))  # fmt: skip
                else:
                    seen[k.value] = line
        stack += [(c, depth + 1, False) for c in _children(node)]
    return problems


def _load_yaml(text: str, path: Path) -> tuple[Any, yaml.Node | None]:
    if len(text.encode("utf-8", "surrogatepass")) > MAX_RECIPE_BYTES:
        raise RecipeError(
            path,
            [Problem("", f"the recipe is larger than {MAX_RECIPE_BYTES >> 20} MiB", None, "a recipe is settings: keep large data in files the factory reads")],
        )
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        detail = getattr(e, "problem", None) or str(e)
        raise RecipeError(path, [Problem("", f"not valid YAML: {detail}", line, "fix the YAML syntax at that line")]) from None
    except RecursionError:
        raise RecipeError(
            path, [Problem("", f"the YAML is nested more than {MAX_DEPTH} levels deep", None, "flatten it: a recipe is a few levels deep")]
        ) from None
    if root is None:
        return None, None
    problems = _yaml_problems(root)
    if problems:
        raise RecipeError(path, problems)
    loader = yaml.SafeLoader(text)
    try:
        return loader.construct_document(root), root
    except yaml.YAMLError as e:
        raise RecipeError(path, [Problem("", f"not valid YAML: {e}", None, "fix the YAML syntax")]) from None
    finally:
        loader.dispose()


def parse_recipe(text: str, path: Path, check_files: bool = True) -> Recipe:
    """Parse and validate recipe text as if read from `path`."""
    data, root = _load_yaml(text, path)
    if not isinstance(data, dict):
        raise RecipeError(
            path, [Problem("", "a recipe is a YAML mapping (name:, source:, inputs:, targets: ...)", 1, "see the complete example in docs/recipe.md")]
        )
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        probs = [_pydantic_problem(err, data, root) for err in e.errors(include_url=False)]
        raise RecipeError(path, _dedupe(_framework_first(probs, data, root))) from None
    recipe._path = path.resolve()
    found = _cross_check(recipe) + (_check_files(recipe) if check_files else [])
    found = found or _expand_matrix(recipe)
    if found:
        raise RecipeError(path, [Problem(_key_path(loc, data), msg, _line_of(root, loc), hint) for loc, msg, hint in found])
    return recipe


def gpu_slug(gpu: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "-", gpu.lower())


def _expand_matrix(r: Recipe) -> list[tuple[tuple, str, str | None]]:
    """`gpus: [A, B]` on a target becomes targets <name>-a and <name>-b, each with `gpu` set.

    After validation, so problems point at the lines the user wrote. Serving lists and
    per-target tolerances that name the matrix target apply to each of its artifacts.
    """
    if not any(t.gpus for t in r.targets):
        return []
    expanded, of = [], {}
    for t in r.targets:
        if not t.gpus:
            expanded.append(t)
            continue
        for g in t.gpus:
            name = f"{t.target_name}-{gpu_slug(g)}"
            expanded.append(t.model_copy(update={"name": name, "gpu": g, "gpus": None}))
            of.setdefault(t.target_name, []).append(name)
    problems = []
    names = [t.target_name for t in expanded]
    for i, t in enumerate(r.targets):
        for n in of.get(t.target_name, []):
            if names.count(n) > 1 or len(n) > 64:
                why = "is longer than 64 characters" if len(n) > 64 else "is also another target's name"
                problems.append((("targets", i, "gpus"), f"the matrix target '{n}' {why}", "rename the target or the other one"))
    if problems:
        return problems
    r.targets = expanded
    for server in (r.serve.triton, r.serve.tfserving):
        if server is not None:
            server.targets = [n for base in server.targets for n in of.get(base, [base])]
    for base, names_ in of.items():
        if base in r.parity.per_target:
            tol = r.parity.per_target.pop(base)
            r.parity.per_target.update({n: tol for n in names_})
    return []


def load_recipe(path: str | Path, check_files: bool = True) -> Recipe:
    """Read, parse and validate a recipe file; raises RecipeError or UsageError."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"recipe not found: {p}", "pass the path of a recipe .yaml file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read recipe {p}: {e}") from None
    return parse_recipe(text, p, check_files=check_files)
