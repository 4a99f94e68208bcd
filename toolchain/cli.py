"""Command line: argv -> recipe -> build. The only module that prints or exits."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import click

from toolchain import __version__, cache_admin
from toolchain import manifest as mf
from toolchain.bench import bench
from toolchain.build import build
from toolchain.errors import EXIT_CONVERSION, EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE, MlpackError, UsageError
from toolchain.hostwarn import host_warnings
from toolchain.junit import write_junit
from toolchain.progress import make_progress
from toolchain.recipe import load_recipe
from toolchain.records import Manifest, Selection, ServedModel, Stage, Status, TargetResult
from toolchain.remote import open_remote
from toolchain.samples import plan_data
from toolchain.serving.check import serve_check

# Top-level modules of the optional extras (pyproject.toml), named when a command needs one.
EXTRAS = {
    "tritonclient": "serve",
    "geventhttpclient": "serve",
    "gevent": "serve",
    "rapidjson": "serve",
    "grpc": "serve",
    "tensorflow": "tensorflow",
    "tf2onnx": "tensorflow",
    "tensorflow_serving": "tensorflow",
}


def _check_output_file(path: Path, flag: str) -> None:
    """Fail before the build, not after publishing, when a report file cannot be written."""
    if path.is_dir():
        raise UsageError(f"{flag}: {path} is a folder", f"give {flag} a file path, e.g. {path / 'report.xml'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{flag}: {parent} is a file, so {path} cannot be created under it", f"give {flag} a path in a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UsageError(f"{flag}: cannot write in {parent}", f"give {flag} a path in a folder you can write to")
            return


_PATH = click.Path(path_type=Path)  # no existence check here: the commands say what is missing, and how to fix it


class _BatchList(click.ParamType):
    """`--batch 1,8,32`: positive batch sizes."""

    name = "1,8,32"

    def convert(self, value, param, ctx) -> list[int]:
        if isinstance(value, list):  # click may hand a converted value back (a default, a second pass)
            return value
        try:
            return _batch_list(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


@dataclass(frozen=True)
class _Call:
    """A parsed command line. `main` runs it after parsing, so its errors meet main's handlers, not click's."""

    command: str
    handler: Callable[[SimpleNamespace], int]
    args: SimpleNamespace


def _defer(command: str, handler: Callable[[SimpleNamespace], int], params: dict) -> _Call:
    if "target" in params:  # click gives () when --target is absent; build and serve-check take None as "every target"
        params["target"] = list(params["target"]) or None
    return _Call(command, handler, SimpleNamespace(command=command, **params))


@click.group(name="mlpack", context_settings={"help_option_names": ["-h", "--help"]}, no_args_is_help=False)  # bare `mlpack` exits 2
@click.version_option(__version__, "--version", prog_name="mlpack", message="%(prog)s %(version)s")
def _cli() -> None:
    """Compile models into parity-checked deployable artifacts."""


def _command(name: str, summary: str):
    """A subcommand whose one-line help shows whole in `mlpack --help` (click would cut it at 45 characters)."""
    return _cli.command(name, help=summary, short_help=summary)


@_command("build", "build every target of a recipe, gate on parity, publish")
@click.argument("recipe", type=_PATH)
@click.option("--serve-check", is_flag=True, help="after a successful build, run `mlpack serve-check` on it")
@click.option("--out", type=_PATH, default="artifacts", metavar="DIR", help="output root (default: artifacts/)")
@click.option("--target", multiple=True, metavar="NAME", help="build only this target (repeatable)")
@click.option("--jobs", type=int, metavar="N", help="targets built in parallel (default: what cores and memory allow)")
@click.option("--force", is_flag=True, help="rebuild every target, ignoring the cache")
@click.option("--json", is_flag=True, help="print the manifest to stdout")
@click.option("--junit", type=_PATH, metavar="FILE", help="write a JUnit XML report, one test case per target")
@click.option("--executor", metavar="WHERE", help="where steps run: local (default), ray (RAY_ADDRESS or a local cluster), ray://HOST:PORT")
@click.option("--cache", metavar="URL", help="a shared cache behind the local one: s3://bucket/prefix, gs://..., file:///path (default: $MLPACK_CACHE)")
def _build(**params) -> _Call:
    return _defer("build", cmd_build, params)


@_command("validate", "check a recipe's schema and files; imports no framework")
@click.argument("recipe", type=_PATH)
def _validate(**params) -> _Call:
    return _defer("validate", cmd_validate, params)


@_command("inspect", "summarise a built artifact directory")
@click.argument("dir", type=_PATH)
@click.option("--json", is_flag=True, help="print the manifest to stdout")
def _inspect(**params) -> _Call:
    return _defer("inspect", cmd_inspect, params)


@_command("serve-check", "load a build's repositories in a real server, replay its parity samples, compare")
@click.argument("dir", type=_PATH)
@click.option("--target", multiple=True, metavar="NAME", help="check only this target's models (repeatable)")
@click.option("--only", multiple=True, type=click.Choice(["triton", "tfserving", "vllm", "ortgenai"]), help="check only through this server (repeatable)")
@click.option("--native", is_flag=True, help="serve the repository as is (the server has the native backends)")
@click.option("--server", type=_PATH, metavar="PATH", help="a tritonserver binary, or an environment holding nvidia-pytriton")
@click.option("--json", is_flag=True, help="print the updated manifest to stdout")
def _serve_check_command(**params) -> _Call:
    return _defer("serve-check", cmd_serve_check, params)


@_command("cache", "list, prune or verify the cache of an output root and a shared cache")
@click.argument("action", type=click.Choice(["ls", "prune", "verify"]))
@click.option("--out", type=_PATH, default="artifacts", metavar="DIR", help="the output root whose .mlpack-cache to use (default: artifacts/)")
@click.option("--cache", metavar="URL", help="also the shared cache at URL (default: $MLPACK_CACHE)")
@click.option("--max-size", metavar="SIZE", help="prune: least recently used entries go until each store holds at most SIZE (20GB, 500MiB)")
@click.option("--older-than", metavar="AGE", help="prune: entries unused for AGE go (30m, 12h, 7d, 2w)")
@click.option("--dry-run", is_flag=True, help="prune: say what would go, remove nothing")
@click.option("--json", is_flag=True, help="print the rows as JSON to stdout")
def _cache(**params) -> _Call:
    return _defer("cache", cmd_cache, params)


@_command("bench", "latency and throughput of each built artifact, against the eager source model")
@click.argument("dir", type=_PATH)
@click.option("--batch", type=_BatchList(), default="1,8,32", help="batch sizes, clipped to the recipe's batch dim")
@click.option("--warmup", type=int, default=5, metavar="N", help="untimed runs first (default 5)")
@click.option("--iters", type=int, default=50, metavar="N", help="timed runs per figure at most (default 50)")
@click.option("--seconds", type=float, default=5.0, metavar="S", help="time budget per figure (default 5)")
@click.option("--threads", type=int, metavar="N", help="intra-op threads for every runtime (default: torch's)")
@click.option("--recipe", type=_PATH, metavar="RECIPE", help="the recipe, when the path in the manifest does not resolve from here")
@click.option("--through-server", is_flag=True, help="also measure through a Triton server (requests/s per concurrency)")
@click.option("--server", type=_PATH, metavar="PATH", help="with --through-server: as for serve-check")
@click.option("--prompt-tokens", type=click.IntRange(1), default=32, metavar="N", help="a generator's prompt length (default 32)")
@click.option("--new-tokens", type=click.IntRange(1), default=32, metavar="N", help="tokens a generator makes per prompt (default 32)")
@click.option("--json", is_flag=True, help="print bench.json to stdout")
def _bench(**params) -> _Call:
    return _defer("bench", cmd_bench, params)


def _batch_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise ValueError(f"{text!r}: batch sizes must be positive integers")
    return values


def _parse(argv: list[str] | None) -> _Call | int:
    """argv -> the command to run, or the exit code when there is none to run (help, version, completion, usage error)."""
    try:
        return _cli.main(args=argv, prog_name="mlpack", standalone_mode=False)
    except click.ClickException as e:  # usage errors exit 2 with one line, as the spec says
        if isinstance(e, click.UsageError) and e.ctx is not None:
            click.echo(e.ctx.get_usage(), err=True)
        message = re.sub(r"\s*\n\s*", " ", e.format_message())  # click lists a Choice's values one per line
        print(f"mlpack: error: {message}", file=sys.stderr)
        return e.exit_code
    except click.exceptions.Abort:  # Ctrl-C while parsing
        print("mlpack: interrupted; the last good output is untouched", file=sys.stderr)
        return 130
    except SystemExit as e:  # shell completion ($_MLPACK_COMPLETE) answers, then exits
        return int(e.code or EXIT_OK)


def main(argv: list[str] | None = None) -> int:
    """The `mlpack` console script; returns the exit code: 0 ok, 2 usage or recipe, 3 parity, 4 convert, 1 unexpected, 130 interrupted."""
    call = _parse(argv)
    if not isinstance(call, _Call):
        return call
    try:
        return call.handler(call.args)
    except MlpackError as e:
        print(f"mlpack: {e.render()}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("mlpack: interrupted; the last good output is untouched", file=sys.stderr)
        return 130
    except ModuleNotFoundError as e:  # an optional extra this command needs is not installed
        top = (e.name or "").split(".")[0]
        if top not in EXTRAS:
            raise
        print(f"mlpack: {call.command} needs {top}, which is not installed\n    fix: pip install 'mlpack[{EXTRAS[top]}]'", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # a bug in mlpack, not the user's input
        if os.environ.get("MLPACK_DEBUG"):
            raise
        print(f"mlpack: unexpected error: {type(e).__name__}: {e}\n    (set MLPACK_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_UNEXPECTED


def cmd_validate(args) -> int:
    r = load_recipe(args.recipe)
    lines = [f"{args.recipe}: ok - {r.name} v{r.version}, {r.source.framework}, targets: " + ", ".join(f"{t.target_name} ({t.kind})" for t in r.targets)]
    parity, calibration = plan_data(r)  # reads the data files' headers: a split that cannot work fails here, not mid-build
    if r.dims:
        lines.append(
            "  dims (the sizes the artifacts must accept): "
            + ", ".join(f"{n} {d.describe()}" + (f" (served: {d.accepted().served})" if d.accepted().served != d.describe() else "") for n, d in r.dims.items())
        )
    if parity is not None:
        lines.append(f"  parity: {parity.describe(r.root)}")
        if calibration is not None and calibration.sizes:
            lines.append(f"  calibration: {calibration.describe(r.root)}")
        elif any(t.calibrates for t in r.targets):
            lines.append("  calibration: no rows left for it: an int8 target will fail; name data.calibration or add rows")
    else:
        lines.append(f"  parity: {r.parity.samples} samples generated from `inputs` (seed {r.parity.seed})")
    if r.generates:
        d, g = r.decoder, r.generation
        lines.append(f"  text-generation: {d.model_type or 'decoder'}, {d.layers} layers, {f'states {d.states[0]} x ({d.states[1]} conv, {d.states[2]} ssm)' if d.recurrent else f'cache {d.kv_heads} kv heads x {d.head_dim}'}, context {g.max_length}, "
                     f"batch up to {g.max_batch}; judged on {len(g.prompts or g.audio)} {'prompts' if g.prompts else 'audio clips'} x {g.max_new_tokens} greedy tokens against the source's own greedy generation")  # fmt: skip
    if r.pipeline:
        pre, post = r.preprocess, r.postprocess
        took = f"text (tokenizer {pre.text.tokenizer}, max {pre.text.max_length} tokens)" if pre.text else (
            f"image bytes (resize {pre.image.resize}, crop {pre.image.crop}, {pre.image.layout})")  # fmt: skip
        gives = (f"an embedding ({post.embedding.pool} pooling of '{post.embedding.output}'{', L2-normalised' if post.embedding.normalize else ''})"
                 if post.embedding else f"top {post.classify.top_k} labels of '{post.classify.output}'")  # fmt: skip
        lines.append(f"  pipeline: {took} -> {gives}; judged end to end on {len(r.raw_samples())} raw sample file(s) against the source framework's pipeline")
    print("\n".join(lines), file=sys.stderr)
    return EXIT_OK


def cmd_build(args) -> int:
    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    if args.junit:
        _check_output_file(args.junit, "--junit")
    recipe = load_recipe(args.recipe)
    with make_progress() as progress:
        result = build(recipe, args.out, only=args.target, progress=progress, jobs=args.jobs, force=args.force, cache_url=args.cache, executor=args.executor)
    _print_summary(result)
    if result.manifest.selection and result.manifest.selection.ranking:
        _console(sys.stderr).print(_selection_table(result.manifest.selection, result.manifest.serving.models))
    if args.serve_check and result.exit_code == EXIT_OK:
        check = _serve_check(result.path)
        result.manifest, result.exit_code = check.manifest, check.exit_code
    if args.junit:
        write_junit(args.junit, result.manifest, result.path)
    if args.json:
        print(json.dumps(result.manifest.to_dict(), indent=2))
    return result.exit_code


def cmd_inspect(args) -> int:
    path = args.dir / "manifest.json" if args.dir.is_dir() else args.dir
    if not path.is_file():
        raise UsageError(f"no manifest.json in {args.dir}", "pass <out>/<name>, the directory a build published")
    try:
        raw = mf.read_raw(path)
    except ValueError as e:
        raise UsageError(f"{path} is not valid JSON: {e}") from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    if not Manifest.claims(raw):
        raise UsageError(f"{path} is not an mlpack manifest (no schema 'mlpack.manifest/1')", "pass <out>/<name>, the directory a build published")
    problems = mf.problems(raw)
    if problems:
        raise UsageError(f"{path} does not match mlpack's manifest schema: {problems[0]}", "rebuild it with mlpack build")
    if args.json:
        print(json.dumps(raw, indent=2))
        return EXIT_OK
    try:
        m = Manifest.from_dict(raw)
    except ValueError as e:
        raise UsageError(f"{path}: {e}", "rebuild it with mlpack build") from None
    con = _console(sys.stdout)
    con.print(f"[bold]{m.name}[/] v{m.version} ({m.framework}) built in {m.build_seconds:.1f}s")
    con.print(f"recipe {m.recipe_path}  torch {m.tool('torch')}  onnxruntime {m.tool('onnxruntime')}  device {m.device}")
    if m.dims:
        con.print("accepts: " + ", ".join(f"{n} {d.text}" for n, d in m.dims.items()))
        if any(d.pad is not None for d in m.dims.values()):
            con.print("served: " + ", ".join(f"{n} {d.served}" for n, d in m.dims.items() if d.pad is not None))
    con.print(_table(m.targets))
    classes = _cpu_table(m.targets)
    if classes is not None:
        con.print(classes)
    if m.selection:
        con.print(_selection_table(m.selection, m.serving.models))
    for model in m.serving.models:
        con.print(f"{model.server}: {model.path}")
    return EXIT_OK


def _selection_table(sel: Selection, models: list[ServedModel]):
    from rich.table import Table

    machine = sel.machine
    title = (f"selection: {sel.metric} at batch {sel.batch}, {sel.threads} thread(s), on {machine.model} "
             f"({machine.cores} cores; {', '.join(machine.features) or 'no AVX-512/AMX'})")  # fmt: skip
    generator = "new_tokens" in (sel.shape or {})  # a generator: timed by whole greedy generations
    if generator:
        title += f"; a greedy generation of {sel.shape['new_tokens']} tokens after a {sel.shape['prompt_tokens']}-token prompt"
    t = Table(title=title)
    for col in ("rank", "target", "kind", "ms per generation" if generator else "median ms", "tokens/s" if generator else "samples/s", "x eager", "served as"):
        t.add_column(col)
    served_target = next((x.target for x in models if x.name == sel.served_as), None)  # Triton's winner among its targets
    for i, r in enumerate(sel.ranking, 1):
        served = sel.served_as if r.target == served_target else ""
        t.add_row(str(i), r.target, r.kind, f"{r.median_ms:.3f}", f"{r.samples_per_s:.1f}", f"{r.vs_eager:.2f}", served or "")
    if sel.eager:
        t.add_row("-", "eager (source)", "-", f"{sel.eager.median_ms:.3f}", f"{sel.eager.samples_per_s:.1f}", "1.00", "")
    for c in sel.per_class:  # the fleet's classes (serve.cpus)
        timed = ", ".join(f"{r.target} {r.vs_eager:.2f}x" for r in c.ranking)
        how = (f"timed as {c.cls} (ISA capped): {timed}" if c.ranking else "the ranking above" if c.timed_on == c.cls
               else f"not timed as {c.cls}: the order measured on {c.timed_on}")  # fmt: skip
        extra = (f"; not timed as it: {', '.join(c.untimed)}" if c.untimed else "") + (f"; not offered: {', '.join(c.excluded)}" if c.excluded else "")
        t.add_row("", f"{c.cls}: {c.winner or 'none'}", "", "", "", "", how + extra)
    if sel.tie_break:
        t.caption = sel.tie_break
    return t


def _table(targets: list[TargetResult]):
    from rich.table import Table

    t = Table(title="targets")
    for col in ("target", "kind", "status", "build s", "max abs err", "min cosine", "files / reason"):
        t.add_column(col)
    for r in targets:
        abs_err, cos = r.parity.worst() if r.parity and r.parity.outputs else (None, None)
        color = {"ok": "green", "skipped": "yellow"}.get(r.status.value, "red")
        detail = ", ".join(f.path for f in r.files) if r.ok else (r.reason or "")
        t.add_row(r.name, r.kind, f"[{color}]{r.status.value}[/]", f"{r.build_seconds:.1f}", "-" if abs_err is None else f"{abs_err:.2e}",
                  "-" if cos is None else f"{cos:.6f}", detail)  # fmt: skip
    return t


def _cpu_table(targets: list[TargetResult]):
    """Per CPU artifact: what it needs, and each class's verdict (toolchain/classgate.py); None without any."""
    from rich.table import Table

    proved = [r for r in targets if r.cpu is not None]
    if not proved:
        return None
    classes = list(dict.fromkeys(c.cls for r in proved for c in r.cpu.classes))
    t = Table(title=f"CPU classes (built on {proved[0].cpu.built_on}: {', '.join(proved[0].cpu.features) or 'no AVX-512/AMX'})")
    for col in ("target", "code needs", *classes):
        t.add_column(col)
    marks = {"passed": "green", "derived": "cyan", "untested": "yellow", "failed": "red"}
    for r in proved:
        cells = []
        for cls in classes:
            c = r.cpu.check(cls)
            if c is None:
                cells.append("-")
                continue
            figure = f" {c.cosine:.6f}" if c.cosine is not None else ""
            cells.append(f"[{marks[c.status]}]{c.status}[/]{figure}" + ("" if c.offered else " (not offered)"))
        needs = r.cpu.needs or "-"
        if r.cpu.compiled_for:
            needs += f" (compiled for {r.cpu.compiled_for})"
        t.add_row(r.name, needs, *cells)
    return t


