"""What a build produced, as its readers see it: each target's result, the selection, a cache
entry, the serving models and the manifest that holds them (manifest.json)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from toolchain.errors import EXIT_CONVERSION, EXIT_OK, EXIT_PARITY, EXIT_USAGE
from toolchain.records.pipeline import PipelineReport
from toolchain.records.steps import AcceptedDim, Dependency, FileEntry, RunnerSpec, _files, _runner, _signature
from toolchain.records.verdicts import STAGE_EXIT, CpuProof, GenerationReport, PadCheck, ParityReport, Stage, Status
from toolchain.tensors import Signature

SCHEMA_ID = "mlpack.manifest/1"


# ------------------------------------------------------------------ results


@dataclass
class CacheRef:
    key: str
    hit: bool

    def to_dict(self) -> dict:
        return {"key": self.key, "hit": self.hit}


def _cache(d) -> CacheRef | None:
    return None if d is None else d if isinstance(d, CacheRef) else CacheRef(d["key"], bool(d["hit"]))


@dataclass
class TargetResult:
    name: str
    kind: str
    status: Status = Status.FAILED
    stage: Stage | None = None
    reason: str | None = None
    hint: str | None = None  # how to fix it, when mlpack knows
    build_seconds: float = 0.0
    device: str = "cpu"
    files: list[FileEntry] = field(default_factory=list)
    signature: Signature | None = None
    runner: RunnerSpec | None = None  # loads the artifact (paths relative to the build root)
    parity: ParityReport | None = None
    log: str | None = None
    cache: CacheRef | None = None
    extra: dict = field(default_factory=dict)  # fields a kind adds to its manifest entry, and serve-check's
    generation: GenerationReport | None = None  # text-generation: the generator judged token by token

    FIELDS = ("name", "kind", "status", "stage", "reason", "hint", "build_seconds", "device", "log", "files", "signature", "runner", "parity", "cache",
              "generation")  # fmt: skip

    @classmethod
    def failed(cls, name: str, kind: str, stage: Stage, reason: str, **kw) -> TargetResult:
        return cls(name, kind, Status.FAILED, stage, reason, **kw)

    def fail(self, stage: Stage, reason: str, hint: str | None = None) -> None:
        self.status, self.stage, self.reason, self.hint = Status.FAILED, stage, reason, hint

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @property
    def device_name(self) -> str | None:
        """The GPU a CUDA artifact was built and judged on."""
        return self.extra.get("device_name")

    @property
    def cpu(self) -> CpuProof | None:
        """Where a CPU artifact was proved, class by class (toolchain/classgate.py)."""
        return CpuProof.from_dict(self.extra["cpu"]) if self.extra.get("cpu") else None

    @property
    def pipeline(self) -> PipelineReport | None:
        """Raw samples judged end to end through the recipe's preprocess and postprocess (toolchain/pipeline)."""
        return PipelineReport.from_dict(self.extra["pipeline"]) if self.extra.get("pipeline") else None

    @property
    def pad(self) -> PadCheck | None:
        """dims.<name>.pad judged on this artifact: what the served model pads and trims."""
        return PadCheck.from_dict(self.extra["pad"]) if self.extra.get("pad") else None

    @property
    def warnings(self) -> list[str]:
        return list(self.extra.get("warnings", []))

    def serving_check(self, server: str) -> dict | None:
        return self.extra.get("serving_check", {}).get(server)

    def record_serving_check(self, server: str, check: dict) -> None:
        self.extra.setdefault("serving_check", {})[server] = check

    def dependency(self) -> Dependency:
        """Where a dependent target finds this one's artifact (its folder is named after the target)."""
        return Dependency(self.name, self.files, self.signature, self.runner)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "status": self.status.value,
            "stage": self.stage.value if self.stage else None,
            "reason": self.reason,
            "hint": self.hint,
            "build_seconds": round(self.build_seconds, 3),
            "device": self.device,
            "log": self.log,
            "files": [f.to_dict() for f in self.files],
            "signature": self.signature.to_dict() if self.signature else None,
            "runner": self.runner.model_dump(mode="json") if self.runner else None,
            "parity": self.parity.to_dict() if self.parity else None,
            "cache": self.cache.to_dict() if self.cache else None,
            **({"generation": self.generation.to_dict()} if self.generation else {}),
            **self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict) -> TargetResult:
        return cls(
            d["name"],
            d["kind"],
            Status(d.get("status", "failed")),
            Stage(d["stage"]) if d.get("stage") else None,
            d.get("reason"),
            d.get("hint"),
            d.get("build_seconds", 0.0),
            d.get("device", "cpu"),
            _files(d.get("files")),
            _signature(d.get("signature")),
            _runner(d.get("runner")),
            ParityReport.from_dict(d["parity"]) if d.get("parity") else None,
            d.get("log"),
            _cache(d.get("cache")),
            {k: v for k, v in d.items() if k not in cls.FIELDS},
            GenerationReport.from_dict(d["generation"]) if d.get("generation") else None,
        )


