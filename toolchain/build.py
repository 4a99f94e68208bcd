"""Run a recipe: reuse what the cache holds, run every other step in a process
of its own (in parallel where targets are independent), gate each target on
parity, write serving repositories and the manifest, then publish atomically.

This module imports no ML framework: framework work happens in
`toolchain.worker` subprocesses, so an unchanged rebuild is instant.
Nothing here prints or exits; results come back as data for the CLI.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from toolchain import cache, kinds
from toolchain import manifest as mf
from toolchain.environment import environment
from toolchain.errors import EXIT_OK, UsageError
from toolchain.executors import open_executor, resources_for
from toolchain.feeds import load_feeds, save_feeds
from toolchain.fsutil import clean_stale, publish
from toolchain.lock import build_lock
from toolchain.machine import cpu_identity
from toolchain.options import memory_bytes
from toolchain.parity import ParityReport, samples_for
from toolchain.plan import Plan, default_jobs, make_plan
from toolchain.progress import Progress
from toolchain.recipe import Recipe
from toolchain.remote import open_remote
from toolchain.results import BuildResult, Stage, Status, TargetResult, exit_code_for
from toolchain.serving.tfserving import write_tfserving, write_warmup
from toolchain.serving.triton import triton_model_name, write_triton_model
from toolchain.sources import check_framework
from toolchain.steps import Children, reap_orphans, run_step
from toolchain.tensors import Signature

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
        plan.remote = open_remote(cache_url)
        plan.executor = open_executor(executor)
        try:
            result = _build_locked(recipe, out_root, plan, progress, jobs or default_jobs(), force)
        finally:
            plan.executor.close()
        if plan.remote is not None:
            r = plan.remote
            progress.note(f"shared cache {r.url}: {len(r.fetched)} entries fetched, {len(r.uploaded)} uploaded"
                          + (f"; {len(r.errors)} errors, first: {r.errors[0]}" if r.errors else ""))  # fmt: skip
        return result


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


def _build_locked(recipe: Recipe, out_root: Path, plan: Plan, progress: Progress, jobs: int, force: bool) -> BuildResult:
    started = time.perf_counter()
    reap_orphans(str(out_root / f".{recipe.name}.tmp-"))  # steps of a build that was killed, before their folders go
    clean_stale(out_root, f".{recipe.name}.tmp-*")
    clean_stale(out_root / cache.CACHE_DIR, ".*.tmp-*") if (out_root / cache.CACHE_DIR).is_dir() else None
    staging = out_root / f".{recipe.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    children = Children()
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):  # stop like Ctrl-C: children killed, staging removed
        try:
            previous[sig] = signal.signal(sig, _raise_interrupt)
        except ValueError:  # not the main thread
            pass
    try:
        results = _run(plan, staging, out_root, progress, jobs, force, children)
        selection = _select(plan, results, staging, out_root, progress, children, force) if recipe.select else None
        serving = _write_serving(recipe, results, staging, progress, selection)
        code = exit_code_for(results)
        manifest = _manifest(recipe, results, serving, time.perf_counter() - started, selection)
        mf.write(staging / "manifest.json", manifest)
        final = out_root / recipe.name if code == EXIT_OK else out_root / f"{recipe.name}.failed"
        publish(staging, final)
        _store(plan, results, out_root, final, selection)
        return BuildResult(manifest, final, code == EXIT_OK, code, results)
    except BaseException:
        children.stop_all()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _store(plan: Plan, results: list[TargetResult], out_root: Path, root: Path, selection: dict | None = None) -> None:
    """Cache every step that succeeded (never a failed one), and the selection's timings."""

    def logs(step: str) -> list[str]:
        return [f"logs/{step}{suffix}" for suffix in (".log", ".step.json", ".reproduce.sh")]

    remote = plan.remote
    if (root / "parity" / "reference.npz").is_file() and not cache.lookup(out_root, plan.source_key):
        files = mf.file_entries(root, [root / "parity" / "samples.npz", root / "parity" / "reference.npz"])
        cache.store(out_root, plan.source_key, {"files": files}, root, logs("reference"), remote)
    elif (root / "parity" / "reference.npz").is_file():
        cache.upload_missing(out_root, plan.source_key, remote)
    for r in results:
        if r.status is Status.OK and not (r.cache or {}).get("hit"):
            cache.store(out_root, plan.keys[r.name], r.to_dict(), root, logs(r.name), remote)
        elif r.status is Status.OK:
            cache.upload_missing(out_root, plan.keys[r.name], remote)
    if selection and not selection["cache"]["hit"]:
        sel = {"selection": {k: v for k, v in selection.items() if k != "cache"}}
        cache.store(out_root, selection["cache"]["key"], sel, root, logs("select"), remote)


