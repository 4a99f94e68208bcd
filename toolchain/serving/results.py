"""serve-check's verdicts as data: one ModelCheck per served model, the run's result, its exit code."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from toolchain.errors import EXIT_CONVERSION, EXIT_OK, EXIT_PARITY
from toolchain.records import ParityReport


class CheckStatus(str, Enum):
    OK = "ok"
    MISMATCH = "mismatch"  # served, but the answers differ from the source model: exit 3
    REFUSED = "refused"  # the server (or its native backend) refused the model or a request: exit 4
    SKIPPED = "skipped"  # not checked here, with the reason


@dataclass
class ModelCheck:
    """One served model's verdict."""

    target: str
    server: str  # triton | tfserving
    model: str
    backend: str  # what served it, labelled honestly
    native_backend: str | None = None  # what its config asks for
    status: CheckStatus = CheckStatus.SKIPPED
    reason: str | None = None
    server_version: str | None = None
    native_check: list[str] = field(default_factory=list)  # what the native backend would refuse
    parity: ParityReport | None = None
    requests: int = 0
    load_seconds: float = 0.0
    infer_seconds: float = 0.0
    log: str | None = None
    generation: dict | None = None  # a streaming generator's: tokens streamed against the source's greedy tokens
    role: str = "artifact"  # or "pipeline": the raw-input ensemble (serving/pipeline_check.py); "source", "w8a8", "w4a16": vLLM
    pipeline: dict | None = None  # the ensemble's: raw samples to answers, stage by stage (records.PipelineReport)
    sizes: dict | None = None  # the sizes model.py pads and refuses, sent over the server (serving/size_check.py)

    @property
    def key(self) -> str:
        """Where the manifest keeps it under the target's serving_check: triton, or triton_pipeline."""
        return self.server if self.role in ("artifact", "source") else f"{self.server}_{self.role}"

    def to_dict(self) -> dict:
        return (
            ({"generation": self.generation} if self.generation is not None else {})
            | ({"pipeline": self.pipeline} if self.pipeline is not None else {})
            | ({"sizes": self.sizes} if self.sizes is not None else {})
            | {
                "server": self.server,
                "server_version": self.server_version,
                "model": self.model,
                "backend": self.backend,
                "native_backend": self.native_backend,
                "status": self.status.value,
                "reason": self.reason,
                "native_check": self.native_check,
                "requests": self.requests,
                "load_seconds": round(self.load_seconds, 3),
                "infer_seconds": round(self.infer_seconds, 3),
                "log": self.log,
                "parity": self.parity.to_dict() if self.parity else None,
            }
        )


@dataclass
class ServeCheckResult:
    root: Path
    models: list[ModelCheck]
    skipped: dict[str, str]  # server -> why nothing was checked there
    server_version: str | None = None
    start_seconds: float | None = None
    manifest: dict | None = None

    @property
    def exit_code(self) -> int:
        if any(m.status is CheckStatus.REFUSED for m in self.models):
            return EXIT_CONVERSION
        if any(m.status is CheckStatus.MISMATCH for m in self.models):
            return EXIT_PARITY
        return EXIT_OK
