"""Triton model repositories: config.pbtxt text and version directories.

Pure Python and deterministic (same input -> byte-identical text) so builds are
reproducible and cacheable; tritonclient is imported only by the checker.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from toolchain.fsutil import link_or_copy
from toolchain.recipe import SpecificVersions, TritonServe
from toolchain.targets.savedmodel import SAVED_MODEL
from toolchain.tensors import TRITON_DTYPE, Signature, TensorSig

TF_KINDS = ("xla", "savedmodel")
KINDS = ("onnx", "aoti", "tensorrt", *TF_KINDS)
ARTIFACT_FILE = {"onnx": "model.onnx", "aoti": "model.pt2", "tensorrt": "model.plan"}
# Where each kind's artifact lies in its target folder, and its name in the version dir.
ARTIFACT_SOURCE = {**ARTIFACT_FILE, "xla": SAVED_MODEL, "savedmodel": SAVED_MODEL}
ARTIFACT_SERVED = {**ARTIFACT_FILE, "xla": "model.savedmodel", "savedmodel": "model.savedmodel"}
TF_DEPRECATION = (
    "platform tensorflow_savedmodel: Triton deprecated its TensorFlow backend from release 25.03; "
    "serve the onnx target on current Triton servers"
)
TEMPLATE = Path(__file__).with_name("model_py.txt")
MIN_TRITON_AOTI = "26.03"


def triton_model_name(recipe_name: str, target_name: str) -> str:
    """Served model name; '-' becomes '_' as the output layout fixes."""
    return f"{recipe_name}_{target_name}".replace("-", "_")


def _list(values) -> str:
    """A text-proto list: '[ 1, 2 ]', or '[ ]' when empty."""
    return f"[ {', '.join(map(str, values))} ]" if values else "[ ]"


def _backend(serve: TritonServe, backend: str | None, kind: str) -> str:
    """native or python; TensorRT plans are always native (model.py has no TensorRT runtime)."""
    b = backend or serve.backend
    if b not in ("native", "python"):
        raise ValueError(f"unknown Triton backend {b!r}; use native or python")
    return "native" if kind == "tensorrt" else b


def _check_backend(kind: str, backend: str) -> None:
    if backend == "python" and kind in TF_KINDS:
        raise ValueError(f"serve.triton.backend: python has no model.py for {kind} artifacts; use backend: native (tensorflow_savedmodel)")


def _max_batch_size(kind: str, serve: TritonServe, backend: str) -> int:
    """torch_aoti (beta) has no batching, so native aoti always gets 0."""
    return 0 if (kind == "aoti" and backend == "native") else serve.max_batch_size


def _tensor_names(kind: str, backend: str, sig: Signature) -> tuple[list[str], list[str]]:
    """Config names: torch_aoti addresses tensors by position, everyone else by name."""
    if kind == "aoti" and backend == "native":
        return [f"INPUT__{i}" for i in range(len(sig.inputs))], [f"OUTPUT__{i}" for i in range(len(sig.outputs))]
    return [t.name for t in sig.inputs], [t.name for t in sig.outputs]


def _config_dims(t: TensorSig, max_batch_size: int) -> tuple[list[int], list[int] | None]:
    """(dims, reshape) for one tensor; with batching the leading -1 is implicit.

    A tensor that is only a batch dim gets dims [1] with an empty reshape,
    Triton's documented form for per-item scalars.
    """
    shape = [int(d) if d is not None and int(d) >= 0 else -1 for d in t.shape]
    if max_batch_size <= 0:
        return shape, None
    if not shape or shape[0] != -1:
        raise ValueError(
            f"max_batch_size {max_batch_size} needs a dynamic first (batch) dimension, "
            f"but '{t.name}' has shape {t.shape}; set max_batch_size: 0 or export with a dynamic batch dim"
        )
    rest = shape[1:]
    return (rest, None) if rest else ([1], [])


def _dtype(t: TensorSig) -> str:
    try:
        return TRITON_DTYPE[t.dtype]
    except KeyError:
        raise ValueError(f"tensor '{t.name}' has dtype {t.dtype!r}, which Triton has no type for") from None


def _instance_kind(serve: TritonServe, kind: str, device: str) -> str:
    k = serve.instance_group.kind
    if k == "cpu":
        return "KIND_CPU"
    if k == "gpu" or device == "cuda" or kind == "tensorrt":
        return "KIND_GPU"
    return "KIND_CPU" if kind == "aoti" else "KIND_AUTO"  # a cpu .pt2 cannot run on a GPU


def _version_policy(serve: TritonServe) -> str:
    vp = serve.version_policy
    if isinstance(vp, SpecificVersions):
        return f"version_policy: {{ specific: {{ versions: {_list(sorted(set(vp.specific)))} }} }}"
    if vp == "all":
        return "version_policy: { all: {} }"
    return "version_policy: { latest: { num_versions: 1 } }"


def _io_block(field: str, names: list[str], tensors: list[TensorSig], max_batch_size: int) -> list[str]:
    lines = [f"{field} ["]
    for i, (name, t) in enumerate(zip(names, tensors)):
        dims, reshape = _config_dims(t, max_batch_size)
        lines += [
            "  {",
            f'    name: "{name}"',
            f"    data_type: {_dtype(t)}",
            f"    dims: {_list(dims)}",
        ]
        if reshape is not None:
            lines.append(f"    reshape: {{ shape: {_list(reshape)} }}")
        lines.append("  }," if i < len(tensors) - 1 else "  }")
    return lines + ["]"]


def render_config(
    model_name: str, kind: str, signature: Signature, serve: TritonServe, device: str, backend: str | None = None
) -> str:
    """The config.pbtxt text for one served artifact; raises ValueError on a setup Triton would reject."""
    if kind not in KINDS:
        raise ValueError(f"Triton serving supports artifact kinds {KINDS}, not {kind!r}")
    b = _backend(serve, backend, kind)
    _check_backend(kind, b)
    mbs = _max_batch_size(kind, serve, b)
    in_names, out_names = _tensor_names(kind, b, signature)
    comments: list[str] = []
    if b == "native" and kind == "onnx":
        fields = ['platform: "onnxruntime_onnx"', 'backend: "onnxruntime"']
    elif kind in TF_KINDS:
        comments = [f"# {TF_DEPRECATION}."]
        if kind == "xla":
            comments.append("# The serving function is XLA-compiled (jit_compile=True); the server's TensorFlow must run XLA on its devices.")
        fields = ['platform: "tensorflow_savedmodel"', 'backend: "tensorflow"']
    elif kind == "tensorrt":
        comments = ["# A TensorRT plan runs only on the TensorRT version and GPU compute capability that built it (see manifest.json)."]
        if serve.backend == "python":
            comments.append("# serve.triton.backend: python does not apply to TensorRT plans; Triton's TensorRT backend serves them.")
        fields = ['platform: "tensorrt_plan"', 'backend: "tensorrt"']
    elif b == "native":
        mapping = ", ".join(
            [f"{t.name}->{n}" for t, n in zip(signature.inputs, in_names)]
            + [f"{t.name}->{n}" for t, n in zip(signature.outputs, out_names)]
        )
        comments = [
            f"# torch_aoti needs Triton >= {MIN_TRITON_AOTI} (beta, no batching: max_batch_size 0, dims include the batch dim).",
            f"# Tensor names: {mapping}",
        ]
        if serve.max_batch_size > 0:
            comments.append(f"# serve.triton.max_batch_size {serve.max_batch_size} is not applied here; backend: python batches.")
        fields = ['platform: "torch_aoti"', 'backend: "pytorch"']
    else:
        engine, need = ("ONNX Runtime", "onnxruntime") if kind == "onnx" else ("torch AOTInductor", "torch")
        comments = [f"# model.py runs {ARTIFACT_FILE[kind]} with {engine}; Triton's Python environment needs {need}."]
        fields = ['backend: "python"']
    lines = [*comments, f'name: "{model_name}"', *fields]
    lines.append(f"max_batch_size: {mbs}")
    lines.append(_version_policy(serve))
    lines += _io_block("input", in_names, signature.inputs, mbs)
    lines += _io_block("output", out_names, signature.outputs, mbs)
    ig = serve.instance_group
    lines.append(f"instance_group [ {{ count: {ig.count} kind: {_instance_kind(serve, kind, device)} }} ]")
    db = serve.dynamic_batching
    if db is not None and serve.max_batch_size > 0:
        bad = [s for s in db.preferred_batch_size if s > serve.max_batch_size]
        if bad:
            raise ValueError(
                f"dynamic_batching.preferred_batch_size {bad} exceeds max_batch_size {serve.max_batch_size}; "
                "lower them or raise max_batch_size"
            )
    if db is not None and mbs > 0:
        lines.append("dynamic_batching {")
        if db.preferred_batch_size:
            lines.append(f"  preferred_batch_size: {_list(sorted(set(db.preferred_batch_size)))}")
        lines.append(f"  max_queue_delay_microseconds: {db.max_queue_delay_microseconds}")
        lines.append("}")
    if kind == "onnx" and b == "native" and serve.onnx_tensorrt != "off":
        lines += _ort_tensorrt(serve.onnx_tensorrt)
    return "\n".join(lines) + "\n"


def _ort_tensorrt(precision: str) -> list[str]:
    """ONNX Runtime's TensorRT execution provider on GPU instances (Triton's onnxruntime backend).

    The alternative to a tensorrt target: ONNX Runtime builds the engine when
    the model loads, on the serving GPU, and runs what TensorRT cannot on CUDA.
    """
    return [
        "optimization { execution_accelerators {",
        "  gpu_execution_accelerator : [ {",
        '    name : "tensorrt"',
        f'    parameters {{ key: "precision_mode" value: "{precision.upper()}" }}',
        "  } ]",
        "} }",
    ]


def render_model_py(kind: str, device: str) -> str:
    """The Python-backend model.py: one template, runtime chosen by constants."""
    values = {"RUNTIME": kind, "ARTIFACT": ARTIFACT_FILE[kind], "DEVICE": device if kind == "aoti" else "cpu"}
    text = TEMPLATE.read_text(encoding="utf-8")
    for key, value in values.items():
        token = f'"@{key}@"'
        if token not in text:
            raise RuntimeError(f"model.py template lacks {token}")
        text = text.replace(token, repr(value))
    return text


def write_triton_model(
    repo: Path,
    model_name: str,
    version: int,
    kind: str,
    artifact_dir: Path,
    signature: Signature,
    serve: TritonServe,
    device: str,
    backend: str | None = None,
) -> Path:
    """Write repo/<model_name>/config.pbtxt and <version>/ files; returns the model dir.

    Every file of an onnx artifact_dir is copied so external weights
    (model.onnx.data) sit beside model.onnx, where ONNX Runtime looks for them.
    """
    b = _backend(serve, backend, kind)
    text = render_config(model_name, kind, signature, serve, device, b)  # validate before touching disk
    artifact_dir = Path(artifact_dir)
    main = artifact_dir / ARTIFACT_SOURCE[kind]
    if not (main.is_dir() if kind in TF_KINDS else main.is_file()):
        raise FileNotFoundError(f"{main} not found; expected the {kind} artifact there")
    model_dir = Path(repo) / model_name
    vdir = model_dir / str(version)
    if vdir.exists():
        shutil.rmtree(vdir)
    vdir.mkdir(parents=True)
    if kind == "onnx":
        for f in sorted(artifact_dir.iterdir()):
            if f.is_file():
                link_or_copy(f, vdir / f.name)
    elif kind in TF_KINDS:
        shutil.copytree(main, vdir / ARTIFACT_SERVED[kind], copy_function=link_or_copy)
    else:
        link_or_copy(main, vdir / main.name)
    if b == "python":
        (vdir / "model.py").write_text(render_model_py(kind, device), encoding="utf-8")
    (model_dir / "config.pbtxt").write_text(text, encoding="utf-8")
    return model_dir


def check_config_against_signature(config_text: str, signature: Signature, kind: str) -> list[str]:
    """Disagreements between a config.pbtxt and the artifact's real signature.

    Parsed with Triton's own proto, so unknown fields and bad enums are caught
    too. An empty list means Triton would feed the artifact what it expects.
    """
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        cfg = text_format.Parse(config_text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        return [f"config does not parse: {e}"]
    problems: list[str] = []
    positional = cfg.platform == "torch_aoti"
    if kind == "onnx" and not (cfg.platform == "onnxruntime_onnx" or cfg.backend == "python"):
        problems.append(f"onnx artifact served by platform={cfg.platform!r} backend={cfg.backend!r}")
    if kind == "aoti" and not (positional or cfg.backend == "python"):
        problems.append(f"aoti artifact served by platform={cfg.platform!r} backend={cfg.backend!r}")
    if kind in TF_KINDS and cfg.platform != "tensorflow_savedmodel":
        problems.append(f"{kind} artifact served by platform={cfg.platform!r} backend={cfg.backend!r}")
    if kind == "tensorrt" and cfg.platform != "tensorrt_plan":
        problems.append(f"tensorrt artifact served by platform={cfg.platform!r} backend={cfg.backend!r}")
    if positional and cfg.max_batch_size != 0:
        problems.append(f"torch_aoti has no batching but max_batch_size is {cfg.max_batch_size}")
    mbs = cfg.max_batch_size
    dtype_name = model_config_pb2.DataType.Name
    for field, sigs, prefix in (("input", signature.inputs, "INPUT"), ("output", signature.outputs, "OUTPUT")):
        got = list(getattr(cfg, field))
        if len(got) != len(sigs):
            problems.append(f"{field}: config has {len(got)}, artifact has {len(sigs)}")
        for i, (c, t) in enumerate(zip(got, sigs)):
            want_name = f"{prefix}__{i}" if positional else t.name
            if c.name != want_name:
                problems.append(f"{field} {i}: config name {c.name!r}, expected {want_name!r}")
            want_dtype = TRITON_DTYPE.get(t.dtype, f"<{t.dtype}>")
            if dtype_name(c.data_type) != want_dtype:
                problems.append(f"{field} {t.name}: config data_type {dtype_name(c.data_type)}, artifact {t.dtype} ({want_dtype})")
            shape = [int(d) if d is not None and int(d) >= 0 else -1 for d in t.shape]
            dims = list(c.reshape.shape) if c.HasField("reshape") else list(c.dims)
            if mbs > 0:
                if not shape or shape[0] != -1:
                    problems.append(f"{field} {t.name}: max_batch_size {mbs} but artifact shape {t.shape} has no dynamic batch dim")
                    continue
                shape = shape[1:]
            if dims != shape:
                problems.append(f"{field} {t.name}: config dims {dims}{' (+batch)' if mbs > 0 else ''}, artifact shape {t.shape}")
    return problems
