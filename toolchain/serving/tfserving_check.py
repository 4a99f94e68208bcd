"""The TF Serving layout checked the way TF Serving loads it, without its binary.

No tensorflow_model_server is installable here, so each served version is
loaded as SavedModelBundle does: the `serve` tag set into a TF1 session, the
served signature, the `assets.extra/tf_serving_warmup_requests` records
replayed first; then the build's parity samples go through the same
signature and are judged by the build's gate. models.config and the warmup
records are read with TF Serving's own protos. Layout checked:

    tfserving/models.config                      ModelServerConfig text proto
    tfserving/<name>/<version>/saved_model.pb, variables/, assets.extra/tf_serving_warmup_requests
"""

from __future__ import annotations

import importlib.util
import time
from functools import partial
from pathlib import Path

import numpy as np

from toolchain import kinds, pipeline
from toolchain.parity import judge_again
from toolchain.progress import Progress
from toolchain.records import Manifest, PipelineReport, ServedModel, TargetResult
from toolchain.serving import protos
from toolchain.serving import tfserving_pipeline as tfp
from toolchain.serving.results import CheckStatus, ModelCheck
from toolchain.serving.size_check import check_sizes
from toolchain.serving.tfserving import SIGNATURE, WARMUP
from toolchain.serving.tfserving_sizes import served_table

LOADER = "tensorflow (no tensorflow_model_server here)"


def check_tfserving(root: Path, manifest: Manifest, models: list[ServedModel], samples, reference, progress: Progress):
    """(one ModelCheck per served target, why nothing was checked or None)."""
    if not models:
        if manifest.serving.tfserving or (root / "tfserving").is_dir():
            return [], "the manifest lists no TF Serving models for the tfserving/ directory"
        return [], "this build has no tfserving section (serve.tfserving not in the recipe)"
    if importlib.util.find_spec("tensorflow") is None:
        why = "tensorflow is not installed (pip install 'mlpack[tensorflow]'); the TF Serving layout was not loaded"
        return [ModelCheck(m.target, "tfserving", m.name, LOADER, status=CheckStatus.SKIPPED, reason=why) for m in models], None
    config_path = root / "tfserving" / "models.config"
    try:
        configs = {c.name: c for c in model_configs(config_path.read_text())}
    except (OSError, ValueError) as e:  # text_format.ParseError is a ValueError
        return [ModelCheck(m.target, "tfserving", m.name, LOADER, status=CheckStatus.REFUSED, reason=f"{config_path}: {e}") for m in models], None
    checks = []
    for m in models:
        check = ModelCheck(m.target, "tfserving", m.name, LOADER, server_version=_tf_version())
        progress.start(m.name, f"tfserving {m.name}: loading SavedModel versions")
        if m.name not in configs:
            check.status, check.reason = CheckStatus.REFUSED, f"models.config has no config named {m.name!r} (has {sorted(configs)})"
        elif m.role == "pipeline":
            check.role = "pipeline"
            _check_raw(check, root, root / m.path, configs[m.name], manifest.target(m.target))
        else:
            _check_versions(check, root, root / m.path, configs[m.name], manifest.target(m.target), samples, reference)
        progress.end(m.name, check.status.value, check.reason or f"{check.requests} requests")
        checks.append(check)
    return checks, None


def _tf_version() -> str:
    from importlib.metadata import version

    return version("tensorflow")


def _check_versions(check: ModelCheck, root: Path, model_dir: Path, config, target: TargetResult, samples, reference) -> None:
    versions = served_versions(model_dir, config)
    if not versions:
        check.status, check.reason = CheckStatus.REFUSED, f"no version directory under {model_dir} matches the model_version_policy"
        return
    served = kinds.kinds().get(target.kind)
    signature = served.tfserving.signature if served and served.tfserving else SIGNATURE
    for v in versions:
        t0 = time.perf_counter()
        try:
            outputs, warmups = load_and_run(model_dir / str(v), samples, signature)
        except Exception as e:  # TensorFlow's own message is the verdict
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            check.status, check.reason = CheckStatus.REFUSED, f"version {v}: {type(e).__name__}: {first}"
            return
        check.infer_seconds += time.perf_counter() - t0
        check.requests += len(samples) + warmups
        names = list(reference[0]) if reference else []
        if len(names) == 1 and outputs and len(outputs[0]) == 1:  # TF names a lone output itself
            outputs = [{names[0]: next(iter(o.values()))} for o in outputs]
        check.parity = judge_again(target.parity, reference, outputs)
        if not check.parity.passed:
            check.status, check.reason = CheckStatus.MISMATCH, f"version {v}: outputs differ from the source model beyond the build's tolerance"
            return
        check.sizes = check_sizes(partial(_replay, model_dir / str(v), signature, names), target, root, served_table(model_dir / str(v)), samples)
        if check.sizes and not check.sizes["passed"]:
            check.status, check.reason = CheckStatus.MISMATCH, f"version {v}: sizes: {check.sizes['problem']}"
            return
    check.status = CheckStatus.OK


def _replay(version_dir: Path, signature: str, names: list[str], feeds: list[dict]) -> tuple[list[dict], str | None, int]:
    """check_sizes' replay: (outputs, the first error, requests) through the loaded version."""
    try:
        outputs, _ = load_and_run(version_dir, feeds, signature)
    except Exception as e:  # TensorFlow's own message: for a refused size, the wrapper's
        return [], " ".join(str(e).split())[:500] or type(e).__name__, len(feeds)
    if len(names) == 1 and outputs and len(outputs[0]) == 1:
        outputs = [{names[0]: next(iter(o.values()))} for o in outputs]
    return outputs, None, len(feeds)


