"""The TF Serving layout checked the way TF Serving loads it, without its binary.

No tensorflow_model_server is installable here, so each served version is
loaded as SavedModelBundle does: the `serve` tag set into a TF1 session, the
`serving_default` signature, the `assets.extra/tf_serving_warmup_requests`
records replayed first; then the build's parity samples go through the same
signature and are judged by the build's gate. Layout checked:

    tfserving/models.config                      ModelServerConfig text proto
    tfserving/<name>/<version>/saved_model.pb, variables/, assets.extra/tf_serving_warmup_requests
"""

from __future__ import annotations

import importlib.util
import re
import time
from pathlib import Path

from toolchain.progress import Progress

LOADER = "tensorflow (no tensorflow_model_server here)"
SIGNATURE = "serving_default"
WARMUP = Path("assets.extra") / "tf_serving_warmup_requests"


def check_tfserving(root: Path, manifest: dict, models: list[dict], samples, reference, progress: Progress):
    """(one ModelCheck per served target, why nothing was checked or None)."""
    from toolchain.serving.check import ModelCheck

    if not models:
        if manifest["serving"].get("tfserving") or (root / "tfserving").is_dir():
            return [], "the manifest lists no TF Serving models for the tfserving/ directory"
        return [], "this build has no tfserving section (serve.tfserving not in the recipe)"
    if importlib.util.find_spec("tensorflow") is None:
        why = "tensorflow is not installed (pip install 'mlpack[tensorflow]'); the TF Serving layout was not loaded"
        return [ModelCheck(m["target"], "tfserving", m["name"], LOADER, status="skipped", reason=why) for m in models], None
    config_path = root / "tfserving" / "models.config"
    try:
        configs = {c.get("name", [""])[0]: c for c in model_configs(config_path.read_text())}
    except (OSError, ValueError) as e:
        return [ModelCheck(m["target"], "tfserving", m["name"], LOADER, status="refused", reason=f"{config_path}: {e}") for m in models], None
    by_target = {t["name"]: t for t in manifest["targets"]}
    checks = []
    for m in models:
        check = ModelCheck(m["target"], "tfserving", m["name"], LOADER, server_version=_tf_version())
        progress.start(m["name"], f"tfserving {m['name']}: loading SavedModel versions")
        if m["name"] not in configs:
            check.status, check.reason = "refused", f"models.config has no config named {m['name']!r} (has {sorted(configs)})"
        else:
            _check_versions(check, root / m["path"], configs[m["name"]], by_target[m["target"]], samples, reference)
        progress.end(m["name"], check.status, check.reason or f"{check.requests} requests")
        checks.append(check)
    return checks, None


def _tf_version() -> str:
    from importlib.metadata import version

    return version("tensorflow")


def _check_versions(check, model_dir: Path, config: dict, target: dict, samples, reference) -> None:
    from toolchain.parity import compare
    from toolchain.recipe import Tolerance

    versions = served_versions(model_dir, config)
    if not versions:
        check.status, check.reason = "refused", f"no version directory under {model_dir} matches the model_version_policy"
        return
    tol = Tolerance(**target["parity"]["tolerance"])
    for v in versions:
        t0 = time.perf_counter()
        try:
            outputs, warmups = load_and_run(model_dir / str(v), samples)
        except Exception as e:  # TensorFlow's own message is the verdict
            check.status, check.reason = "refused", f"version {v}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            return
        check.infer_seconds += time.perf_counter() - t0
        check.requests += len(samples) + warmups
        names = list(reference[0]) if reference else []
        if len(names) == 1 and outputs and len(outputs[0]) == 1:  # TF names a lone output itself
            outputs = [{names[0]: next(iter(o.values()))} for o in outputs]
        check.parity = compare(reference, outputs, tol)
        if not check.parity.passed:
            check.status, check.reason = "mismatch", f"version {v}: outputs differ from the source model beyond the build's tolerance"
            return
    check.status = "ok"


