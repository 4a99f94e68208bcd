"""Run a recipe: plan its steps, schedule them (in parallel where targets are independent),
each through the cache (toolchain.cache.BuildCache.step: look up, run, verify, store), then
write the serving repositories and the manifest and publish atomically.

This module imports no ML framework: framework work happens in `toolchain.worker`
subprocesses, so an unchanged rebuild is instant. Nothing here prints or exits;
results come back as data for the CLI.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from toolchain import cpuclass, kinds, padcheck, pipeline, selection
from toolchain import manifest as mf
from toolchain.cache import BuildCache
from toolchain.errors import EXIT_OK, UsageError
from toolchain.executors import Executor, open_executor, resources_for
from toolchain.feeds import save_feeds
from toolchain.fsutil import clean_stale, publish
from toolchain.generation import GENERATION_FILE, TEXT_FILE
from toolchain.kinds.base import SHARED
from toolchain.lock import build_lock
from toolchain.machine import cpu_identity
from toolchain.options import memory_bytes
from toolchain.plan import Plan, default_jobs, make_plan
from toolchain.progress import Progress
from toolchain.recipe import Recipe
from toolchain.records import (
    AcceptedDim,
    BuildResult,
    CacheEntry,
    CacheRef,
    ClassCheck,
    Dependency,
    Machine,
    Selection,
    Stage,
    Status,
    StepSpec,
    TargetResult,
    exit_code_for,
)
from toolchain.samples import samples_for
from toolchain.serving.repositories import write_repositories
from toolchain.sources import check_framework
from toolchain.steps import Children, StepOutcome, log_files, reap_orphans, run_step, server_for
from toolchain.torchtools import export_errors

DEFAULT_TIMEOUT = 1800.0


def build(recipe: Recipe, out_root: Path, only: list[str] | None = None, progress: Progress | None = None,
          jobs: int | None = None, force: bool = False, cache_url: str | None = None, executor: str | None = None) -> BuildResult:  # fmt: skip
    """Build every requested target of `recipe` under `out_root/<name>/`.

    `cache_url` (else MLPACK_CACHE): a shared cache on any fsspec URL, asked after the local one.
    `executor`: local (default), ray or ray://HOST:PORT: where step processes run (toolchain.executors).
    """
    progress = progress or Progress()
    # Absolute: steps run in worker processes whose working directory is the step's logs folder.
    out_root = Path(out_root).resolve()
    check_out_root(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    with build_lock(out_root / f".{recipe.name}.lock", progress.note):
        for final in (out_root / recipe.name, out_root / f"{recipe.name}.failed"):
            check_replaceable(final)
        plan = make_plan(recipe, only, out_root)
        cache = BuildCache.open(out_root, cache_url, force)
        steps = open_executor(executor)
        try:
            fixed: dict[str, AcceptedDim] = {}
            for attempt in range(1, MAX_ATTEMPTS + 1):  # torch.export's fixes, or a package's checks, reveal sizes one at a time
                result = _build_locked(plan, out_root, progress, jobs or default_jobs(), cache, steps, retry=attempt < MAX_ATTEMPTS)
                if not isinstance(result, dict):
                    break
                fixed = {
                    n: AcceptedDim(a.min, a.max, a.multiple, recipe.dims[n].describe(), recipe.dims[n].accepted().pad) for n, a in (fixed | result).items()
                }
                static = [n for n, a in result.items() if a.min == a.max and recipe.dims[n].min < recipe.dims[n].max]
                why = (
                    f"no target builds with {', '.join(static)} dynamic (the exporters fix {'it' if len(static) == 1 else 'them'} to the example's size); "
                    if static
                    else ""
                )
                progress.note(why + "torch.export accepts " + ", ".join(f"{n} {a.text} (the recipe says {a.recipe})" for n, a in fixed.items())
                              + ": building every target again over those sizes; " + export_errors.dims_fix(fixed) + " in the recipe says so")  # fmt: skip
                plan = make_plan(recipe, only, out_root, fixed)
        finally:
            steps.close()
        if cache.summary():
            progress.note(cache.summary())
        return result


MAX_ATTEMPTS = 3  # builds of one recipe: its own dims, then up to two narrowings


def check_out_root(out_root: Path) -> None:
    """--out must be a folder, or a path where one can be made."""
    for p in (out_root, *out_root.parents):
        if p.exists():
            if not p.is_dir():
                raise UsageError(f"--out: {p} is a file, not a folder" + (f" (in the path of {out_root})" if p != out_root else ""),
                                 "give --out a folder; mlpack creates it if it is missing")  # fmt: skip
            if not os.access(p, os.W_OK | os.X_OK) and p == out_root:
                raise UsageError(f"--out: {out_root} is not writable", "give --out a folder you can write to")
            return


def check_replaceable(final: Path) -> None:
    """Publishing swaps `final` away: refuse unless it is mlpack's own output (or empty)."""
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise UsageError(f"--out: {final} is {'a symbolic link' if final.is_symlink() else 'a file'}, not an mlpack output; "
                         "publishing would replace it", f"move {final} away, or build into another --out")  # fmt: skip
    if not final.is_dir() or not any(final.iterdir()):
        return
    if not mf.is_mlpack_output(final):
        raise UsageError(f"--out: {final} holds files that are not an mlpack output (no mlpack manifest.json); publishing would replace them",
                         f"move {final} away, or build into another --out")  # fmt: skip


