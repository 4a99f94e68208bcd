"""The serving repositories of one build: a Triton model per served target that passed (the
selection's winner under the model's plain name) and the TF Serving tree, written into the
build's staging folder. A target a repository cannot hold fails at the serving stage.
"""

from __future__ import annotations

from pathlib import Path

from toolchain import cache, kinds, padcheck, pipeline
from toolchain.feeds import load_feeds
from toolchain.progress import Progress
from toolchain.recipe import Recipe
from toolchain.records import AcceptedDim, Selection, ServedModel, Serving, Stage, Status, TargetResult
from toolchain.selection import served
from toolchain.serving.generator import write_generator_model
from toolchain.serving.pipeline import write_pipeline_models
from toolchain.serving.tfserving import write_tfserving, write_warmup
from toolchain.serving.triton import SizeGate, triton_model_name, write_triton_model
from toolchain.serving.vllm import write_vllm


def write_repositories(recipe: Recipe, results: list[TargetResult], staging: Path, progress: Progress, selection: Selection | None,
                       dims: dict[str, AcceptedDim] | None = None) -> Serving:  # fmt: skip
    """`dims`: the sizes the artifacts accept (the plan's), which served models refuse or pad to."""
    serving = Serving()
    if recipe.serve.triton and recipe.serve.triton.targets:
        _write_triton(recipe, results, staging, progress, serving, selection, dims or {})
    if recipe.serve.tfserving and recipe.serve.tfserving.targets:
        _write_tfserving(recipe, results, staging, progress, serving, dims or {})
    if recipe.serve.vllm is not None:
        try:
            folders, problems = write_vllm(recipe, staging)
        except (OSError, ValueError) as e:
            progress.note(f"vllm: no folder: {e}")
        else:
            serving.vllm = "vllm"
            for folder, quant in folders:
                rel = folder.relative_to(staging).as_posix()
                serving.models.append(ServedModel("vllm", folder.name, "source", rel, "source" if quant is None else quant["scheme"]))
                what = (
                    "the source model"
                    if quant is None
                    else f"its {quant['scheme']} weights ({quant['layers']} layers, worst weight error {quant['worst_weight_error']:.2%})"
                )
                progress.note(f"vllm: {rel} holds {what} for vllm serve (its README has the command)")
            for p in problems:
                progress.note(f"vllm: no quantized folder {p}")
    return serving


def _servable(tname: str, results: list[TargetResult], server: str, progress: Progress) -> TargetResult | None:
    """The result of a target that built and passed, else None (noted when it exists)."""
    res = next((r for r in results if r.name == tname), None)
    if res is not None and res.status is not Status.OK:
        progress.note(f"{server}: no model for '{tname}' ({res.status.value})")
        return None
    return res


def size_gate(recipe: Recipe, res: TargetResult, dims: dict[str, AcceptedDim]) -> SizeGate:
    """What model.py refuses and pads for this artifact, under its own tensor names (paired with the recipe's by position)."""
    table = padcheck.accepts_table(recipe, dims)
    names = {spec.name: s.name for spec, s in zip(recipe.inputs, res.signature.inputs)} if res.signature else {}
    accepts = {names.get(n, n): rows for n, rows in table.items()}
    used = {row[1] for rows in table.values() for row in rows}
    said = [f"{n}: {a.served}" for n, a in dims.items() if n in used]
    beyond = [f"{n}: {a.served}" for n, a in dims.items() if n in used and (a.multiple or a.pad is not None)]
    return SizeGate(accepts, res.pad.trims if res.pad else {}, said, beyond)