def _console(stream):
    """A rich console; wide when piped so tables in CI logs do not wrap."""
    from rich.console import Console

    return Console(file=stream, width=None if stream.isatty() else 160)


def _print_summary(result) -> None:
    from rich.table import Table

    con = _console(sys.stderr)
    con.print(_table(result.manifest.targets))
    failing = [(r, name, d) for r in result.targets if r.parity and not r.parity.passed for name, d in r.parity.outputs.items() if not d.passed]
    if failing:
        t = Table(title="parity failures", title_style="bold red")
        for col in ("target", "output", "max abs err", "max rel err", "cosine", "top1", "tolerance", "why"):
            t.add_column(col)
        for r, name, d in failing:
            tol = ", ".join(f"{k}={v:g}" for k, v in r.parity.tolerance.items())
            top1 = f"{d.top1:.4f}" if d.top1 is not None else f"{d.agreement:.4f} equal" if d.agreement is not None else "-"
            t.add_row(r.name, name, f"{d.max_abs_err:.3e}", f"{d.max_rel_err:.3e}", f"{d.cosine:.6f}", top1, tol, "; ".join(d.failures[:3]))
        con.print(t)
    missed = [r for r in result.targets if r.generation is not None and not r.generation.passed]
    if missed:
        t = Table(title="generation failures (teacher-forced on the source's greedy tokens)", title_style="bold red")
        for col in ("target", "tokens as the source's", "floor", "first divergence", "min step cosine", "perplexity", "why"):
            t.add_column(col)
        for r in missed:
            g = r.generation
            first = g.divergences[0] if g.divergences else None
            where = f"prompt {first.prompt} step {first.step}: {first.got} for {first.expected} (margin {first.margin:.3g})" if first else "-"
            p = g.perplexity
            ppl = "-" if p is None else "not finite" if p.delta is None else f"{p.delta:+.2%}" + (f" (≤ +{p.budget:.0%})" if p.budget is not None else "")
            t.add_row(r.name, f"{g.token_match:.4f}", f"{g.floor:g}", where, f"{min(g.step_cosine, default=1.0):.6f}", ppl, "; ".join(g.failures[:3]))
        con.print(t)
    for t in result.manifest.targets:
        for w in t.warnings:
            con.print(f"[yellow]warning[/] {t.name}: {w}")
    if any(r.cpu is not None and len(r.cpu.classes) > 1 for r in result.manifest.targets):
        con.print(_cpu_table(result.manifest.targets))
        for r in result.manifest.targets:
            for c in r.cpu.classes if r.cpu is not None and r.ok else []:
                if not c.offered:
                    con.print(f"[yellow]not offered[/] {r.name} on {c.cls}: {c.reason}")
    for r in result.targets:
        if r.status is Status.FAILED and r.stage is not Stage.PARITY:
            con.print(
                f"[red]{r.name}[/] ({r.stage.value}): {r.reason}"
                + (f"\n    fix: {r.hint}" if r.hint else "")
                + (f"\n    log: {result.path / r.log}" if r.log else "")
            )
    if result.published:
        con.print(f"[green]published[/] {result.path}")
    else:
        con.print(f"[red]not published[/]: the previous output is untouched; this attempt is in {result.path}")


