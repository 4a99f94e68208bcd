"""Run a recipe: reuse what the cache holds, run every other step in a process
of its own (in parallel where targets are independent), gate each target on
parity, write serving repositories and the manifest, then publish atomically.

This module imports no ML framework: framework work happens in
`toolchain.worker` subprocesses, so an unchanged rebuild is instant.
Nothing here prints or exits; results come back as data for the CLI.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolchain import cache
from toolchain import manifest as mf
from toolchain.errors import EXIT_CONVERSION, EXIT_OK, EXIT_PARITY, UsageError
from toolchain.fsutil import clean_stale, publish
from toolchain.lock import build_lock
from toolchain.parity import ParityReport, samples_for
from toolchain.progress import Progress
from toolchain.recipe import Recipe
from toolchain.targets import target_module
from toolchain.tensors import Signature

DEFAULT_TIMEOUT = 1800.0


@dataclass
class TargetResult:
    name: str
    kind: str
    status: str = "failed"  # ok | failed | skipped
    reason: str | None = None
    build_seconds: float = 0.0
    device: str = "cpu"
    files: list[dict] = field(default_factory=list)
    signature: dict | None = None
    parity: ParityReport | None = None
    log: str | None = None
    cache: dict | None = None
    extra: dict = field(default_factory=dict)  # fields a target adds to its manifest entry

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "status": self.status,
            "reason": self.reason,
            "build_seconds": round(self.build_seconds, 3),
            "device": self.device,
            "log": self.log,
            "files": self.files,
            "signature": self.signature,
            "parity": self.parity.to_dict() if self.parity else None,
            "cache": self.cache,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict) -> TargetResult:
        known = {"name", "kind", "status", "reason", "build_seconds", "device", "log", "files", "signature", "parity", "cache"}
        r = cls(**{k: d[k] for k in known - {"parity"} if k in d}, extra={k: v for k, v in d.items() if k not in known})
        r.parity = ParityReport.from_dict(d["parity"]) if d.get("parity") else None
        return r


@dataclass
class BuildResult:
    manifest: dict
    path: Path  # where the output now lies (published, or the .failed copy)
    published: bool
    exit_code: int
    targets: list[TargetResult]


# -------------------------------------------------------------- parity data


def save_feeds(path: Path, feeds: list[dict]) -> None:
    np.savez(path, **{f"{i}/{k}": v for i, feed in enumerate(feeds) for k, v in feed.items()})


def load_feeds(path: Path) -> list[dict]:
    """Inverse of save_feeds: the build's parity samples or reference outputs."""
    data = np.load(path, allow_pickle=False)
    feeds: dict[int, dict] = {}
    for key in data.files:
        i, name = key.split("/", 1)
        feeds.setdefault(int(i), {})[name] = data[key]
    return [feeds[i] for i in sorted(feeds)]


def load_source(recipe: Recipe):
    """The recipe's source model, loaded by its framework's module (in a worker)."""
    if recipe.source.framework == "tensorflow":
        from toolchain.sources.tensorflow import TFSource

        return TFSource(recipe)
    from toolchain.sources.pytorch import TorchSource

    return TorchSource(recipe)


def check_framework(recipe: Recipe) -> None:
    """Exit 2 before any step when the source's framework is not installed.

    Looked up with find_spec: the parent process never imports a framework.
    """
    import importlib.util

    if recipe.source.framework == "tensorflow" and importlib.util.find_spec("tensorflow") is None:
        from toolchain.sources.tensorflow import INSTALL_HINT

        raise UsageError(f"{recipe.path}: source.framework: tensorflow needs TensorFlow, which is not installed here", INSTALL_HINT)


# ------------------------------------------------------------------- steps


