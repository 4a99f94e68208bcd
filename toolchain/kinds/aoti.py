"""aoti: torch.export with Dim(min, max), then AOTInductor's aoti_compile_and_package
into a .pt2 package; run by torch._inductor.aoti_load_package, served by
Triton's pytorch backend (platform torch_aoti) or a Python-backend model.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import model_validator
from pydantic_core import PydanticCustomError

from toolchain import cpuclass
from toolchain.kinds.base import EXPORT_SCHEMA, Artifact, BuildContext, Kind, RunnerSpec, ThreadSplit, TritonModel
from toolchain.machine import cpu_identity, cuda_missing
from toolchain.options import TargetOptions, YamlOff
from toolchain.records import ExportRecord
from toolchain.records.steps import PREFILL
from toolchain.search import QUANTIZATION_SCHEMA
from toolchain.tensors import Signature, TensorSig
from toolchain.torchtools import aoti_precision, gemm, isa, package_kernels, weight_only
from toolchain.torchtools.aoti_compile import compile_package

MODEL = "model.pt2"
RUNNER = "aoti"
DECODER_RUNNER = "aoti-decoder"  # text-generation: a prefill and a decode package, one call each by its shape
PHASES = ("prefill", "decode")
MIN_TRITON = "26.03"  # the first Triton release whose pytorch backend serves .pt2 packages


class AotiTarget(TargetOptions):
    kind: Literal["aoti"]
    precision_option = "precision"
    device: Literal["cpu", "cuda"] = "cpu"
    # fp32 | bf16 (exported under autocast: FP32 inputs and outputs, matmuls in bfloat16)
    # | int8 (PT2E static quantization, x86 CPUs) | fp16 (autocast, CUDA only)
    # | int8-weight (text-generation: int8 weights per output channel, the output projection float; torchtools/weight_only.py)
    precision: Literal["fp32", "bf16", "int8", "fp16", "int8-weight"] = "fp32"
    # Inductor freezing (weights folded and prepacked for oneDNN): auto = on for int8; on for
    # bf16/fp16 unless the frozen package misses the budget and the unfrozen one does better;
    # for fp32 on a CPU, both are built and the faster one that passes parity is kept.
    freezing: Annotated[Literal["auto", "on", "off"], YamlOff] = "auto"
    fallback: Annotated[Literal["off", "auto"], YamlOff] = "off"  # int8: keep the modules that break the budget in float
    # int8: auto = attention's two matmuls in BF16 when this machine and every serve.cpus class have native BF16
    # (torchtools/attention.py); float = ATen's FP32 attention kernel
    attention: Literal["auto", "float"] = "auto"
    # int8, bf16 (CPU): auto = on a build machine with AMX, each GEMM timed at compile time on Inductor's C++ GEMM and
    # on oneDNN's, the faster kept (torchtools/gemm.py); aten = oneDNN's alone (a faster compile)
    gemm: Literal["auto", "aten"] = "auto"

    @model_validator(mode="after")
    def _precision_device(self) -> AotiTarget:
        if self.precision == "fp16" and self.device != "cuda":
            raise PydanticCustomError("fp16_cuda", "precision: fp16 needs device: cuda (a CPU runs FP16 kernels no faster than FP32); use bf16 on CPUs", {})
        if self.precision in ("int8", "int8-weight") and self.device != "cpu":
            raise PydanticCustomError("int8_cpu", "precision: int8 builds for x86 CPUs (oneDNN); use device: cpu, or a tensorrt int8 target for GPUs", {})
        if self.attention != "auto" and self.precision != "int8":
            raise PydanticCustomError("attention_int8", "attention: float applies to precision: int8 only (the other precisions keep theirs)", {})
        if self.gemm != "auto" and (self.precision not in ("int8", "bf16") or self.device != "cpu"):
            raise PydanticCustomError("gemm_cpu", "gemm: aten applies to CPU packages of precision int8 or bf16 only (the others use ATen's kernels)", {})
        if self.fallback == "auto" and self.precision != "int8":
            raise PydanticCustomError("fallback_int8", "fallback: auto applies to precision: int8 only", {})
        return self


# The Python backend's loader (see serving/model_py.txt). AOTInductor gives silently
# wrong results on inputs whose layout differs from the export example: make them contiguous.
PYTHON_BACKEND = """
def load(path, device, on_gpu, device_id, input_names, output_names, threads=None):
    import torch
    import torch._inductor

    if threads:  # serve.threads: what the package's GEMMs were split for
        torch.set_num_threads(threads)

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


