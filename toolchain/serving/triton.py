"""Triton model repositories: config.pbtxt and version directories.

A config is a ModelConfig proto filled from the kind's `TritonModel` and the
artifact's signature, then printed with text_format (deterministic: the same
input gives byte-identical text). `check_config_against_signature` reads a
config back and compares it with what the same rules (`expected_tensor`)
demand, so the writer and the checker cannot disagree.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from toolchain import kinds
from toolchain.fsutil import link_or_copy
from toolchain.kinds.base import Kind, TritonModel
from toolchain.recipe import TritonServe, triton_model_name  # noqa: F401  (build.py imports the model name from here)
from toolchain.serving import protos
from toolchain.tensors import TRITON_DTYPE, Signature, TensorSig

TEMPLATE = Path(__file__).with_name("model_py.txt")
PADDING = Path(__file__).with_name("padding.py")


@dataclass
class SizeGate:
    """The sizes a served model takes (issue 26), for model.py: ACCEPTS/TRIMS of serving/padding.py, keyed by the
    artifact's own tensor names, and what the config's comments say."""

    accepts: dict[str, list[list]] = field(default_factory=dict)
    trims: dict[str, list[list]] = field(default_factory=dict)
    said: list[str] = field(default_factory=list)  # "seq: multiples of 8 in [8, 64]"
    beyond: list[str] = field(default_factory=list)  # those of `said` a config cannot express

    @property
    def beyond_config(self) -> bool:
        """Whether Triton's config cannot say it (a multiple, or padding): only model.py can refuse or pad."""
        return any(row[4] or row[5] is not None for rows in self.accepts.values() for row in rows)


def _kind(kind: str) -> tuple[Kind, TritonModel]:
    k = kinds.kinds().get(kind)
    if k is None or k.triton is None:
        servable = [n for n, other in kinds.kinds().items() if other.triton is not None]
        raise ValueError(f"Triton serving supports artifact kinds {tuple(servable)}, not {kind!r}")
    return k, k.triton


def backend_for(kind: str, serve: TritonServe, backend: str | None = None) -> str:
    """native or python for this kind: native-only kinds (TensorRT plans) are always native."""
    b = backend or serve.backend
    if b not in ("native", "python"):
        raise ValueError(f"unknown Triton backend {b!r}; use native or python")
    k, t = _kind(kind)
    if t.native_only:
        return "native"
    if b == "python" and t.python_backend is None:
        raise ValueError(f"serve.triton.backend: python has no model.py for {kind} artifacts; use backend: native ({t.platform or t.backend})")
    return b


def max_batch_size_for(t: TritonModel, serve: TritonServe, backend: str) -> int:
    """A native backend without batching always gets 0."""
    return 0 if (backend == "native" and not t.batching) else serve.max_batch_size


def positional(t: TritonModel, backend: str) -> bool:
    """Whether config tensors are INPUT__i / OUTPUT__i (the native backend addresses them by position)."""
    return backend == "native" and t.positional


def expected_tensor(t: TensorSig, index: int, prefix: str, by_position: bool, max_batch_size: int) -> tuple[str, str, list[int], list[int] | None]:
    """(name, Triton data type, dims, reshape) a config must give one tensor; ValueError when none will do.

    With batching the leading -1 is implicit; a tensor that is only a batch dim
    gets dims [1] with an empty reshape, Triton's documented form for per-item scalars.
    """
    try:
        dtype = TRITON_DTYPE[t.dtype]
    except KeyError:
        raise ValueError(f"tensor '{t.name}' has dtype {t.dtype!r}, which Triton has no type for") from None
    name = f"{prefix}__{index}" if by_position else t.name
    shape = [int(d) if d is not None and int(d) >= 0 else -1 for d in t.shape]
    if max_batch_size <= 0:
        return name, dtype, shape, None
    if not shape or shape[0] != -1:
        raise ValueError(
            f"max_batch_size {max_batch_size} needs a dynamic first (batch) dimension, "
            f"but '{t.name}' has shape {t.shape}; set max_batch_size: 0 or export with a dynamic batch dim"
        )
    rest = shape[1:]
    return (name, dtype, rest, None) if rest else (name, dtype, [1], [])


def _fill_io(field, tensors: list[TensorSig], prefix: str, by_position: bool, max_batch_size: int) -> None:
    dtype_value = protos.triton_pb2().DataType.Value
    for i, t in enumerate(tensors):
        name, dtype, dims, reshape = expected_tensor(t, i, prefix, by_position, max_batch_size)
        entry = field.add(name=name, data_type=dtype_value(dtype), dims=dims)
        if reshape is not None:
            entry.reshape.SetInParent()
            entry.reshape.shape.extend(reshape)


