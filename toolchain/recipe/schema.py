"""The recipe's typed sections: strict pydantic models, and the files a source is made of.

Imports no ML framework; the target union is built from the kind registry on first use.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    ConfigDict,
    Field,
    FiniteFloat,
    GetCoreSchemaHandler,
    PlainValidator,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from toolchain import kinds
from toolchain.options import NAME_RE, Strict, TargetOptions, YamlOff
from toolchain.recipe.decoder import DecoderShape, config_path, read_config
from toolchain.recipe.dims import DimSpec
from toolchain.recipe.pipeline import Postprocess, Preprocess
from toolchain.sniff import IMAGE_SUFFIXES

DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "bool", "uint8")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 4, "int64": 8, "int32": 4, "bool": 1, "uint8": 1}
MAX_SAMPLE_BYTES = 2 << 30  # one parity sample of one input, at every dim's max
# [low, high) of each integer dtype, for generated samples
INT_BOUNDS = {"int64": (-(2**63), 2**63), "int32": (-(2**31), 2**31), "uint8": (0, 256)}
TENSOR_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_.:-]*$"
DIM_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"
SOURCE_KEYS = ("factory", "exported", "savedmodel", "keras", "transformers", "weights")  # the keys under `source` that name files
FOLDER_KEYS = ("savedmodel", "transformers")  # of those, the ones that name a folder


def triton_model_name(recipe_name: str, target_name: str) -> str:
    """The Triton model that serves a target: <recipe>_<target>, '-' turned into '_'."""
    return f"{recipe_name}_{target_name}".replace("-", "_")


def yaml_text(value: Any, limit: int = 60) -> str:
    """A value as the recipe writes it (`true`, `1.5`, `[[2]]`); strings quoted as in the other messages."""
    if isinstance(value, str):
        text = repr(value)
    else:
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shape_entry(value: Any, info: ValidationInfo) -> int | str:
    """A size (an integer >= 1) or a dim name; anything else is one error that says which and how to fix it.

    A size of 0 is refused: every sample would be empty and parity would compare nothing.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if isinstance(value, str) and re.fullmatch(DIM_NAME_RE, value):
        return value
    dims = (info.context or {}).get("dims", [])
    declared = f"one of the dims declared: {', '.join(dims)}" if dims else "a dim name declared under dims (`dims: {batch: {min: 1, max: 64}}`)"
    close = difflib.get_close_matches(value, dims, n=1, cutoff=0.6) if isinstance(value, str) else []
    if close:
        fix = f"did you mean '{close[0]}'?"
    elif isinstance(value, str) and re.fullmatch(r"\s*[0-9]+\s*", value) and int(value) >= 1:
        fix = f"write the size without quotes: {int(value)}"
    elif isinstance(value, float) and value.is_integer() and value >= 1:
        fix = f"write the size as an integer: {int(value)}"
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and value < 1:
        fix = f"a size is at least 1; a size that varies is {declared}"
    elif isinstance(value, (list, dict)):
        fix = "a shape is a flat list of sizes and dim names, such as [batch, 3, 224, 224]"
    elif isinstance(value, str):
        fix = f"a dim name is letters, digits and '_', not starting with a digit; use {declared}"
    else:
        fix = f"use a size such as 4, or {declared}"
    raise PydanticCustomError(
        "shape_entry",
        "{value} is not a size (an integer >= 1) or a dim name ([A-Za-z_][A-Za-z0-9_]*, declared under dims)",
        {"value": yaml_text(value), "fix": fix},
    )


# One entry of `inputs[].shape`: one validator, so a bad entry is one message (not one per union branch).
ShapeEntry = Annotated[Union[int, str], PlainValidator(_shape_entry, json_schema_input_type=Union[int, str])]


