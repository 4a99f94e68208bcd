"""The step protocol: what a worker process is asked to do (StepSpec, written as its step.json)
and what it comes back with (StepResult, written as its result; StepOutcome, as the build reads
it), with the artifact facts they carry (FileEntry, RunnerSpec, Dependency) and a capture attempt."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from toolchain.records.verdicts import GenerationReport, ParityReport
from toolchain.tensors import Signature

# ------------------------------------------------------------------ artifacts


PREFILL = "prefill"  # RunnerSpec option: an encoder-decoder's prefill program, a RunnerSpec whose path is beside the main one's


class RunnerSpec(BaseModel):
    """How to load an artifact: saved in the manifest so any tool can run it.

    `runner` is a name registered by a kind (never an import path read from a
    file); `path` is relative to the build root once published.
    """

    model_config = ConfigDict(extra="forbid")

    runner: str
    path: str
    inputs: list[str]
    outputs: list[str]
    device: str = "cpu"
    options: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class FileEntry:
    """One file of an artifact: its path relative to the build root, digest and size."""

    path: str
    sha256: str
    bytes: int

    def to_dict(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "bytes": self.bytes}

    @classmethod
    def from_dict(cls, d: dict) -> FileEntry:
        return cls(d["path"], d["sha256"], int(d["bytes"]))


def _files(items) -> list[FileEntry]:
    return [f if isinstance(f, FileEntry) else FileEntry.from_dict(f) for f in items or []]


@dataclass
class Attempt:
    """One failed try of a capture ladder (toolchain.capture): the strategy, the stage it reached, why."""

    strategy: str
    stage: str | None = None  # export | compile | run | values (None: a ladder that records no stages)
    error: str | None = None  # one line, as the manifest keeps it
    inductor_configs: dict | None = None
    detail: str | None = None  # the whole error text, for hints (not in the manifest)
    sized: bool = False  # it failed because a dynamic dim could not stay dynamic (not in the manifest)

    def to_dict(self) -> dict:
        out: dict = {"strategy": self.strategy}
        if self.stage is not None:
            out["stage"] = self.stage
        if self.inductor_configs is not None:
            out["inductor_configs"] = self.inductor_configs
        return out | ({"error": self.error} if self.error is not None else {})

    @classmethod
    def from_dict(cls, d: dict) -> Attempt:
        return cls(d["strategy"], d.get("stage"), d.get("error"), d.get("inductor_configs"))


@dataclass
class ExportRecord:
    """How an artifact was captured (the manifest's `export`): the strategy that produced it, what failed before it."""

    strategy: str
    tried: list[Attempt] = field(default_factory=list)
    inductor_configs: dict | None = None  # AOTInductor: the compile options that produced it
    rewrites: list[str] = field(default_factory=list)  # layers exported as an equivalent (torchtools/rewrites.py)
    phases: dict[str, ExportRecord] = field(default_factory=dict)  # one record per program (a decoder's prefill and decode)

    @classmethod
    def of_phases(cls, phases: dict[str, ExportRecord]) -> ExportRecord:
        return cls("; ".join(f"{p}: {r.strategy}" for p, r in phases.items()), [t for r in phases.values() for t in r.tried], phases=phases)

    @classmethod
    def from_dict(cls, d: dict) -> ExportRecord:
        """The record to_dict wrote (a shared export's, read by the other targets of the build)."""
        return cls(d["strategy"], [Attempt.from_dict(t) for t in d.get("tried", [])], d.get("inductor_configs"), list(d.get("rewrites", [])),
                   {p: cls.from_dict(r) for p, r in d.get("phases", {}).items()})  # fmt: skip

    def to_dict(self) -> dict:
        out: dict = {"strategy": self.strategy}
        if self.inductor_configs is not None:
            out["inductor_configs"] = self.inductor_configs
        out["tried"] = [t.to_dict() for t in self.tried]
        if self.rewrites:
            out["rewrites"] = self.rewrites
        return out | ({"phases": {p: r.to_dict() for p, r in self.phases.items()}} if self.phases else {})


@dataclass
class Dependency:
    """A target this one requires, already built and passed: where its artifact lies (relative to the build root)."""

    dir: str
    files: list[FileEntry]
    signature: Signature | None
    runner: RunnerSpec | None

    def to_dict(self) -> dict:
        return {
            "dir": self.dir,
            "files": [f.to_dict() for f in self.files],
            "signature": self.signature.to_dict() if self.signature else None,
            "runner": self.runner.model_dump(mode="json") if self.runner else None,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Dependency:
        return cls(d["dir"], _files(d["files"]), _signature(d.get("signature")), _runner(d.get("runner")))


def _signature(d) -> Signature | None:
    return d if d is None or isinstance(d, Signature) else Signature.from_dict(d)


def _runner(d) -> RunnerSpec | None:
    return d if d is None or isinstance(d, RunnerSpec) else RunnerSpec.model_validate(d)


# ------------------------------------------------------------------ steps


StepType = Literal["reference", "target", "select"]


@dataclass(frozen=True)
class AcceptedDim:
    """The sizes every artifact of the build accepts along a named dim (issue 26): its range, and its step when the
    model's shape logic needs multiples. `text` is what validate, inspect and the served configs say."""

    min: int
    max: int
    multiple: int | None = None
    recipe: str | None = None  # the recipe's own sizes, when the build took torch.export's suggested fix instead
    pad: int | None = None  # dims.<name>.pad: served models take every size from this one up, padded to an accepted size

    def accepts(self, size: int) -> bool:
        return self.min <= size <= self.max and size % (self.multiple or 1) == 0

    @property
    def served(self) -> str:
        """What a served model takes along this dim."""
        if self.pad is None or self.pad >= self.min and not self.multiple:
            return self.text
        return f"any size in [{self.pad}, {self.max}], padded up to {self.text} (outputs trimmed back)"

    @classmethod
    def snapped(cls, lo: int, hi: int, k: int | None) -> AcceptedDim | None:
        """The multiples of k (or every size) in [lo, hi], its ends moved inward onto multiples; None when none is left."""
        k = k or 1
        lo, hi = -(-lo // k) * k, hi // k * k
        return cls(lo, hi, k if k > 1 and lo < hi else None) if lo <= hi else None

    @property
    def text(self) -> str:
        return f"multiples of {self.multiple} in [{self.min}, {self.max}]" if self.multiple else f"[{self.min}, {self.max}]"

    def to_dict(self) -> dict:
        fixed = {"recipe": self.recipe, "by": "torch.export's suggested fix"} if self.recipe else {}
        pad = {"pad_from": self.pad, "served": self.served} if self.pad is not None else {}
        return {"min": self.min, "max": self.max, **({"multiple": self.multiple} if self.multiple else {}), "accepts": self.text, **fixed, **pad}

    @classmethod
    def from_dict(cls, d: dict) -> AcceptedDim:
        return cls(d["min"], d["max"], d.get("multiple"), d.get("recipe"), d.get("pad_from"))


@dataclass
class StepSpec:
    """What one worker process runs: its step.json (also what reproduce.sh re-runs)."""

    step: StepType
    recipe: str
    target: str | None = None
    deps: dict[str, Dependency] = field(default_factory=dict)
    out_root: str | None = None
    candidates: dict[str, RunnerSpec] = field(default_factory=dict)  # select: the artifacts to time
    root: str | None = None  # the build root (set when the step is written)
    result: str | None = None  # where the worker writes its StepResult, relative to `root`
    dims: dict[str, AcceptedDim] = field(default_factory=dict)  # the dims the build uses instead of the recipe's (torch.export's fixes)

    def to_dict(self) -> dict:
        out = {"step": self.step, "recipe": self.recipe} | ({"dims": dims_dict(self.dims)} if self.dims else {})
        if self.target is not None:
            out |= {"target": self.target, "deps": {n: d.to_dict() for n, d in self.deps.items()}}
        if self.out_root is not None:
            out["out_root"] = self.out_root
        if self.candidates:
            out["candidates"] = {n: c.model_dump(mode="json") for n, c in self.candidates.items()}
        return out | {k: v for k, v in (("root", self.root), ("result", self.result)) if v is not None}

    @classmethod
    def from_dict(cls, d: dict) -> StepSpec:
        return cls(
            d["step"],
            d["recipe"],
            d.get("target"),
            {n: Dependency.from_dict(x) for n, x in d.get("deps", {}).items()},
            d.get("out_root"),
            {n: RunnerSpec.model_validate(c) for n, c in d.get("candidates", {}).items()},
            d.get("root"),
            d.get("result"),
            dims_from(d.get("dims")),
        )


@dataclass
class ReferenceOutcome:
    """The reference step: the source's eager outputs are saved; what it learned of the source."""

    output_names: list[str]
    input_names: list[str]
    notes: list[str] = field(default_factory=list)


@dataclass
class TargetOutcome:
    """The target step: the artifact built and judged."""

    kind: str
    build_seconds: float
    device: str
    files: list[FileEntry]
    signature: Signature
    runner: RunnerSpec
    parity: ParityReport
    extra: dict = field(default_factory=dict)  # the kind's manifest fields
    generation: GenerationReport | None = None  # text-generation: judged token by token


@dataclass
class Timing:
    """Seconds per call of one runtime, interleaved with the others (toolchain.timing)."""

    median_ms: float
    min_ms: float
    max_ms: float
    rounds: int = 0
    calls_per_round: int = 0
    samples_per_s: float = 0.0


@dataclass
class SelectOutcome:
    """The select step: every candidate and the eager source timed on one feed."""

    figures: dict[str, Timing]  # by target name, and "eager"
    batch: int
    sizes: dict[str, int]
    threads: int
    load_average: float


Payload = ReferenceOutcome | TargetOutcome | SelectOutcome


@dataclass
class StepResult:
    """What a worker writes: its payload, or why it has none ("usage": the recipe or a file it names is wrong)."""

    payload: Payload | None = None
    error: Literal["usage", "step", "unexpected"] | None = None
    reason: str | None = None
    hint: str | None = None
    peak_rss_mb: float | None = None
    dims: dict[str, AcceptedDim] = field(default_factory=dict)  # a failure's sizes torch.export accepts (its suggested fixes)

    def to_dict(self) -> dict:
        if self.payload is None:
            body = {"ok": False, "error": self.error, "reason": self.reason, "hint": self.hint} | ({"dims": dims_dict(self.dims)} if self.dims else {})
        else:
            body = {"ok": True, **_payload_dict(self.payload)}
        return body | ({"peak_rss_mb": self.peak_rss_mb} if self.peak_rss_mb is not None else {})

    @classmethod
    def from_dict(cls, d: dict, step: StepType) -> StepResult:
        if not d.get("ok"):
            return cls(None, d.get("error"), d.get("reason", "failed"), d.get("hint"), d.get("peak_rss_mb"), dims_from(d.get("dims")))
        return cls(_payload(d, step), peak_rss_mb=d.get("peak_rss_mb"))


def _payload_dict(p: Payload) -> dict:
    if isinstance(p, ReferenceOutcome):
        return {"output_names": p.output_names, "input_names": p.input_names, "notes": p.notes}
    if isinstance(p, TargetOutcome):
        return {
            "kind": p.kind,
            "build_seconds": p.build_seconds,
            "device": p.device,
            "files": [f.to_dict() for f in p.files],
            "signature": p.signature.to_dict(),
            "runner": p.runner.model_dump(mode="json"),
            "parity": p.parity.to_dict(),
            "extra": p.extra,
            "generation": p.generation.to_dict() if p.generation else None,
        }
    figures = {n: {f.name: getattr(t, f.name) for f in fields(t)} for n, t in p.figures.items()}
    return {"figures": figures, "batch": p.batch, "sizes": p.sizes, "threads": p.threads, "load_average": p.load_average}


def _payload(d: dict, step: StepType) -> Payload:
    if step == "reference":
        return ReferenceOutcome(d["output_names"], d["input_names"], d.get("notes", []))
    if step == "target":
        return TargetOutcome(d["kind"], d["build_seconds"], d["device"], _files(d["files"]), Signature.from_dict(d["signature"]),
                             RunnerSpec.model_validate(d["runner"]), ParityReport.from_dict(d["parity"]), d.get("extra", {}),
                             GenerationReport.from_dict(d["generation"]) if d.get("generation") else None)  # fmt: skip
    return SelectOutcome({n: Timing(**f) for n, f in d["figures"].items()}, d["batch"], d["sizes"], d["threads"], d["load_average"])


@dataclass
class StepOutcome:
    """What a step process came back with: its payload, or why it has none."""

    result: Payload | None
    reason: str | None
    log: str  # relative to the build root
    hint: str | None = None
    usage: bool = False  # the step found the recipe or a file it names wrong (exit 2)
    node: dict | None = None  # where it ran, when not on this machine (--executor ray)
    peak_rss_mb: float | None = None
    dims: dict[str, AcceptedDim] = field(default_factory=dict)  # a failure's sizes torch.export accepts

    def to_dict(self, step: StepSpec) -> dict:
        """For carrying it between processes (Ray): the worker's own result record, and where it was read."""
        body = StepResult(self.result, "usage" if self.usage else "step", self.reason, self.hint, self.peak_rss_mb, self.dims).to_dict()
        return {"result": body, "log": self.log, "step": step.step}

    @classmethod
    def from_dict(cls, d: dict, node: dict | None = None) -> StepOutcome:
        r = StepResult.from_dict(d["result"], d["step"])
        return cls(r.payload, r.reason, d["log"], r.hint, r.error == "usage", node, r.peak_rss_mb, r.dims)


def dims_dict(dims: dict[str, AcceptedDim]) -> dict:
    return {n: a.to_dict() for n, a in dims.items()}


def dims_from(d: dict | None) -> dict[str, AcceptedDim]:
    return {n: AcceptedDim.from_dict(a) for n, a in (d or {}).items()}