def _build_locked(plan: Plan, out_root: Path, progress: Progress, jobs: int, cache: BuildCache, steps: Executor,
                  retry: bool = False) -> BuildResult | dict[str, AcceptedDim]:  # fmt: skip
    """Build, judge, publish. With `retry`, a build that failed where torch.export named the sizes it accepts is not
    published: those sizes come back instead, for the caller to build over."""
    recipe = plan.recipe
    started = time.perf_counter()
    reap_orphans(str(out_root / f".{recipe.name}.tmp-"))  # steps of a build that was killed, before their folders go
    clean_stale(out_root, f".{recipe.name}.tmp-*")
    staging = out_root / f".{recipe.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    # Local steps fork from one process that imported the frameworks once (toolchain.stepserver)
    run = Run(plan, staging, out_root, progress, cache, steps, Children(server_for(staging, recipe) if steps.name == "local" else None))
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):  # stop like Ctrl-C: children killed, staging removed
        try:
            previous[sig] = signal.signal(sig, _raise_interrupt)
        except ValueError:  # not the main thread
            pass
    try:
        results = run.targets(jobs)
        shutil.rmtree(staging / SHARED, ignore_errors=True)  # what the targets shared (one ONNX export) is not published
        chosen = run.select(results) if recipe.select else None
        serving = write_repositories(recipe, results, staging, progress, chosen, plan.accepted)
        code = exit_code_for(results)
        suggested = run.suggested_dims() if retry and code != EXIT_OK else {}
        if any(r.ok for r in results):  # a static size would cost the targets that built its range: named, not applied
            suggested = {n: a for n, a in suggested.items() if a.min < a.max or plan.recipe.dims[n].min == plan.recipe.dims[n].max}
        if suggested and any(plan.recipe.dims[n].describe() != a.text for n, a in suggested.items() if n in plan.recipe.dims):
            shutil.rmtree(staging, ignore_errors=True)
            return suggested
        manifest = mf.assemble(recipe, results, serving, time.perf_counter() - started, chosen, plan.fixed)
        mf.write(staging / "manifest.json", manifest)
        final = out_root / recipe.name if code == EXIT_OK else out_root / f"{recipe.name}.failed"
        publish(staging, final)
        return BuildResult(manifest, final, code == EXIT_OK, code, results)
    except BaseException:
        run.children.stop_all()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        run.children.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def step_limits(specs) -> tuple[float, str]:
    """Time and memory for the steps no target owns (reference, select): the most any target of the run allows."""
    if not specs:
        return DEFAULT_TIMEOUT, "90%"
    return max(s.timeout for s in specs), max((s.memory for s in specs), key=memory_bytes)