def exit_code_for(results: list[TargetResult]) -> int:
    """2 for a bad recipe found while building, else 4 for any other failure, else 3 for parity, else 0."""
    codes = {STAGE_EXIT.get(r.stage, EXIT_CONVERSION) for r in results if r.status is Status.FAILED}
    for code in (EXIT_USAGE, EXIT_CONVERSION, EXIT_PARITY):
        if code in codes:
            return code
    return EXIT_OK


# ------------------------------------------------------------------ selection


@dataclass
class Machine:
    """The CPU timings are valid for (toolchain.machine.cpu_identity)."""

    model: str
    cores: int | None
    features: list[str]
    gpu: str | None = None

    def to_dict(self) -> dict:
        return {"model": self.model, "cores": self.cores, "features": self.features, "gpu": self.gpu}

    @classmethod
    def from_dict(cls, d: dict) -> Machine:
        return cls(d["model"], d.get("cores"), list(d.get("features", [])), d.get("gpu"))


@dataclass
class Speed:
    """The eager source's figures in the selection."""

    median_ms: float
    samples_per_s: float

    def to_dict(self) -> dict:
        return {"median_ms": self.median_ms, "samples_per_s": self.samples_per_s}


@dataclass
class Ranked:
    """One artifact's place in the selection."""

    target: str
    kind: str
    median_ms: float
    min_ms: float
    max_ms: float
    samples_per_s: float
    vs_eager: float

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class ClassChoice:
    """The artifact selection serves on one CPU class of the fleet: the fastest offered to the class (within select.tie
    of it, the closest to the source).
    `timed_on`: the class whose timings ordered it (this machine's: a lower class is not timed here, said as such)."""

    cls: str
    winner: str | None
    timed_on: str | None
    excluded: dict[str, str] = field(default_factory=dict)  # ranked targets not offered to the class, and why
    ranking: list[Ranked] = field(default_factory=list)  # timed with the ISA capped to the class (a class below this machine's)
    untimed: list[str] = field(default_factory=list)  # artifacts whose runtime cannot be capped: not timed as the class

    def to_dict(self) -> dict:
        return {"class": self.cls, "winner": self.winner, "timed_on": self.timed_on, "excluded": self.excluded,
                "ranking": [r.to_dict() for r in self.ranking], "untimed": self.untimed}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> ClassChoice:
        return cls(d["class"], d.get("winner"), d.get("timed_on"), dict(d.get("excluded", {})), [Ranked(**r) for r in d.get("ranking", [])],
                   list(d.get("untimed", [])))  # fmt: skip


