"""Results as data: what each target ended as, at which stage, and the exit code they make.

The CLI prints these; nothing here prints or exits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from toolchain.errors import EXIT_CONVERSION, EXIT_OK, EXIT_PARITY, EXIT_USAGE
from toolchain.parity import ParityReport


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
    files: list[dict] = field(default_factory=list)
    signature: dict | None = None
    runner: dict | None = None  # the RunnerSpec that loads the artifact (paths relative to the build root)
    parity: ParityReport | None = None
    log: str | None = None
    cache: dict | None = None
    extra: dict = field(default_factory=dict)  # fields a kind adds to its manifest entry

    FIELDS = ("name", "kind", "status", "stage", "reason", "hint", "build_seconds", "device", "log", "files", "signature", "runner", "parity", "cache")

    @classmethod
    def failed(cls, name: str, kind: str, stage: Stage, reason: str, **kw) -> TargetResult:
        return cls(name, kind, Status.FAILED, stage, reason, **kw)

    def fail(self, stage: Stage, reason: str, hint: str | None = None) -> None:
        self.status, self.stage, self.reason, self.hint = Status.FAILED, stage, reason, hint

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
            "files": self.files,
            "signature": self.signature,
            "runner": self.runner,
            "parity": self.parity.to_dict() if self.parity else None,
            "cache": self.cache,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict) -> TargetResult:
        known = {k: d[k] for k in cls.FIELDS if k in d and k not in ("status", "stage", "parity")}
        r = cls(**known, extra={k: v for k, v in d.items() if k not in cls.FIELDS})
        r.status = Status(d.get("status", "failed"))
        r.stage = Stage(d["stage"]) if d.get("stage") else None
        r.parity = ParityReport.from_dict(d["parity"]) if d.get("parity") else None
        return r


@dataclass
class BuildResult:
    manifest: dict
    path: Path  # where the output now lies (published, or the .failed copy)
    published: bool
    exit_code: int
    targets: list[TargetResult]


def exit_code_for(results: list[TargetResult]) -> int:
    """2 for a bad recipe found while building, else 4 for any other failure, else 3 for parity, else 0."""
    codes = {STAGE_EXIT.get(r.stage, EXIT_CONVERSION) for r in results if r.status is Status.FAILED}
    for code in (EXIT_USAGE, EXIT_CONVERSION, EXIT_PARITY):
        if code in codes:
            return code
    return EXIT_OK