AOTI_SCHEMA: dict = {
    "type": "object",
    "required": ["precision", "freezing"],
    "properties": {
        "precision": {"enum": ["fp32", "bf16", "int8", "fp16", "int8-weight"]},
        "freezing": {"type": "boolean"},
        "autocast": {"type": "string"},
        "compiled_for": {
            "type": ["string", "null"],
            "description": "the CPU class its code was compiled for (serve.cpus); null: the build machine (-march=native)",
        },
        "io": {"type": "string"},
        "attention": {
            "type": "object",
            "description": "int8: the dtype of attention's matmuls (bfloat16 only where every class serving it has native BF16) and why",
            "required": ["dtype", "why"],
            "properties": {
                "dtype": {"enum": ["float32", "bfloat16"]},
                "why": {"type": "string"},
                "rewritten": {"type": "integer"},
                "form": {"enum": ["fused", "matmuls"], "description": "bfloat16: ATen's fused kernel (on AMX) or two matmuls around an FP32 softmax"},
                "kernel": {"type": "string"},
            },
        },
        "gemm": {
            "type": "object",
            "description": "int8, bf16: whether each GEMM was autotuned between Inductor's C++ GEMM and oneDNN's (AMX), and why",
            "required": ["autotuned", "why"],
            "properties": {
                "autotuned": {"type": "boolean"},
                "why": {"type": "string"},
                "threads": {"type": "integer", "minimum": 1, "description": "autotuned: the threads each GEMM is split for; it uses no more"},
                "given": {"enum": ["serve.threads", "build"], "description": "where threads came from (serve.threads: the Triton configs carry it)"},
                "concatenated": {"type": "integer", "minimum": 1, "description": "int8: groups of linears on one input computed as one GEMM"},
            },
        },
        "freezing_choice": {"type": "array", "items": {"type": "object"}},
        "kernels": {
            "type": "object",
            "description": "GEMM/conv kernel call sites in the package's generated wrapper, by class (toolchain/torchtools/package_kernels.py)",
            "required": ["int8", "onednn_float", "aten_float", "weight_dequant_per_call"],
            "additionalProperties": {"type": "integer", "minimum": 0},
        },
    },
}


