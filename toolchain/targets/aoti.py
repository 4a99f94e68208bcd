"""AOTInductor: torch.export with Dim(min, max), then aoti_compile_and_package."""

from __future__ import annotations

from pathlib import Path

from toolchain.recipe import AotiTarget
from toolchain.targets import Artifact
from toolchain.tensors import Signature, TensorSig


def cuda_missing() -> str | None:
    import torch

    if not torch.cuda.is_available():
        build = "a CPU-only torch build" if torch.version.cuda is None else f"torch {torch.__version__} sees no CUDA device"
        return f"device: cuda needs a CUDA GPU ({build})"
    return None


def skip_reason(spec: AotiTarget) -> str | None:
    return cuda_missing() if spec.device == "cuda" else None


def _sig(val, name: str) -> TensorSig:
    shape = [d if isinstance(d, int) else -1 for d in val.shape]
    return TensorSig(name, str(val.dtype).removeprefix("torch.").replace("bfloat16", "float32"), shape)


def build(source, spec: AotiTarget, workdir: Path) -> Artifact:
    import torch
    import torch._inductor

    module = source.module.to(spec.device)
    args = source.example_args(spec.device)
    program = torch.export.export(module, args, dynamic_shapes=source.dynamic_shapes(), strict=False)
    path = workdir / "model.pt2"
    torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    source.module.to("cpu")
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in program.graph_signature.user_inputs]
    out_node = next(n for n in program.graph.nodes if n.op == "output")
    user_out = out_node.args[0][-len(source.output_names):] if source.output_names else []
    signature = Signature(
        [_sig(n.meta["val"], name) for n, name in zip(placeholders, source.input_names)],
        [_sig(n.meta["val"], name) for n, name in zip(user_out, source.output_names)],
    )
    return Artifact(
        kind="aoti",
        files=[path],
        signature=signature,
        runner="aoti",
        runner_args={"path": path, "input_names": source.input_names, "output_names": source.output_names, "device": spec.device},
        device=spec.device,
    )
