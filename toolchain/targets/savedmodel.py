"""A plain SavedModel: the recipe's signature as `serving_default`, for runtimes without XLA.

`write_savedmodel` is shared with the xla target, which differs only in jit_compile.
"""

from __future__ import annotations

from pathlib import Path

from toolchain.errors import StepError
from toolchain.recipe import SavedModelTarget
from toolchain.targets import Artifact
from toolchain.tensors import Signature, TensorSig

SIGNATURE = "serving_default"
SAVED_MODEL = "saved_model"  # the directory inside the target's folder
MUST_COMPILE = "_XlaMustCompile"  # the function attribute that makes every loader compile with XLA


def skip_reason(spec: SavedModelTarget) -> str | None:
    return None


def _tensor_sig(name: str, t) -> TensorSig:
    dtype = "float32" if t.dtype.name == "bfloat16" else t.dtype.name
    return TensorSig(name, dtype, [-1 if d is None else int(d) for d in t.shape.as_list()])


def must_compile_functions(saved_model_dir: Path) -> list[str]:
    """Names of the saved graph's functions marked `_XlaMustCompile: true`."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel.FromString((Path(saved_model_dir) / "saved_model.pb").read_bytes())
    return [f.signature.name for mg in sm.meta_graphs for f in mg.graph_def.library.function if f.attr[MUST_COMPILE].b]


def write_savedmodel(source, workdir: Path, jit_compile: bool, check=None) -> Artifact:
    """Trace the serving function, run `check(function)` if given, save, describe.

    The model is attached to the saved module so its variables are saved with it.
    """
    import tensorflow as tf

    serve = source.serving_function(jit_compile=jit_compile)
    concrete = serve.get_concrete_function()
    if check is not None:
        check(serve)
    module = tf.Module()
    module.model = source.model
    path = workdir / SAVED_MODEL
    tf.saved_model.save(module, str(path), signatures={SIGNATURE: concrete})
    signature = Signature(
        [_tensor_sig(s.name, s) for s in concrete.structured_input_signature[0]],
        [_tensor_sig(n, concrete.structured_outputs[n]) for n in source.output_names],
    )
    return Artifact(
        kind="xla" if jit_compile else "savedmodel",
        files=sorted(p for p in path.rglob("*") if p.is_file()),
        signature=signature,
        runner="tf_savedmodel",
        runner_args={"path": path, "output_names": source.output_names, "signature": SIGNATURE},
    )


def build(source, spec: SavedModelTarget, workdir: Path) -> Artifact:
    artifact = write_savedmodel(source, workdir, jit_compile=False)
    # A source that is itself XLA-compiled (jit_compile=True inside) stays so when saved.
    marked = must_compile_functions(workdir / SAVED_MODEL)
    if marked:
        raise StepError(
            f"the source model has XLA-compiled functions ({', '.join(marked)}) that a plain SavedModel keeps; "
            "build the xla target from it, or use a source without jit_compile=True"
        )
    return artifact
