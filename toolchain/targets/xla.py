"""XLA: a SavedModel whose serving function is tf.function(jit_compile=True).

The function is compiled once at build time, so a model XLA cannot compile
fails here with the XLA error and the op named (not later, in a server); the
saved graph is then checked to carry `_XlaMustCompile`, the attribute that
makes every loader compile it.
"""

from __future__ import annotations

import re
from pathlib import Path

from toolchain.errors import StepError
from toolchain.recipe import XlaTarget
from toolchain.targets import Artifact
from toolchain.targets.savedmodel import MUST_COMPILE, SAVED_MODEL, must_compile_functions, write_savedmodel


def skip_reason(spec: XlaTarget) -> str | None:
    return None


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


def build(source, spec: XlaTarget, workdir: Path) -> Artifact:
    import tensorflow as tf

    example = source.example_feed()

    def compile_once(serve) -> None:
        try:
            serve(*[tf.constant(example[n]) for n in source.input_names])
        except tf.errors.OpError as e:  # the reference already ran this model: what fails here is XLA
            raise StepError(xla_error(e)) from e

    artifact = write_savedmodel(source, workdir, jit_compile=True, check=compile_once)
    marked = must_compile_functions(workdir / SAVED_MODEL)
    if not marked:
        raise StepError(f"the saved graph has no function with {MUST_COMPILE}=true; a server would not compile it with XLA")
    print(f"xla: {MUST_COMPILE}=true on {', '.join(marked)}")  # into the target's log
    return artifact