class Children:
    """Live step processes, so an interrupt can stop every one of them."""

    def __init__(self):
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self.stopping = False

    def add(self, p: subprocess.Popen) -> None:
        with self._lock:
            self._procs.add(p)
            if self.stopping:
                _kill_group(p)

    def discard(self, p: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(p)

    def stop_all(self) -> None:
        with self._lock:
            self.stopping = True
            for p in self._procs:
                _kill_group(p)


def _kill_group(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _describe_exit(rc: int) -> str:
    if rc < 0:
        sig = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        why = {"SIGKILL": " (killed: out of memory?)", "SIGSEGV": " (segmentation fault)", "SIGABRT": " (aborted)"}.get(sig, "")
        return f"the step's process died by {sig}{why}"
    return f"the step's process exited with status {rc}"


def _tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _write_reproduce(path: Path, step_file: str, target: str | None) -> None:
    """A script that re-runs just this step, into a scratch directory.

    It runs from / : `python -m` puts the working directory on sys.path, and a
    build folder holds `triton/`, which would shadow the `triton` package.
    """
    work = 'work="$(realpath -m "${1:-$(mktemp -d)}")"\n' if target else ""
    path.write_text(
        "#!/bin/sh\n"
        f"# Re-runs the '{target or 'reference'}' step of this build in a fresh interpreter.\n"
        + ("# Writes the artifact to $1 (default: a new temporary directory), never over this build.\n" if target else "")
        + 'root="$(cd "$(dirname "$0")/.." && pwd)" || exit 1\n'
        + work
        + "cd / || exit 1\n"
        + f'exec {shlex.quote(sys.executable)} -m toolchain.worker "$root/logs/{step_file}" --root "$root"'
        + (' --workdir "$work"\n' if target else "\n")
    )
    path.chmod(0o755)


def run_step(step: dict, staging: Path, name: str, timeout: float, children: Children) -> tuple[dict | None, str | None, str]:
    """Run one worker step; returns (result, failure reason, log path relative to staging)."""
    logs = staging / "logs"
    logs.mkdir(exist_ok=True)
    step = {**step, "root": str(staging), "result": f"logs/{name}.result.json"}
    (logs / f"{name}.step.json").write_text(json.dumps(step, indent=2))
    _write_reproduce(logs / f"{name}.reproduce.sh", f"{name}.step.json", step.get("target"))
    log = logs / f"{name}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    here = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "toolchain.worker", str(logs / f"{name}.step.json")],
            stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
            cwd=logs,  # not the user's folder: `-m` puts the cwd first on sys.path
        )
        children.add(proc)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.wait()
            return None, f"timed out after {timeout:g}s (raise `timeout:` on the target); log tail:\n{_tail(log)}", log.relative_to(staging).as_posix()
        finally:
            children.discard(proc)
    rel = log.relative_to(staging).as_posix()
    if rc != 0:
        return None, f"{_describe_exit(rc)}; log tail:\n{_tail(log)}", rel
    result = json.loads((staging / step["result"]).read_text())
    if not result.get("ok"):
        return None, result.get("reason", "failed"), rel
    return result, None, rel


# ------------------------------------------------------------------- build


@dataclass
class Plan:
    recipe: Recipe
    specs: list
    source_key: str
    keys: dict[str, str]


def default_jobs() -> int:
    """Cores, bounded by memory: a conversion step can take a few GB."""
    try:
        with open("/proc/meminfo") as f:
            avail_kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable"))
        by_mem = max(1, avail_kb // (4 * 1024 * 1024))
    except (OSError, StopIteration):
        by_mem = 2
    return max(1, min(os.cpu_count() or 1, by_mem))


def make_plan(recipe: Recipe, only: list[str] | None, out_root: Path | None = None) -> Plan:
    specs = recipe.targets
    if only:
        unknown = [n for n in only if n not in [t.target_name for t in specs]]
        if unknown:
            raise UsageError(f"--target {', '.join(unknown)}: not in {recipe.path}", f"targets are: {', '.join(t.target_name for t in specs)}")
        specs = [t for t in specs if t.target_name in only]
    skey = cache.source_key(recipe, out_root)
    return Plan(recipe, specs, skey, {t.target_name: cache.target_key(recipe, t, skey) for t in specs})


def build(recipe: Recipe, out_root: Path, only: list[str] | None = None, progress: Progress | None = None,
          jobs: int | None = None, force: bool = False) -> BuildResult:
    """Build every requested target of `recipe` under `out_root/<name>/`."""
    progress = progress or Progress()
    # Absolute: steps run in worker processes whose working directory is the step's logs folder.
    out_root = Path(out_root).resolve()
    out_root.mkdir(parents=True, exist_ok=True)
    with build_lock(out_root / f".{recipe.name}.lock", progress.note):
        return _build_locked(recipe, out_root, make_plan(recipe, only, out_root), progress, jobs or default_jobs(), force)


def _build_locked(recipe: Recipe, out_root: Path, plan: Plan, progress: Progress, jobs: int, force: bool) -> BuildResult:
    started = time.perf_counter()
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
        serving = _write_serving(recipe, results, staging, progress)
        code = exit_code_for(results)
        manifest = _manifest(recipe, results, serving, time.perf_counter() - started)
        mf.write(staging / "manifest.json", manifest)
        final = out_root / recipe.name if code == EXIT_OK else out_root / f"{recipe.name}.failed"
        publish(staging, final)
        _store(plan, results, out_root, final)
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


def _store(plan: Plan, results: list[TargetResult], out_root: Path, root: Path) -> None:
    """Cache every step that succeeded (never a failed one)."""
    def logs(step: str) -> list[str]:
        return [f"logs/{step}{suffix}" for suffix in (".log", ".step.json", ".reproduce.sh")]

    if (root / "parity" / "reference.npz").is_file() and not cache.lookup(out_root, plan.source_key):
        files = mf.file_entries(root, [root / "parity" / "samples.npz", root / "parity" / "reference.npz"])
        cache.store(out_root, plan.source_key, {"files": files}, root, logs("reference"))
    for r in results:
        if r.status == "ok" and not (r.cache or {}).get("hit"):
            cache.store(out_root, plan.keys[r.name], r.to_dict(), root, logs(r.name))


def _run(plan: Plan, staging: Path, out_root: Path, progress: Progress, jobs: int, force: bool, children: Children) -> list[TargetResult]:
    results: dict[str, TargetResult] = {}
    todo = []
    for spec in plan.specs:
        name, key = spec.target_name, plan.keys[spec.target_name]
        hit = None if force else cache.lookup(out_root, key)
        if hit:
            cache.restore(out_root, key, hit, staging)
            res = TargetResult.from_dict(hit)
            res.cache = {"key": key, "hit": True}
            results[name] = res
            progress.note(f"{name}: cache hit ({key[:12]}), files verified")
            continue
        reason = target_module(spec.kind).skip_reason(spec)
        if reason:
            status = "failed" if spec.required else "skipped"
            results[name] = TargetResult(name, spec.kind, status, reason + (" (required: true)" if spec.required else ""), device=getattr(spec, "device", "cpu"))
            progress.note(f"{name}: {status} - {reason}")
            continue
        todo.append(spec)
    if todo and not _reference(plan, staging, out_root, progress, force, children, results, todo):
        return [results[t.target_name] for t in plan.specs]
    if not todo and any(r.parity for r in results.values()):
        _restore_reference(plan, staging, out_root)
    Scheduler(plan, todo, staging, progress, jobs, children, results).run()
    return [results[t.target_name] for t in plan.specs]


def _restore_reference(plan: Plan, staging: Path, out_root: Path) -> bool:
    hit = cache.lookup(out_root, plan.source_key)
    if hit:  # the samples and the source's outputs, as the targets were judged on
        cache.restore(out_root, plan.source_key, hit, staging)
    return hit is not None


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
    result, reason, log = run_step({"kind": "reference", "recipe": str(recipe.path)}, staging, "reference", DEFAULT_TIMEOUT, children)
    if result is None:
        progress.end("source", "failed", f"{reason.splitlines()[0]} (log: {log})")
        for spec in todo:
            results[spec.target_name] = TargetResult(spec.target_name, spec.kind, "failed", f"source: {reason}", log=log)
        return False
    progress.end("source", "ok", f"{recipe.parity.samples} parity samples, outputs {', '.join(result['output_names'])}")
    for note in result.get("notes", []):
        progress.note(f"source: {note}")
    return True


class Scheduler:
    """Runs target steps, `jobs` at a time; a target waits for the targets it requires."""

    def __init__(self, plan: Plan, todo: list, staging: Path, progress: Progress, jobs: int, children: Children, results: dict):
        self.plan, self.staging, self.progress, self.jobs, self.children, self.results = plan, staging, progress, jobs, children, results
        self.pending = {s.target_name: s for s in todo}
        self.needs = {}
        for spec in todo:
            mod = target_module(spec.kind)
            self.needs[spec.target_name] = list(mod.requires(spec, plan.recipe)) if hasattr(mod, "requires") else []
        self.running: dict[Future, str] = {}

    def run(self) -> None:
        with ThreadPoolExecutor(max_workers=max(1, self.jobs)) as pool:
            try:
                while self.pending or self.running:
                    self._start_ready(pool)
                    if not self.running:
                        for name, spec in self.pending.items():  # a cycle, or a dependency outside --target
                            self.results[name] = TargetResult(name, spec.kind, "failed", f"needs {', '.join(self.needs[name])}, not built in this run")
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
            failed = [d for d in deps if d in self.results and self.results[d].status != "ok"]
            if failed:
                self.results[name] = TargetResult(name, spec.kind, "failed", f"needs target {failed[0]}, which {self.results[failed[0]].status}")
                del self.pending[name]
            elif all(d in self.results for d in deps) and len(self.running) < self.jobs:
                del self.pending[name]
                self.progress.start(name, f"{name}: building {spec.kind}")
                dep_info = {d: {"dir": d, "files": self.results[d].files, "signature": self.results[d].signature} for d in deps}
                self.running[pool.submit(_target_step, self.plan, spec, self.staging, self.children, dep_info)] = name

    def _finish(self, name: str, res: TargetResult) -> None:
        self.results[name] = res
        if res.parity is not None:
            abs_err, cos = res.parity.worst()
            self.progress.end(name, res.status, f"max_abs_err {abs_err:.2e}, cosine {cos:.6f}")
        else:
            self.progress.end(name, "failed", f"{(res.reason or '').splitlines()[0]} (log: {res.log})")


def _target_step(plan: Plan, spec, staging: Path, children: Children, deps: dict) -> TargetResult:
    name = spec.target_name
    res = TargetResult(name, spec.kind, device=getattr(spec, "device", "cpu"), cache={"key": plan.keys[name], "hit": False})
    t0 = time.perf_counter()
    step = {"kind": "target", "recipe": str(plan.recipe.path), "target": name, "deps": deps}
    result, reason, res.log = run_step(step, staging, name, spec.timeout, children)
    res.build_seconds = time.perf_counter() - t0
    if result is None:
        res.reason = reason
        return res
    res.build_seconds = result["build_seconds"]
    res.device, res.files, res.signature = result["device"], result["files"], result["signature"]
    res.parity = ParityReport.from_dict(result["parity"])
    res.extra = {**result.get("extra", {}), "peak_rss_mb": result["peak_rss_mb"]}
    res.status = "ok" if res.parity.passed else "failed"
    res.reason = None if res.parity.passed else "parity failed"
    return res


def exit_code_for(results: list[TargetResult]) -> int:
    if any(r.status == "failed" and r.parity is None for r in results):
        return EXIT_CONVERSION
    if any(r.status == "failed" for r in results):
        return EXIT_PARITY
    return EXIT_OK


# ----------------------------------------------------------------- serving


def _write_serving(recipe: Recipe, results: list[TargetResult], staging: Path, progress: Progress) -> dict:
    serving: dict = {"triton": None, "tfserving": None, "models": []}
    if recipe.serve.triton and recipe.serve.triton.targets:
        _write_triton(recipe, results, staging, progress, serving)
    if recipe.serve.tfserving and recipe.serve.tfserving.targets:
        _write_tfserving(recipe, results, staging, progress, serving)
    return serving


def _servable(tname: str, results: list[TargetResult], server: str, progress: Progress) -> TargetResult | None:
    """The result of a target that built and passed, else None (noted when it exists)."""
    res = next((r for r in results if r.name == tname), None)
    if res is not None and res.status != "ok":
        progress.note(f"{server}: no model for '{tname}' ({res.status})")
        return None
    return res


def _write_triton(recipe: Recipe, results: list[TargetResult], staging: Path, progress: Progress, serving: dict) -> None:
    from toolchain.serving.triton import TF_DEPRECATION, triton_model_name, write_triton_model

    tri = recipe.serve.triton
    for tname in tri.targets:
        res = _servable(tname, results, "triton", progress)
        if res is None:
            continue
        model = triton_model_name(recipe.name, tname)
        try:
            model_dir = write_triton_model(staging / "triton", model, recipe.version, res.kind, staging / tname, Signature.from_dict(res.signature), tri, res.device)
        except ValueError as e:
            res.status, res.reason = "failed", f"triton: {e}"
            continue
        serving["triton"] = "triton"
        serving["models"].append({"server": "triton", "name": model, "target": tname, "path": model_dir.relative_to(staging).as_posix()})
        if res.kind == "aoti" and tri.backend == "native":
            progress.note(f"triton: {model} uses platform torch_aoti (Triton >= 26.03, beta, no batching); serve.triton.backend: python supports older servers and batching")
        if res.kind in ("xla", "savedmodel"):
            progress.note(f"triton: {model}: {TF_DEPRECATION}")


def _write_tfserving(recipe: Recipe, results: list[TargetResult], staging: Path, progress: Progress, serving: dict) -> None:
    from toolchain.serving.tfserving import write_tfserving, write_warmup

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


def _manifest(recipe: Recipe, results: list[TargetResult], serving: dict, seconds: float) -> dict:
    try:
        rel = os.path.relpath(recipe.path)
        rel = rel if not rel.startswith("..") else str(recipe.path)
    except ValueError:
        rel = str(recipe.path)
    cuda = [r for r in results if r.device == "cuda" and r.status == "ok"]
    device = f"cuda ({cuda[0].extra.get('device_name', 'GPU')})" if cuda else "cpu"
    return {
        "schema": mf.SCHEMA_ID,
        "name": recipe.name,
        "version": recipe.version,
        "framework": recipe.source.framework,
        "recipe": {"path": rel, "sha256": mf.sha256_file(recipe.path)},
        "environment": mf.environment(device),
        "build_seconds": round(seconds, 3),
        "parity_data": {"samples": "parity/samples.npz", "reference": "parity/reference.npz", "source": "data" if recipe.data else "generated"}
        if any(r.parity for r in results)
        else None,
        "targets": [r.to_dict() for r in results],
        "serving": serving,
    }