def _serve_check(root: Path, server: Path | None = None, native: bool = False, targets: list[str] | None = None, only: list[str] | None = None):
    with make_progress() as progress:
        result = serve_check(root, server=server, native=native, targets=targets, progress=progress, only=only)
    _print_serve_check(result)
    return result


def _host_warnings(root: Path, names: list[str] | None = None, threads: int | None = None, serving: bool = False) -> None:
    for line in host_warnings(root, names, threads, serving):
        print(f"mlpack: warning: {line}", file=sys.stderr)


def cmd_serve_check(args) -> int:
    _host_warnings(args.dir, list(args.target or []) or None, serving=True)
    result = _serve_check(args.dir, args.server, args.native, args.target, list(args.only or []) or None)
    if args.json:
        print(json.dumps(result.manifest.to_dict(), indent=2))
    return result.exit_code


def _print_serve_check(result) -> None:
    from rich.table import Table

    con = _console(sys.stderr)
    t = Table(title=f"serve-check {result.root}")
    for col in ("model", "target", "served by", "status", "requests", "max abs err", "min cosine", "why"):
        t.add_column(col)
    for c in result.models:
        abs_err, cos = c.parity.worst() if c.parity else (None, None)
        color = {"ok": "green", "skipped": "yellow"}.get(c.status.value, "red")
        why = [c.reason] if c.reason else []
        if c.parity and not c.parity.passed:
            why += [f"{name}: {'; '.join(d.failures[:2])}" for name, d in c.parity.outputs.items() if not d.passed]
        if c.generation and not c.reason:  # a generator: tokens, not tensors (streamed by Triton, completed by vLLM, embedded)
            g = c.generation
            done = f"streamed {g['responses']}" if "responses" in g else f"generated {g['tokens']}"
            why.append(f"{done} tokens, {g['token_match']:.4f} as the source's greedy tokens")
        t.add_row(
            c.model,
            c.target,
            c.backend,
            f"[{color}]{c.status.value}[/]",
            str(c.requests),
            "-" if abs_err is None else f"{abs_err:.2e}",
            "-" if cos is None else f"{cos:.6f}",
            "\n".join(why),
        )
    con.print(t)
    if result.server_version:
        con.print(f"Triton {result.server_version}, ready in {result.start_seconds:.1f}s; server log: {result.root / 'logs' / 'serve-check-triton.log'}")
    for server, why in result.skipped.items():
        con.print(f"[yellow]{server}: not checked[/] - {why}")
    for c in result.models:
        if c.native_check and c.status.value != "ok":
            con.print(f"[red]{c.model}[/]: what the native backend would refuse:\n    " + "\n    ".join(c.native_check))


