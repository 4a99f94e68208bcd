"""aoti: torch.export with Dim(min, max), then AOTInductor's aoti_compile_and_package
into a .pt2 package; run by torch._inductor.aoti_load_package, served by
Triton's pytorch backend (platform torch_aoti) or a Python-backend model.py.
"""

from __future__ import annotations

from typing import Literal

from toolchain.kinds.base import Artifact, BuildContext, Kind, RunnerSpec, TritonModel
from toolchain.machine import cuda_missing
from toolchain.options import TargetOptions
from toolchain.tensors import Signature, TensorSig

MODEL = "model.pt2"
RUNNER = "aoti"
MIN_TRITON = "26.03"  # the first Triton release whose pytorch backend serves .pt2 packages


class AotiTarget(TargetOptions):
    kind: Literal["aoti"]
    device: Literal["cpu", "cuda"] = "cpu"


# The Python backend's loader (see serving/model_py.txt). AOTInductor gives silently
# wrong results on inputs whose layout differs from the export example: make them contiguous.
PYTHON_BACKEND = """
def load(path, device, on_gpu, device_id, input_names, output_names):
    import torch
    import torch._inductor

    # The package's device is fixed at compile time; only the index varies.
    target = torch.device("cuda", device_id) if device == "cuda" else torch.device("cpu")
    runner = torch._inductor.aoti_load_package(path, device_index=device_id if device == "cuda" else -1)

    def run(arrays):
        tensors = [torch.from_numpy(np.require(a, requirements=["C", "W"])).contiguous().to(target) for a in arrays]
        with torch.no_grad():
            out = runner(*tensors)
        if isinstance(out, torch.Tensor):
            out = [out]
        elif isinstance(out, dict):
            out = list(out.values())
        return [t.detach().cpu().contiguous().numpy() for t in out]

    return run
"""


def _sig(val, name: str) -> TensorSig:
    shape = [d if isinstance(d, int) else -1 for d in val.shape]
    return TensorSig(name, str(val.dtype).removeprefix("torch.").replace("bfloat16", "float32"), shape)


class AotiKind(Kind):
    name = "aoti"
    order = 20
    summary = "torch.export + AOTInductor .pt2 package"
    options = AotiTarget
    frameworks = frozenset({"pytorch"})
    tools = ("torch",)
    runners = {RUNNER: "toolchain.runners.aoti:AotiRunner"}
    # torch_aoti (beta) addresses tensors by position and has no batching.
    triton = TritonModel(platform="torch_aoti", backend="pytorch", artifact=MODEL, positional=True, batching=False, python_backend=PYTHON_BACKEND)

    def skip_reason(self, spec: AotiTarget) -> str | None:
        return cuda_missing() if spec.device == "cuda" else None

    def build(self, source, spec: AotiTarget, ctx: BuildContext) -> Artifact:
        import torch
        import torch._inductor

        module = source.module.to(spec.device)
        args = source.example_args(spec.device)
        program = torch.export.export(module, args, dynamic_shapes=source.dynamic_shapes(), strict=False)
        path = ctx.workdir / MODEL
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
        source.module.to("cpu")
        placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in program.graph_signature.user_inputs]
        out_node = next(n for n in program.graph.nodes if n.op == "output")
        user_out = out_node.args[0][-len(source.output_names) :] if source.output_names else []
        signature = Signature(
            [_sig(n.meta["val"], name) for n, name in zip(placeholders, source.input_names)],
            [_sig(n.meta["val"], name) for n, name in zip(user_out, source.output_names)],
        )
        return Artifact(
            files=[path],
            signature=signature,
            runner=RunnerSpec(runner=RUNNER, path=str(path), inputs=source.input_names, outputs=source.output_names, device=spec.device),
            device=spec.device,
        )

    def triton_instance_kind(self, device: str) -> str:
        return "KIND_GPU" if device == "cuda" else "KIND_CPU"  # a CPU package cannot run on a GPU

    def triton_comments(self, serve, backend: str) -> list[str]:
        if backend != "native":
            return []
        lines = [f"# torch_aoti needs Triton >= {MIN_TRITON} (beta, no batching: max_batch_size 0, dims include the batch dim)."]
        if serve.max_batch_size > 0:
            lines.append(f"# serve.triton.max_batch_size {serve.max_batch_size} is not applied here; backend: python batches.")
        return lines

    def triton_note(self, backend: str) -> str | None:
        if backend == "native":
            return f"uses platform torch_aoti (Triton >= {MIN_TRITON}, beta, no batching); serve.triton.backend: python supports older servers and batching"
        return None


KIND = AotiKind()
