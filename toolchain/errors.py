"""Errors as data: every user-facing failure carries its exit code and a fix.

The CLI is the only place that turns these into text and an exit status.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_PARITY = 3
EXIT_CONVERSION = 4


@dataclass
class Problem:
    """One thing wrong with a recipe: where it is and how to fix it."""

    key: str  # dotted key path, e.g. "targets[1].opset"
    message: str
    line: int | None = None  # 1-based YAML line, when known
    hint: str | None = None

    def render(self, file: str | Path) -> str:
        where = f"{file}"
        if self.line is not None:
            where += f":{self.line}"
        text = f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"
        if self.hint:
            text += f"\n    fix: {self.hint}"
        return text


class MlpackError(Exception):
    """Base of the errors the CLI prints without a traceback."""

    exit_code = EXIT_UNEXPECTED

    def render(self) -> str:
        return str(self)


class UsageError(MlpackError):
    """A bad command line or a missing file named on it."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def render(self) -> str:
        return f"{self}" + (f"\n    fix: {self.hint}" if self.hint else "")


@dataclass
class RecipeError(MlpackError):
    """The recipe is invalid; holds every problem found, not only the first."""

    file: Path
    problems: list[Problem] = field(default_factory=list)
    exit_code = EXIT_USAGE

    def __post_init__(self) -> None:
        super().__init__(self.render())

    def render(self) -> str:
        n = len(self.problems)
        head = f"invalid recipe {self.file} ({n} problem{'s' if n != 1 else ''}):"
        return "\n".join([head, *("  " + p.render(self.file) for p in self.problems)])


class StepError(MlpackError):
    """A build step failed; `log` is the path of the log that explains it, `hint` how to fix it."""

    exit_code = EXIT_CONVERSION

    def __init__(self, message: str, log: Path | None = None, hint: str | None = None, dims: dict | None = None):
        super().__init__(message)
        self.log, self.hint = log, hint
        self.dims = dims or {}  # {name: AcceptedDim}: the sizes torch.export accepts, when it suggested them (issue 26)

    def render(self) -> str:
        return f"{self}" + (f"\n    fix: {self.hint}" if self.hint else "")


def one_line(e: BaseException) -> str:
    """`Type: first line of the message`, colour codes stripped: how a step's failure is summarised."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