def cmd_cache(args) -> int:
    remote = open_remote(args.cache)
    out = args.out.resolve()
    if args.action == "ls":
        rows = cache_admin.ls(out, remote)
        title = f"cache entries ({out / '.mlpack-cache'}" + (f", {remote.url}" if remote else "") + ")"
    elif args.action == "prune":
        max_size = cache_admin.parse_size(args.max_size) if args.max_size else None
        older = cache_admin.parse_duration(args.older_than) if args.older_than else None
        rows = cache_admin.prune(out, remote, max_size, older, args.dry_run)
        title = ("would remove" if args.dry_run else "removed") + f" {len(rows)} entries"
    else:
        rows = cache_admin.verify(out, remote)
        title = f"{len(rows)} corrupt entries (removed)" if rows else "every entry verified"
    if args.json:
        print(json.dumps(rows, indent=2))
    from rich.table import Table

    t = Table(title=title)
    for col in ("where", "key", "what", "size", "last used / created") + (("why",) if args.action == "verify" else ()):
        t.add_column(col)
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["time"])) if r["time"] else "-"
        t.add_row(r["where"], r["key"][:16], r["what"], f"{r['bytes'] / 1e6:.1f} MB", when, *((r.get("why", ""),) if args.action == "verify" else ()))
    _console(sys.stderr if args.json else sys.stdout).print(t)
    if args.action == "ls" and not rows:
        print(f"no entries in {out / '.mlpack-cache'}" + (f" or {remote.url}" if remote else ""), file=sys.stderr)
    return EXIT_CONVERSION if args.action == "verify" and rows else EXIT_OK