def _run(plan: Plan, staging: Path, out_root: Path, progress: Progress, jobs: int, force: bool, children: Children) -> list[TargetResult]:
    results: dict[str, TargetResult] = {}
    todo = []
    for spec in plan.specs:
        name, key = spec.target_name, plan.keys[spec.target_name]
        hit = None if force else cache.lookup(out_root, key, plan.remote)
        if hit:
            cache.restore(out_root, key, hit, staging)
            res = TargetResult.from_dict(hit)
            res.cache = {"key": key, "hit": True}
            results[name] = res
            progress.note(f"{name}: cache hit ({key[:12]}), files verified")
            continue
        reason = (plan.executor.gpu_reason(spec.gpu) if spec.gpu else None) or kinds.get(spec.kind).skip_reason(spec)
        if reason:
            res = TargetResult(name, spec.kind, Status.SKIPPED, Stage.UNAVAILABLE, reason, device=spec.target_device)
            if spec.required:
                res.fail(Stage.UNAVAILABLE, reason + " (required: true)")
            results[name] = res
            progress.note(f"{name}: {res.status.value} - {reason}")
            continue
        todo.append(spec)
    if todo and not _reference(plan, staging, out_root, progress, force, children, results, todo):
        return [results[t.target_name] for t in plan.specs]
    judged = [s for s in plan.specs if s.target_name in results and results[s.target_name].parity is not None]
    if not todo and judged and not _restore_reference(plan, staging, out_root):
        # Every target is a hit but the reference entry is gone or corrupt: recompute it, since the
        # manifest names parity/ and a published output never lacks what its manifest names.
        progress.note("reference outputs: not in the cache (missing or corrupt); recomputing them")
        if not _reference(plan, staging, out_root, progress, True, children, results, judged):
            return [results[t.target_name] for t in plan.specs]
    Scheduler(plan, todo, staging, out_root, progress, jobs, children, results).run()
    return [results[t.target_name] for t in plan.specs]


def _restore_reference(plan: Plan, staging: Path, out_root: Path) -> bool:
    hit = cache.lookup(out_root, plan.source_key, plan.remote)
    if hit:  # the samples and the source's outputs, as the targets were judged on
        cache.restore(out_root, plan.source_key, hit, staging)
    return hit is not None


def step_limits(specs) -> tuple[float, str]:
    """Time and memory for the steps no target owns (reference, select): the most any target of the run allows."""
    if not specs:
        return DEFAULT_TIMEOUT, "90%"
    return max(s.timeout for s in specs), max((s.memory for s in specs), key=memory_bytes)


