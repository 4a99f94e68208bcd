"""One build step in a fresh interpreter: `python -m toolchain.worker STEP.json`.

The build runs every step that imports a framework here, in a process of its
own, so a converter that segfaults, is OOM-killed or hangs fails only its
target, and the parent (and cache hits) never import torch or tensorflow.
The step file is also what `reproduce.sh` re-runs.

Step types (StepSpec.step):
  reference  load the source, run it eagerly on parity/samples.npz -> reference.npz
  target     load the source, build one target into its workdir, run parity
  select     time the artifacts that passed (and the eager source), interleaved
Each writes its StepResult (toolchain.records) as JSON to `result` (relative to `root`);
a failure is data too: the error ("usage" | "step" | "unexpected"), the reason and a hint.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from toolchain import classgate, kinds, padcheck, pipeline
from toolchain import manifest as mf
from toolchain.errors import EXIT_USAGE, MlpackError, StepError, one_line
from toolchain.feeds import load_feeds, save_feeds
from toolchain.genbench import artifact_generate, eager_generate, random_prompt
from toolchain.generation import (
    GENERATION_FILE,
    TEXT_FILE,
    artifact_nll,
    decoder_for,
    judge,
    load_references,
    load_text_sample,
    package_tokenizer,
    perplexity_check,
    save_references,
    save_text_sample,
)
from toolchain.kinds.base import SHARED, BuildContext
from toolchain.machine import peak_rss_mb
from toolchain.parity import compare
from toolchain.recipe import accepted_dims, load_recipe, with_dims
from toolchain.records import ReferenceOutcome, SelectOutcome, StepResult, StepSpec, TargetOutcome
from toolchain.runners import open_runner
from toolchain.samples import example_feed, feed_sizes, model_failure
from toolchain.sources import load_source
from toolchain.sources.decoder import encode_prompts, text_chunks
from toolchain.timing import interleaved, load_average
from toolchain.torchtools import export_errors
from toolchain.torchtools.assertions import accepted_sizes, sizes_hint


def run_reference(step: StepSpec, root: Path) -> ReferenceOutcome:
    recipe = with_dims(load_recipe(step.recipe), step.dims)
    source = load_source(recipe)
    samples = load_feeds(root / "parity" / "samples.npz")
    try:
        reference = _run_samples(source.reference_runner(), samples, lambda what, e, _: model_failure(recipe, e, what))
    except StepError as e:
        raise _with_export_sizes(e, recipe, source, samples) from e
    save_feeds(root / "parity" / "reference.npz", reference)
    notes = list(source.notes)
    if recipe.generates:  # the source's own greedy generation with its cache, what every artifact is judged against
        refs = source.generate(encode_prompts(recipe), recipe.generation.max_new_tokens)
        save_references(root / GENERATION_FILE, refs, recipe.generation.prompts)
        sample = source.text_sample(text_chunks(recipe))
        save_text_sample(root / TEXT_FILE, sample)
        ppl = (
            f"perplexity {sample.perplexity:.4g} on {sum(len(c) - 1 for c in sample.chunks)} tokens of text"
            if sample.chunks
            else "no perplexity sample (an encoder-decoder)"
        )
        notes.append(f"generation: {len(refs)} prompts, {sum(len(r.tokens) for r in refs)} greedy tokens from transformers' generate with its cache; {ppl}")
    if recipe.pipeline:  # the source framework's pipeline on the raw samples (toolchain/pipeline)
        notes += pipeline.make_reference(recipe, source, root)
    accepted = accepted_dims(recipe, step.dims)
    if any(a.pad is not None for a in accepted.values()):  # sizes served models pad (dims.<name>.pad)
        with source.reference_runner() as active:
            notes += padcheck.make_reference(recipe, accepted, active.infer, root)
    return ReferenceOutcome(source.output_names, source.input_names, notes)


def _with_export_sizes(e: StepError, recipe, source, samples: list[dict]) -> StepError:
    """A source that fails on a sample of sizes torch.export rejects too: the error carries the sizes it accepts, which
    the build then builds over (issue 26); any other failure as it is."""
    dynamic = [n for n, d in recipe.dims.items() if d.min < d.max]
    if recipe.source.framework != "pytorch" or recipe.generates or not dynamic or not hasattr(source, "dynamic_shapes"):
        return e
    fix = export_errors.probe_sizes(source)
    outside = [f for f in samples if any(not fix[d].accepts(n) for d, n in feed_sizes(recipe, f).items() if d in fix)]
    if not fix or not outside:
        return e
    said = ", ".join(f"{n} {a.text}" for n, a in fix.items())
    return StepError(f"{e}; torch.export accepts {said} for this model, and {len(outside)} of the samples are other sizes",
                     hint=f"the build takes torch.export's sizes; to say so in the recipe: {export_errors.dims_fix(fix)}", dims=fix)  # fmt: skip


def _run_samples(runner, samples: list[dict], failure) -> list[dict]:
    """The runner's outputs on the parity samples; a sample it cannot run fails the step with
    `failure(what, error)`, `what` naming the sample and its shapes."""
    with runner as active:
        outputs = []
        for i, feed in enumerate(samples):
            try:
                outputs.append(active.infer(feed))
            except MlpackError:
                raise
            except Exception as e:
                sizes = ", ".join(f"{n} {list(a.shape)}" for n, a in feed.items())
                raise failure(f"parity sample {i} ({sizes})", e, feed) from e
        return outputs


def _artifact_failure(recipe):
    def failure(what: str, e: Exception, feed: dict) -> StepError:
        sizes = feed_sizes(recipe, feed)
        fix = accepted_sizes(str(e), recipe.dims, sizes)  # a kept guard `Mod(s, 8)`: the sizes it runs at
        hint = export_errors.kept_hint(fix) if fix else sizes_hint(str(e), recipe.dims, sizes)
        return StepError(f"the built artifact fails on {what}: {one_line(e)}", dims=fix,
                         hint=hint or "the log has the runtime's error; an artifact that runs at some sizes only was exported for fixed ones (make those dims static)")  # fmt: skip

    return failure


def run_target(step: StepSpec, root: Path, workdir: Path, alone: bool = False) -> TargetOutcome:
    """alone: a reproduce run (--workdir), which shares nothing with the build's other steps."""
    recipe = with_dims(load_recipe(step.recipe), step.dims)
    spec = recipe.target(step.target)
    kind = kinds.get(spec.kind)
    source = load_source(recipe)
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = BuildContext(workdir=workdir, root=root, out_root=Path(step.out_root or root.parent), deps=step.deps, shared=None if alone else root / SHARED)
    t0 = time.perf_counter()
    try:
        artifact = kind.build(source, spec, ctx)
    except MlpackError:
        raise
    except Exception as e:  # a package's own size check failed on a sample: the sizes it holds at, when the text says
        fix = accepted_sizes(str(e), recipe.dims)
        hint = export_errors.kept_hint(fix) if fix else sizes_hint(str(e), recipe.dims)
        site = export_errors.assertion_site(source, str(e)) if hint and not fix and hasattr(source, "dynamic_shapes") else None
        hint = f"the check comes from {site}; {hint}" if site else hint
        if hint:
            raise StepError(f"the built package fails its own size check: {one_line(e)}", hint=hint, dims=fix) from e
        raise
    seconds = time.perf_counter() - t0
    if recipe.generates:  # a generator ships with its tokenizer, beside every artifact
        artifact.files = [*artifact.files, *package_tokenizer(recipe, workdir)]
    del source  # free the source model's weights before loading the artifact
    gc.collect()
    # Paths in the manifest are relative to the build root (a reproduce run's: the workdir's parent).
    base = root if workdir.is_relative_to(root) else workdir.parent
    files = mf.file_entries(base, artifact.files)
    runner = artifact.runner.model_copy(update={"path": Path(artifact.runner.path).relative_to(base).as_posix()})
    samples = load_feeds(root / "parity" / "samples.npz")
    reference = load_feeds(root / "parity" / "reference.npz")
    outputs = _run_samples(open_runner(runner, base), samples, _artifact_failure(recipe))
    report = compare(reference, outputs, recipe.tolerance(spec), recipe.parity.scores)
    generation = _judge_generation(kind, artifact, recipe, spec, runner, base, root) if recipe.generates else None
    extra = {**artifact.extra, **({"device_name": _device_name()} if artifact.device == "cuda" else {})}
    if recipe.pipeline:  # raw samples to answers through this artifact, against the source framework's pipeline
        with open_runner(runner, base) as active:
            extra["pipeline"] = pipeline.judge_target(recipe, spec, root, active.infer).to_dict()
    if (root / padcheck.SAMPLES).exists():  # dims.<name>.pad: the served model's padding, on this artifact
        with open_runner(runner, base) as active:
            extra["pad"] = padcheck.judge(recipe, accepted_dims(recipe, step.dims), root, active.infer, recipe.tolerance(spec), recipe.parity.scores).to_dict()
    if artifact.device == "cpu":
        extra["cpu"] = _prove_classes(kind, recipe, spec, artifact, runner, base, root, report, generation, reference).to_dict()
    return TargetOutcome(spec.kind, seconds, artifact.device, files, artifact.signature, runner, report, extra, generation)


