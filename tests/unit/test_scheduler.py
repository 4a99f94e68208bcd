"""Scheduling order with dependencies; building a target (Run.target) is replaced by a recorder
(the real steps are exercised end to end in tests/e2e/test_build_engine.py)."""

from __future__ import annotations

import threading
import time
import types

import pytest

from toolchain import build as b
from toolchain.plan import Plan
from toolchain.recipe import parse_recipe
from toolchain.records import ParityReport, Stage, Status, TargetResult
from toolchain.steps import Children

RECIPE = """\
name: dag
source: {framework: pytorch, factory: m.py:build}
inputs: [{name: x, dtype: float32, shape: [2]}]
targets:
  - {kind: onnx, name: base}
  - {kind: onnx, name: int8}
  - {kind: onnx, name: other}
"""


@pytest.fixture
def plan(tmp_path):
    recipe = parse_recipe(RECIPE, tmp_path / "r.yaml", check_files=False)
    return Plan(recipe, recipe.targets, "0" * 64, {t.target_name: "1" * 64 for t in recipe.targets})


def run(plan, monkeypatch, outcome: dict[str, bool], jobs: int):
    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    kind = types.SimpleNamespace(requires=lambda spec, recipe: ["base"] if spec.target_name == "int8" else [])
    monkeypatch.setattr(b.kinds, "get", lambda name: kind)

    def fake_target(spec, deps):
        with lock:
            events.append(("start", spec.target_name, tuple(deps)))
        time.sleep(0.05)
        with lock:
            events.append(("end", spec.target_name, ()))
        ok = outcome.get(spec.target_name, True)
        res = TargetResult(spec.target_name, spec.kind, Status.OK if ok else Status.FAILED, None if ok else Stage.CONVERT, None if ok else "boom")
        res.parity = ParityReport(True, 1, {}, {}) if ok else None
        return res

    # the build in progress, as the scheduler sees it: its plan, how a target is built, the reference's state
    run = types.SimpleNamespace(plan=plan, target=fake_target, reference=types.SimpleNamespace(failed=None), children=Children())
    results: dict = {}
    b.Scheduler(run, jobs, results).run()
    return events, results


def test_dependent_waits_for_its_dependency(plan, monkeypatch):
    events, results = run(plan, monkeypatch, {}, jobs=3)
    order = [(e[0], e[1]) for e in events]
    assert order.index(("end", "base")) < order.index(("start", "int8"))
    assert next(e for e in events if e[:2] == ("start", "int8"))[2] == ("base",)  # told where its dependency is
    assert {r.status for r in results.values()} == {Status.OK}


def test_failed_dependency_fails_dependent_without_running_it(plan, monkeypatch):
    events, results = run(plan, monkeypatch, {"base": False}, jobs=2)
    assert ("start", "int8") not in [(e[0], e[1]) for e in events]
    assert results["int8"].status is Status.FAILED and results["int8"].reason == "needs target base, which failed"
    assert results["int8"].stage is Stage.DEPENDENCY
    assert results["other"].status is Status.OK


def test_jobs_bounds_concurrency(plan, monkeypatch):
    events, _ = run(plan, monkeypatch, {}, jobs=1)
    live = peak = 0
    for kind, *_ in events:
        live += 1 if kind == "start" else -1
        peak = max(peak, live)
    assert peak == 1