def _reference(plan: Plan, staging, out_root, progress, force, children, results, todo) -> bool:
    """Parity samples (here, numpy only) and the source's eager outputs (in a worker)."""
    recipe = plan.recipe
    (staging / "parity").mkdir(exist_ok=True)
    if not force and _restore_reference(plan, staging, out_root):
        progress.note(f"reference outputs: cache hit ({plan.source_key[:12]})")
        return True
    check_framework(recipe)
    save_feeds(staging / "parity" / "samples.npz", samples_for(recipe))
    progress.start("source", f"loading {recipe.source.framework} source, reference outputs")
    timeout, memory = step_limits(plan.specs)
    out = plan.executor.run({"kind": "reference", "recipe": str(recipe.path)}, staging, "reference", timeout, children, memory, recipe)
    if out.result is None:
        progress.end("source", "failed", f"{out.reason.splitlines()[0]} (log: {out.log})")
        stage = Stage.RECIPE if out.usage else Stage.SOURCE
        for spec in todo:
            results[spec.target_name] = TargetResult.failed(spec.target_name, spec.kind, stage, f"source: {out.reason}", hint=out.hint, log=out.log)
        return False
    progress.end("source", "ok", f"{recipe.parity.samples} parity samples, outputs {', '.join(out.result['output_names'])}")
    for note in out.result.get("notes", []):
        progress.note(f"source: {note}")
    return True


class Scheduler:
    """Runs target steps, `jobs` at a time; a target waits for the targets it requires."""

    def __init__(self, plan: Plan, todo: list, staging: Path, out_root: Path, progress: Progress, jobs: int, children: Children, results: dict):
        self.plan, self.staging, self.out_root, self.progress, self.jobs, self.children, self.results = (
            plan,
            staging,
            out_root,
            progress,
            jobs,
            children,
            results,
        )
        self.pending = {s.target_name: s for s in todo}
        self.needs = {s.target_name: list(kinds.get(s.kind).requires(s, plan.recipe)) for s in todo}
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
                        self._finish(self.running.pop(fut), fut.result())
            except BaseException:
                self.children.stop_all()  # before the pool's shutdown waits on their threads
                raise

    def _start_ready(self, pool: ThreadPoolExecutor) -> None:
        for name, spec in list(self.pending.items()):
            deps = self.needs[name]
            failed = [d for d in deps if d in self.results and self.results[d].status is not Status.OK]
            if failed:
                self.results[name] = TargetResult.failed(
                    name, spec.kind, Stage.DEPENDENCY, f"needs target {failed[0]}, which {self.results[failed[0]].status.value}"
                )
                del self.pending[name]
            elif all(d in self.results for d in deps) and len(self.running) < self.jobs:
                del self.pending[name]
                self.progress.start(name, f"{name}: building {spec.kind}")
                dep_info = {
                    d: {"dir": d, "files": self.results[d].files, "signature": self.results[d].signature, "runner": self.results[d].runner} for d in deps
                }
                self.running[pool.submit(_target_step, self.plan, spec, self.staging, self.out_root, self.children, dep_info)] = name

    def _finish(self, name: str, res: TargetResult) -> None:
        self.results[name] = res
        if res.parity is not None:
            abs_err, cos = res.parity.worst()
            why = res.parity.first_failure() if not res.parity.passed else None
            self.progress.end(name, res.status.value, f"max_abs_err {abs_err:.2e}, cosine {cos:.6f}" + (f" - {why}" if why else ""))
        else:
            self.progress.end(name, res.status.value, f"{(res.reason or '').splitlines()[0]} (log: {res.log})")


def _target_step(plan: Plan, spec, staging: Path, out_root: Path, children: Children, deps: dict) -> TargetResult:
    name = spec.target_name
    res = TargetResult(name, spec.kind, device=spec.target_device, cache={"key": plan.keys[name], "hit": False})
    t0 = time.perf_counter()
    step = {"kind": "target", "recipe": str(plan.recipe.path), "target": name, "deps": deps, "out_root": str(out_root)}
    out = plan.executor.run(step, staging, name, spec.timeout, children, spec.memory, plan.recipe, resources_for(spec))
    res.log = out.log
    node = {"node": out.node} if out.node else {}
    res.build_seconds = time.perf_counter() - t0
    if out.result is None:
        res.extra.update(node)
        res.fail(Stage.RECIPE if out.usage else Stage.CONVERT, out.reason, out.hint)
        return res
    result = out.result
    res.build_seconds = result["build_seconds"]
    res.device, res.files, res.signature, res.runner = result["device"], result["files"], result["signature"], result["runner"]
    res.parity = ParityReport.from_dict(result["parity"])
    res.extra = {**result.get("extra", {}), "peak_rss_mb": result["peak_rss_mb"], **node}
    if res.parity.passed:
        res.status = Status.OK
    else:
        res.fail(Stage.PARITY, "parity failed")
    return res


