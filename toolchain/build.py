"""Run a recipe: load the source once, build each target, gate it on parity,
write serving repositories and the manifest, then publish atomically.

Nothing here prints or exits; results come back as data for the CLI.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolchain import manifest as mf
from toolchain.errors import EXIT_CONVERSION, EXIT_OK, EXIT_PARITY, MlpackError, UsageError
from toolchain.parity import ParityReport, compare, samples_for
from toolchain.progress import Progress
from toolchain.recipe import Recipe
from toolchain.targets import Artifact, target_module


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
    extra: dict = field(default_factory=dict)  # the artifact's own manifest fields

    def to_dict(self) -> dict:
        base = {
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
        }
        return base | {k: v for k, v in self.extra.items() if k not in base}


@dataclass
class BuildResult:
    manifest: dict
    path: Path  # where the output now lies (published, or the .failed copy)
    published: bool
    exit_code: int
    targets: list[TargetResult]


@contextlib.contextmanager
def capture_to(log: Path):
    """Send fd 1 and 2 (Python and C++ output alike) to `log` for a step."""
    log.parent.mkdir(parents=True, exist_ok=True)
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log, "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _save_feeds(path: Path, feeds: list[dict]) -> None:
    np.savez(path, **{f"{i}/{k}": v for i, feed in enumerate(feeds) for k, v in feed.items()})


def load_feeds(path: Path) -> list[dict]:
    """Inverse of _save_feeds: the build's parity samples or reference outputs."""
    data = np.load(path, allow_pickle=False)
    feeds: dict[int, dict] = {}
    for key in data.files:
        i, name = key.split("/", 1)
        feeds.setdefault(int(i), {})[name] = data[key]
    return [feeds[i] for i in sorted(feeds)]


