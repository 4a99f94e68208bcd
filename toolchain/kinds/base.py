"""What an artifact kind is: one object that says everything mlpack knows about it.

A kind module defines a `TargetOptions` model (its recipe keys), a `Kind`
subclass and one instance of it, registered as an entry point in the
`mlpack.kinds` group. The recipe's target union, the build, the cache key,
the manifest schema, the Triton and TF Serving writers, `bench` and
`serve-check` all read from that object; nothing else names the kind.

Imports no framework: kind modules keep heavy imports inside `build`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from toolchain.feeds import load_feeds
from toolchain.machine import gpu_identity
from toolchain.options import TargetOptions
from toolchain.records import Dependency, RunnerSpec
from toolchain.tensors import Signature

if TYPE_CHECKING:  # annotations only
    from toolchain.recipe import Recipe, TritonServe


# The `export` field a kind adds when it chose among strategies (which produced the artifact, which failed first).
EXPORT_SCHEMA: dict = {
    "type": "object",
    "required": ["strategy"],
    "properties": {
        "strategy": {"type": "string"},
        "tried": {"type": "array", "items": {"type": "object"}},
        "inductor_configs": {"type": "object"},
        "rewrites": {"type": "array", "items": {"type": "string"}},  # layers exported as an equivalent (torchtools/rewrites.py, sources/keras_patches.py)
    },
}


@dataclass
class Artifact:
    """What a target built: its files, its I/O signature, and how to run it."""

    files: list[Path]
    signature: Signature
    runner: RunnerSpec  # `path` absolute while building; the worker makes it relative
    device: str = "cpu"
    extra: dict = field(default_factory=dict)  # kind-specific manifest fields (see Kind.manifest_fields)


SHARED = ".shared"  # under the build's staging root: see BuildContext.shared


@dataclass
class BuildContext:
    """Where a build step writes and what it may read."""

    workdir: Path  # the artifact goes here
    root: Path  # the build's root: parity/ lies under it
    out_root: Path  # <out>: state that outlives one build (TensorRT timing caches)
    deps: dict[str, Dependency] = field(default_factory=dict)  # file paths relative to `root`
    # What one step makes for the others of the same build (one FP32 ONNX export for onnx, onnx-fp16, onnx-int8):
    # <root>/.shared while building, removed before publishing; None when a step runs alone (its reproduce.sh)
    shared: Path | None = None

    def parity_data(self) -> tuple[list[dict], list[dict]]:
        """The parity samples and the source's outputs on them, saved before any target ran."""
        return load_feeds(self.root / "parity" / "samples.npz"), load_feeds(self.root / "parity" / "reference.npz")


@dataclass(frozen=True)
class TritonModel:
    """How Triton serves a kind's artifact."""

    platform: str  # "" when Triton names only a backend
    backend: str  # the backend directory Triton loads
    artifact: str  # file or folder inside the target's folder that is served
    served_as: str = ""  # its name inside the version directory (default: the same)
    siblings: bool = False  # copy the target folder's other files too (external weights)
    positional: bool = False  # tensors addressed INPUT__i / OUTPUT__i, not by name
    batching: bool = True  # False: the backend has no batching (max_batch_size 0)
    python_backend: str | None = None  # model.py code that runs it (serving/model_py.txt); None: native only
    native_only: bool = False  # serve.triton.backend: python never applies (noted in the config)
    directory: bool = False  # the artifact is a folder
    # A generator's programs by phase (prefill, decode) in the target's folder: serving/generator.py streams from them
    generator_programs: dict[str, str] | None = None


@dataclass(frozen=True)
class TFServingModel:
    """How TF Serving serves a kind's artifact (a SavedModel folder)."""

    artifact: str  # the SavedModel folder inside the target's folder
    signature: str  # the signature clients call
    xla: bool = False  # needs --xla_cpu_compilation_enabled=true


@dataclass(frozen=True)
class ThreadSplit:
    """The intra-op threads an artifact's compiled code was split for (it uses no more), and whether that count is
    `serve.threads`, which its Triton config then also gives its instances."""

    threads: int
    by_serve_threads: bool