def _check_raw(check: ModelCheck, root: Path, model_dir: Path, config, target: TargetResult) -> None:
    """The raw-input model (serving/tfserving_pipeline.py): the build's raw samples as bytes through serving_default, judged
    against the source pipeline's answers; its preprocess signature against the source's tensors names that stage."""
    stored = pipeline.load(root)
    if stored is None:
        check.status, check.reason = CheckStatus.REFUSED, f"{root / pipeline.PIPELINE_JSON} is missing; rebuild with mlpack build"
        return
    versions = served_versions(model_dir, config)
    if not versions:
        check.status, check.reason = CheckStatus.REFUSED, f"no version directory under {model_dir} matches the model_version_policy"
        return
    cfg, raw, src = stored.config, stored.raw(), stored.arrays()
    rows = pipeline.batches(cfg, len(raw))
    feeds = [{tfp.INPUT: np.array([raw[i] for i in r], dtype=np.object_)} for r in rows]
    budget = target.pipeline.get("answer").budget if target.pipeline and target.pipeline.get("answer") else 1.0
    names = cfg["images"] if cfg["modality"] == "image" else []
    for v in versions:
        t0 = time.perf_counter()
        try:
            outputs, warmups = load_and_run(model_dir / str(v), feeds, SIGNATURE)
            tensors, _ = load_and_run(model_dir / str(v), feeds, "preprocess")
        except Exception as e:  # TensorFlow's own message is the verdict
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            check.status, check.reason = CheckStatus.REFUSED, f"version {v}: {type(e).__name__}: {first}"
            return
        check.infer_seconds += time.perf_counter() - t0
        check.requests += 2 * len(feeds) + warmups
        mine = [a for out, r in zip(outputs, rows) for a in tfp.answers(cfg, out, len(r))]
        pixels = [{cfg["inputs"][0]: t["pixels"][j : j + 1]} for t, r in zip(tensors, rows) for j in range(len(r))]
        pre = pipeline.compare_images(pixels, [pipeline.part(a, "pre") for a in src], names, "TF Serving's preprocess", tfp.pixel_atol(cfg))
        answer = pipeline.judge_answers(cfg, budget, mine, src)
        report = PipelineReport(len(raw), [pre, answer])
        check.pipeline = report.to_dict() | {"answers": pipeline.shown(cfg, mine)}
        if not report.passed:
            check.status, check.reason = CheckStatus.MISMATCH, f"version {v}: " + report.first_failure().line()
            return
    check.status = CheckStatus.OK


def load_and_run(version_dir: Path, samples: list[dict], signature: str = SIGNATURE) -> tuple[list[dict], int]:
    """Load like SavedModelBundle, replay the warmup records, then the samples."""
    import tensorflow as tf

    warmup = version_dir / WARMUP
    # Read eagerly, before the TF1 session makes its graph the default.
    records = list(tf.data.TFRecordDataset(str(warmup)).as_numpy_iterator()) if warmup.is_file() else []
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(version_dir))
        if signature not in meta.signature_def:
            raise KeyError(f"no signature {signature!r} (has {sorted(meta.signature_def)})")
        sig = meta.signature_def[signature]
        fetch_keys = list(sig.outputs)
        fetches = [sig.outputs[k].name for k in fetch_keys]

        def run(named: dict) -> dict:
            unknown = sorted(set(named) - set(sig.inputs))
            if unknown:
                raise KeyError(f"inputs {unknown} are not in signature {signature!r} (inputs {sorted(sig.inputs)})")
            values = sess.run(fetches, {sig.inputs[k].name: v for k, v in named.items()})
            return dict(zip(fetch_keys, values))

        for i, record in enumerate(records):
            inputs = predict_inputs(record)
            if inputs is None:
                raise ValueError(f"warmup record {i} is not a PredictLog; only predict warmup is replayed")
            run({k: tf.make_ndarray(v) for k, v in inputs.items()})
        return [run(feed) for feed in samples], len(records)


def predict_inputs(record: bytes) -> dict | None:
    """A warmup record's request inputs (name -> TensorProto), or None when it is not a PredictLog."""
    from tensorflow_serving.apis import prediction_log_pb2

    log = prediction_log_pb2.PredictionLog.FromString(record)
    if log.WhichOneof("log_type") != "predict_log":
        return None
    return dict(log.predict_log.request.inputs)


def model_configs(text: str) -> list:
    """The ModelConfig entries of a ModelServerConfig text proto (ValueError when it does not parse)."""
    cfg = protos.parse(text, protos.tfserving_config_pb2().ModelServerConfig())
    if cfg.WhichOneof("config") != "model_config_list":
        raise ValueError("no model_config_list")
    return list(cfg.model_config_list.config)


def served_versions(model_dir: Path, config) -> list[int]:
    """Version directories TF Serving would load under the config's model_version_policy."""
    found = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()) if model_dir.is_dir() else []
    policy = config.model_version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return found
    if which == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in found if v in wanted]
    n = policy.latest.num_versions if which == "latest" and policy.latest.num_versions else 1
    return found[-n:]
