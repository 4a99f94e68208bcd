"""Command line: argv -> recipe -> build. The only module that prints or exits."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from toolchain import __version__
from toolchain.errors import EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE, MlpackError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors exit 2 with one line, as the spec says
        self.print_usage(sys.stderr)
        print(f"mlpack: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mlpack", description="Compile models into parity-checked deployable artifacts.")
    p.add_argument("--version", action="version", version=f"mlpack {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    b = sub.add_parser("build", help="build every target of a recipe, gate on parity, publish")
    b.add_argument("recipe", type=Path)
    b.add_argument("--out", type=Path, default=Path("artifacts"), help="output root (default: artifacts/)")
    b.add_argument("--target", action="append", metavar="NAME", help="build only this target (repeatable)")
    b.add_argument("--jobs", type=int, default=1, help="parallel targets (this version builds sequentially)")
    b.add_argument("--force", action="store_true", help="rebuild everything (this version keeps no cache: always rebuilds)")
    b.add_argument("--json", action="store_true", help="print the manifest to stdout")

    v = sub.add_parser("validate", help="check a recipe's schema and files; imports no framework")
    v.add_argument("recipe", type=Path)

    i = sub.add_parser("inspect", help="summarise a built artifact directory")
    i.add_argument("dir", type=Path)
    i.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"build": cmd_build, "validate": cmd_validate, "inspect": cmd_inspect}[args.command](args)
    except MlpackError as e:
        print(f"mlpack: {e.render()}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("mlpack: interrupted; the last good output is untouched", file=sys.stderr)
        return 130
    except Exception as e:  # a bug in mlpack, not the user's input
        if os.environ.get("MLPACK_DEBUG"):
            raise
        print(f"mlpack: unexpected error: {type(e).__name__}: {e}\n    (set MLPACK_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_UNEXPECTED


def cmd_validate(args) -> int:
    from toolchain.recipe import load_recipe

    r = load_recipe(args.recipe)
    kinds = ", ".join(f"{t.target_name} ({t.kind})" for t in r.targets)
    print(f"{args.recipe}: ok - {r.name} v{r.version}, {r.source.framework}, targets: {kinds}", file=sys.stderr)
    return EXIT_OK


def cmd_build(args) -> int:
    from toolchain.build import build
    from toolchain.progress import make_progress
    from toolchain.recipe import load_recipe

    if args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    recipe = load_recipe(args.recipe)
    with make_progress() as progress:
        result = build(recipe, args.out, only=args.target, progress=progress)
    _print_summary(result)
    if args.json:
        print(json.dumps(result.manifest, indent=2))
    return result.exit_code


def cmd_inspect(args) -> int:
    from toolchain import manifest as mf

    path = args.dir / "manifest.json" if args.dir.is_dir() else args.dir
    if not path.is_file():
        raise UsageError(f"no manifest.json in {args.dir}", "pass <out>/<name>, the directory a build published")
    try:
        m = mf.read(path)
    except ValueError as e:
        raise UsageError(f"{path} is not valid JSON: {e}") from None
    if args.json:
        print(json.dumps(m, indent=2))
        return EXIT_OK
    con = _console(sys.stdout)
    env = m.get("environment", {})
    con.print(f"[bold]{m.get('name')}[/] v{m.get('version')} ({m.get('framework')}) built in {m.get('build_seconds', 0):.1f}s")
    con.print(f"recipe {m['recipe']['path']}  torch {env.get('torch')}  onnxruntime {env.get('onnxruntime')}  device {env.get('device')}")
    con.print(_table(m["targets"]))
    for model in m.get("serving", {}).get("models", []):
        con.print(f"{model['server']}: {model['path']}")
    return EXIT_OK


def _table(targets: list[dict]):
    from rich.table import Table

    t = Table(title="targets")
    for col in ("target", "kind", "status", "build s", "max abs err", "min cosine", "files / reason"):
        t.add_column(col)
    for r in targets:
        par = r.get("parity") or {}
        outs = par.get("outputs", {}).values()
        abs_err = f"{max(o['max_abs_err'] for o in outs):.2e}" if outs else "-"
        cos = f"{min(o['cosine'] for o in outs):.6f}" if outs else "-"
        color = {"ok": "green", "skipped": "yellow"}.get(r["status"], "red")
        detail = ", ".join(f["path"] for f in r["files"]) if r["status"] == "ok" else (r.get("reason") or "")
        t.add_row(r["name"], r["kind"], f"[{color}]{r['status']}[/]", f"{r['build_seconds']:.1f}", abs_err, cos, detail)
    return t


def _console(stream):
    """A rich console; wide when piped so tables in CI logs do not wrap."""
    from rich.console import Console

    return Console(file=stream, width=None if stream.isatty() else 160)


def _print_summary(result) -> None:
    from rich.table import Table

    con = _console(sys.stderr)
    con.print(_table(result.manifest["targets"]))
    failing = [(r, name, d) for r in result.targets if r.parity and not r.parity.passed for name, d in r.parity.outputs.items() if not d.passed]
    if failing:
        t = Table(title="parity failures", title_style="bold red")
        for col in ("target", "output", "max abs err", "max rel err", "cosine", "top1", "tolerance", "why"):
            t.add_column(col)
        for r, name, d in failing:
            tol = ", ".join(f"{k}={v:g}" for k, v in r.parity.tolerance.items())
            top1 = f"{d.top1:.4f}" if d.top1 is not None else "-"
            t.add_row(r.name, name, f"{d.max_abs_err:.3e}", f"{d.max_rel_err:.3e}", f"{d.cosine:.6f}", top1, tol, "; ".join(d.failures[:3]))
        con.print(t)
    for t in result.manifest["targets"]:
        for w in t.get("warnings", []):
            con.print(f"[yellow]warning[/] {t['name']}: {w}")
    for r in result.targets:
        if r.status == "failed" and r.parity is None and r.log:
            con.print(f"[red]{r.name}[/]: {r.reason}\n    log: {result.path / r.log}")
    if result.published:
        con.print(f"[green]published[/] {result.path}")
    else:
        con.print(f"[red]not published[/]: the previous output is untouched; this attempt is in {result.path}")