def _write_triton(recipe: Recipe, results: list[TargetResult], staging: Path, progress: Progress, serving: Serving, selection: Selection | None,
                  dims: dict[str, AcceptedDim]) -> None:  # fmt: skip
    tri = recipe.serve.triton
    # The selection's winner among Triton's targets takes the model's plain name; the others stay <name>_<target>.
    winner, tie_break = served(selection, results, tri.targets) if selection else (None, None)
    written: list[tuple[str, str, Path]] = []
    for tname in tri.targets:
        res = _servable(tname, results, "triton", progress)
        if res is None:
            continue
        model = recipe.name if tname == winner else triton_model_name(recipe.name, tname)
        try:
            if recipe.generates:  # text in, tokens streamed out (serving/generator.py)
                model_dir = write_generator_model(staging / "triton", model, recipe, res.kind, staging / tname, res.device, tri.instance_group.count)
            else:
                gate = size_gate(recipe, res, dims)
                model_dir = write_triton_model(staging / "triton", model, recipe.version, res.kind, staging / tname, res.signature, tri, res.device, gate=gate,
                                                threads=recipe.serve.threads)  # fmt: skip
                if gate.beyond_config:
                    progress.note(f"triton: {model}: its config cannot say {'; '.join(gate.beyond)}: " + (
                        "served by model.py (Python backend), which refuses other sizes or pads them"
                        if (model_dir / str(recipe.version) / "model.py").exists() else "clients must send only these sizes"))  # fmt: skip
        except (ValueError, FileNotFoundError) as e:
            res.fail(Stage.SERVING, f"triton: {e}")
            continue
        serving.triton = "triton"
        serving.models.append(ServedModel("triton", model, tname, model_dir.relative_to(staging).as_posix()))
        written.append((tname, model, model_dir))
        if tname == winner:
            selection.served_as = model
            if tie_break:
                progress.note(f"triton: {model} serves {tname}: {tie_break.removeprefix(f'{tname} is served: ')}")
            else:
                fastest = selection.ranking[1 if selection.tie_break else 0].target  # a tie's winner ranks first, the rest by speed
                why = "the fastest artifact" if tname == fastest else "the fastest of serve.triton.targets"
                progress.note(f"triton: {model} serves {tname}, {why} ({selection.metric}, measured here)")
        python = recipe.generates or (model_dir / str(recipe.version) / "model.py").exists()  # a generator is always model.py
        note = None if python else kinds.get(res.kind).triton_note(tri.backend)
        if note:
            progress.note(f"triton: {model}: {note}")
    if recipe.pipeline and written:  # raw inputs in, answers out, around the served winner
        tname, model, model_dir = next((w for w in written if w[0] == winner), written[0])
        try:
            made = write_pipeline_models(
                staging / "triton", recipe.name, model, recipe.version, (model_dir / "config.pbtxt").read_text(), staging, tri.instance_group.count
            )
        except (ValueError, FileNotFoundError) as e:
            next(r for r in results if r.name == tname).fail(Stage.SERVING, f"triton pipeline: {e}")
            return
        for role, d in made.items():
            serving.models.append(ServedModel("triton", d.name, tname, d.relative_to(staging).as_posix(), role))
        progress.note(f"triton: {made['pipeline'].name} takes raw {'text' if recipe.preprocess.text else 'image bytes'} and answers through {model} ({tname})")


def _write_tfserving(recipe: Recipe, results: list[TargetResult], staging: Path, progress: Progress, serving: Serving,
                     dims: dict[str, AcceptedDim]) -> None:  # fmt: skip
    ok = {t: res for t in recipe.serve.tfserving.targets if (res := _servable(t, results, "tfserving", progress))}
    served = [(t, res.kind, staging / t) for t, res in ok.items()]
    if not served:
        return
    gates = {t: size_gate(recipe, res, dims) for t, res in ok.items()}
    samples_file = staging / "parity" / "samples.npz"
    samples = load_feeds(samples_file)

    def warmup(path: Path, model: str) -> None:  # from the cache when the samples are unchanged
        parts = {"warmup": model, "samples": cache.file_digest(samples_file)}
        cache.cached_file(staging.parent, parts, path, lambda p: write_warmup(p, model, samples))

    # base_path in models.config is absolute: where the repository lies once published.
    final = staging.parent.resolve() / recipe.name / "tfserving"
    raw = pipeline.load(staging) if recipe.pipeline else None
    written, why = write_tfserving(staging / "tfserving", final, recipe, served, samples, warmup, raw, gates)
    for name, target, path, role in written:
        serving.models.append(ServedModel("tfserving", name, target, path.relative_to(staging).as_posix(), role))
        if role == "artifact" and gates[target].beyond_config:
            progress.note(f"tfserving: {name} takes {'; '.join(gates[target].said)}; its signature wraps the artifact, which runs at those sizes only")
        if role == "pipeline":
            progress.note(f"tfserving: {name} takes image bytes (signature serving_default) and answers through {target}")
    if why:
        progress.note(f"tfserving: no raw-input model: {why}")
    serving.tfserving = "tfserving"
    progress.note(f"tfserving: start the server with the command line in {final / 'README.md'}")
