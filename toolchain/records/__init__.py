"""Typed records for everything that crosses a seam: a step's spec and what it came back with,
an export attempt, a parity report, a target's result, the selection, a cache entry and the
manifest. Each has `to_dict`/`from_dict`; this package is the one place that reads those dicts
by key, so every other module works with attributes. Imports no framework.

- verdicts.py: Status, Stage, the parity report
- steps.py: the worker protocol (StepSpec in, StepResult/StepOutcome out) and the artifact facts it carries
- results.py: TargetResult, Selection, CacheEntry, Manifest
"""

from toolchain.records.pipeline import PipelineReport, StageCheck
from toolchain.records.results import (
    SCHEMA_ID,
    AcceptedDim,
    BuildResult,
    CacheEntry,
    CacheRef,
    ClassChoice,
    Machine,
    Manifest,
    ParityData,
    Ranked,
    RemoteEntry,
    Selection,
    ServedModel,
    Serving,
    Speed,
    TargetResult,
    exit_code_for,
)
from toolchain.records.steps import (
    Attempt,
    Dependency,
    ExportRecord,
    FileEntry,
    Payload,
    ReferenceOutcome,
    RunnerSpec,
    SelectOutcome,
    StepOutcome,
    StepResult,
    StepSpec,
    StepType,
    TargetOutcome,
    Timing,
)
from toolchain.records.verdicts import RULE, STAGE_EXIT, ClassCheck, CpuProof, Divergence, GenerationReport, OutputDiff, ParityReport, Perplexity, Stage, Status

__all__ = [
    "PipelineReport",
    "StageCheck",
    "Attempt",
    "ClassCheck",
    "ClassChoice",
    "CpuProof",
    "BuildResult",
    "CacheEntry",
    "CacheRef",
    "Dependency",
    "Divergence",
    "ExportRecord",
    "FileEntry",
    "GenerationReport",
    "Perplexity",
    "Machine",
    "AcceptedDim",
    "Manifest",
    "OutputDiff",
    "ParityData",
    "ParityReport",
    "Payload",
    "RULE",
    "Ranked",
    "ReferenceOutcome",
    "RemoteEntry",
    "RunnerSpec",
    "SCHEMA_ID",
    "STAGE_EXIT",
    "SelectOutcome",
    "Selection",
    "ServedModel",
    "Serving",
    "Speed",
    "Stage",
    "Status",
    "StepOutcome",
    "StepResult",
    "StepSpec",
    "StepType",
    "TargetOutcome",
    "TargetResult",
    "Timing",
    "exit_code_for",
]
