"""savedmodel: a plain SavedModel with the recipe's signature as `serving_default`,
for runtimes without XLA; run by tf.saved_model.load, served by TF Serving and
Triton's tensorflow backend.

`write_savedmodel` is shared with the xla kind, which differs only in jit_compile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from toolchain.errors import StepError
from toolchain.kinds.base import EXPORT_SCHEMA, Artifact, BuildContext, Kind, RunnerSpec, TFServingModel, TritonModel
from toolchain.options import TargetOptions
from toolchain.serving.tfserving import SIGNATURE
from toolchain.tensors import Signature, TensorSig

SAVED_MODEL = "saved_model"  # the directory inside the target's folder
MUST_COMPILE = "_XlaMustCompile"  # the function attribute that makes every loader compile with XLA
RUNNER = "tf_savedmodel"
TF_TOOLS = ("tensorflow", "keras")
# Triton's tensorflow backend serves <version>/model.savedmodel/.
TRITON = TritonModel(platform="tensorflow_savedmodel", backend="tensorflow", artifact=SAVED_MODEL, served_as="model.savedmodel", directory=True)
TRITON_DEPRECATION = (
    "platform tensorflow_savedmodel: Triton deprecated its TensorFlow backend from release 25.03; serve the onnx target on current Triton servers"
)


class SavedModelTarget(TargetOptions):
    kind: Literal["savedmodel"]


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
    module.model = source.trackable()
    path = workdir / SAVED_MODEL
    with source.tracing():  # saving traces the attached Keras model's own functions too
        tf.saved_model.save(module, str(path), signatures={SIGNATURE: concrete})
    signature = Signature(
        [_tensor_sig(s.name, s) for s in concrete.structured_input_signature[0]],
        [_tensor_sig(n, concrete.structured_outputs[n]) for n in source.output_names],
    )
    return Artifact(
        files=sorted(p for p in path.rglob("*") if p.is_file()),
        signature=signature,
        runner=RunnerSpec(runner=RUNNER, path=str(path), inputs=source.input_names, outputs=source.output_names, options={"signature": SIGNATURE}),
        extra={"export": {"strategy": "tf.function", "rewrites": sorted(source.rewrites)}} if source.rewrites else {},
    )


class TFSavedModelKind(Kind):
    """What the savedmodel and xla kinds share: a SavedModel, its runner, its servers."""

    frameworks = frozenset({"tensorflow"})
    tools = TF_TOOLS
    runners = {RUNNER: "toolchain.runners.tf:SavedModelRunner"}
    triton = TRITON
    manifest_fields = {"export": EXPORT_SCHEMA}

    def triton_comments(self, serve, backend: str) -> list[str]:
        return [f"# {TRITON_DEPRECATION}."]

    def triton_note(self, backend: str) -> str | None:
        return TRITON_DEPRECATION


class SavedModelKind(TFSavedModelKind):
    name = "savedmodel"
    order = 40
    summary = "TensorFlow SavedModel (serving_default), for runtimes without XLA"
    options = SavedModelTarget
    tfserving = TFServingModel(artifact=SAVED_MODEL, signature=SIGNATURE)

    def build(self, source, spec: SavedModelTarget, ctx: BuildContext) -> Artifact:
        artifact = write_savedmodel(source, ctx.workdir, jit_compile=False)
        # A source that is itself XLA-compiled (jit_compile=True inside) stays so when saved.
        marked = must_compile_functions(ctx.workdir / SAVED_MODEL)
        if marked:
            raise StepError(
                f"the source model has XLA-compiled functions ({', '.join(marked)}) that a plain SavedModel keeps; "
                "build the xla target from it, or use a source without jit_compile=True"
            )
        return artifact


KIND = SavedModelKind()