def _prove_classes(kind, recipe, spec, artifact, runner, base: Path, root: Path, report, generation, reference):
    """The artifact's verdict per CPU class of the recipe's fleet (toolchain/classgate.py)."""

    def judge(outputs):
        again = compare(reference, outputs, recipe.tolerance(spec), recipe.parity.scores)
        return again.passed, again.worst_cosine, again.worst()[0]

    here = (report.passed and (generation is None or generation.passed), report.worst_cosine, report.worst()[0])
    return classgate.prove(recipe, kind.precision_of(spec, recipe), runner, base, root, kind.compiled_code([Path(f) for f in artifact.files]), here,
                           artifact.extra.get("quantization"), kind.compiled_for(artifact.extra), None if recipe.generates else judge,
                           kind.isa_capped, kind.bf16_parts(artifact.extra))  # fmt: skip


def _judge_generation(kind, artifact, recipe, spec, runner, base: Path, root: Path):
    """The generator judged token by token against the source's greedy generation: through the kind's own
    generator where it has one (ORT GenAI), else mlpack's loop over the artifact's runner."""
    refs, sample = load_references(root / GENERATION_FILE), load_text_sample(root / TEXT_FILE)
    own = kind.generation_logits(artifact, recipe, refs)
    with open_runner(runner, base) as active:
        decoder = decoder_for(active, recipe)
        if own is None:
            logits = [decoder.teacher_forced(r.prompt, r.tokens) for r in refs]
        nll = artifact_nll(decoder, sample.chunks)  # the runner's: a kind's own generator gives no loss (ORT GenAI: its model.onnx)
    if own is not None:
        logits, how, problems = own
    else:
        how, problems = f"the {runner.runner} runner in mlpack's generation loop (teacher-forced on the source's tokens)", []
    tol = recipe.tolerance(spec)
    report = judge(refs, logits, tol, how, perplexity_check(sample, nll, tol.perplexity) if sample.chunks else None)
    if problems and report.floor < 1.0:  # a generator not held to every token may also free-run to other tokens
        problems = []
    if problems:
        report.failures += problems
        report.passed = False
    return report