def build_config(model_name: str, kind: str, signature: Signature, serve: TritonServe, device: str, backend: str | None = None, gate: SizeGate | None = None,
                 threads: int | None = None):  # fmt: skip
    """(ModelConfig, comment lines) for one served artifact; ValueError on a setup Triton would reject."""
    k, t = _kind(kind)
    b = backend_for(kind, serve, backend)
    mbs = max_batch_size_for(t, serve, b)
    by_position = positional(t, b)
    pb2 = protos.triton_pb2()
    cfg = pb2.ModelConfig(name=model_name, max_batch_size=mbs)
    if b == "native":
        cfg.backend = t.backend
        if t.platform:
            cfg.platform = t.platform
    else:
        cfg.backend = "python"
    comments = list(k.triton_comments(serve, b))
    if b == "python":
        comments.append(f"# model.py runs {t.artifact} (mlpack kind {kind}); Triton's Python environment needs what that kind's runtime imports.")
    if by_position:
        mapping = ", ".join(
            [f"{s.name}->INPUT__{i}" for i, s in enumerate(signature.inputs)] + [f"{s.name}->OUTPUT__{i}" for i, s in enumerate(signature.outputs)]
        )
        comments.append(f"# Tensor names: {mapping}")
    if gate and gate.said:
        how = (
            "model.py refuses other sizes" + (", pads" if any(r[5] is not None for rows in gate.accepts.values() for r in rows) else "")
            if b == "python"
            else "Triton cannot refuse other sizes: clients must send only these"
        )
        comments.append(f"# Sizes the artifact accepts ({how}): " + "; ".join(gate.said))
    protos.set_version_policy(cfg.version_policy, serve.version_policy)
    _fill_io(cfg.input, signature.inputs, "INPUT", by_position, mbs)
    _fill_io(cfg.output, signature.outputs, "OUTPUT", by_position, mbs)
    kind_name = serve.instance_group.kind
    instance = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}.get(kind_name) or k.triton_instance_kind(device)
    cfg.instance_group.add(count=serve.instance_group.count, kind=pb2.ModelInstanceGroup.Kind.Value(instance))
    db = serve.dynamic_batching
    if db is not None and serve.max_batch_size > 0:
        bad = [s for s in db.preferred_batch_size if s > serve.max_batch_size]
        if bad:
            raise ValueError(f"dynamic_batching.preferred_batch_size {bad} exceeds max_batch_size {serve.max_batch_size}; lower them or raise max_batch_size")
    if db is not None and mbs > 0:
        cfg.dynamic_batching.SetInParent()
        cfg.dynamic_batching.preferred_batch_size.extend(sorted(set(db.preferred_batch_size)))
        cfg.dynamic_batching.max_queue_delay_microseconds = db.max_queue_delay_microseconds
    k.triton_configure(cfg, serve, b)
    if threads is not None and device == "cpu" and k.triton_threads(cfg, threads):
        comments.append(f"# serve.threads: {threads} intra-op threads per instance")
    return cfg, comments


def render_config(model_name: str, kind: str, signature: Signature, serve: TritonServe, device: str, backend: str | None = None,
                  gate: SizeGate | None = None, threads: int | None = None) -> str:  # fmt: skip
    """The config.pbtxt text for one served artifact; raises ValueError on a setup Triton would reject."""
    cfg, comments = build_config(model_name, kind, signature, serve, device, backend, gate, threads)
    return protos.to_text(cfg, comments)