def cmd_bench(args) -> int:
    if args.warmup < 0 or args.iters < 1 or args.seconds <= 0:
        raise UsageError("--warmup must be >= 0, --iters >= 1 and --seconds > 0")
    _host_warnings(args.dir, threads=args.threads)
    with make_progress() as progress:
        report = bench(
            args.dir,
            batches=args.batch,
            warmup=args.warmup,
            iters=args.iters,
            seconds=args.seconds,
            threads=args.threads,
            recipe_path=args.recipe,
            through_server=args.through_server,
            server=args.server,
            progress=progress,
            prompt_tokens=args.prompt_tokens,
            new_tokens=args.new_tokens,
        )
    printer = _print_bench_generate if report.get("task") == "text-generation" else _print_bench
    printer(report, args.dir, sys.stderr if args.json else sys.stdout)  # stdout stays pure JSON with --json
    if args.json:
        print(json.dumps(report, indent=2))
    return EXIT_OK


def _print_bench_generate(report: dict, root: Path, stream) -> None:
    from rich.table import Table

    con = _console(stream)
    title = f"bench {report['name']}: {report['prompt_tokens']}-token prompt, {report['new_tokens']} new tokens, {report['threads']} threads"
    t = Table(title=title + " (x = ratio to transformers' generate)")
    for col in ("runtime", "batch", "TTFT ms", "prefill tok/s", "decode tok/s", f"peak MB (b{report['peak_memory_mb']['batch']})"):
        t.add_column(col, justify="right")
    for r in report["runtimes"]:
        decode = f"{r['decode_tokens_per_s']:.1f} ({r['vs_eager']['decode']:.2f}x)" if r["decode_tokens_per_s"] else "-"
        peak = report["peak_memory_mb"].get(r["name"])
        t.add_row(r["name"], str(r["batch"]), f"{r['ttft_ms']:.2f} ({r['vs_eager']['ttft']:.2f}x)", f"{r['prefill_tokens_per_s']:.0f}", decode,
                  f"{peak:.0f}" if peak is not None else "-")  # fmt: skip
    con.print(t)
    con.print(f"CPU: {report['cpu']}")
    for note in report.get("notes", []):
        con.print(f"[yellow]note[/]: {note}")
    con.print(f"wrote {root / 'bench.json'}")