# --------------------------------------------------------------- selection


def _select(plan: Plan, results: list[TargetResult], staging: Path, out_root: Path, progress: Progress, children: Children, force: bool) -> dict | None:
    """Time every artifact that passed, interleaved in one process; rank them by the recipe's metric.

    Timings are cached under the artifacts' keys, the select options and this
    machine's type: a rebuild elsewhere (another CPU) times them again.
    """
    sel = plan.recipe.select
    candidates = {r.name: r.runner for r in results if r.status is Status.OK and r.runner}
    if not candidates:
        return None
    machine = cpu_identity()
    key = cache.selection_key(sel.model_dump(mode="json"), {n: plan.keys[n] for n in candidates}, machine)
    hit = None if force else cache.lookup(out_root, key, plan.remote)
    if hit:
        progress.note(f"selection: cache hit ({key[:12]}): timings measured earlier on this machine type ({machine['model']})")
        return {**hit["selection"], "cache": {"key": key, "hit": True}}
    progress.start("select", f"timing {len(candidates)} artifacts ({sel.metric}, {sel.threads} thread{'s' if sel.threads > 1 else ''})")
    timeout, memory = step_limits(plan.specs)
    # Always here: the figures are this machine's (its type keys the cached timings).
    out = run_step({"kind": "select", "recipe": str(plan.recipe.path), "candidates": candidates}, staging, "select", timeout, children, memory_bytes(memory))
    if out.result is None:
        progress.end("select", "failed", f"{out.reason.splitlines()[0]} (log: {out.log})")
        return {
            "metric": sel.metric,
            "error": out.reason,
            "log": out.log,
            "ranking": [],
            "winner": None,
            "machine": machine,
            "cache": {"key": key, "hit": False},
        }
    figures = out.result["figures"]
    eager = figures.pop("eager")
    kinds_of = {r.name: r.kind for r in results}
    ranking = [
        {"target": name, "kind": kinds_of[name], "median_ms": round(f["median_ms"], 4), "min_ms": round(f["min_ms"], 4), "max_ms": round(f["max_ms"], 4),
         "samples_per_s": round(f["samples_per_s"], 2), "vs_eager": round(eager["median_ms"] / f["median_ms"], 3)}
        for name, f in figures.items()
    ]  # fmt: skip
    ranking.sort(key=lambda r: r["median_ms"] if sel.metric == "latency" else -r["samples_per_s"])
    progress.end("select", "ok", ", ".join(f"{r['target']} {r['median_ms']:.3f} ms ({r['vs_eager']:.2f}x eager)" for r in ranking))
    return {
        "metric": sel.metric,
        "batch": out.result["batch"],
        "shape": out.result["sizes"],
        "threads": out.result["threads"],
        "rounds": sel.rounds,
        "machine": machine,
        "load_average": out.result["load_average"],
        "eager": {"median_ms": round(eager["median_ms"], 4), "samples_per_s": round(eager["samples_per_s"], 2)},
        "ranking": ranking,
        "winner": ranking[0]["target"],
        "served_as": None,
        "log": out.log,
        "cache": {"key": key, "hit": False},
    }


# ----------------------------------------------------------------- serving


def _write_serving(recipe: Recipe, results: list[TargetResult], staging: Path, progress: Progress, selection: dict | None = None) -> dict:
    serving: dict = {"triton": None, "tfserving": None, "models": []}
    if recipe.serve.triton and recipe.serve.triton.targets:
        _write_triton(recipe, results, staging, progress, serving, selection)
    if recipe.serve.tfserving and recipe.serve.tfserving.targets:
        _write_tfserving(recipe, results, staging, progress, serving)
    return serving


