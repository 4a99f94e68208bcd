"""A target kind defined outside mlpack, the way a plugin defines one: this module
plus one entry point (`copy = mlpack_copy_kind:KIND` in the `mlpack.kinds` group).

`copy` republishes another target's ONNX file under its own name. It shows
that a kind is one module: its options, its checks, its dependency, its build,
its runner spec and its Triton model are all declared here, and the recipe,
the build, the manifest, Triton, bench and serve-check pick them up.
"""

from __future__ import annotations

import shutil
from typing import Literal

from toolchain.kinds.base import Artifact, BuildContext, Kind, TritonModel
from toolchain.kinds.onnx import PYTHON_BACKEND
from toolchain.options import TargetOptions


class CopyTarget(TargetOptions):
    kind: Literal["copy"]
    of: str = "onnx"  # the target whose model.onnx is republished


class CopyKind(Kind):
    name = "copy"
    summary = "another target's ONNX file, republished (a test plugin)"
    options = CopyTarget
    frameworks = frozenset({"pytorch", "tensorflow"})
    # mlpack's ONNX Runtime runner (registered by the onnx kind) runs the copy.
    triton = TritonModel(platform="onnxruntime_onnx", backend="onnxruntime", artifact="model.onnx", siblings=True, python_backend=PYTHON_BACKEND)
    manifest_fields = {"copied_from": {"type": "string"}}

    def check(self, spec: CopyTarget, recipe):
        names = [t.target_name for t in recipe.targets]
        if spec.of not in names or spec.of == spec.target_name:
            return [(("of",), f"no other target is named '{spec.of}'", f"targets are: {', '.join(names)}")]
        return []

    def requires(self, spec: CopyTarget, recipe) -> list[str]:
        return [spec.of]

    def build(self, source, spec: CopyTarget, ctx: BuildContext) -> Artifact:
        dep = ctx.deps[spec.of]
        files = []
        for f in dep.files:
            dst = ctx.workdir / f.path.rsplit("/", 1)[-1]
            shutil.copyfile(ctx.root / f.path, dst)
            files.append(dst)
        runner = dep.runner.model_copy(update={"path": str(ctx.workdir / "model.onnx")})
        return Artifact(files, dep.signature, runner, device=runner.device, extra={"copied_from": spec.of})


KIND = CopyKind()