@dataclass
class Run:
    """One build in progress: its plan, where it writes, and the cache and executor its steps go through."""

    plan: Plan
    staging: Path
    out_root: Path
    progress: Progress
    cache: BuildCache
    executor: Executor
    children: Children = field(default_factory=Children)
    export_sizes: list[dict[str, AcceptedDim]] = field(default_factory=list)  # failed steps' sizes torch.export accepts

    def __post_init__(self) -> None:
        self.reference = Reference(self)

    def suggested_dims(self) -> dict[str, AcceptedDim]:
        """The sizes torch.export accepts, from every failed step that said (the reference's and the targets'):
        per dim, the sizes all of them accept; {} when they say none or leave a dim without sizes."""
        found = self.export_sizes + ([self.reference.failed.dims] if self.reference.failed is not None and self.reference.failed.dims else [])
        merged: dict[str, AcceptedDim] = {}
        for dims in found:
            for n, a in dims.items():
                b = merged.get(n) or a
                both = AcceptedDim.snapped(max(a.min, b.min), min(a.max, b.max), math.lcm(a.multiple or 1, b.multiple or 1))
                if both is None:
                    return {}
                merged[n] = both
        return merged

    def targets(self, jobs: int) -> list[TargetResult]:
        results: dict[str, TargetResult] = {}
        Scheduler(self, jobs, results).run()
        judged = [r for r in results.values() if r.parity is not None]
        if judged and not self.reference.made:
            # Every judged target was a cache hit: the manifest names parity/, and a published output never
            # lacks what its manifest names, so the samples and outputs they were judged on come back too.
            failure = self.reference.ensure(all_hits=True)
            if failure is not None:
                for r in judged:
                    results[r.name] = failure(r.name, r.kind)
        return [results[s.target_name] for s in self.plan.specs]

    def target(self, spec, deps: dict[str, Dependency]) -> TargetResult:
        """One target through the cache: a verified hit, a skip, or its step (after the reference's)."""
        name, key = spec.target_name, self.plan.keys[spec.target_name]

        def produce() -> CacheEntry | TargetResult:
            reason = (self.executor.gpu_reason(spec.gpu) if spec.gpu else None) or kinds.get(spec.kind).skip_reason(spec)
            if reason:
                res = TargetResult(name, spec.kind, Status.SKIPPED, Stage.UNAVAILABLE, reason, device=spec.target_device)
                if spec.required:
                    res.fail(Stage.UNAVAILABLE, reason + " (required: true)")
                self.progress.note(f"{name}: {res.status.value} - {reason}")
                return res
            failure = self.reference.ensure()
            if failure is not None:
                return failure(name, spec.kind)
            res = self._target_step(spec, deps)
            return CacheEntry(res.files, target=res) if res.ok else res

        out = self.cache.step(key, self.staging, produce, log_files(name))
        if not out.hit:
            return out.entry.target if out.entry is not None else out.failure
        res = out.entry.target
        res.cache = CacheRef(key, True)
        self.progress.note(f"{name}: cache hit ({key[:12]}), files verified")
        return res

    def _target_step(self, spec, deps: dict[str, Dependency]) -> TargetResult:
        name = spec.target_name
        self.progress.start(name, f"{name}: building {spec.kind}")
        res = TargetResult(name, spec.kind, device=spec.target_device, cache=CacheRef(self.plan.keys[name], False))
        t0 = time.perf_counter()
        step = StepSpec("target", str(self.plan.recipe.path), target=name, deps=deps, out_root=str(self.out_root), dims=self.plan.fixed)
        out = self.executor.run(step, self.staging, name, spec.timeout, self.children, spec.memory, self.plan.recipe, resources_for(spec))
        res.log = out.log
        node = {"node": out.node} if out.node else {}
        res.build_seconds = time.perf_counter() - t0
        if out.result is None:
            res.extra.update(node)
            res.fail(Stage.RECIPE if out.usage else Stage.CONVERT, out.reason, out.hint)
            if out.dims:
                self.export_sizes.append(out.dims)
            self.progress.end(name, res.status.value, f"{(res.reason or '').splitlines()[0]} (log: {res.log})")
            return res
        o = out.result
        res.build_seconds, res.device, res.files, res.signature, res.runner, res.parity = o.build_seconds, o.device, o.files, o.signature, o.runner, o.parity
        res.extra = {**o.extra, "peak_rss_mb": out.peak_rss_mb, **node}
        res.generation = o.generation
        piped, pad = res.pipeline, res.pad
        if res.parity.passed and (o.generation is None or o.generation.passed) and (piped is None or piped.passed) and (pad is None or pad.passed):
            res.status = Status.OK
        elif not res.parity.passed:
            res.fail(Stage.PARITY, "parity failed")
        elif o.generation is not None and not o.generation.passed:
            res.fail(Stage.PARITY, f"generation parity failed: {o.generation.failures[0]}")
        elif pad is not None and not pad.passed:
            res.fail(Stage.PARITY, f"pad check failed: {pad.failure}", "remove dims.<name>.pad: served models then refuse sizes the artifacts do not accept")
        else:
            res.fail(Stage.PARITY, f"pipeline parity failed, {piped.first_failure().line()}",
                     "fix the recipe's preprocess/postprocess to match how the model was trained" if piped.first_failure().stage in ("preprocess", "postprocess") else None)  # fmt: skip
        abs_err, cos = res.parity.worst()
        why = res.parity.first_failure() if not res.parity.passed else (res.reason if not res.ok else None)
        tokens = f", greedy tokens {o.generation.token_match:.4f} as the source's" if o.generation else ""
        ppl = o.generation.perplexity if o.generation else None
        tokens += f", perplexity {ppl.delta:+.2%}" if ppl is not None and ppl.delta is not None else ""
        tokens += f", raw samples end to end: {piped.get('answer').metric} {piped.get('answer').value:.6f}" if piped and piped.get("answer") else ""
        self.progress.end(name, res.status.value, f"max_abs_err {abs_err:.2e}, cosine {cos:.6f}{tokens}" + (f" - {why}" if why else ""))
        return res

    def select(self, results: list[TargetResult]) -> Selection | None:
        """Time every artifact that passed, interleaved in one process; rank them by the recipe's metric.

        Timings are cached under the artifacts' keys, the select options and this
        machine's type: a rebuild elsewhere (another CPU) times them again.
        """
        recipe, sel = self.plan.recipe, self.plan.recipe.select
        candidates = {r.name: r.runner for r in results if r.ok and r.runner}
        if not candidates:
            return None
        machine = Machine.from_dict(cpu_identity())
        key = self.plan.selection_key(list(candidates), machine)
        ref = CacheRef(key, False)

        def produce() -> CacheEntry | Selection:
            self.progress.start("select", f"timing {len(candidates)} artifacts ({sel.metric}, {sel.threads} thread{'s' if sel.threads > 1 else ''})")
            timeout, memory = step_limits(self.plan.specs)
            # Always here: the figures are this machine's (its type keys the cached timings).
            step = StepSpec("select", str(recipe.path), candidates=candidates, dims=self.plan.fixed)
            out = run_step(step, self.staging, "select", timeout, self.children, memory_bytes(memory))
            if out.result is None:
                self.progress.end("select", "failed", f"{out.reason.splitlines()[0]} (log: {out.log})")
                return selection.failed(sel, machine, ref, out.reason, out.log)
            chosen = selection.rank(sel, out.result, {r.name: r.kind for r in results}, machine, ref, out.log)
            self.progress.end("select", "ok", ", ".join(f"{r.target} {r.median_ms:.3f} ms ({r.vs_eager:.2f}x eager)" for r in chosen.ranking))
            return CacheEntry(selection=chosen)

        out = self.cache.step(key, self.staging, produce, log_files("select"))
        if not out.hit:
            chosen = out.entry.selection if out.entry is not None else out.failure
        else:
            self.progress.note(f"selection: cache hit ({key[:12]}): timings measured earlier on this machine type ({machine.model})")
            chosen = out.entry.selection
            chosen.cache = CacheRef(key, True)
        chosen = selection.prefer_closest(chosen, results, sel.tie)
        if chosen.tie_break:
            self.progress.note(f"selection: {chosen.tie_break}")
        if recipe.serve.cpus and chosen.ranking:  # the fleet's classes: the fastest artifact offered to each
            here = cpuclass.machine_class()
            timed = {cls: self._select_as(cls, results, candidates, machine) for cls in recipe.serve.cpus
                     if here is not None and cpuclass.rank(cls) < cpuclass.rank(here) and not recipe.generates}  # fmt: skip
            timed = {c: t for c, t in timed.items() if t is not None}
            chosen.per_class = selection.per_class(chosen, results, recipe.serve.cpus, here, timed, sel.tie)
        return chosen

    def _select_as(self, cls: str, results: list[TargetResult], candidates: dict, machine: Machine) -> Selection | None:
        """The artifacts whose runtime obeys the ISA caps and that passed their gate as CPU class `cls`, and the eager
        source, timed as that class (emulated here, toolchain/cpuclass.py); None when none of them can be."""
        recipe, sel = self.plan.recipe, self.plan.recipe.select
        capped = {r.name: candidates[r.name] for r in results if r.name in candidates and kinds.get(r.kind).isa_capped
                  and r.cpu is not None and (r.cpu.check(cls) or ClassCheck(cls, "untested", "none", False)).status == "passed"}  # fmt: skip
        if not capped:
            return None
        as_class = Machine(machine.model, machine.cores, machine.features + [f"emulated:{cls}"], machine.gpu)
        key = self.plan.selection_key(list(capped), as_class)
        name = f"select-{cls}"

        def produce() -> CacheEntry | Selection:
            self.progress.start(name, f"timing {len(capped)} artifacts as {cls} (ISA capped)")
            timeout, memory = step_limits(self.plan.specs)
            out = run_step(StepSpec("select", str(recipe.path), candidates=capped, dims=self.plan.fixed), self.staging, name, timeout, self.children, memory_bytes(memory),
                           env=cpuclass.emulation_env(cls))  # fmt: skip
            if out.result is None:
                self.progress.end(name, "failed", out.reason.splitlines()[0])
                return selection.failed(sel, as_class, CacheRef(key, False), out.reason, out.log)
            ranked = selection.rank(sel, out.result, {r.name: r.kind for r in results}, as_class, CacheRef(key, False), out.log)
            self.progress.end(name, "ok", ", ".join(f"{r.target} {r.median_ms:.3f} ms ({r.vs_eager:.2f}x eager)" for r in ranked.ranking))
            return CacheEntry(selection=ranked)

        out = self.cache.step(key, self.staging, produce, log_files(name))
        if not out.hit:
            return out.entry.selection if out.entry is not None else None
        return out.entry.selection