def _select_generator(step: StepSpec, root: Path, recipe) -> SelectOutcome:
    """A generator is timed by what it is for: whole greedy generations (a seeded prompt, then generation.max_new_tokens
    tokens), each artifact through its own loop and cache, the source through transformers' generate with its cache.
    A figure's samples/s is generated tokens/s."""
    from functools import partial

    import numpy as np

    sel, gen = recipe.select, recipe.generation
    batch = min(sel.batch or 1, gen.max_batch)
    new = gen.max_new_tokens
    prompt = recipe.decoder.encoded if recipe.decoder.audio else max(1, min(32, gen.max_length - new))  # a speech model: its one length
    ids = random_prompt(recipe, np.random.default_rng(recipe.parity.seed + 3), batch, prompt)
    fns = {"eager": eager_generate(recipe, sel.threads)}
    for name, spec in step.candidates.items():
        fns[name] = artifact_generate(recipe.target(name).kind, spec, root, recipe, sel.threads)
    figures = interleaved({name: partial(fn, ids, new) for name, fn in fns.items()}, rounds=sel.rounds, seconds=0.2)
    for f in figures.values():
        f.samples_per_s = batch * new / (f.median_ms / 1e3)
    return SelectOutcome(figures, batch, {"batch": batch, "prompt_tokens": prompt, "new_tokens": new}, sel.threads, round(load_average(), 2))


