"""What a target ended as: its status, the stage it stopped at, and the parity gate's report
(per-output diffs; the rule that judged them is RULE, applied by toolchain.parity.compare)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum

from toolchain.errors import EXIT_PARITY, EXIT_USAGE


class Status(str, Enum):
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"


class Stage(str, Enum):
    """Where a target stopped. An ok target has none."""

    RECIPE = "recipe"  # the recipe or a file it names is wrong (found while building): exit 2
    SOURCE = "source"  # loading or running the source model failed
    DEPENDENCY = "dependency"  # a target it is built from failed or was not built
    UNAVAILABLE = "unavailable"  # this machine cannot build or run it (skipped unless required)
    CONVERT = "convert"  # building the artifact, or loading it to check it, failed
    PARITY = "parity"  # it built, but its outputs differ from the source's beyond tolerance: exit 3
    SERVING = "serving"  # it passed, but a serving repository cannot hold it


# A failure at any stage but these two is a failure to convert (exit 4).
STAGE_EXIT = {Stage.RECIPE: EXIT_USAGE, Stage.PARITY: EXIT_PARITY}

RULE = (
    "an output passes when |artifact - reference| <= atol*scale + rtol*|reference| for every value, where scale is "
    "max(1, the largest |reference| value of that output in that sample) (where atol or rtol is set), "
    "its cosine to the reference (all samples, finite values) is at least the cosine floor, it has no non-finite value "
    "where the reference is finite, and, for outputs listed in parity.scores, the argmax over the last axis agrees on at "
    "least the top1 floor of the rows whose reference margin between the top two scores exceeds twice the artifact's typical "
    "row error (the median over rows of each row's largest error; closer rows are near-ties and are not counted); "
    "an integer or bool output (ids, argmax decisions, masks) is judged by agreement instead of atol, rtol and cosine: "
    "the share of its values equal to the reference is at least the top1 floor, or 1 where the budget has none"
)


@dataclass
class OutputDiff:
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0
    cosine: float = 1.0
    top1: float | None = None  # only for outputs listed in parity.scores
    top1_rows: int | None = None  # rows whose top-1 was decided (the margin beat the noise)
    top1_ties: int = 0  # near-ties: rows not counted
    agreement: float | None = None  # integer/bool outputs only: the share of values equal to the reference
    nonfinite: int = 0  # non-finite values in the artifact where the reference is finite
    atol_scale: float = 1.0  # the largest factor atol was scaled by: max(1, max |reference|) of a sample
    compared: int = 0  # values compared: same shape, finite in the reference
    passed: bool = True
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> OutputDiff:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass
class ParityReport:
    passed: bool
    samples: int
    tolerance: dict
    outputs: dict[str, OutputDiff]
    scores: list[str] = field(default_factory=list)  # outputs judged as class scores (top-1)

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "samples": self.samples,
            "tolerance": self.tolerance,
            "scores": self.scores,
            "rule": RULE,
            "outputs": {k: v.to_dict() for k, v in self.outputs.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> ParityReport:
        outputs = {k: OutputDiff.from_dict(o) for k, o in d["outputs"].items()}
        return cls(d["passed"], d["samples"], d["tolerance"], outputs, d.get("scores", []))

    def first_failure(self) -> str | None:
        if not self.outputs:
            return "no parity samples were compared"
        return next((f"{name}: {d.failures[0]}" for name, d in self.outputs.items() if d.failures), None)

    def worst(self) -> tuple[float, float]:
        """(largest max_abs_err, smallest cosine) across outputs."""
        if not self.outputs:
            return 0.0, 1.0
        graded = self.graded()
        return max(d.max_abs_err for d in graded), min(d.cosine for d in graded)

    def graded(self) -> list[OutputDiff]:
        """The outputs judged by error and cosine (integer outputs are judged by agreement), else all."""
        return [d for d in self.outputs.values() if d.agreement is None] or list(self.outputs.values())

    def margin(self) -> float:
        """How far the worst output is from its floors (>= 0 passes them): what a precision search maximises."""
        tol = self.tolerance
        margins = []
        for d in self.outputs.values():
            if d.agreement is not None:  # an integer output: judged by agreement only (parity.compare)
                margins.append(d.agreement - tol.get("top1", 1.0))
            elif "cosine" in tol:
                margins.append(d.cosine - tol["cosine"])
            if "top1" in tol and d.top1 is not None:
                margins.append(d.top1 - tol["top1"])
            if d.nonfinite:
                margins.append(-1.0)
        return min(margins, default=0.0 if self.passed else -1.0)

    @property
    def worst_cosine(self) -> float:
        """The smallest cosine among outputs judged by cosine (1.0 when there is none)."""
        return min((d.cosine for d in self.outputs.values() if d.agreement is None), default=1.0)

    def summary(self) -> dict:
        """The figures an attempt records: passed, worst cosine, worst top-1."""
        top1 = [d.top1 for d in self.outputs.values() if d.top1 is not None]
        return {"passed": self.passed, "cosine": self.worst_cosine, "top1": min(top1) if top1 else None}


@dataclass
class Divergence:
    """Where a generator first chose another token than the source, for one prompt."""

    prompt: int
    step: int
    expected: int
    got: int
    margin: float  # the source's own gap between its top two logits there (a near-tie flips on noise)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Perplexity:
    """A generator's perplexity on the text sample against the source's (toolchain.generation.perplexity_check)."""

    source: float | None
    artifact: float | None  # None: not finite
    delta: float | None  # artifact / source - 1
    budget: float | None  # the largest delta allowed (parity.*.perplexity); None: reported, not judged
    tokens: int  # tokens predicted
    passed: bool

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class GenerationReport:
    """A generator judged token by token (toolchain.generation.judge): greedy choices in the source's context, and logits."""

    passed: bool
    prompts: int
    steps: int  # next tokens compared, over all prompts
    token_match: float  # the share of them the artifact chose as the source did
    floor: float
    divergences: list[Divergence]
    step_cosine: list[float]  # per step, the smallest logit cosine over the prompts
    logits: ParityReport
    how: str  # what ran the loop: the artifact's runner with mlpack's loop, or the runtime's own generator
    failures: list[str] = field(default_factory=list)
    perplexity: Perplexity | None = None

    def to_dict(self) -> dict:
        return {
            "perplexity": self.perplexity.to_dict() if self.perplexity else None,
            "passed": self.passed,
            "prompts": self.prompts,
            "steps": self.steps,
            "token_match": self.token_match,
            "floor": self.floor,
            "divergences": [d.to_dict() for d in self.divergences],
            "step_cosine": self.step_cosine,
            "logits": self.logits.to_dict(),
            "how": self.how,
            "failures": self.failures,
        }

    @classmethod
    def from_dict(cls, d: dict) -> GenerationReport:
        return cls(d["passed"], d["prompts"], d["steps"], d["token_match"], d["floor"], [Divergence(**x) for x in d["divergences"]],
                   list(d["step_cosine"]), ParityReport.from_dict(d["logits"]), d.get("how", ""), list(d.get("failures", [])),
                   Perplexity(**d["perplexity"]) if d.get("perplexity") else None)  # fmt: skip