def _servable(tname: str, results: list[TargetResult], server: str, progress: Progress) -> TargetResult | None:
    """The result of a target that built and passed, else None (noted when it exists)."""
    res = next((r for r in results if r.name == tname), None)
    if res is not None and res.status is not Status.OK:
        progress.note(f"{server}: no model for '{tname}' ({res.status.value})")
        return None
    return res


def _write_triton(recipe: Recipe, results: list[TargetResult], staging: Path, progress: Progress, serving: dict, selection: dict | None) -> None:
    tri = recipe.serve.triton
    # The fastest artifact that Triton serves takes the model's plain name; the others stay <name>_<target>.
    ranked = [r["target"] for r in (selection or {}).get("ranking", [])]
    fastest = next((t for t in ranked if t in tri.targets), None)
    for tname in tri.targets:
        res = _servable(tname, results, "triton", progress)
        if res is None:
            continue
        model = recipe.name if tname == fastest else triton_model_name(recipe.name, tname)
        try:
            model_dir = write_triton_model(
                staging / "triton", model, recipe.version, res.kind, staging / tname, Signature.from_dict(res.signature), tri, res.device
            )
        except (ValueError, FileNotFoundError) as e:
            res.fail(Stage.SERVING, f"triton: {e}")
            continue
        serving["triton"] = "triton"
        serving["models"].append({"server": "triton", "name": model, "target": tname, "path": model_dir.relative_to(staging).as_posix()})
        if tname == fastest:
            selection["served_as"] = model
            progress.note(f"triton: {model} serves {tname}, the fastest artifact ({selection['metric']}, measured here)")
        note = kinds.get(res.kind).triton_note(tri.backend)
        if note:
            progress.note(f"triton: {model}: {note}")


def _write_tfserving(recipe: Recipe, results: list[TargetResult], staging: Path, progress: Progress, serving: dict) -> None:
    served = [(t, res.kind, staging / t) for t in recipe.serve.tfserving.targets if (res := _servable(t, results, "tfserving", progress))]
    if not served:
        return
    samples_file = staging / "parity" / "samples.npz"
    samples = load_feeds(samples_file)

    def warmup(path: Path, model: str) -> None:  # from the cache when the samples are unchanged
        parts = {"warmup": model, "samples": cache.file_digest(samples_file)}
        cache.cached_file(staging.parent, parts, path, lambda p: write_warmup(p, model, samples))

    # base_path in models.config is absolute: where the repository lies once published.
    final = staging.parent.resolve() / recipe.name / "tfserving"
    for name, target, path in write_tfserving(staging / "tfserving", final, recipe, served, samples, warmup):
        serving["models"].append({"server": "tfserving", "name": name, "target": target, "path": path.relative_to(staging).as_posix()})
    serving["tfserving"] = "tfserving"
    progress.note(f"tfserving: start the server with the command line in {final / 'README.md'}")


def _manifest(recipe: Recipe, results: list[TargetResult], serving: dict, seconds: float, selection: dict | None = None) -> dict:
    try:
        rel = os.path.relpath(recipe.path)
        rel = rel if not rel.startswith("..") else str(recipe.path)
    except ValueError:
        rel = str(recipe.path)
    cuda = [r for r in results if r.device == "cuda" and r.status is Status.OK]
    device = f"cuda ({cuda[0].extra.get('device_name', 'GPU')})" if cuda else "cpu"
    return {
        "schema": mf.SCHEMA_ID,
        "name": recipe.name,
        "version": recipe.version,
        "framework": recipe.source.framework,
        "recipe": {"path": rel, "sha256": mf.sha256_file(recipe.path)},
        "environment": environment(device),
        "build_seconds": round(seconds, 3),
        "parity_data": {"samples": "parity/samples.npz", "reference": "parity/reference.npz", "source": "data" if recipe.data else "generated"}
        if any(r.parity for r in results)
        else None,
        "targets": [r.to_dict() for r in results],
        "serving": serving,
        **({"selection": selection} if selection else {}),
    }