def run_select(step: StepSpec, root: Path) -> SelectOutcome:
    """Time every candidate artifact (and the eager source) on one feed, interleaved; figures per name."""
    from functools import partial

    import numpy as np

    recipe = with_dims(load_recipe(step.recipe), step.dims)
    if recipe.generates:
        return _select_generator(step, root, recipe)
    sel = recipe.select
    sizes = {n: d.opt for n, d in recipe.dims.items()}
    first = recipe.inputs[0].shape[0] if recipe.inputs[0].shape else None
    if isinstance(first, str) and sel.batch is not None:
        sizes[first] = sel.batch
    feed = example_feed(recipe, sizes, np.random.default_rng(recipe.parity.seed + 3))
    batch = sizes.get(first, 1) if isinstance(first, str) else 1
    if recipe.source.framework == "pytorch":
        import torch

        torch.set_num_threads(sel.threads)
    source = load_source(recipe)
    runners = {"eager": source.reference_runner()}
    for name, spec in step.candidates.items():
        runners[name] = open_runner(spec, root, threads=sel.threads)
    opened = {name: r.__enter__() for name, r in runners.items()}
    figures = interleaved({name: partial(r.infer, feed) for name, r in opened.items()}, rounds=sel.rounds, seconds=0.2)
    for f in figures.values():
        f.samples_per_s = batch / (f.median_ms / 1e3)
    return SelectOutcome(figures, batch, sizes, sel.threads, round(load_average(), 2))


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


PR_SET_PDEATHSIG = 1


def tie_to_build() -> None:
    """Die with the build that started this step, taking this step's process group along.

    The step leads its own process group (the build started it in a new session), so
    the compilers and pools it starts are in that group. If the build dies, even by
    SIGKILL: the kernel sends SIGTERM (parent-death signal), whose handler kills the
    group; a thread that sees the parent change does the same, should the signal be
    missed. A step run by reproduce.sh has no build (no MLPACK_PARENT_PID) and is left alone.
    """
    parent = int(os.environ.get("MLPACK_PARENT_PID", "0") or 0)
    if not parent or os.getpgrp() != os.getpid():
        return

    def kill_group(*_):
        os.killpg(0, signal.SIGKILL)

    signal.signal(signal.SIGTERM, kill_group)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the watch thread below still works
        pass
    if os.getppid() != parent:  # the build died before the signal was armed
        kill_group()

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        kill_group()

    threading.Thread(target=watch, name="mlpack-parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m toolchain.worker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", type=Path)
    p.add_argument("--root", type=Path, help="build root (default: the step file's)")
    p.add_argument("--workdir", type=Path, help="where to write the artifact (default: <root>/<target>)")
    args = p.parse_args(argv)
    step = StepSpec.from_dict(json.loads(args.step.read_text()))
    root = (args.root or Path(step.root)).resolve()
    # A reproduce run (--workdir) reports beside its artifact, not over the build's result.
    result_path = args.workdir.resolve() / "result.json" if args.workdir else root / step.result
    if not args.workdir:
        tie_to_build()
    try:
        if step.step == "reference":
            result = StepResult(run_reference(step, root))
        elif step.step == "select":
            result = StepResult(run_select(step, root))
        else:
            result = StepResult(run_target(step, root, (args.workdir or root / step.target).resolve(), alone=args.workdir is not None))
    except MlpackError as e:  # a usage error (the recipe or a file it names) keeps its fix and exits 2
        traceback.print_exc()
        result = StepResult(error="usage" if e.exit_code == EXIT_USAGE else "step", reason=str(e), hint=getattr(e, "hint", None),
                            dims=getattr(e, "dims", None) or {})  # fmt: skip
    except Exception as e:  # a converter's failure is data for the parent, with the log beside it
        traceback.print_exc()
        result = StepResult(error="unexpected", reason=one_line(e))
    except SystemExit as e:  # the model's own code (a factory, a forward) called sys.exit()
        traceback.print_exc()
        result = StepResult(error="step", reason=f"the model's code called sys.exit({e.code!r}) during the {step.step} step",
                            hint="a factory must return the model; remove the sys.exit() call")  # fmt: skip
    # Peak memory of this step (Linux reports KiB): large models must stay near 2x their weights.
    result.peak_rss_mb = peak_rss_mb()
    sys.stdout.flush()
    sys.stderr.flush()
    result_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = result_path.with_name(f".{result_path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result.to_dict()))
    os.replace(tmp, result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