def render_model_py(kind: str, device: str, gate: SizeGate | None = None) -> str:
    """The Python-backend model.py: the one template, with the kind's loader and the sizes it takes."""
    k, t = _kind(kind)
    if t.python_backend is None:
        raise ValueError(f"mlpack has no Python-backend model.py for {kind} artifacts")
    gate = gate or SizeGate()
    padding = PADDING.read_text(encoding="utf-8").split('"""', 2)[2].strip("\n")  # the module without its docstring
    values = {'"@RUNTIME@"': repr(kind), '"@ARTIFACT@"': repr(t.served_as or t.artifact), '"@DEVICE@"': repr(device), "@LOADER@": t.python_backend.strip("\n"),
              '"@ACCEPTS@"': repr(gate.accepts), '"@TRIMS@"': repr(gate.trims), "@PADDING@": padding}  # fmt: skip
    text = TEMPLATE.read_text(encoding="utf-8")
    for token, value in values.items():
        if token not in text:
            raise RuntimeError(f"model.py template lacks {token}")
        text = text.replace(token, value)
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
    gate: SizeGate | None = None,
    threads: int | None = None,
) -> Path:
    """Write repo/<model_name>/config.pbtxt and <version>/ files; returns the model dir.

    For kinds with `siblings` every file of artifact_dir is copied, so external
    weights (model.onnx.data) sit beside the model, where the runtime looks.
    Sizes a config cannot express (`gate.beyond_config`) are served by model.py, which refuses or pads them.
    """
    _, t = _kind(kind)
    b = "python" if gate and gate.beyond_config and t.python_backend is not None and not t.native_only else backend_for(kind, serve, backend)
    text = render_config(model_name, kind, signature, serve, device, b, gate, threads)  # validate before touching disk
    artifact_dir = Path(artifact_dir)
    main = artifact_dir / t.artifact
    if not (main.is_dir() if t.directory else main.is_file()):
        raise FileNotFoundError(f"{main} not found; expected the {kind} artifact there")
    model_dir = Path(repo) / model_name
    vdir = model_dir / str(version)
    if vdir.exists():
        shutil.rmtree(vdir)
    vdir.mkdir(parents=True)
    served = vdir / (t.served_as or t.artifact)
    if t.directory:
        shutil.copytree(main, served, copy_function=link_or_copy)
    elif t.siblings:
        for f in sorted(artifact_dir.iterdir()):
            if f.is_file():
                link_or_copy(f, vdir / (served.name if f == main else f.name))
    else:
        link_or_copy(main, served)
    if b == "python":
        (vdir / "model.py").write_text(render_model_py(kind, device, gate), encoding="utf-8")
    (model_dir / "config.pbtxt").write_text(text, encoding="utf-8")
    return model_dir


def check_config_against_signature(config_text: str, signature: Signature, kind: str) -> list[str]:
    """Disagreements between a config.pbtxt and the artifact's real signature.

    Parsed with Triton's own proto, so unknown fields and bad enums are caught
    too, then compared with what `expected_tensor` demands for this kind. An
    empty list means Triton would feed the artifact what it expects.
    """
    pb2 = protos.triton_pb2()
    try:
        cfg = protos.parse(config_text, pb2.ModelConfig())
    except ValueError as e:
        return [f"config {e}"]
    _, t = _kind(kind)
    native = cfg.platform == t.platform and cfg.backend in ("", t.backend) if t.platform else cfg.backend == t.backend and not cfg.platform
    python = cfg.backend == "python" and t.python_backend is not None
    problems: list[str] = []
    if not (native or python):
        problems.append(f"{kind} artifact served by platform={cfg.platform!r} backend={cfg.backend!r}")
    by_position = native and t.positional
    if native and not t.batching and cfg.max_batch_size != 0:
        problems.append(f"{t.platform or t.backend} has no batching but max_batch_size is {cfg.max_batch_size}")
    mbs = cfg.max_batch_size
    dtype_name = pb2.DataType.Name
    for part, sigs, prefix in (("input", signature.inputs, "INPUT"), ("output", signature.outputs, "OUTPUT")):
        got = list(getattr(cfg, part))
        if len(got) != len(sigs):
            problems.append(f"{part}: config has {len(got)}, artifact has {len(sigs)}")
        for i, (c, s) in enumerate(zip(got, sigs)):
            try:
                want_name, want_dtype, want_dims, want_reshape = expected_tensor(s, i, prefix, by_position, mbs)
            except ValueError:
                problems.append(f"{part} {s.name}: max_batch_size {mbs} but artifact shape {s.shape} has no dynamic batch dim")
                continue
            if c.name != want_name:
                problems.append(f"{part} {i}: config name {c.name!r}, expected {want_name!r}")
            if dtype_name(c.data_type) != want_dtype:
                problems.append(f"{part} {s.name}: config data_type {dtype_name(c.data_type)}, artifact {s.dtype} ({want_dtype})")
            dims = list(c.reshape.shape) if c.HasField("reshape") else list(c.dims)
            want = want_reshape if want_reshape is not None else want_dims
            if dims != want:
                problems.append(f"{part} {s.name}: config dims {dims}{' (+batch)' if mbs > 0 else ''}, artifact shape {s.shape}")
    return problems
