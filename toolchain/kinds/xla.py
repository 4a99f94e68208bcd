"""xla: a SavedModel whose serving function is tf.function(jit_compile=True).

The function is compiled once at build time, so a model XLA cannot compile
fails here with the XLA error and the op named (not later, in a server); the
saved graph is then checked to carry `_XlaMustCompile`, the attribute that
makes every loader compile it.
"""

from __future__ import annotations

import re
from typing import Literal

from toolchain.errors import StepError
from toolchain.kinds.base import Artifact, BuildContext, TFServingModel
from toolchain.kinds.savedmodel import MUST_COMPILE, SAVED_MODEL, SIGNATURE, TFSavedModelKind, must_compile_functions, write_savedmodel
from toolchain.options import TargetOptions
from toolchain.sources.tensorflow import LOOKUP_HINT


class XlaTarget(TargetOptions):
    kind: Literal["xla"]


def xla_error(e: Exception) -> str:
    """The XLA error as one readable line, keeping the op and node it names.

    TF prints the function's attribute block (config_proto, executor_type) and
    the node name twice; neither helps a user find the op.
    """
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    head = next((ln for ln in lines if "{{node" in ln or "unsupported operations" in ln), lines[0] if lines else type(e).__name__)
    head = re.sub(r"\[_XlaMustCompile=[^\]]*\]", "", head)
    head = re.sub(r"\)(\{\{node [^}]*\}\})+$", ")", head)
    return f"XLA cannot compile the model: {head}"


class XlaKind(TFSavedModelKind):
    name = "xla"
    order = 30
    summary = "TensorFlow SavedModel whose serving function is XLA-compiled (jit_compile=True)"
    options = XlaTarget
    tfserving = TFServingModel(artifact=SAVED_MODEL, signature=SIGNATURE, xla=True)
    # XLA fuses and reorders arithmetic: basic-pitch's sigmoid outputs differ from TensorFlow's
    # kernels by up to 8e-4 (cosine 0.99999998), honest FP32 noise that 1e-4 would fail.
    fp32_tolerance = {"atol": 1e-3, "rtol": 1e-3}

    def build(self, source, spec: XlaTarget, ctx: BuildContext) -> Artifact:
        import tensorflow as tf

        example = source.example_feed()

        def compile_once(serve) -> None:
            try:
                serve(*[tf.constant(example[n]) for n in source.input_names])
            except tf.errors.OpError as e:  # the reference already ran this model: what fails here is XLA
                raise StepError(xla_error(e), hint=LOOKUP_HINT if "LookupTable" in str(e) else None) from e

        artifact = write_savedmodel(source, ctx.workdir, jit_compile=True, check=compile_once)
        marked = must_compile_functions(ctx.workdir / SAVED_MODEL)
        if not marked:
            raise StepError(f"the saved graph has no function with {MUST_COMPILE}=true; a server would not compile it with XLA")
        print(f"xla: {MUST_COMPILE}=true on {', '.join(marked)}")  # into the target's log
        return artifact

    def triton_comments(self, serve, backend: str) -> list[str]:
        return [
            *super().triton_comments(serve, backend),
            "# The serving function is XLA-compiled (jit_compile=True); the server's TensorFlow must run XLA on its devices.",
        ]


KIND = XlaKind()