class AotiKind(Kind):
    name = "aoti"
    order = 20
    summary = "torch.export + AOTInductor .pt2 package"
    options = AotiTarget
    tasks = frozenset({"predict", "text-generation"})
    frameworks = frozenset({"pytorch"})
    tools = ("torch",)
    preload = ("torch.export", "torch._inductor.compile_fx")
    runners = {RUNNER: "toolchain.runners.aoti:AotiRunner", DECODER_RUNNER: "toolchain.runners.aoti:AotiDecoderRunner"}
    # torch_aoti (beta) addresses tensors by position and has no batching.
    triton = TritonModel(platform="torch_aoti", backend="pytorch", artifact=MODEL, positional=True, batching=False, python_backend=PYTHON_BACKEND,
                         generator_programs={p: f"{p}.pt2" for p in PHASES})  # fmt: skip
    manifest_fields = {
        "export": EXPORT_SCHEMA,
        "aoti": AOTI_SCHEMA,
        "quantization": QUANTIZATION_SCHEMA,
        "excluded_nodes": {"type": "array", "items": {"type": "string"}},
    }

    def skip_reason(self, spec: AotiTarget) -> str | None:
        return cuda_missing() if spec.device == "cuda" else None

    isa_capped = True

    def compiled_code(self, files: list[Path]) -> list[Path]:
        return [f for f in files if f.suffix == ".pt2"]

    def compiled_for(self, extra: dict) -> str | None:
        return extra.get("aoti", {}).get("compiled_for")

    def bf16_parts(self, extra: dict) -> bool:
        return (extra.get("aoti", {}).get("attention") or {}).get("dtype") == "bfloat16"

    def triton_threads(self, config, threads: int) -> bool:
        # Triton's pytorch backend reads it (once per backend: its first model's value); model.py calls
        # torch.set_num_threads with it
        config.parameters["INTRA_OP_THREAD_COUNT"].string_value = str(threads)
        return True

    def thread_split(self, extra: dict) -> ThreadSplit | None:
        g = extra.get("aoti", {}).get("gemm") or {}
        return ThreadSplit(g["threads"], g.get("given") == "serve.threads") if g.get("threads") else None

    def cache_parts(self, spec: AotiTarget) -> dict:
        if spec.device == "cuda":
            return super().cache_parts(spec)
        # Inductor compiles a CPU package's code with -march=native: it runs only where this machine's features are
        return {"cpu_class": cpuclass.machine_class(), "cpu_features": cpu_identity()["features"]}

    def recipe_cache_parts(self, spec: AotiTarget, recipe) -> dict:
        # an autotuned INT8/BF16 package's GEMMs are split for serve.threads or the build's threads (gemm.py)
        tuned = spec.device == "cpu" and spec.precision in ("int8", "bf16") and not recipe.generates  # a decoder's GEMMs are not autotuned
        return gemm.cache_part(recipe, spec.gemm, spec.precision) if tuned else {}

    def check(self, spec: AotiTarget, recipe) -> list:
        if recipe.generates and spec.precision not in ("fp32", "int8-weight", "bf16"):
            return [(("precision",), f"a decoder with its cache builds in fp32, bf16 or int8-weight here; precision {spec.precision} is not built for text-generation yet",
                     "set precision: fp32, bf16 or int8-weight")]  # fmt: skip
        if recipe.generates and spec.gemm != "auto":
            return [(("gemm",), "a decoder's GEMMs are not autotuned (gemm applies to models that answer in one call): gemm: aten changes nothing",
                     "remove gemm")]  # fmt: skip
        if not recipe.generates and spec.precision == "int8-weight":
            return [(("precision",), "int8-weight builds decoders (task: text-generation)", "use precision: int8 (PT2E, weights and activations) or bf16")]
        return []

    def build(self, source, spec: AotiTarget, ctx: BuildContext) -> Artifact:
        if source.recipe.generates:
            return self._build_decoder(source, spec, ctx)
        path = ctx.workdir / MODEL
        extra: dict = {}
        choice = None
        if spec.precision == "int8":
            program, record, extra, choice = aoti_precision.int8_package(source, spec, ctx, path)
            aoti = {"precision": "int8", "freezing": spec.freezing != "off", "attention": extra.pop("attention"), "gemm": extra.pop("gemm")}
        elif spec.precision in ("bf16", "fp16"):
            dtype = {"bf16": "bfloat16", "fp16": "float16"}[spec.precision]
            module = aoti_precision.autocast(source.module, len(source.input_names), spec.device, dtype)
            program, record, aoti = aoti_precision.reduced_package(source, spec, ctx, path, module)
            aoti = {"precision": spec.precision, "autocast": dtype, "io": "float32"} | aoti
        elif spec.freezing == "auto" and spec.device == "cpu":
            program, record, aoti = aoti_precision.fp32_freezing_choice(source, spec, ctx, path)
        else:
            program, record = compile_package(source, spec.device, path, precision=spec.precision, configs={"freezing": spec.freezing == "on"})
            aoti = {"precision": "fp32", "freezing": spec.freezing == "on"}
        source.module.to("cpu")
        kernels = package_kernels.summarize(path)
        if kernels is not None:
            aoti["kernels"] = kernels.to_dict()
            if choice is not None:
                extra["warnings"] += aoti_precision.int8_kernel_warnings(choice, kernels, source.module)
        extra["aoti"] = aoti | {"compiled_for": isa.portable_class(source.recipe, spec.precision) if spec.device == "cpu" else None}
        return Artifact(
            files=[path],
            signature=self._signature(program, source),
            runner=RunnerSpec(runner=RUNNER, path=str(path), inputs=source.input_names, outputs=source.output_names, device=spec.device),
            device=spec.device,
            extra={"export": record.to_dict(), **extra},
        )

    @staticmethod
    def _signature(program, source) -> Signature:
        """The exported program's user inputs and outputs, named as the recipe names them."""
        placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in program.graph_signature.user_inputs]
        out_node = next(n for n in program.graph.nodes if n.op == "output")
        user_out = out_node.args[0][-len(source.output_names) :] if source.output_names else []
        return Signature(
            [_sig(n.meta["val"], name) for n, name in zip(placeholders, source.input_names)],
            [_sig(n.meta["val"], name) for n, name in zip(user_out, source.output_names)],
        )

    def _build_decoder(self, source, spec: AotiTarget, ctx: BuildContext) -> Artifact:
        """A prefill and a decode package, each through the shared compile ladder over its phase's dims."""
        frozen = spec.freezing != "off"
        extra: dict = {}
        if spec.precision == "int8-weight":  # before export: both programs hold the int8 layers
            extra["quantization"] = weight_only.quantize_linears(source.module.inner, weight_only.output_projection(source.module.inner))
            weight_only.contiguous_activations()
        # int8-weight: the module is no longer the FP32 model, so the compile ladder does not hold the package to FP32
        # values (Inductor rounds around the bfloat16 activations its own way); the generation gate judges it. Each
        # phase exports its own module (an encoder-decoder's prefill takes other inputs), all around the one quantized model.
        # bf16: each phase's module under autocast, as a bf16 package of a model that answers in one call (FP32 in and
        # out, the cache too; matmuls in bfloat16, which freezing stores as bfloat16 constants).
        recurrent = source.recipe.decoder.recurrent  # a state-space decoder: one program, its step
        phases = ("decode",) if recurrent else PHASES
        views = {p: source.for_phase(p) for p in phases}

        def module_of(view):
            if spec.precision == "bf16":
                return aoti_precision.autocast(view.module, len(view.input_names), spec.device, "bfloat16")
            return view.module if spec.precision == "int8-weight" else None

        built = {
            p: compile_package(v, spec.device, ctx.workdir / f"{p}.pt2", module=module_of(v), precision=spec.precision, configs={"freezing": frozen})
            for p, v in views.items()
        }
        source.module.to("cpu")
        program = built["decode" if source.recipe.seq2seq or recurrent else "prefill"][0]  # the recipe's inputs: an encoder-decoder's decode program
        export = ExportRecord.of_phases({p: rec for p, (_, rec) in built.items()}).to_dict()
        aoti = {
            "precision": spec.precision,
            "freezing": frozen,
            "packages": {p: f"{p}.pt2" for p in phases},
            **({"autocast": "bfloat16", "io": "float32"} if spec.precision == "bf16" else {}),
            "compiled_for": isa.portable_class(source.recipe, spec.precision) if spec.device == "cpu" else None,
        }
        runner = RunnerSpec(runner=DECODER_RUNNER, path=str(ctx.workdir), inputs=source.input_names, outputs=source.output_names, device=spec.device)
        if recurrent:
            runner = RunnerSpec(runner=RUNNER, path=str(ctx.workdir / "decode.pt2"), inputs=source.input_names, outputs=source.output_names, device=spec.device)
        if source.recipe.seq2seq:  # two programs with their own inputs: the decode package, and the prefill beside it
            prefill = source.for_phase("prefill")
            runner = RunnerSpec(runner=RUNNER, path=str(ctx.workdir / "decode.pt2"), inputs=source.input_names, outputs=source.output_names,
                                device=spec.device, options={PREFILL: {"runner": RUNNER, "path": "prefill.pt2", "inputs": prefill.input_names,
                                                                       "outputs": prefill.output_names}})  # fmt: skip
        files = [ctx.workdir / f"{p}.pt2" for p in phases]
        return Artifact(files, self._signature(program, source), runner, device=spec.device, extra={"export": export, "aoti": aoti, **extra})

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