@dataclass
class Selection:
    """The artifacts that passed, timed on this machine and ranked; `error` when timing failed."""

    metric: str
    machine: Machine
    cache: CacheRef
    ranking: list[Ranked] = field(default_factory=list)
    batch: int | None = None
    shape: dict[str, int] = field(default_factory=dict)
    threads: int = 1
    rounds: int = 0
    load_average: float = 0.0
    eager: Speed | None = None  # the source, timed with them
    served_as: str | None = None  # the Triton model that serves the winner under the plain name
    log: str | None = None
    error: str | None = None
    per_class: list[ClassChoice] = field(default_factory=list)  # the fleet's classes (serve.cpus)
    tie: float = 0.0  # select.tie: artifacts this close to the fastest ranked by closeness to the source
    tie_break: str | None = None  # why the first of the ranking is not the fastest

    @property
    def winner(self) -> str | None:
        return self.ranking[0].target if self.ranking else None

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"metric": self.metric, "error": self.error, "log": self.log, "ranking": [], "winner": None, "machine": self.machine.to_dict(),
                    "cache": self.cache.to_dict()}  # fmt: skip
        return {
            "metric": self.metric,
            "batch": self.batch,
            "shape": self.shape,
            "threads": self.threads,
            "rounds": self.rounds,
            "machine": self.machine.to_dict(),
            "load_average": self.load_average,
            "eager": self.eager.to_dict() if self.eager else None,
            "ranking": [r.to_dict() for r in self.ranking],
            "winner": self.winner,
            "served_as": self.served_as,
            "log": self.log,
            "cache": self.cache.to_dict(),
            **({"per_class": [c.to_dict() for c in self.per_class]} if self.per_class else {}),
            "tie": self.tie,
            "tie_break": self.tie_break,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Selection:
        return cls(
            d["metric"],
            Machine.from_dict(d["machine"]),
            _cache(d.get("cache")) or CacheRef("", False),
            [Ranked(**r) for r in d.get("ranking", [])],
            d.get("batch"),
            d.get("shape", {}),
            d.get("threads", 1),
            d.get("rounds", 0),
            d.get("load_average", 0.0),
            Speed(**d["eager"]) if d.get("eager") else None,
            d.get("served_as"),
            d.get("log"),
            d.get("error"),
            [ClassChoice.from_dict(c) for c in d.get("per_class", [])],
            d.get("tie", 0.0),
            d.get("tie_break"),
        )


# ------------------------------------------------------------------ cache entries


@dataclass
class CacheEntry:
    """A cache entry's result.json: the verified files, the step's logs (kept, not verified), and what
    the step produced: a target's result, the selection's timings, or only files (reference outputs)."""

    files: list[FileEntry] = field(default_factory=list)
    aux: list[str] = field(default_factory=list)
    target: TargetResult | None = None
    selection: Selection | None = None

    @property
    def paths(self) -> list[str]:
        """Verified artifact files, then the logs."""
        return [f.path for f in self.files] + self.aux

    @property
    def what(self) -> str:
        if self.selection is not None:
            return "selection timings"
        if self.target is not None:
            return f"{self.target.name} ({self.target.kind})"
        return "reference outputs"

    def to_dict(self) -> dict:
        if self.target is not None:
            body = self.target.to_dict()
        elif self.selection is not None:
            body = {"selection": {k: v for k, v in self.selection.to_dict().items() if k != "cache"}}
        else:
            body = {"files": [f.to_dict() for f in self.files]}
        return body | {"aux": self.aux}

    @classmethod
    def from_dict(cls, d: dict) -> CacheEntry:
        aux = list(d.get("aux", []))
        if "selection" in d:
            return cls([], aux, selection=Selection.from_dict({**d["selection"], "cache": None}))
        if "name" in d and "kind" in d:
            target = TargetResult.from_dict({k: v for k, v in d.items() if k != "aux"})
            return cls(target.files, aux, target=target)
        return cls(_files(d.get("files")), aux)


@dataclass
class RemoteEntry:
    """A shared cache's pointer to one upload of an entry (ENTRY.json, written last; toolchain.remote)."""

    key: str
    upload: str  # the folder the entry's files were uploaded under
    result: CacheEntry
    created: float
    bytes: int

    def pointer(self) -> dict:
        return {"upload": self.upload, "result": self.result.to_dict(), "created": self.created, "bytes": self.bytes}

    @classmethod
    def from_pointer(cls, key: str, d: dict) -> RemoteEntry:
        return cls(key, d["upload"], CacheEntry.from_dict(d["result"]), float(d["created"]), int(d["bytes"]))


# ------------------------------------------------------------------ manifest


@dataclass
class ServedModel:
    server: str  # triton | tfserving
    name: str
    target: str
    path: str  # the model's folder, relative to the build root
    role: str = "artifact"  # artifact; a raw-input pipeline's preprocess, postprocess, pipeline (serving/pipeline.py); vLLM's source or w8a8/w4a16

    def to_dict(self) -> dict:
        return {"server": self.server, "name": self.name, "target": self.target, "path": self.path, **({"role": self.role} if self.role != "artifact" else {})}


@dataclass
class Serving:
    triton: str | None = None  # the repository folder, when one was written
    tfserving: str | None = None
    models: list[ServedModel] = field(default_factory=list)
    vllm: str | None = None  # the folder vllm serve loads (serving/vllm.py)
    checks: dict = field(default_factory=dict)  # serve-check of what serves the source itself (vllm), by server

    def by(self, server: str) -> list[ServedModel]:
        return [m for m in self.models if m.server == server]

    def to_dict(self) -> dict:
        return {"triton": self.triton, "tfserving": self.tfserving, "models": [m.to_dict() for m in self.models],
                **({"vllm": self.vllm} if self.vllm else {}), **({"checks": self.checks} if self.checks else {})}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> Serving:
        return cls(d.get("triton"), d.get("tfserving"), [ServedModel(**m) for m in d.get("models", [])], d.get("vllm"), d.get("checks", {}))


@dataclass
class ParityData:
    samples: str = "parity/samples.npz"
    reference: str = "parity/reference.npz"
    source: str = "generated"  # generated | data

    def to_dict(self) -> dict:
        return {"samples": self.samples, "reference": self.reference, "source": self.source}


@dataclass
class Manifest:
    """manifest.json (its JSON Schema: toolchain/manifest.schema.json, completed by toolchain.manifest)."""

    name: str
    version: int
    framework: str
    recipe_path: str
    recipe_sha256: str
    environment: dict[str, str | None]
    targets: list[TargetResult]
    serving: Serving = field(default_factory=Serving)
    build_seconds: float = 0.0
    parity_data: ParityData | None = None
    selection: Selection | None = None
    schema: str = SCHEMA_ID
    task: str = "predict"  # text-generation: a decoder with its cache, judged by generation too
    dims: dict[str, AcceptedDim] = field(default_factory=dict)  # the named dims' accepted sizes

    @staticmethod
    def claims(data: object) -> bool:
        """Whether parsed JSON says it is an mlpack manifest (its schema id), whatever else it holds."""
        return isinstance(data, dict) and str(data.get("schema", "")).startswith("mlpack.manifest/")

    def target(self, name: str) -> TargetResult:
        for t in self.targets:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def device(self) -> str:
        return self.environment.get("device") or "cpu"

    def tool(self, name: str) -> str | None:
        """A tool's version as the build recorded it."""
        return self.environment.get(name)

    def to_dict(self) -> dict:
        return {
            "schema": self.schema,
            "name": self.name,
            "version": self.version,
            "framework": self.framework,
            **({"task": self.task} if self.task != "predict" else {}),
            "recipe": {"path": self.recipe_path, "sha256": self.recipe_sha256},
            "environment": self.environment,
            "build_seconds": round(self.build_seconds, 3),
            "parity_data": self.parity_data.to_dict() if self.parity_data else None,
            **({"dims": {n: d.to_dict() for n, d in self.dims.items()}} if self.dims else {}),
            "targets": [t.to_dict() for t in self.targets],
            "serving": self.serving.to_dict(),
            **({"selection": self.selection.to_dict()} if self.selection else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        """A manifest as read from disk; ValueError when it is not one."""
        try:
            return cls(
                d["name"],
                d["version"],
                d["framework"],
                d["recipe"]["path"],
                d["recipe"]["sha256"],
                dict(d["environment"]),
                [TargetResult.from_dict(t) for t in d["targets"]],
                Serving.from_dict(d.get("serving") or {}),
                d.get("build_seconds", 0.0),
                ParityData(**d["parity_data"]) if d.get("parity_data") else None,
                Selection.from_dict(d["selection"]) if d.get("selection") else None,
                d.get("schema", SCHEMA_ID),
                d.get("task", "predict"),
                {n: AcceptedDim.from_dict(v) for n, v in (d.get("dims") or {}).items()},
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not an mlpack manifest: {type(e).__name__}: {e}") from None


@dataclass
class BuildResult:
    manifest: Manifest
    path: Path  # where the output now lies (published, or the .failed copy)
    published: bool
    exit_code: int
    targets: list[TargetResult]