@dataclass(frozen=True)
class SourceFile:
    """A file or folder the recipe names as part of the model: what the cache hashes and a remote step receives."""

    key: str  # the recipe key: factory, exported, savedmodel, keras, weights (under source), or data
    rel: str  # the path as the recipe writes it, relative to the recipe's folder
    path: Path  # resolved (left as joined when it cannot be resolved: a NUL byte)
    is_dir: bool  # the key names a folder (savedmodel)

    @property
    def tree(self) -> Path | None:
        """The folder whose files it consists of: a factory's folder (what it can import), a SavedModel; None for one file."""
        if self.key == "factory":
            return self.path.parent
        return self.path if self.is_dir else None

    def members(self, skip: Path | None = None) -> list[Path]:
        """The files it consists of, sorted: a factory's *.py and a SavedModel's files, without caches (__pycache__),
        hidden folders (.venv, .git) and what lies under `skip` (a build output inside the folder); else the file itself."""
        tree = self.tree
        if tree is None:
            return [self.path]
        skip = skip.resolve() if skip is not None else None
        if skip is not None and (skip == tree or not skip.is_relative_to(tree)):
            skip = None  # it prunes inside the folder only: a source in (or at) a build output keeps every file
        out = []
        for p in sorted(tree.rglob("*.py" if self.key == "factory" else "*")):
            rel = p.relative_to(tree)
            if not p.is_file() or "__pycache__" in rel.parts or any(part.startswith(".") for part in rel.parts[:-1]):
                continue
            if skip is not None and p.is_relative_to(skip):
                continue
            out.append(p)
        return out

    def named_members(self, skip: Path | None = None) -> dict[str, Path]:
        """members() by a stable name: `factory/<path in its folder>`, `savedmodel/<...>`, the key of a single
        source file (`weights`), `<key>/<path as written>` for the keys a recipe may name several of (data, raw, audio)."""
        tree = self.tree
        if tree is not None:
            return {f"{self.key}/{p.relative_to(tree).as_posix()}": p for p in self.members(skip)}
        return {f"{self.key}/{self.rel}" if self.key in ("data", "raw", "audio") else self.key: self.path}


def _resolved(root: Path, rel: str) -> Path:
    try:
        return (root / rel).resolve()
    except (OSError, ValueError):  # a NUL byte: the file checks say so
        return root / rel


class Source(Strict):
    framework: Literal["pytorch", "tensorflow"]
    factory: str | None = Field(None, description="file.py:callable, relative to the recipe")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    exported: str | None = Field(None, description="torch.export.save() .pt2 file")
    savedmodel: str | None = None
    keras: str | None = None
    transformers: str | None = Field(None, description="a transformers save_pretrained folder (config.json, *.safetensors); no code runs from it")
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
        given = [k for k in ("factory", "exported", "savedmodel", "keras", "transformers") if getattr(self, k)]
        if len(given) != 1:
            raise PydanticCustomError(
                "source_count",
                "give exactly one of factory, exported, savedmodel, keras, transformers (got {got})",
                {"got": ", ".join(given) or "none"},
            )
        allowed = {"pytorch": {"factory", "exported", "transformers"}, "tensorflow": {"factory", "savedmodel", "keras"}}
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

    def files(self, root: Path) -> list[SourceFile]:
        """The files and folders this source is made of, paths resolved from `root` (the recipe's folder)."""
        out = []
        for key in SOURCE_KEYS:
            value = getattr(self, key)
            if value:
                rel = value.rsplit(":", 1)[0] if key == "factory" else value
                out.append(SourceFile(key, rel, _resolved(root, rel), is_dir=key in FOLDER_KEYS))
        return out


class InputSpec(Strict):
    name: Annotated[str, Field(pattern=TENSOR_NAME_RE)]
    dtype: Literal["float32", "float16", "bfloat16", "int64", "int32", "bool", "uint8"]
    shape: list[ShapeEntry]
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
    # text-generation: the share of next tokens (the artifact's greedy choice given the reference's context) equal to the reference's
    tokens: Annotated[FiniteFloat, Field(ge=0, le=1)] | None = None
    # text-generation: the largest relative rise of perplexity on the text sample (0.05: at most 5% above the source's)
    perplexity: Annotated[FiniteFloat, Field(ge=0)] | None = None