@dataclass
class ClassCheck:
    """One CPU class's verdict on an artifact (toolchain/cpuclass.py, toolchain/classgate.py).

    status: passed (its parity ran here, natively or with the ISA capped to the class) | failed | derived (not run:
    holds by the arithmetic, integer products that cannot saturate) | untested (this machine cannot run the class, or
    the runtime cannot be capped to it). `offered`: whether selection and serving may hand the artifact to the class.
    """

    cls: str
    status: str
    how: str
    offered: bool
    reason: str = ""
    cosine: float | None = None
    max_abs_err: float | None = None

    def to_dict(self) -> dict:
        return {"class": self.cls, "status": self.status, "how": self.how, "offered": self.offered, "reason": self.reason,
                "cosine": self.cosine, "max_abs_err": self.max_abs_err}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> ClassCheck:
        return cls(d["class"], d["status"], d["how"], bool(d["offered"]), d.get("reason", ""), d.get("cosine"), d.get("max_abs_err"))


@dataclass
class CpuProof:
    """Where an artifact was proved: the build machine's class and features, the class its compiled code needs to run
    at all, the features it needs to run at its measured speed, and each class's verdict."""

    built_on: str | None
    features: list[str]
    needs: str | None  # None: no compiled code of its own (the runtime dispatches), or nothing beyond SSE
    compiled_for: str | None  # the class its code was compiled for (serve.cpus), None: the build machine (-march=native)
    fast_on: list[str]
    classes: list[ClassCheck]

    def to_dict(self) -> dict:
        return {"built_on": self.built_on, "features": self.features, "needs": self.needs, "compiled_for": self.compiled_for,
                "fast_on": self.fast_on, "classes": [c.to_dict() for c in self.classes]}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> CpuProof:
        return cls(d.get("built_on"), list(d.get("features", [])), d.get("needs"), d.get("compiled_for"), list(d.get("fast_on", [])),
                   [ClassCheck.from_dict(c) for c in d.get("classes", [])])  # fmt: skip

    def check(self, cls: str | None) -> ClassCheck | None:
        return next((c for c in self.classes if c.cls == cls), None)

    def offered_to(self) -> list[str]:
        return [c.cls for c in self.classes if c.offered]


@dataclass
class PadCheck:
    """dims.<name>.pad judged on one artifact (issue 26): the pad samples (sizes it does not accept) zero-padded up to
    accepted ones, run, trimmed back along the output axes that follow the padded dim, against the source at the
    sizes asked. `trims` is what the served model.py cuts: output -> [[axis, dim], ...]."""

    passed: bool
    samples: list[str] = field(default_factory=list)  # "seq 9 -> 16" per pad sample
    trims: dict[str, list[list]] = field(default_factory=dict)
    worst_cosine: float | None = None
    failure: str | None = None

    def to_dict(self) -> dict:
        return {"passed": self.passed, "samples": self.samples, "trims": self.trims, "worst_cosine": self.worst_cosine, "failure": self.failure}

    @classmethod
    def from_dict(cls, d: dict) -> PadCheck:
        return cls(d["passed"], d.get("samples", []), d.get("trims", {}), d.get("worst_cosine"), d.get("failure"))