def _print_bench(report: dict, root: Path, stream) -> None:
    from rich.table import Table

    con = _console(stream)
    batches = report["batches"]
    t = Table(title=f"bench {report['name']} ({report['threads']} threads; x = ratio to eager)")
    for col in ("runtime", "p50 ms", "p90 ms", "p99 ms", *(f"b{b} samples/s" for b in batches)):
        t.add_column(col, justify="right")
    for r in report["runtimes"]:
        lat = r["latency_ms"]
        cells = [f"{lat[q]:.3f} ({r['vs_eager']['latency_ms'][q]:.2f}x)" for q in ("p50", "p90", "p99")]
        cells += [f"{r['throughput'][str(b)]:.1f} ({r['vs_eager']['throughput'][str(b)]:.2f}x)" for b in batches]
        t.add_row(r["name"], *cells)
    con.print(t)
    for s in report.get("server") or []:
        levels = ", ".join(f"c{c['concurrency']}: {c['requests_per_s']:.1f} req/s (p50 {c['latency_ms']['p50']:.2f} ms)" for c in s["concurrency"])
        con.print(f"through Triton {s['model']} ({s['backend']}): {levels}")
    for note in report.get("notes", []):
        con.print(f"[yellow]note[/]: {note}")
    con.print(f"wrote {root / 'bench.json'} and {root / 'bench.png'}")