def load_and_run(version_dir: Path, samples: list[dict]) -> tuple[list[dict], int]:
    """Load like SavedModelBundle, replay the warmup records, then the samples."""
    import tensorflow as tf
    from tensorflow.core.framework.tensor_pb2 import TensorProto

    warmup = version_dir / WARMUP
    # Read eagerly, before the TF1 session makes its graph the default.
    records = list(tf.data.TFRecordDataset(str(warmup)).as_numpy_iterator()) if warmup.is_file() else []
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(version_dir))
        if SIGNATURE not in meta.signature_def:
            raise KeyError(f"no signature {SIGNATURE!r} (has {sorted(meta.signature_def)})")
        sig = meta.signature_def[SIGNATURE]
        fetch_keys = list(sig.outputs)
        fetches = [sig.outputs[k].name for k in fetch_keys]

        def run(named: dict) -> dict:
            unknown = sorted(set(named) - set(sig.inputs))
            if unknown:
                raise KeyError(f"inputs {unknown} are not in signature {SIGNATURE!r} (inputs {sorted(sig.inputs)})")
            values = sess.run(fetches, {sig.inputs[k].name: v for k, v in named.items()})
            return dict(zip(fetch_keys, values))

        for i, record in enumerate(records):
            inputs = predict_inputs(record)
            if inputs is None:
                raise ValueError(f"warmup record {i} is not a PredictLog; only predict warmup is replayed")
            run({k: tf.make_ndarray(TensorProto.FromString(v)) for k, v in inputs.items()})
        return [run(feed) for feed in samples], len(records)


# ----------------------------------------------------------- wire formats


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes):
    """(field number, value) pairs of one protobuf message; bytes for length-delimited."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            value, i = buf[i:i + n], i + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield num, value


def predict_inputs(record: bytes) -> dict[str, bytes] | None:
    """PredictionLog.predict_log(6).request(1).inputs(2): name -> serialized TensorProto.

    Decoded by hand so the check needs no tensorflow-serving-api.
    """
    log = next((v for n, v in _fields(record) if n == 6), None)
    if log is None:
        return None
    request = next((v for n, v in _fields(log) if n == 1), b"")
    inputs = {}
    for n, entry in _fields(request):
        if n == 2:  # map entry: key = 1, value = 2
            kv = dict(_fields(entry))
            inputs[kv.get(1, b"").decode()] = kv.get(2, b"")
    return inputs


_TOKEN = re.compile(r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[{}\[\]:,]|[^\s{}\[\]:,"'#]+""")


def _text_proto(tokens: list[str], i: int) -> tuple[dict, int]:
    out: dict[str, list] = {}
    while i < len(tokens) and tokens[i] != "}":
        key = tokens[i]
        i += 1
        if i < len(tokens) and tokens[i] == ":":
            i += 1
        if i >= len(tokens):
            raise ValueError(f"text proto ends after {key!r}")
        if tokens[i] == "{":
            value, i = _text_proto(tokens, i + 1)
            if i >= len(tokens):
                raise ValueError(f"unclosed '{{' after {key!r}")
            out.setdefault(key, []).append(value)
            i += 1
        elif tokens[i] == "[":
            i += 1
            while tokens[i] != "]":
                if tokens[i] != ",":
                    out.setdefault(key, []).append(_scalar(tokens[i]))
                i += 1
            i += 1
        else:
            out.setdefault(key, []).append(_scalar(tokens[i]))
            i += 1
    return out, i


def _scalar(tok: str):
    if tok[0] in "\"'":
        return bytes(tok[1:-1], "utf-8").decode("unicode_escape")
    return int(tok) if re.fullmatch(r"-?\d+", tok) else tok


def model_configs(text: str) -> list[dict]:
    """The `config` entries of a ModelServerConfig's model_config_list."""
    tokens = _TOKEN.findall(re.sub(r"#[^\n]*", "", text))
    tree, i = _text_proto(tokens, 0)
    if i != len(tokens):
        raise ValueError(f"unexpected {tokens[i]!r} in the text proto")
    lists = tree.get("model_config_list")
    if not lists:
        raise ValueError("no model_config_list")
    return [c for lst in lists for c in lst.get("config", [])]


def served_versions(model_dir: Path, config: dict) -> list[int]:
    """Version directories TF Serving would load under the config's model_version_policy."""
    found = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()) if model_dir.is_dir() else []
    policy = (config.get("model_version_policy") or [{}])[0]
    if "all" in policy:
        return found
    if "specific" in policy:
        wanted = set(policy["specific"][0].get("versions", []))
        return [v for v in found if v in wanted]
    latest = (policy.get("latest") or [{}])[0]
    n = (latest.get("num_versions") or [1])[0]
    return found[-n:]