# ----------------------------------------------------------------- publish


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def publish(staging: Path, final: Path) -> None:
    """Put `staging` at `final` so a reader sees the old tree or the new, never half."""
    if not final.exists():
        os.rename(staging, final)
        return
    if _exchange(staging, final):
        shutil.rmtree(staging, ignore_errors=True)  # staging now holds the old tree
        return
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(final, old)
    os.rename(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def clean_stale(out_root: Path, name: str) -> None:
    """Remove temporaries left by builds that died (their pid is gone)."""
    for p in out_root.glob(f".{name}.tmp-*"):
        try:
            pid = int(p.name.split("-")[-2])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


# -------------------------------------------------------------------- build


def load_source(recipe: Recipe):
    if recipe.source.framework == "pytorch":
        from toolchain.sources.pytorch import TorchSource

        return TorchSource(recipe)
    raise UsageError(
        f"{recipe.path}: source.framework: tensorflow sources are not supported by this version of mlpack yet",
        "use a pytorch source, or a later mlpack release",
    )


def _build_target(source, recipe: Recipe, spec, staging: Path, samples, reference, progress: Progress) -> tuple[TargetResult, Artifact | None]:
    name = spec.target_name
    res = TargetResult(name=name, kind=spec.kind, device=getattr(spec, "device", "cpu"))
    progress.start(name, f"{name}: building {spec.kind}")
    log = staging / "logs" / f"{name}.log"
    res.log = log.relative_to(staging).as_posix()
    t0 = time.perf_counter()
    artifact = None
    try:
        mod = target_module(spec.kind)
        reason = mod.skip_reason(spec)
        if reason:
            res.status, res.reason = ("failed" if spec.required else "skipped"), reason + (" (required: true)" if spec.required else "")
            res.log = None
            progress.end(name, res.status, reason)
            return res, None
        workdir = staging / name
        workdir.mkdir(parents=True)
        with capture_to(log):
            artifact = mod.build(source, spec, workdir)
        res.build_seconds = time.perf_counter() - t0
        res.signature = artifact.signature.to_dict()
        res.extra = artifact.extra
        res.files = mf.file_entries(staging, artifact.files)
        from toolchain.runners import make_runner, run_all

        with capture_to(log):
            outputs = run_all(make_runner(artifact.runner, **artifact.runner_args), samples)
        res.parity = compare(reference, outputs, recipe.parity.tolerance_for(name, spec.precision_mode))
    except MlpackError as e:
        res.reason = f"{e}"
    except Exception as e:  # a converter's own failure: keep its message and the log
        with open(log, "a") as f:
            traceback.print_exc(file=f)
        res.reason = _one_line(e)
    res.build_seconds = res.build_seconds or time.perf_counter() - t0
    if res.parity is not None:
        res.status = "ok" if res.parity.passed else "failed"
        res.reason = None if res.parity.passed else "parity failed"
        abs_err, cos = res.parity.worst()
        progress.end(name, res.status, f"max_abs_err {abs_err:.2e}, cosine {cos:.6f}")
    else:
        progress.end(name, "failed", f"{res.reason} (log: {res.log})")
    return res, artifact


def _one_line(e: BaseException) -> str:
    """The first line of an exception, without terminal colour codes."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def exit_code_for(results: list[TargetResult]) -> int:
    if any(r.status == "failed" and r.parity is None for r in results):
        return EXIT_CONVERSION
    if any(r.status == "failed" for r in results):
        return EXIT_PARITY
    return EXIT_OK


def build(recipe: Recipe, out_root: Path, only: list[str] | None = None, progress: Progress | None = None) -> BuildResult:
    """Build every requested target of `recipe` under `out_root/<name>/`."""
    progress = progress or Progress()
    started = time.perf_counter()
    specs = recipe.targets
    if only:
        unknown = [n for n in only if n not in [t.target_name for t in specs]]
        if unknown:
            raise UsageError(f"--target {', '.join(unknown)}: not in {recipe.path}", f"targets are: {', '.join(t.target_name for t in specs)}")
        specs = [t for t in specs if t.target_name in only]
    out_root.mkdir(parents=True, exist_ok=True)
    clean_stale(out_root, recipe.name)
    staging = out_root / f".{recipe.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        results, artifacts = _run(recipe, specs, staging, progress)
        serving = _write_serving(recipe, results, artifacts, staging, progress)
        code = exit_code_for(results)
        manifest = _manifest(recipe, results, serving, time.perf_counter() - started)
        mf.write(staging / "manifest.json", manifest)
        final = out_root / recipe.name
        if code == EXIT_OK:
            publish(staging, final)
            return BuildResult(manifest, final, True, code, results)
        failed = out_root / f"{recipe.name}.failed"
        publish(staging, failed)
        return BuildResult(manifest, failed, False, code, results)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _run(recipe: Recipe, specs, staging: Path, progress: Progress):
    results: list[TargetResult] = []
    artifacts: dict[str, Artifact] = {}
    progress.start("source", f"loading {recipe.source.framework} source")
    try:
        with capture_to(staging / "logs" / "source.log"):
            source = load_source(recipe)
            samples = samples_for(recipe)
            from toolchain.runners.torch_eager import TorchEagerRunner
            from toolchain.runners import run_all

            reference = run_all(TorchEagerRunner(source.module, source.input_names, source.output_names), samples)
    except UsageError:
        progress.end("source", "failed")
        raise
    except Exception as e:
        log = staging / "logs" / "source.log"
        with open(log, "a") as f:
            traceback.print_exc(file=f)
        reason = f"source: {e}" if isinstance(e, MlpackError) else f"source: {type(e).__name__}: {e}"
        progress.end("source", "failed", reason)
        for spec in specs:
            results.append(TargetResult(spec.target_name, spec.kind, "failed", reason, log="logs/source.log"))
        return results, artifacts
    progress.end("source", "ok", f"{len(samples)} parity samples, outputs {', '.join(source.output_names)}")
    (staging / "parity").mkdir()
    _save_feeds(staging / "parity" / "samples.npz", samples)
    _save_feeds(staging / "parity" / "reference.npz", reference)
    for spec in specs:
        res, art = _build_target(source, recipe, spec, staging, samples, reference, progress)
        results.append(res)
        if art is not None and res.status == "ok":
            artifacts[res.name] = art
    return results, artifacts


def _write_serving(recipe: Recipe, results: list[TargetResult], artifacts: dict[str, Artifact], staging: Path, progress: Progress) -> dict:
    serving: dict = {"triton": None, "tfserving": None, "models": []}
    tri = recipe.serve.triton
    if not tri or not tri.targets:
        return serving
    from toolchain.serving.triton import triton_model_name, write_triton_model

    by_name = {r.name: r for r in results}
    for tname in tri.targets:
        res = by_name.get(tname)
        if res is None or tname not in artifacts:
            if res is not None:
                progress.note(f"triton: no model for '{tname}' ({res.status})")
            continue
        art = artifacts[tname]
        model = triton_model_name(recipe.name, tname)
        try:
            model_dir = write_triton_model(staging / "triton", model, recipe.version, art.kind, staging / tname, art.signature, tri, art.device)
        except ValueError as e:
            res.status, res.reason = "failed", f"triton: {e}"
            continue
        serving["triton"] = "triton"
        serving["models"].append({"server": "triton", "name": model, "target": tname, "path": model_dir.relative_to(staging).as_posix()})
        if art.kind == "aoti" and (tri.backend == "native"):
            progress.note(f"triton: {model} uses platform torch_aoti (Triton >= 26.03, beta, no batching); serve.triton.backend: python supports older servers and batching")
    return serving


def _manifest(recipe: Recipe, results: list[TargetResult], serving: dict, seconds: float) -> dict:
    try:
        rel = os.path.relpath(recipe.path)
        rel = rel if not rel.startswith("..") else str(recipe.path)
    except ValueError:
        rel = str(recipe.path)
    device = "cpu"
    if any(r.device == "cuda" and r.status == "ok" for r in results):
        import torch

        device = f"cuda ({torch.cuda.get_device_name(0)})"
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
