"""One build step in a fresh interpreter: `python -m toolchain.worker STEP.json`.

The build runs every step that imports a framework here, in a process of its
own, so a converter that segfaults, is OOM-killed or hangs fails only its
target, and the parent (and cache hits) never import torch or tensorflow.
The step file is also what `reproduce.sh` re-runs.

Step kinds:
  reference  load the source, run it eagerly on parity/samples.npz -> reference.npz
  target     load the source, build one target into its workdir, run parity
Either writes its result as JSON to `result` (paths relative to `root`).
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import sys
import time
import traceback
from pathlib import Path


def _one_line(e: BaseException) -> str:
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def run_reference(step: dict, root: Path) -> dict:
    from toolchain.build import load_feeds, load_source, save_feeds
    from toolchain.runners import run_all
    from toolchain.recipe import load_recipe

    recipe = load_recipe(step["recipe"])
    source = load_source(recipe)
    samples = load_feeds(root / "parity" / "samples.npz")
    reference = run_all(source.reference_runner(), samples)
    save_feeds(root / "parity" / "reference.npz", reference)
    return {"output_names": source.output_names, "input_names": source.input_names, "notes": source.notes}


def run_target(step: dict, root: Path, workdir: Path) -> dict:
    from toolchain import manifest as mf
    from toolchain.build import load_feeds, load_source
    from toolchain.parity import compare
    from toolchain.recipe import load_recipe
    from toolchain.runners import make_runner, run_all
    from toolchain.targets import target_module

    recipe = load_recipe(step["recipe"])
    spec = recipe.target(step["target"])
    mod = target_module(spec.kind)
    source = load_source(recipe)
    # Where the build's parity data lies: a target that checks itself while it
    # builds (INT8 fallback) reads it there, also when --workdir is elsewhere.
    source.build_root = root
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    kwargs = {"deps": step.get("deps", {})} if "deps" in inspect.signature(mod.build).parameters else {}
    artifact = mod.build(source, spec, workdir, **kwargs)
    seconds = time.perf_counter() - t0
    del source  # free the source model's weights before loading the artifact
    gc.collect()
    files = mf.file_entries(root, artifact.files) if workdir.is_relative_to(root) else mf.file_entries(workdir.parent, artifact.files)
    samples = load_feeds(root / "parity" / "samples.npz")
    reference = load_feeds(root / "parity" / "reference.npz")
    outputs = run_all(make_runner(artifact.runner, **artifact.runner_args), samples)
    report = compare(reference, outputs, recipe.parity.tolerance_for(spec.target_name, spec.precision_mode))
    return {
        "kind": artifact.kind,
        "build_seconds": seconds,
        "device": artifact.device,
        "files": files,
        "signature": artifact.signature.to_dict(),
        "parity": report.to_dict(),
        "extra": {**artifact.extra, **({"device_name": _device_name()} if artifact.device == "cuda" else {})},
    }


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m toolchain.worker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", type=Path)
    p.add_argument("--root", type=Path, help="build root (default: the step file's)")
    p.add_argument("--workdir", type=Path, help="where to write the artifact (default: <root>/<target>)")
    args = p.parse_args(argv)
    step = json.loads(args.step.read_text())
    root = (args.root or Path(step["root"])).resolve()
    # A reproduce run (--workdir) reports beside its artifact, not over the build's result.
    result_path = args.workdir.resolve() / "result.json" if args.workdir else root / step["result"]
    try:
        if step["kind"] == "reference":
            result = {"ok": True, **run_reference(step, root)}
        else:
            workdir = (args.workdir or root / step["target"]).resolve()
            result = {"ok": True, **run_target(step, root, workdir)}
    except Exception as e:  # a converter's failure is data for the parent, with the log beside it
        traceback.print_exc()
        from toolchain.errors import MlpackError

        result = {"ok": False, "reason": str(e) if isinstance(e, MlpackError) else _one_line(e)}
    import resource

    # Peak memory of this step (Linux reports KiB): large models must stay near 2x their weights.
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    sys.stdout.flush()
    sys.stderr.flush()
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
