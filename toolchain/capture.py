"""One capture ladder for every kind that exports a model (ONNX, AOTInductor), after torch.onnx's
capture strategies: an ordered list of strategies, each tried when its condition holds on the
attempts before it; the first that produces a result wins. A failure is an Attempt record (the
strategy, the stage it reached, why), never an exception hung with state. Imports no framework.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from toolchain.errors import one_line
from toolchain.records import Attempt

T = TypeVar("T")
ERROR_CHARS = 500  # of an attempt's error, in the manifest


class AttemptFailed(Exception):
    """A strategy's failure as data: the stage it reached and why.

    `strategy` names the attempt when it differs from the strategy's (an export that needed a
    variant), `sized` says a dynamic dim could not stay dynamic, `detail` is the whole text."""

    def __init__(self, stage: str | None, error: str, *, strategy: str | None = None, detail: str | None = None, sized: bool = False,
                 configs: dict | None = None):  # fmt: skip
        super().__init__(error)
        self.stage, self.error, self.strategy, self.detail, self.sized, self.configs = stage, error, strategy, detail, sized, configs


def innermost(e: BaseException) -> BaseException:
    """The innermost cause: exporters wrap the real error in a generic one."""
    while e.__cause__ is not None:
        e = e.__cause__
    return e


@dataclass(frozen=True)
class Strategy(Generic[T]):
    name: str
    run: Callable[[], T]
    when: Callable[[list[Attempt]], bool] | None = None  # tried only when this holds on the attempts so far
    stage: str | None = None  # the stage an unexpected exception is recorded at
    sized: Callable[[BaseException], bool] | None = None  # whether an unexpected exception is about a dim's size


@dataclass
class Captured(Generic[T]):
    value: T
    strategy: str
    tried: list[Attempt]


class CaptureFailed(Exception):
    """Every strategy failed; `tried` says how each did."""

    def __init__(self, tried: list[Attempt]):
        super().__init__("; ".join(f"{t.strategy}: {t.error}" for t in tried) or "no strategy applied")
        self.tried = tried


def climb(strategies: Iterable[Strategy[T]], what: str, tried: list[Attempt] | None = None) -> Captured[T]:
    """Try `strategies` in order (a generator may decide the next from the attempts so far); the first
    result wins. Each failure is recorded and printed, with its traceback, into the step's log."""
    tried = [] if tried is None else tried
    for s in strategies:
        if s.when is not None and not s.when(tried):
            continue
        try:
            value = s.run()
        except AttemptFailed as e:
            attempt = Attempt(e.strategy or s.name, e.stage, e.error[:ERROR_CHARS], e.configs, e.detail or e.error, e.sized)
        except Exception as e:
            sized = bool(s.sized and s.sized(e))
            attempt = Attempt(s.name, s.stage, one_line(innermost(e))[:ERROR_CHARS], detail=str(e), sized=sized)
        else:
            return Captured(value, s.name, tried)
        tried.append(attempt)
        print(f"{what}: {attempt.strategy} failed" + (f" at {attempt.stage}" if attempt.stage else "") + f": {attempt.error}")
        traceback.print_exc()  # into the step's log
    raise CaptureFailed(tried)
