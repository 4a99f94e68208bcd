"""mlpack bench: latency and throughput of each built artifact, the eager source model as baseline.

Every runtime gets the same seeded inputs per batch size, warm-up runs are not
timed, each figure is bounded by a run count and a time budget, and timing uses
time.perf_counter around one synchronous `infer` (numpy in, numpy out, so device
work is finished when it returns). Results go to bench.json and bench.png
beside the manifest; nothing here prints.
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from toolchain import manifest as mf
from toolchain.environment import environment
from toolchain.errors import UsageError
from toolchain.genbench import bench_generate
from toolchain.progress import Progress
from toolchain.recipe import load_recipe
from toolchain.records import Manifest
from toolchain.runners import open_runner
from toolchain.samples import example_feed
from toolchain.serving.check import REQUEST_TIMEOUT, http_client, infer_inputs, open_triton
from toolchain.serving.standin import parse_config
from toolchain.sources import load_source

SCHEMA_ID = "mlpack.bench/1"
CONCURRENCY = (1, 2, 4)


def _recipe(manifest: Manifest, recipe_path: Path | None):
    path = Path(recipe_path or manifest.recipe_path)
    if not path.is_file():
        raise UsageError(
            f"the recipe recorded in the manifest, {path}, is not found from {Path.cwd()}",
            "run from the directory the build ran in, or pass --recipe PATH",
        )
    return load_recipe(path), mf.sha256_file(path) == manifest.recipe_sha256


def batch_plan(recipe, requested: list[int]) -> tuple[str | None, list[int], int, list[str]]:
    """(batch dim name, batch sizes clipped to its range, latency batch, notes)."""
    first = recipe.inputs[0].shape[0] if recipe.inputs[0].shape else None
    if not isinstance(first, str) or any(not s.shape or s.shape[0] != first for s in recipe.inputs):
        return None, [1], 1, ["the inputs share no named first (batch) dim: measured at their static shapes only"]
    d = recipe.dims[first]
    clipped = sorted({min(max(b, d.min), d.max) for b in requested})
    notes = [f"batch sizes {sorted(set(requested))} clipped to dims.{first} [{d.min}, {d.max}]: {clipped}"] if clipped != sorted(set(requested)) else []
    return first, clipped, min(max(1, d.min), d.max), notes


def make_feeds(recipe, batch_dim: str | None, batches: list[int], seed: int) -> dict[int, dict]:
    """One feed per batch size, other named dims at their opt; from the parity rows or generated (samples.example_feed)."""
    base = {n: d.opt for n, d in recipe.dims.items()}
    return {b: example_feed(recipe, {**base, **({batch_dim: b} if batch_dim else {})}, np.random.default_rng(seed)) for b in batches}


def time_runs(fn, warmup: int, iters: int, seconds: float) -> list[float]:
    """Seconds per call after the warm-up; at most `iters` calls or `seconds` of them.

    Warm-up is `warmup` calls and at least min(1 s, seconds / 2): on a 2-vCPU VM
    the first ~0.5 s of a 2-thread torch run took 50 ms a call against 0.2 ms after.
    """
    warm_until = time.perf_counter() + (min(1.0, seconds / 2) if warmup else 0.0)
    done = 0
    while done < warmup or time.perf_counter() < warm_until:
        fn()
        done += 1
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < iters and (not times or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _latency(times: list[float]) -> dict:
    ms = np.asarray(times) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(ms.mean()), "runs": len(times)}


def _runtimes(root: Path, manifest: Manifest, recipe, threads: int, notes: list[str]):
    """(name, kind, runner) for the eager source and every built artifact, each opened from its manifest runner spec."""
    source = load_source(recipe)
    yield "eager", "source", source.reference_runner()
    for t in manifest.targets:
        if not t.ok:
            continue
        if t.runner is None:
            notes.append(f"{t.name}: its manifest entry has no runner spec (built by an older mlpack); rebuild it to bench it")
            continue
        yield t.name, t.kind, open_runner(t.runner, root, threads)


def bench(
    root: Path,
    batches: list[int],
    warmup: int = 5,
    iters: int = 50,
    seconds: float = 5.0,
    threads: int | None = None,
    recipe_path: Path | None = None,
    through_server: bool = False,
    server: Path | None = None,
    progress: Progress | None = None,
    prompt_tokens: int = 32,
    new_tokens: int = 32,
) -> dict:
    """Measure every runtime of the build at `root`; writes bench.json and bench.png there."""
    progress = progress or Progress()
    path = root / "manifest.json"
    if not path.is_file():
        raise UsageError(f"no manifest.json in {root}", "pass <out>/<name>, the directory a build published")
    if through_server:
        http_client()  # missing mlpack[serve] fails now, not after minutes of timing
    load = os.getloadavg()  # before our own work adds to it
    try:
        manifest = mf.read(path)
    except ValueError as e:
        raise UsageError(f"{path} is not an mlpack manifest ({e})", "rebuild it with mlpack build") from None
    recipe, same_recipe = _recipe(manifest, recipe_path)
    threads = _set_threads(recipe, threads)
    notes: list[str] = []
    if load[0] >= 1.0:
        # Measured on a shared 2-vCPU VM: one busy neighbour made 2-thread eager BERT 150x slower.
        notes.append(f"the machine was busy when the bench started (load average {load[0]:.2f} on {os.cpu_count()} CPUs): figures include contention")
    if not same_recipe:
        notes.append(f"{recipe.path} changed since the build (sha256 differs): the eager baseline may not be the built model")
    if recipe.generates:  # a generator is timed by the token: first token, prefill and decode rates, memory
        report = bench_generate(root, manifest, recipe, batches, threads, prompt_tokens, new_tokens, notes, progress)
        report["load_average"] = [round(v, 2) for v in load]
        (root / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
        return report
    batch_dim, sizes, lat_b, plan_notes = batch_plan(recipe, batches)
    notes = plan_notes + notes
    feeds = make_feeds(recipe, batch_dim, sorted({*sizes, lat_b}), recipe.parity.seed)
    results = []
    for name, kind, runner in _runtimes(root, manifest, recipe, threads, notes):
        progress.start(name, f"bench {name}")
        with runner:
            lat_times = time_runs(partial(runner.infer, feeds[lat_b]), warmup, iters, seconds)
            tput = {}
            for b in sizes:
                times = lat_times if b == lat_b else time_runs(partial(runner.infer, feeds[b]), warmup, iters, seconds)
                tput[str(b)] = b * len(times) / sum(times)
        results.append({"name": name, "kind": kind, "latency_ms": _latency(lat_times), "throughput": tput})
        progress.end(name, "ok", f"p50 {results[-1]['latency_ms']['p50']:.3f} ms at batch {lat_b}")
    eager = results[0]
    for r in results:
        r["vs_eager"] = {
            "latency_ms": {q: r["latency_ms"][q] / eager["latency_ms"][q] for q in ("p50", "p90", "p99")},
            "throughput": {b: v / eager["throughput"][b] for b, v in r["throughput"].items()},
        }
    report = {
        "schema": SCHEMA_ID,
        "name": manifest.name,
        "threads": threads,
        "load_average": [round(v, 2) for v in load],
        "environment": environment(manifest.device),
        "batch_dim": batch_dim,
        "requested_batches": batches,
        "batches": sizes,
        "latency_batch": lat_b,
        "warmup": warmup,
        "iters": iters,
        "seconds": seconds,
        "ratio": "figure / eager figure: below 1 is faster for latency, above 1 is faster for throughput",
        "runtimes": results,
        "server": _through_server(root, manifest, feeds[lat_b], lat_b, eager, warmup, iters, seconds, server, progress, notes) if through_server else None,
        "notes": notes,
    }
    (root / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    write_plot(report, root / "bench.png")
    return report


def _set_threads(recipe, threads: int | None) -> int:
    """Intra-op threads for the eager model and every runtime; returns the count in force."""
    if recipe.source.framework == "pytorch":
        import torch

        if threads:
            torch.set_num_threads(threads)
        return torch.get_num_threads()
    return threads or os.cpu_count() or 1


def _through_server(root, manifest, feed, batch, eager, warmup, iters, seconds, server, progress, notes) -> list[dict]:
    """Requests/s and latency through Triton at a few concurrency levels (loopback, bounded)."""
    from tritonclient.utils import InferenceServerException

    models = manifest.serving.by("triton")
    if not models:
        notes.append("--through-server: this build has no Triton models")
        return []
    out = []
    with open_triton(root, models, manifest, server, False, root / "logs" / "bench-triton.log", progress) as (srv, served):
        for m, s in zip(models, served):
            refusal = s.skip_reason or srv.load(m.name)
            if refusal:
                notes.append(f"--through-server: {m.name} not measured: {refusal}")
                continue
            cfg = parse_config((root / m.path / "config.pbtxt").read_text())
            sig = manifest.target(m.target).signature
            progress.start(m.name, f"bench {m.name} through Triton")
            try:
                levels = [_concurrency(srv.url, cfg, sig, feed, c, warmup, iters, seconds) for c in CONCURRENCY]
            except (InferenceServerException, threading.BrokenBarrierError) as e:
                notes.append(f"--through-server: {m.name} failed a request: {e}")
                progress.end(m.name, "failed", str(e))
                continue
            for lv in levels:
                lv["vs_eager"] = lv["requests_per_s"] * batch / eager["throughput"][str(batch)]
            out.append({"model": m.name, "target": m.target, "backend": s.backend, "server_version": srv.version, "batch": batch, "concurrency": levels})
            progress.end(m.name, "ok", ", ".join(f"c{lv['concurrency']} {lv['requests_per_s']:.1f} req/s" for lv in levels))
    return out


def _concurrency(url: str, cfg, sig, feed: dict, workers: int, warmup: int, iters: int, seconds: float) -> dict:
    """`workers` clients sending back to back, timed together from a common start after their warm-up."""
    httpclient = http_client()
    start = threading.Barrier(workers + 1, timeout=REQUEST_TIMEOUT)

    def worker() -> list[float]:
        client = httpclient.InferenceServerClient(url, connection_timeout=10.0, network_timeout=REQUEST_TIMEOUT)
        try:
            inputs = infer_inputs(cfg, sig, feed)
            for _ in range(warmup):
                client.infer(cfg.name, inputs)
            start.wait()
            return time_runs(lambda: client.infer(cfg.name, inputs), 0, iters, seconds)
        except BaseException:
            start.abort()  # the others must not wait for a worker that failed
            raise
        finally:
            client.close()

    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(worker) for _ in range(workers)]
        try:
            start.wait()
        except threading.BrokenBarrierError:
            pass  # a worker failed: its exception comes out of result() below
        t0 = time.perf_counter()
        per_worker = [f.result() for f in futures]
        wall = time.perf_counter() - t0
    times = [t for w in per_worker for t in w]
    return {"concurrency": workers, "requests": len(times), "seconds": round(wall, 3), "requests_per_s": len(times) / wall, "latency_ms": _latency(times)}


def write_plot(report: dict, path: Path) -> None:
    """Throughput against batch size, one line per runtime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        for r in report["runtimes"]:
            xs = [int(b) for b in r["throughput"]]
            ax.plot(xs, list(r["throughput"].values()), marker="o", label=r["name"])
        ax.set_xscale("log", base=2)
        ax.set_xticks(report["batches"], [str(b) for b in report["batches"]])
        ax.set_xlabel("batch size")
        ax.set_ylabel("samples / s (one stream)")
        ax.set_title(f"{report['name']}: throughput, {report['threads']} threads")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