# Reduced precision cannot meet elementwise bounds meant for FP32, so these
# targets are judged by floors on cosine and top-1 agreement instead. They are
# starting points measured on random-weight models: set real budgets per target.
FP32_TOLERANCE = {"atol": 1e-4, "rtol": 1e-3}  # what a kind does not say otherwise
QUANTIZED_TOLERANCE: dict[str, dict[str, float]] = {
    "fp16": {"cosine": 0.999, "top1": 0.99},
    "bf16": {"cosine": 0.999, "top1": 0.99},
    "int8": {"cosine": 0.99, "top1": 0.95},
    "int8-dynamic": {"cosine": 0.99, "top1": 0.95},
    # Weight-only (MatMulNBits): a generator is judged by its greedy tokens and its perplexity; see docs/precision.md
    "int8-weight": {"cosine": 0.999, "top1": 0.99, "tokens": 0.98, "perplexity": 0.02},
    "int4": {"cosine": 0.98, "top1": 0.9, "tokens": 0.9, "perplexity": 0.1},
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
            base = self.default.model_dump() if self.default is not None else dict.fromkeys(Tolerance.model_fields)
            base["atol"] = fp32["atol"] if base["atol"] is None else base["atol"]
            base["rtol"] = fp32["rtol"] if base["rtol"] is None else base["rtol"]
        over = self.per_target.get(target)
        if over:
            base.update({k: v for k, v in over.model_dump().items() if v is not None})
        return Tolerance(**base)


INT32_MAX = 2**31 - 1  # the bounds of the Triton config fields these fill (model_config.proto)
UINT64_MAX = 2**64 - 1


class DynamicBatching(Strict):
    preferred_batch_size: list[Annotated[StrictInt, Field(ge=1, le=INT32_MAX)]] = Field(default_factory=list)
    max_queue_delay_microseconds: Annotated[StrictInt, Field(ge=0, le=UINT64_MAX)] = 0


class InstanceGroup(Strict):
    count: Annotated[StrictInt, Field(ge=1, le=INT32_MAX)] = 1
    kind: Literal["auto", "cpu", "gpu"] = "auto"


class SpecificVersions(Strict):
    specific: list[Annotated[StrictInt, Field(ge=1, le=INT32_MAX)]] = Field(min_length=1)  # a recipe's `version` is at most that


VersionPolicy = Union[Literal["latest", "all"], SpecificVersions]


class TritonServe(Strict):
    max_batch_size: Annotated[StrictInt, Field(ge=0, le=INT32_MAX)] = 0
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


CpuClass = Literal["avx2", "avx512", "avx512_vnni", "avx512_bf16", "amx"]  # toolchain/cpuclass.py


class VllmServe(Strict):
    """A text-generation recipe's transformers folder, laid out for vLLM's OpenAI-compatible server (serving/vllm.py)."""

    dtype: Literal["float32", "bfloat16", "auto"] = Field("float32", description="vllm serve --dtype: float32 matches the source's greedy tokens")
    max_model_len: Annotated[StrictInt, Field(ge=2, le=1 << 20)] | None = Field(None, description="vllm serve --max-model-len (default: generation.max_length)")
    # also vllm/<name>-<scheme>/ in compressed-tensors, which vLLM runs on CPU; serve-check judges each by top-1 tokens and perplexity
    quantize: list[Literal["w8a8", "w4a16"]] = Field(default_factory=list, description="w8a8: int8 weights and activations; w4a16: 4-bit weight groups")
    group_size: Literal[32, 64, 128] | None = Field(None, description="w4a16's group along the input (default: the largest dividing every layer)")


class Serve(Strict):
    triton: TritonServe | None = None
    tfserving: TFServingServe | None = None
    vllm: VllmServe | None = None
    cpus: list[CpuClass] = Field(
        default_factory=list,
        description="the CPU classes the fleet serves on: CPU packages are compiled for the lowest, and each artifact is gated on every class "
        "this machine can emulate (default: this machine's class only)",
    )
    threads: Annotated[StrictInt, Field(ge=1, le=1024)] | None = Field(
        None,
        description="intra-op threads one serving instance runs with (Triton configs of CPU AOTI and ONNX models, generators' "
        "generation.json, TF Serving's command line); code split per thread when compiled (an INT8 or BF16 AOTI package's "
        "autotuned GEMMs) is split for this many and uses no more (default: the build's intra-op threads; each runtime's own)",
    )

    @field_validator("cpus")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise PydanticCustomError("cpus_repeated", "each CPU class once; got {v}", {"v": v})
        return v


class Select(Strict):
    """After the gate, time every artifact that passed on this machine; the fastest (or within `tie` of it, the one closest
    to the source) is served as the model's plain name."""

    metric: Literal["latency", "throughput"] = "latency"
    batch: Annotated[StrictInt, Field(ge=1)] | None = Field(None, description="rows per call (default: the batch dim's opt; other dims at opt)")
    threads: Annotated[StrictInt, Field(ge=1, le=1024)] = Field(1, description="intra-op threads while timing (1: figures a busy neighbour skews least)")
    rounds: Annotated[StrictInt, Field(ge=3, le=101)] = 7
    tie: Annotated[StrictFloat, Field(ge=0.0, le=0.5)] = Field(
        0.03, description="artifacts timed within this fraction of the fastest are a tie, won by the one closest to the source (0: speed alone)"
    )


class Generation(Strict):
    """task: text-generation: how the decoder is exported (context, batch) and judged (prompts, greedy tokens)."""

    prompts: list[Annotated[str, Field(min_length=1)]] | None = Field(None, min_length=1, description="texts, tokenized by the recipe's tokenizer")
    audio: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None, min_length=1, description="a speech encoder-decoder's inputs instead of prompts: mono 16-bit PCM WAV files at the feature extractor's rate"
    )
    max_new_tokens: Annotated[StrictInt, Field(ge=1, le=4096)] = 16
    max_length: Annotated[StrictInt, Field(ge=2, le=1 << 20)] = Field(128, description="the context the artifacts take: prompt and new tokens")
    max_batch: Annotated[StrictInt, Field(ge=1, le=1024)] = 8
    eos: list[Annotated[StrictInt, Field(ge=0)]] | None = Field(None, description="token ids that end a generation (default: the config's eos_token_id)")
    text: str | None = Field(None, description="a UTF-8 text file the perplexity is measured on (default: the prompts)")
    config: str | None = Field(None, description="the decoder's config.json, for a factory source (a transformers folder has its own)")


