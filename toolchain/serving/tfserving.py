"""TensorFlow Serving repositories: SavedModel version dirs, models.config, warmup, README.

models.config and batching_parameters.txt are TF Serving's own protos printed
with text_format (toolchain/serving/protos.py); warmup records need TensorFlow
and the serving API's PredictionLog, both in the `tensorflow` extra.
"""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from toolchain import kinds
from toolchain.fsutil import link_or_copy
from toolchain.recipe import Recipe, TFServingBatching, VersionPolicy
from toolchain.serving import protos
from toolchain.serving import tfserving_pipeline as tfp
from toolchain.serving.tfserving_sizes import write_gated

SIGNATURE = "serving_default"  # TF Serving's default signature key: what clients call unless they name one
WARMUP = Path("assets.extra") / "tf_serving_warmup_requests"
XLA_FLAG = "--xla_cpu_compilation_enabled=true"


def served_names(recipe_name: str, targets: list[str]) -> list[str]:
    """The first target is served as the recipe's name (the contract's layout), others as <name>_<target>."""
    return [recipe_name if i == 0 else f"{recipe_name}_{t}" for i, t in enumerate(targets)]


def render_models_config(models: list[tuple[str, Path]], version_policy: VersionPolicy) -> str:
    """A ModelServerConfig text proto serving each (name, base_path)."""
    cfg = protos.tfserving_config_pb2().ModelServerConfig()
    for name, base in models:
        entry = cfg.model_config_list.config.add(name=name, base_path=str(base), model_platform="tensorflow")
        protos.set_version_policy(entry.model_version_policy, version_policy)
    return protos.to_text(cfg)