class Kind:
    """Base of every kind: declarations, plus hooks with the common defaults."""

    name: ClassVar[str]
    options: ClassVar[type[TargetOptions]]
    frameworks: ClassVar[frozenset[str]]  # source frameworks it builds from
    tools: ClassVar[tuple[str, ...]] = ()  # distributions whose versions shape its artifacts
    runners: ClassVar[dict[str, str]] = {}  # runner name -> "module:Class", for the artifacts it builds
    # Modules its build step imports from a pytorch source, beyond torch: the build's step server imports them once
    preload: ClassVar[tuple[str, ...]] = ()
    triton: ClassVar[TritonModel | None] = None
    tfserving: ClassVar[TFServingModel | None] = None
    manifest_fields: ClassVar[dict[str, dict]] = {}  # JSON Schema of the fields it adds to its target entry
    summary: ClassVar[str] = ""  # one line for `mlpack validate` and the docs
    fp32_tolerance: ClassVar[dict] = {"atol": 1e-4, "rtol": 1e-3}  # parity's default when the recipe sets none
    order: ClassVar[int] = 1000  # where it is listed among kinds (then by name); entry points come unordered
    tasks: ClassVar[frozenset[str]] = frozenset({"predict"})  # recipe tasks it builds for; text-generation: a decoder with its KV cache
    # Its CPU artifacts run on oneDNN's and ATen's kernels, which ONEDNN_MAX_CPU_ISA / ATEN_CPU_CAPABILITY cap: the gate
    # re-runs them as on each weaker CPU class of the fleet (toolchain/classgate.py); False: the runtime cannot be capped
    isa_capped: ClassVar[bool] = False

    def skip_reason(self, spec: TargetOptions) -> str | None:
        """Why this machine cannot build or run the target, or None."""
        return None

    def requires(self, spec: TargetOptions, recipe: Recipe) -> list[str]:
        """Names of targets whose artifacts this one is built from."""
        return []

    def precision_of(self, spec: TargetOptions, recipe: Recipe) -> str | None:
        """The reduced precision the target's artifact holds (a key of the quantized budgets), or None: what its
        tolerance is chosen by. A kind that packages another target's artifact answers with that target's."""
        return spec.precision_mode

    def check(self, spec: TargetOptions, recipe: Recipe) -> list[tuple[tuple, str, str | None]]:
        """Recipe checks that need the whole recipe: (key path under the target, message, hint)."""
        return []

    def recipe_cache_parts(self, spec: TargetOptions, recipe: Recipe) -> dict:
        """What else of the recipe decides the artifact, for its cache key (e.g. the threads its code is split for)."""
        return {}

    def cache_parts(self, spec: TargetOptions) -> dict:
        """What the target's cache key needs beyond its options (e.g. the GPU it is bound to)."""
        return {"gpu": gpu_identity()} if spec.target_device == "cuda" else {}

    def build(self, source, spec: TargetOptions, ctx: BuildContext) -> Artifact:
        raise NotImplementedError(f"kind {self.name} does not build")

    # --- Triton: defaults suit a kind whose `triton` says all there is to say

    def triton_instance_kind(self, device: str) -> str:
        """Triton's instance kind for `instance_group.kind: auto`."""
        return "KIND_GPU" if device == "cuda" else "KIND_AUTO"

    def triton_comments(self, serve: TritonServe, backend: str) -> list[str]:
        """Lines written as comments at the top of config.pbtxt."""
        return []

    def triton_configure(self, config, serve: TritonServe, backend: str) -> None:
        """Set kind-specific fields of the ModelConfig proto (e.g. execution accelerators)."""

    def triton_threads(self, config, threads: int) -> bool:
        """Give a CPU instance `threads` intra-op threads (`serve.threads`) in its ModelConfig; False: not set."""
        return False

    def triton_note(self, backend: str) -> str | None:
        """A note the build prints when it serves this kind (limits of the backend)."""
        return None

    def generation_logits(self, artifact: Artifact, recipe: Recipe, refs: list) -> tuple[list, str, list[str]] | None:
        """text-generation: the artifact's teacher-forced logits per reference (toolchain.generation.Reference), what
        produced them, and problems found on the way, when the kind drives its own generator; None: mlpack's loop
        over the artifact's runner (toolchain.generation.Decoder)."""
        return None

    def generator(self, folder: Path, threads: int | None = None):
        """text-generation: a function (prompt ids [batch, prompt], new tokens) -> None that generates with the artifact's
        own runtime loop on `threads` intra-op threads, for `mlpack bench` and `select:`; None: mlpack's loop over the
        artifact's runner."""
        return None

    embedded_runtime: str | None = None  # a text-generation folder an application embeds (no server): serve-check's name for it

    def text_generator(self, folder: Path):
        """text-generation, for `serve-check` of an embedded runtime: a function (prompt text, max new tokens) ->
        (prompt ids as its tokenizer encodes them, greedy token ids, their text) through the runtime's own tokenizer
        and loop; None when the kind has none."""
        return None

    def compiled_code(self, files: list[Path]) -> list[Path]:
        """The artifact's files that hold machine code of its own (whose instructions decide the CPUs it runs on)."""
        return []

    def compiled_for(self, extra: dict) -> str | None:
        """The CPU class the artifact's code was compiled for (from its manifest fields); None: the build machine's."""
        return None

    def bf16_parts(self, extra: dict) -> bool:
        """Whether an artifact of another precision computes some parts in BF16 (an INT8 package's attention), so that
        it is offered only to classes with native BF16 (from its manifest fields)."""
        return False

    def thread_split(self, extra: dict) -> ThreadSplit | None:
        """The threads the artifact's compiled code was split for (from its manifest fields); None: it uses as many
        as it is given."""
        return None

    def fingerprint_files(self) -> list[Path]:
        """Source files whose change must invalidate what this kind built (its module)."""
        return [Path(inspect.getsourcefile(type(self)) or "")]