class Reference:
    """The parity samples (numpy, here) and the source's eager outputs on them (a worker step), made
    once per build, when the first target needs them, through the cache like any step."""

    def __init__(self, run: Run):
        self.run = run
        self.made = False
        self.failed: StepOutcome | None = None
        self._lock = threading.Lock()

    def ensure(self, all_hits: bool = False):
        """None when the reference is in the staging folder, else a function (name, kind) -> the failed result."""
        with self._lock:
            if not self.made:
                self.made = True
                self._make(all_hits)
        return None if self.failed is None else self.failure

    def failure(self, name: str, kind: str) -> TargetResult:
        out = self.failed
        return TargetResult.failed(name, kind, Stage.RECIPE if out.usage else Stage.SOURCE, f"source: {out.reason}", hint=out.hint, log=out.log)

    def _make(self, all_hits: bool) -> None:
        run, recipe, progress = self.run, self.run.plan.recipe, self.run.progress
        (run.staging / "parity").mkdir(exist_ok=True)

        def produce() -> CacheEntry | StepOutcome:
            if all_hits:
                progress.note("reference outputs: not in the cache (missing or corrupt); recomputing them")
            check_framework(recipe)
            save_feeds(run.staging / "parity" / "samples.npz", samples_for(recipe))
            progress.start("source", f"loading {recipe.source.framework} source, reference outputs")
            timeout, memory = step_limits(run.plan.specs)
            step = StepSpec("reference", str(recipe.path), dims=run.plan.fixed)
            out = run.executor.run(step, run.staging, "reference", timeout, run.children, memory, recipe)
            if out.result is None:
                progress.end("source", "failed", f"{out.reason.splitlines()[0]} (log: {out.log})")
                return out
            progress.end("source", "ok", f"{recipe.parity.samples} parity samples, outputs {', '.join(out.result.output_names)}")
            for note in out.result.notes:
                progress.note(f"source: {note}")
            parity = run.staging / "parity"
            made = [parity / "samples.npz", parity / "reference.npz"] + ([run.staging / GENERATION_FILE, run.staging / TEXT_FILE] if recipe.generates else [])
            made += pipeline.files(run.staging) if recipe.pipeline else []
            made += [p for p in (run.staging / padcheck.SAMPLES, run.staging / padcheck.REFERENCE) if p.exists()]
            return CacheEntry(mf.file_entries(run.staging, made))

        out = run.cache.step(run.plan.source_key, run.staging, produce, log_files("reference"))
        if out.hit and not all_hits:
            progress.note(f"reference outputs: cache hit ({run.plan.source_key[:12]})")
        self.failed = out.failure


