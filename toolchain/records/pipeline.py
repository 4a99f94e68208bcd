"""The pipeline judged end to end (recipe preprocess/postprocess): one check per stage, so a mismatch is
named where it starts (the tokenizer, the image normalisation, the model, the pooling or labels)."""

from __future__ import annotations

from dataclasses import dataclass, field

STAGES = ("preprocess", "model", "postprocess", "answer")


@dataclass
class StageCheck:
    stage: str  # one of STAGES
    passed: bool
    metric: str  # what was compared: "token ids equal", "max_abs_err", "cosine", "top-1 agreement"
    value: float
    budget: float
    detail: str = ""  # the first sample that failed, what differed

    def line(self) -> str:
        return f"stage {self.stage}: {self.metric} {self.value:.6g} (budget {self.budget:g})" + (f"; {self.detail}" if self.detail else "")

    def to_dict(self) -> dict:
        return {"stage": self.stage, "passed": self.passed, "metric": self.metric, "value": round(float(self.value), 8), "budget": self.budget,
                "detail": self.detail}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> StageCheck:
        return cls(d["stage"], bool(d["passed"]), d["metric"], float(d["value"]), float(d["budget"]), d.get("detail", ""))


@dataclass
class PipelineReport:
    """Raw samples through preprocessing, the model and postprocessing, against the source framework's pipeline."""

    samples: int
    checks: list[StageCheck] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def first_failure(self) -> StageCheck | None:
        return next((c for c in self.checks if not c.passed), None)

    def get(self, stage: str) -> StageCheck | None:
        return next((c for c in self.checks if c.stage == stage), None)

    def to_dict(self) -> dict:
        return {"samples": self.samples, "passed": self.passed, "checks": [c.to_dict() for c in self.checks]}

    @classmethod
    def from_dict(cls, d: dict) -> PipelineReport:
        return cls(int(d["samples"]), [StageCheck.from_dict(c) for c in d.get("checks", [])])