class Recipe(Strict):
    # The target union comes from the kind registry: built on first use, not at import.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, defer_build=True)

    name: Annotated[str, Field(pattern=NAME_RE, max_length=64)]
    version: Annotated[StrictInt, Field(ge=1, le=2**31 - 1)] = 1
    # predict: one call in, tensors out (the default); text-generation: a decoder with its KV cache (recipe/decoder.py)
    task: Literal["predict", "text-generation"] = "predict"
    source: Source
    tokenizer: str | None = Field(None, description="tokenizer.json, or a folder holding one (default: source.transformers's)")
    generation: Generation | None = None
    inputs: list[InputSpec] = Field(min_length=1)
    outputs: list[Annotated[str, Field(pattern=TENSOR_NAME_RE)]] | None = None
    dims: dict[Annotated[str, Field(pattern=DIM_NAME_RE)], DimSpec] = Field(default_factory=dict)
    data: DataSpec | None = None
    targets: list[Target] = Field(min_length=1)
    parity: Parity = Field(default_factory=Parity)
    serve: Serve = Field(default_factory=Serve)
    select: Select | None = None
    # Raw inputs to tensors and outputs to answers (recipe/pipeline.py): judged end to end, served as a Triton ensemble.
    preprocess: Preprocess | None = None
    postprocess: Postprocess | None = None

    # Set by load_recipe: where relative paths resolve from. Not a recipe key.
    _path: Path | None = None
    _decoder: DecoderShape | None = None

    @property
    def path(self) -> Path:
        assert self._path is not None, "recipe was not loaded from a file"
        return self._path

    @property
    def root(self) -> Path:
        return self.path.parent

    def resolve(self, rel: str) -> Path:
        return (self.root / rel).resolve()

    def files(self) -> list[SourceFile]:
        """Every file and folder the model is made from: the source's, the tokenizer and decoder config, then the data files."""
        data = [SourceFile("data", rel, _resolved(self.root, rel), is_dir=False) for rel in self.data.files()] if self.data else []
        extra = []
        if self.tokenizer:
            path = _resolved(self.root, self.tokenizer)
            extra.append(SourceFile("tokenizer", self.tokenizer, path, is_dir=path.is_dir()))
        if self.generation and self.generation.config:
            extra.append(SourceFile("config", self.generation.config, _resolved(self.root, self.generation.config), is_dir=False))
        if self.generation and self.generation.text:
            extra.append(SourceFile("text", self.generation.text, _resolved(self.root, self.generation.text), is_dir=False))
        if self.generation and self.generation.audio:
            extra += [SourceFile("audio", rel, _resolved(self.root, rel), is_dir=False) for rel in self.generation.audio]
            if self.decoder.audio:  # the feature extractor's settings, beside the model's config
                extra.append(SourceFile("features", "preprocessor_config.json", self.features_file(), is_dir=False))
        return self.source.files(self.root) + extra + self.pipeline_files() + data

    @property
    def pipeline(self) -> bool:
        """Raw inputs in, answers out: a preprocess and a postprocess section."""
        return self.preprocess is not None and self.postprocess is not None

    def pipeline_files(self) -> list[SourceFile]:
        """The tokenizer, the label file and the raw samples the pipeline sections name."""
        pre, post = self.preprocess, self.postprocess
        named = [("tokenizer", pre.text.tokenizer)] if pre is not None and pre.text is not None else []
        named += [("labels", post.classify.labels)] if post is not None and post.classify is not None and post.classify.labels else []
        named += [("raw", rel) for rel in ([pre.samples] if isinstance(pre.samples, str) else pre.samples)] if pre is not None else []
        return [SourceFile(key, rel, path, is_dir=key != "labels" and path.is_dir()) for key, rel in named for path in [_resolved(self.root, rel)]]

    def raw_samples(self) -> list[Path]:
        """The raw sample files, in order: a folder's images sorted by name (preprocess.samples)."""
        out: list[Path] = []
        for f in (f for f in self.pipeline_files() if f.key == "raw"):
            out += sorted(p for p in f.path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) if f.is_dir else [f.path]
        return out

    @property
    def generates(self) -> bool:
        """A decoder exported with its cache, judged by greedy generation (task: text-generation)."""
        return self.task == "text-generation"

    @property
    def seq2seq(self) -> bool:
        """A text-generation recipe whose model is an encoder-decoder (T5, BART): two programs, recipe/decoder.py."""
        return self.generates and self.decoder.encoder_decoder

    def features_file(self) -> Path:
        """A speech model's preprocessor_config.json (its feature extractor's settings), beside its config.json."""
        _, path = config_path(self.model_dump(include={"source", "generation"}), self.root)
        return path.parent / "preprocessor_config.json"

    @property
    def decoder(self) -> DecoderShape:
        """The decoder's cache layout and token ids, from its config.json (text-generation only)."""
        if self._decoder is None:
            _, path = config_path(self.model_dump(include={"source", "generation"}), self.root)
            shape = read_config(path)
            self._decoder = dataclasses.replace(shape, eos=tuple(self.generation.eos)) if self.generation and self.generation.eos else shape
        return self._decoder

    def tokenizer_file(self) -> Path | None:
        """The tokenizer.json generation prompts are encoded with: `tokenizer` (a file, or a folder holding one), else the
        transformers folder's; None when there is none."""
        given = self.tokenizer or self.source.transformers
        if given is None:
            return None
        path = self.resolve(given)
        return path / "tokenizer.json" if path.is_dir() else path

    def tolerance(self, spec: TargetOptions) -> Tolerance:
        """What the parity gate holds this target to (its kind's FP32 default unless the recipe says otherwise)."""
        kind = kinds.get(spec.kind)
        return self.parity.tolerance_for(spec.target_name, kind.precision_of(spec, self), kind.fp32_tolerance)

    def target(self, name: str) -> TargetOptions:
        for t in self.targets:
            if t.target_name == name:
                return t
        raise KeyError(name)