class Scheduler:
    """Runs every target, `jobs` at a time; a target waits for the targets it requires."""

    def __init__(self, run: Run, jobs: int, results: dict[str, TargetResult]):
        self.build, self.jobs, self.results = run, jobs, results
        recipe = run.plan.recipe
        self.pending = {s.target_name: s for s in run.plan.specs}
        self.needs = {s.target_name: list(kinds.get(s.kind).requires(s, recipe)) for s in run.plan.specs}
        self.running: dict[Future, str] = {}

    def run(self) -> None:
        with ThreadPoolExecutor(max_workers=max(1, self.jobs)) as pool:
            try:
                while self.pending or self.running:
                    self._start_ready(pool)
                    if not self.running:
                        for name, spec in self.pending.items():  # a cycle, or a dependency outside --target
                            self.results[name] = TargetResult.failed(
                                name, spec.kind, Stage.DEPENDENCY, f"needs {', '.join(self.needs[name])}, not built in this run"
                            )
                        return
                    done, _ = wait(list(self.running), timeout=0.25, return_when=FIRST_COMPLETED)
                    for fut in done:
                        self.results[self.running.pop(fut)] = fut.result()
            except BaseException:
                self.build.children.stop_all()  # before the pool's shutdown waits on their threads
                raise

    def _start_ready(self, pool: ThreadPoolExecutor) -> None:
        for name, spec in list(self.pending.items()):
            deps = self.needs[name]
            failed = [d for d in deps if d in self.results and self.results[d].status is not Status.OK]
            if failed:
                reference = self.build.reference.failed is not None and self.results[failed[0]].stage in (Stage.SOURCE, Stage.RECIPE)
                self.results[name] = (
                    self.build.reference.failure(name, spec.kind)
                    if reference
                    else TargetResult.failed(name, spec.kind, Stage.DEPENDENCY, f"needs target {failed[0]}, which {self.results[failed[0]].status.value}")
                )
                del self.pending[name]
            elif all(d in self.results for d in deps) and len(self.running) < self.jobs:
                del self.pending[name]
                self.running[pool.submit(self.build.target, spec, {d: self.results[d].dependency() for d in deps})] = name