def render_batching(b: TFServingBatching) -> str:
    """BatchingParameters text proto; unset fields keep the server's defaults."""
    msg = protos.batching_parameters_class()()
    msg.max_batch_size.value = b.max_batch_size
    for field in ("batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
        value = getattr(b, field)
        if value is not None:
            getattr(msg, field).value = value
    msg.allowed_batch_sizes.extend(b.allowed_batch_sizes)
    msg.pad_variable_length_inputs = b.pad_variable_length_inputs
    return protos.to_text(msg)


def command_line(repo: Path, xla: bool, batching: bool, threads: int | None = None) -> str:
    """The tensorflow_model_server invocation for the repository at `repo`."""
    args = ["tensorflow_model_server", "--port=8500", "--rest_api_port=8501", f"--model_config_file={repo / 'models.config'}"]
    if threads:  # serve.threads: TF Serving takes one count for the whole server, not per model
        args.append(f"--tensorflow_intra_op_parallelism={threads}")
    if batching:
        args += ["--enable_batching=true", f"--batching_parameters_file={repo / 'batching_parameters.txt'}"]
    if xla:
        args.append(XLA_FLAG)  # off by default: XLA-compiled functions then fail at load
    return " ".join(shlex.quote(a) for a in args)


def render_readme(repo: Path, models: list[tuple[str, str, str]], xla: bool, batching: bool, threads: int | None = None) -> str:
    rows = "\n".join(f"- `{name}`: target `{target}` ({kind})" for name, target, kind in models)
    cmd = command_line(repo, xla, batching, threads)
    q = shlex.quote(str(repo))
    docker = f"docker run --rm -p 8500:8500 -p 8501:8501 -v {q}:{q} tensorflow/serving " + cmd.split(" ", 1)[1]
    xla_note = (
        f"\n`{XLA_FLAG}` is required: the xla models' serving functions are compiled with XLA, "
        "which TF Serving leaves off by default, and such models otherwise fail to load.\n"
        if xla
        else ""
    )
    return f"""# TensorFlow Serving repository

Models (signature `{SIGNATURE}`, warmed up from `<version>/{WARMUP.as_posix()}`):
{rows}

Start the server on this repository:

```sh
{cmd}
```

or in the official image, mounting the repository at the same path:

```sh
{docker}
```
{xla_note}
`models.config` holds absolute `base_path`s: if you move this directory, edit them.
"""


def write_warmup(path: Path, model_name: str, samples: list[dict], signature: str = SIGNATURE) -> int:
    """One PredictionLog per distinct set of input shapes, so each shape is compiled before traffic.

    XLA compiles once per input shape; repeating a shape only warms it again.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    path.parent.mkdir(parents=True, exist_ok=True)
    seen: set[tuple] = set()
    with tf.io.TFRecordWriter(str(path)) as writer:
        for feed in samples:
            shapes = tuple((n, v.shape) for n, v in sorted(feed.items()))
            if shapes in seen:
                continue
            seen.add(shapes)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature
            for name, value in feed.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return len(seen)


def write_tfserving(
    repo: Path,
    final_repo: Path,
    recipe: Recipe,
    served: list[tuple[str, str, Path]],
    samples: list[dict],
    warmup: Callable[[Path, str], None] | None = None,
    raw=None,
    gates: dict | None = None,
) -> tuple[list[tuple[str, str, Path, str]], str | None]:
    """Write repo/<model>/<version>/ for each (target, kind, artifact dir), models.config, batching and README.

    `final_repo` is where `repo` will lie once published: base_path and the
    README's command line name it. `warmup(path, model_name)` writes the warmup
    records (default: write_warmup from `samples`; the build passes a cached one).
    `raw` (the reference step's pipeline.Stored) adds <name>_pipeline, which takes image bytes
    around the first target (serving/tfserving_pipeline.py). `gates`: {target: SizeGate} for the targets whose
    artifacts run at some sizes only (serving/tfserving_sizes.py wraps them).
    Returns ([(model name, target, model dir, role)], why no raw-input model was written).
    """
    warmup = warmup or (lambda path, name: write_warmup(path, name, samples))
    tfs = recipe.serve.tfserving
    name_of = dict(zip(tfs.targets, served_names(recipe.name, tfs.targets)))  # stable even if a target failed
    out = []
    for target, kind, artifact_dir in served:
        name = name_of[target]
        vdir = repo / name / str(recipe.version)
        gate = (gates or {}).get(target)
        if gate is not None and gate.beyond_config:  # a signature takes any size: the wrapper refuses or pads
            write_gated(artifact_dir / kinds.get(kind).tfserving.artifact, vdir, gate.accepts, gate.trims, kinds.get(kind).tfserving.signature or SIGNATURE)
        else:
            shutil.copytree(artifact_dir / kinds.get(kind).tfserving.artifact, vdir, copy_function=link_or_copy)
        warmup(vdir / WARMUP, name)
        out.append((name, target, repo / name, "artifact"))
    models = [(name_of[t], final_repo / name_of[t]) for t, _, _ in served]
    rows = [(name_of[t], t, kind) for t, kind, _ in served]
    why = None
    if raw is not None:
        why = _write_raw(repo, recipe, served[0], name_of[served[0][0]], raw)
        if why is None:
            name = tfp.pipeline_name(name_of[served[0][0]])
            out.append((name, served[0][0], repo / name, "pipeline"))
            models.append((name, final_repo / name))
            rows.append((name, served[0][0], f"image bytes in, {raw.config['answer']} out; signatures serving_default, preprocess"))
    repo.joinpath("models.config").write_text(render_models_config(models, tfs.version_policy), encoding="utf-8")
    if tfs.batching:
        repo.joinpath("batching_parameters.txt").write_text(render_batching(tfs.batching), encoding="utf-8")
    xla = any(kinds.get(kind).tfserving.xla for _, kind, _ in served)
    repo.joinpath("README.md").write_text(render_readme(final_repo, rows, xla, tfs.batching is not None, recipe.serve.threads), encoding="utf-8")
    return out, why


def _write_raw(repo: Path, recipe: Recipe, first: tuple[str, str, Path], model: str, raw) -> str | None:
    """repo/<model>_pipeline/<version>/ wrapping the first target's SavedModel; why not, when a step has no TF form."""
    _, kind, _ = first
    signature = kinds.get(kind).tfserving.signature or SIGNATURE
    vdir = repo / tfp.pipeline_name(model) / str(recipe.version)
    try:
        tfp.write_raw_model(repo / model / str(recipe.version), vdir, raw.config, raw.labels(), signature)
    except ValueError as e:
        shutil.rmtree(vdir.parent, ignore_errors=True)
        return str(e)
    batch = raw.raw()[: max(1, min(raw.config["batch_max"], 8))]
    write_warmup(vdir / WARMUP, vdir.parent.name, [{tfp.INPUT: np.array(batch, dtype=np.object_)}])
    return None
