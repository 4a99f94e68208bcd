"""aoti: torch.export with Dim(min, max), then AOTInductor's aoti_compile_and_package
into a .pt2 package; run by torch._inductor.aoti_load_package, served by
Triton's pytorch backend (platform torch_aoti) or a Python-backend model.py.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import time
import traceback
from pathlib import Path
from typing import Annotated, Literal
from unittest import mock

import numpy as np
from pydantic import model_validator
from pydantic_core import PydanticCustomError

from toolchain.errors import StepError, one_line
from toolchain.judge import judge, margin, summary
from toolchain.kinds.base import EXPORT_SCHEMA, Artifact, BuildContext, Kind, RunnerSpec, TritonModel
from toolchain.machine import cuda_missing
from toolchain.onnxtools.quantize import QUANTIZATION_SCHEMA
from toolchain.options import TargetOptions, YamlOff
from toolchain.parity import calibration_samples, example_feed
from toolchain.runners.aoti import AotiRunner
from toolchain.tensors import Signature, TensorSig
from toolchain.timing import interleaved
from toolchain.torchtools import export_errors, inductor_patches, package_kernels, pt2e, rewrites

MODEL = "model.pt2"
RUNNER = "aoti"
MIN_TRITON = "26.03"  # the first Triton release whose pytorch backend serves .pt2 packages


class AotiTarget(TargetOptions):
    kind: Literal["aoti"]
    device: Literal["cpu", "cuda"] = "cpu"
    # fp32 | bf16 (exported under autocast: FP32 inputs and outputs, matmuls in bfloat16)
    # | int8 (PT2E static quantization, x86 CPUs) | fp16 (autocast, CUDA only)
    precision: Literal["fp32", "bf16", "int8", "fp16"] = "fp32"
    # Inductor freezing (weights folded and prepacked for oneDNN): auto = on for int8; on for
    # bf16/fp16 unless the frozen package misses the budget and the unfrozen one does better;
    # for fp32 on a CPU, both are built and the faster one that passes parity is kept.
    freezing: Annotated[Literal["auto", "on", "off"], YamlOff] = "auto"
    fallback: Annotated[Literal["off", "auto"], YamlOff] = "off"  # int8: keep the modules that break the budget in float

    @model_validator(mode="after")
    def _precision_device(self) -> AotiTarget:
        if self.precision == "fp16" and self.device != "cuda":
            raise PydanticCustomError("fp16_cuda", "precision: fp16 needs device: cuda (a CPU runs FP16 kernels no faster than FP32); use bf16 on CPUs", {})
        if self.precision == "int8" and self.device != "cpu":
            raise PydanticCustomError("int8_cpu", "precision: int8 builds for x86 CPUs (oneDNN); use device: cpu, or a tensorrt int8 target for GPUs", {})
        if self.fallback == "auto" and self.precision != "int8":
            raise PydanticCustomError("fallback_int8", "fallback: auto applies to precision: int8 only", {})
        return self

    @property
    def precision_mode(self) -> str | None:
        return None if self.precision == "fp32" else self.precision

    @property
    def calibrates(self) -> bool:
        return self.precision == "int8"


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


# Export variants, in order. "size-oblivious" keeps a dim dynamic through size-0/1
# checks (a CNN whose smallest input makes a 1x1 feature map); an RNN loses batch 1
# under it, so the plain variant follows. Both defer shape checks to run-time asserts
# (as torch.onnx does) and decompose LSTM/GRU into loops that keep the sequence dynamic.
EXPORTS = (("non-strict, size-oblivious", True), ("non-strict", False))
# Inductor passes that rewrite loop bodies Inductor then cannot re-check (FakeTensorUpdater):
# off for a second compile of a graph with control flow.
LOOP_SAFE_CONFIGS = {"pattern_matcher": False, "reorder_for_locality": False}


def _export(source, device: str, oblivious: bool, module=None):
    """torch.export of `module` (default: the source's)."""
    import torch

    dynamic = source.dynamic_shapes()
    module = source.module if module is None else module
    with contextlib.ExitStack() as stack:
        if any(d for d in dynamic):
            try:
                from torch.export._patches import register_gru_while_loop_decomposition, register_lstm_while_loop_decomposition

                stack.enter_context(register_lstm_while_loop_decomposition())
                stack.enter_context(register_gru_while_loop_decomposition())
            except ImportError:  # an older torch: recurrent layers keep their sequence length
                pass
        stack.enter_context(torch.fx.experimental._config.patch(backed_size_oblivious=oblivious))
        stack.enter_context(rewrites.exporting(module))
        return torch.export.export(module.to(device), source.example_args(device), dynamic_shapes=dynamic, strict=False,
                                   prefer_deferred_runtime_asserts_over_guards=True)  # fmt: skip


def _export_any_size(source, device: str, oblivious: bool, module=None):
    """(program, note): `_export`; when export fixed a dim to the example's size, again on the
    model's own export path (as traced), then with other example sizes; raises the first error
    when none works."""
    try:
        return _export(source, device, oblivious, module), None
    except Exception as e:
        if not export_errors.specialized(str(e)):
            raise
        traceback.print_exc()  # into the target's log
        try:
            with _as_traced():
                return _export(source, device, oblivious, module), "as traced (torch.jit.is_tracing() true)"
        except Exception as traced:
            if not export_errors.specialized(str(traced)):
                raise e from None
            traceback.print_exc()
        try:
            with source.other_example_sizes():
                return _export(source, device, oblivious, module), f"exported at other example sizes {_other_sizes(source)}"
        except Exception:
            traceback.print_exc()
            raise e from None


@contextlib.contextmanager
def _as_traced():
    """torch.jit.is_tracing() answers True: models written for export take the path their authors
    meant for it (transformers' DINOv2 skips interpolating its position embeddings at its native
    size unless tracing, and torch.export keeps only the branch it saw, asserting the size at run
    time; as traced it always interpolates, which at the native size is the identity). torch
    itself only skips checks and warnings on it. The package is still probed and gated."""
    import torch

    with mock.patch.object(torch.jit, "is_tracing", lambda: True):
        yield


def _other_sizes(source) -> dict:
    with source.other_example_sizes():
        return {n: v for n, v in source.export_sizes().items() if source.recipe.dims[n].min < source.recipe.dims[n].max}


def _corners(source, device: str, odd: bool = False, opt: bool = False):
    """Feeds at every dim's min and max: a package that specialised a dim or kept a
    wrong run-time assert fails here, inside the build, instead of in a server.

    odd: also at min+1 and max-1, sizes of the other parity: a shape branch Inductor took
    from the example input (which AOTInductor cannot guard at run time) shows there.
    opt: also at opt, the example size, where a model's own fast path for one size lives (a
    program exported at other example sizes may assert it away).
    """
    import torch

    recipe = source.recipe
    rng = np.random.default_rng(recipe.parity.seed + 2)
    levels = {"min": lambda d: d.min, "max": lambda d: d.max}
    if opt:
        levels["opt"] = lambda d: d.opt
    if odd:
        levels |= {"min+1": lambda d: min(d.min + 1, d.max), "max-1": lambda d: max(d.max - 1, d.min)}
    for level, size in levels.items():
        sizes = {n: size(d) for n, d in recipe.dims.items()}
        feed = example_feed(recipe, sizes, rng)
        yield level, [torch.from_numpy(feed[n]).to(device).contiguous() for n in source.input_names]


def _probe(path: Path, source, device: str, program=None) -> tuple[str, str] | None:
    """(stage, why) when the compiled package fails at the dims' extremes, or None; stage is
    "run" (it raised) or "values" (it computes other values than the exported program).

    program: the exported program it was compiled from, to compare values with (FP32 only):
    Inductor decides some shapes from the example input's sizes (MaxPool2d ceil_mode after a
    strided conv: SqueezeNet's feature maps one row short at half the heights, cosine 0.997),
    and a package cannot check that at run time.
    """
    import torch
    import torch._inductor

    runner = torch._inductor.aoti_load_package(str(path))
    eager = program.module() if program is not None else None
    for level, args in _corners(source, device, odd=program is not None):
        try:
            with torch.no_grad():
                got = runner(*args)
                want = eager(*args) if eager is not None else None
        except Exception as e:
            return "run", f"at every dim's {level}: {one_line(e)}"
        if want is not None:
            problem = _differs(got, want)
            if problem:
                return "values", f"at every dim's {level} the package computes other values than the model ({problem})"
    return None


def _differs(got, want) -> str | None:
    """How two outputs of an FP32 model differ beyond rounding, or None."""
    import torch

    got = [got] if isinstance(got, torch.Tensor) else list(torch.utils._pytree.tree_leaves(got))
    want = [want] if isinstance(want, torch.Tensor) else list(torch.utils._pytree.tree_leaves(want))
    for i, (g, w) in enumerate(zip(got, want)):
        if not isinstance(w, torch.Tensor) or not w.is_floating_point():
            continue
        if g.shape != w.shape:
            return f"output {i}: shape {tuple(g.shape)}, expected {tuple(w.shape)}"
        g, w = g.double().flatten(), w.double().flatten()
        if w.numel() and torch.linalg.vector_norm(g - w) > 1e-3 * torch.linalg.vector_norm(w) + 1e-6:
            cos = torch.nn.functional.cosine_similarity(g, w, dim=0).item()
            return f"output {i}: cosine {cos:.6f}"
    return None


def _constraint_hint(errors: list[str], tried: list[dict] = (), source=None) -> str | None:
    """torch.export's suggested fixes, as recipe changes, when it specialised a dim; or which
    dims to make static when the model's shape logic ties them in ways export or Inductor
    cannot keep dynamic (MaxPool2d ceil_mode after strided convs: GoogLeNet, SqueezeNet)."""
    dims = list(source.recipe.dims) if source is not None else []
    tied = [d for d in dims if any(re.search(rf"\b{re.escape(d)}\b", t) for t in errors if "Expected op to be" in t)]
    wrong = any(t.get("stage") == "values" for t in tried)
    if tied or wrong:
        which = ", ".join(f"dims.{d}" for d in (tied or [d for d, v in source.recipe.dims.items() if v.min != v.max]))
        why = (
            "torch.export cannot express the constraints the model's shape logic puts on them"
            if tied
            else "Inductor fixed a shape branch from the example sizes"
        )
        also = " (dims shaped by the same layers, the other spatial dim say, may need it too)" if tied else ""
        return f"{why}: make {which} static for this target (min == max){also}, or build the onnx target, which keeps them dynamic"
    if any(t.get("stage") == "run" and "Runtime assertion failed" in t.get("error", "") for t in tried):
        return (
            "the exported program holds for part of the recipe's dims only: the model takes another code path at some sizes "
            "(a fast path at its configured size, say), which export turned into a run-time check; narrow or fix those dims "
            "for this target, or build the onnx target"
        )
    dynamic = [d for d, v in source.recipe.dims.items() if v.min != v.max] if source is not None else []
    if tried and dynamic and all(t.get("stage") == "compile" for t in tried):
        return (f"Inductor could not compile the model over dynamic {', '.join(f'dims.{d}' for d in dynamic)}; the same model often compiles "
                "with the spatial or sequence dims static for this target (min == max; SegFormer's did), or build the onnx target")  # fmt: skip
    sites = [export_errors.data_dependent_site(text) for text in errors]
    if errors and all(sites):
        return export_errors.data_dependent_hint(sites[0], dynamic)
    for text in errors:
        dims = export_errors.specialized_dims(text)
        if dims:
            fixes = re.findall(r"^\s*(\w+) = (\d+)\s*$", text, flags=re.M)
            pinned = ", ".join(f"dims.{d}: {{min: {v}, max: {v}}}" for d, v in fixes) or ", ".join(f"dims.{d} static" for d in dims)
            return (f"torch.export cannot keep {', '.join(dims)} dynamic for this model; make {'it' if len(dims) == 1 else 'them'} static for "
                    f"this target ({pinned}), or build the onnx target, which keeps {'it' if len(dims) == 1 else 'them'} dynamic")  # fmt: skip
    return None


def compile_package(source, device: str, path: Path, module=None, configs: dict | None = None) -> tuple[object, dict]:
    """Export and compile, trying EXPORTS in order; (exported program, the manifest's `export` record).

    module: what to export (default: the source's); configs: Inductor options every compile uses (freezing).
    """
    import torch
    import torch._inductor

    base = dict(configs or {})
    tried: list[dict] = []
    raw: list[str] = []
    for label, oblivious in EXPORTS:
        try:
            program, note = _export_any_size(source, device, oblivious, module)
            if note:
                label = f"{label}, {note}"
        except Exception as e:
            tried.append({"strategy": label, "stage": "export", "error": one_line(e)[:500]})
            raw.append(str(e))
            traceback.print_exc()  # into the target's log
            continue
        program = _without_broken_fallbacks(program)
        _contiguous_one_channel_convs(program)
        problem = _fails_eagerly(program, source, device)
        if problem:  # a size-oblivious RNN asserts seq != 1: no compile would run at the min
            tried.append({"strategy": label, "stage": "run", "error": f"the exported program {problem}"[:500]})
            continue
        for extra in ({}, LOOP_SAFE_CONFIGS):
            configs = base | extra
            try:
                # Inductor freezes only with grad off (compile_fx checks torch.is_grad_enabled()):
                # without no_grad `freezing: True` is silently ignored, and with it the oneDNN weight
                # prepacking and the INT8 q/dq -> qlinear/qconv lowerings (PT2E) never run.
                # Size-oblivious as exported: otherwise Inductor's guard_or_false/true decide shape
                # branches from the example input, guards a package never checks.
                with torch.no_grad(), torch.fx.experimental._config.patch(backed_size_oblivious=oblivious), inductor_patches.compiling():
                    torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs=configs or None)
            except Exception as e:
                tried.append({"strategy": label, "stage": "compile", "inductor_configs": configs, "error": one_line(e)[:500]})
                traceback.print_exc()  # into the target's log
                if "FakeTensorUpdater" in str(e) and not extra:
                    continue  # a loop body the pattern passes broke: compile again without them
                break
            problem = _probe(path, source, device, program if module is None else None)
            if problem is None:
                changed = rewrites.found(source.module)
                return program, {"strategy": label, "inductor_configs": configs, "tried": tried} | ({"rewrites": changed} if changed else {})
            stage, why = problem
            tried.append({"strategy": label, "stage": stage, "inductor_configs": configs, "error": why[:500]})
            break
    summary = "; ".join(f"{t['strategy']} ({t['stage']}): {t['error']}" for t in tried)
    error = StepError(f"AOTInductor could not build a package that runs over the recipe's dims: {summary}", hint=_constraint_hint(raw, tried, source))
    error.tried = tried  # what each attempt did, for callers that retry (the INT8 Conv1d fallback)
    raise error


AOTI_SCHEMA: dict = {
    "type": "object",
    "required": ["precision", "freezing"],
    "properties": {
        "precision": {"enum": ["fp32", "bf16", "int8", "fp16"]},
        "freezing": {"type": "boolean"},
        "autocast": {"type": "string"},
        "io": {"type": "string"},
        "freezing_choice": {"type": "array", "items": {"type": "object"}},
        "kernels": {
            "type": "object",
            "description": "GEMM/conv kernel call sites in the package's generated wrapper, by class (toolchain/torchtools/package_kernels.py)",
            "required": ["int8", "onednn_float", "aten_float", "weight_dequant_per_call"],
            "additionalProperties": {"type": "integer", "minimum": 0},
        },
    },
}


def _autocast(module, inputs: int, device: str, dtype: str):
    """The module run under torch.autocast to `dtype`, its floating outputs cast back to float32:
    matmuls and convolutions in bfloat16/float16, reductions and normalisations kept in float32
    by autocast's own lists, and clients keep sending and receiving FP32.

    The autocast region is inside forward, so torch.export records it in the graph (exporting
    inside an autocast context instead leaves casts the compile step no longer sees). forward
    takes one named parameter per input (x0, x1, ...), as the source's does: exporters match
    dynamic shapes to parameters by position, not through *args.
    """
    import torch

    params = ", ".join(f"x{i}" for i in range(inputs))
    body = (
        f"def forward(self, {params}):\n"
        f"    with torch.autocast(device_type={device!r}, dtype=torch.{dtype}):\n"
        f"        out = self.inner({params})\n"
        "    return tuple(o.float() if o.is_floating_point() else o for o in out)\n"
    )
    scope: dict = {"torch": torch}
    exec(body, scope)
    wrapped = type("Autocast", (torch.nn.Module,), {"forward": scope["forward"]})()
    wrapped.inner = module
    wrapped.training = False
    return wrapped


def _judge_package(path: Path, source, spec, ctx: BuildContext):
    samples, reference = ctx.parity_data()
    tol = source.recipe.tolerance(spec)
    return judge(AotiRunner(path, source.input_names, source.output_names, spec.device), samples, reference, tol, source.recipe.parity.scores)


def _fp32_freezing_choice(source, spec, ctx: BuildContext, path: Path):
    """Compile with and without freezing; keep the faster of those that pass parity (timed interleaved, one thread)."""
    import torch

    built = {}
    choice = []
    for freezing in (True, False):
        variant = path.with_name(f"freezing-{str(freezing).lower()}.pt2")
        try:
            built[freezing] = (variant, *compile_package(source, spec.device, variant, configs={"freezing": freezing}))
        except StepError as e:
            if freezing and not built:  # freezing's own passes failed: the unfrozen package may still build
                choice.append({"freezing": True, "passed": False, "error": str(e)[:500]})
                continue
            raise
    runners = {}
    for freezing, (variant, _, _) in built.items():
        report, _ = _judge_package(variant, source, spec, ctx)
        runner = AotiRunner(variant, source.input_names, source.output_names, spec.device).__enter__()
        runners[freezing] = runner
        choice.append({"freezing": freezing, **summary(report), "kernels": package_kernels.summarize(variant)})
    feed = source.example_feed()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = interleaved({f: (lambda r=r: r.infer(feed)) for f, r in runners.items()}, rounds=5, seconds=0.1, warmup=2)
    finally:
        torch.set_num_threads(threads)
    for row in choice:
        if row["freezing"] in times:
            row["median_ms"] = round(times[row["freezing"]]["median_ms"], 4)
    timed = [r for r in choice if "median_ms" in r]
    passing = [r for r in timed if r["passed"]] or timed
    best = min(passing, key=lambda r: r["median_ms"])["freezing"]
    variant, program, record = built[best]
    shutil.move(variant, path)
    for other, (leftover, _, _) in built.items():
        if other != best:
            leftover.unlink(missing_ok=True)
    return program, record, {"precision": "fp32", "freezing": best, "freezing_choice": choice, "timed_threads": 1}


def _reduced_package(source, spec, ctx: BuildContext, path: Path, module):
    """BF16/FP16 under autocast, frozen unless `freezing: off`. With `auto`, a frozen package that
    misses the budget is compiled again unfrozen and the better of the two kept: freezing folds
    batch norms into weights already rounded to bfloat16 (EfficientNet-Lite0, real weights:
    cosine 0.99821 frozen against 0.9994 unfrozen)."""
    frozen = spec.freezing != "off"
    program, record = compile_package(source, spec.device, path, module=module, configs={"freezing": frozen})
    if not (frozen and spec.freezing == "auto"):
        return program, record, {"freezing": frozen}
    first, _ = _judge_package(path, source, spec, ctx)
    if first.passed:
        return program, record, {"freezing": True}
    unfrozen = path.with_name("unfrozen.pt2")
    program2, record2 = compile_package(source, spec.device, unfrozen, module=module, configs={"freezing": False})
    second, _ = _judge_package(unfrozen, source, spec, ctx)
    choice = [{"freezing": True, **summary(first)}, {"freezing": False, **summary(second)}]
    if (second.passed, margin(second)) > (first.passed, margin(first)):
        unfrozen.replace(path)
        return program2, record2, {"freezing": False, "freezing_choice": choice}
    unfrozen.unlink(missing_ok=True)
    return program, record, {"freezing": True, "freezing_choice": choice}


def _without_broken_fallbacks(program):
    """The program with the aten ops whose AOTInductor fallback call is miscompiled decomposed
    (torch 2.13): a bfloat16 index_add (a GNN's scatter-add under autocast) falls back to an
    extern call whose serialized arguments drop `alpha`, and the package fails every call with
    "Mismatch between ints consumed and num_ints"; as index_put(accumulate=True) it compiles.
    Only programs that have such an op are touched (a decomposition also decomposes every
    CompositeImplicitAutograd op, linear included)."""
    import torch
    from torch._decomp import decomposition_table

    graphs = [m.graph for m in program.graph_module.modules() if isinstance(m, torch.fx.GraphModule)]  # autocast regions are subgraphs
    present = {n.target for g in graphs for n in g.nodes if n.op == "call_function"}
    table = {op: decomposition_table[op] for op in (torch.ops.aten.index_add.default,) if op in present and op in decomposition_table}
    return program.run_decompositions(table) if table else program


def _contiguous_one_channel_convs(program) -> int:
    """Give every convolution whose input has ONE channel and may not be contiguous a contiguous
    copy of it, in place; returns how many. Under dynamic sizes Inductor picks a one-channel conv's
    output layout from its input's: contiguous in, contiguous out, else channels-last. A
    transposed one-channel input (AST's [batch, frames, mels] -> unsqueeze(1).transpose(2, 3)) is
    laid out channels-last for the conv, which oneDNN, ignoring the size-1 channel's stride, reads
    as contiguous and answers in contiguous order: the ops after it read the output in the wrong
    order, and the package is silently wrong at every batch (torch 2.13, with freezing; AST FP32
    cosine 0.04). A copy of one channel costs next to nothing."""
    import torch
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    aten = torch.ops.aten
    convs = {aten.conv1d.default, aten.conv2d.default, aten.conv3d.default, aten.convolution.default, aten.conv1d.padding, aten.conv2d.padding,
             aten.conv3d.padding}  # fmt: skip
    changed = 0
    for gm in [m for m in program.graph_module.modules() if isinstance(m, torch.fx.GraphModule)]:
        for node in [n for n in gm.graph.nodes if n.op == "call_function" and n.target in convs]:
            x = node.args[0]
            val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
            if not isinstance(val, torch.Tensor) or val.dim() < 3 or not statically_known_true(val.shape[1] == 1):
                continue
            if statically_known_true(val.is_contiguous()):
                continue
            with gm.graph.inserting_before(node):
                copy = gm.graph.call_function(aten.clone.default, (x,), {"memory_format": torch.contiguous_format})
            copy.meta["val"] = val.clone(memory_format=torch.contiguous_format)
            node.replace_input_with(x, copy)
            changed += 1
        if changed:
            gm.recompile()
    return changed


def _fails_eagerly(program, source, device: str) -> str | None:
    """Why the exported program itself fails at a dim's min or max, or None: size-oblivious
    export of an RNN asserts its sequence is not 1. Seconds, where compiling first costs minutes."""
    import torch

    module = program.module()
    for level, args in _corners(source, device, opt=True):
        try:
            with torch.no_grad():
                module(*args)
        except Exception as e:
            traceback.print_exc()  # into the target's log
            return f"fails at every dim's {level}: {one_line(e)}"
    return None


def _runnable_export(source, module=None):
    """The first export variant (EXPORTS order) of `module` (default: the source's) whose program
    runs at every dim's min and max: calibration or parity samples at the dims' minimum would
    trip a size-oblivious RNN's assert."""
    errors = []
    for label, oblivious in EXPORTS:
        try:
            program, _ = _export_any_size(source, "cpu", oblivious, module)
        except Exception as e:
            traceback.print_exc()
            errors.append(f"{label}: {one_line(e)}")
            continue
        problem = _fails_eagerly(program, source, "cpu")
        if problem is None:
            return program
        errors.append(f"{label}: {problem}")
    raise StepError(f"no export of the model runs over the recipe's dims for INT8 quantization: {'; '.join(errors)}")


def _int8_module(source, spec, ctx: BuildContext, tol=None, deadline: float | None = None, hazards: dict | None = None):
    """The PT2E-quantized module to compile, the `quantization` record, and the modules kept in float.

    `tol`: the floors the search holds the eager q/dq model to (default: the target's);
    `hazards`: {module: why} kept in float besides pt2e.lowering_hazards.
    """
    import torch

    calib = calibration_samples(source.recipe)
    as_args = lambda feed: tuple(torch.from_numpy(feed[n]).contiguous() for n in source.input_names)  # noqa: E731
    samples, reference = ctx.parity_data()
    module, baked = pt2e.bake_parametrizations(source.module)
    program = _runnable_export(source, module)
    deadline = deadline or time.monotonic() + spec.timeout * 0.5
    module, record = pt2e.search(program, [as_args(f) for f in calib.feeds], [as_args(f) for f in samples], reference, tol or source.recipe.tolerance(spec),
                                 source.recipe.parity.scores, source.output_names, pt2e.quantized_modules(source), spec.fallback, deadline,
                                 hazards=pt2e.lowering_hazards(source.module, program) | (hazards or {}))  # fmt: skip
    report = record.pop("report")
    in_float = record.pop("modules_in_float")
    record.pop("passed")
    record["calibration"] = {"method": "histogram", **calib.to_dict()}
    if baked:
        record["parametrizations_baked"] = baked
    warnings = [calib.warning] if calib.warning else []
    if not report.passed:
        worst = ", ".join(f"{r['module']} ({r['sqnr_db']:.1f} dB)" for r in (record.get("node_report") or [])[:3])
        how = (
            "set fallback: auto to keep the worst modules in float"
            if spec.fallback == "off"
            else f"fallback: auto stopped after {len(record['attempts'])} attempts"
        )
        warnings.append(f"int8 misses its budget; modules losing the most: {worst}; {how}")
    return module, record, in_float, warnings


def _judge_compiled(source, path: Path, ctx: BuildContext, tol):
    """The compiled package's parity report on the parity samples (what the gate will see)."""
    samples, reference = ctx.parity_data()
    return judge(AotiRunner(path, source.input_names, source.output_names), samples, reference, tol, source.recipe.parity.scores)[0]


def _int8_package(source, spec, ctx: BuildContext, path: Path, extra: dict):
    """Search (judging the eager q/dq model), compile the choice, and judge the compiled package.

    The compiled q/dq (oneDNN INT8 kernels, fused requantization) rounds differently from the
    eager reference: on an ill-conditioned model a choice that passes eagerly can land below
    the budget compiled (random-weight ResNet-50: cosine 0.9916 eager, 0.9760 compiled). With
    `fallback: auto` and time left, the search runs again with its floors raised by the gap
    seen, once, and the result is compiled again.
    """
    tol = source.recipe.tolerance(spec)
    deadline = time.monotonic() + spec.timeout * 0.5
    module, extra["quantization"], extra["excluded_nodes"], extra["warnings"] = _int8_module(source, spec, ctx, tol, deadline)
    configs = {"freezing": spec.freezing != "off"}
    try:
        program, record = compile_package(source, spec.device, path, module=module, configs=configs)
    except StepError as e:
        # Inductor's INT8 fusions fail on a Conv1d whose output reaches an add under a dynamic length
        # ("The size of tensor a (s0 + 2) must match ... (s0)", torch 2.13; a TCN, wav2vec2): keep them in float.
        convs = pt2e.conv1d_modules(source.module)
        if not convs or not any(t["stage"] == "compile" for t in getattr(e, "tried", ())):
            raise
        why = f"Inductor could not compile the model with its Conv1d layers in INT8 (torch 2.13): {str(e)[:200]}"
        print(f"int8: {why}; compiling again with them in float")
        module, extra["quantization"], extra["excluded_nodes"], extra["warnings"] = _int8_module(
            source, spec, ctx, tol, deadline + spec.timeout * 0.2, hazards=dict.fromkeys(convs, why)
        )
        program, record = compile_package(source, spec.device, path, module=module, configs=configs)
    extra["aoti"] = {"precision": "int8", "freezing": spec.freezing != "off"}
    eager = next(a for a in reversed(extra["quantization"]["attempts"]) if a["why"] == extra["quantization"]["chosen"]["why"])
    compiled = summary(_judge_compiled(source, path, ctx, tol))
    checks = [{"eager_cosine": eager["cosine"], "compiled_cosine": compiled["cosine"], "passed": compiled["passed"], "floor": tol.cosine}]
    if eager["passed"] and not compiled["passed"] and spec.fallback == "auto" and tol.cosine is not None and time.monotonic() < deadline:
        raised = min(0.999999, tol.cosine + 1.5 * max(eager["cosine"] - compiled["cosine"], 1e-4))
        print(
            f"int8: the compiled package reached cosine {compiled['cosine']:.6f} where its eager form reached {eager['cosine']:.6f}; searching again with floor {raised:.6f}"
        )
        q, excluded, warnings = extra["quantization"], extra["excluded_nodes"], extra["warnings"]
        module, extra["quantization"], extra["excluded_nodes"], extra["warnings"] = _int8_module(
            source, spec, ctx, tol.model_copy(update={"cosine": raised}), deadline + spec.timeout * 0.2
        )
        retry = path.with_name("retry.pt2")
        program2, record2 = compile_package(source, spec.device, retry, module=module, configs=configs)
        again = summary(_judge_compiled(source, retry, ctx, tol))
        checks.append({"eager_cosine": None, "compiled_cosine": again["cosine"], "passed": again["passed"], "floor": raised})
        if again["passed"] or again["cosine"] > compiled["cosine"]:
            retry.replace(path)
            program, record = program2, record2
            extra["quantization"]["attempts"] = q["attempts"] + extra["quantization"]["attempts"]
        else:  # keep the first package and its record
            retry.unlink(missing_ok=True)
            extra["quantization"], extra["excluded_nodes"], extra["warnings"] = q, excluded, warnings
    extra["quantization"]["compiled_checks"] = checks
    if eager["passed"] and not any(c["passed"] for c in checks):
        best = max(c["compiled_cosine"] for c in checks)
        extra["warnings"].append(
            f"the quantized model passes in eager form (cosine {eager['cosine']:.6f}) but its compiled package reaches "
            f"{best:.6f}: Inductor's INT8 lowering (oneDNN qconv/qlinear) changes this model's results; "
            "serve another target for it (the ONNX INT8 target, or aoti bf16)"
        )
    return program, record


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
    manifest_fields = {
        "export": EXPORT_SCHEMA,
        "aoti": AOTI_SCHEMA,
        "quantization": QUANTIZATION_SCHEMA,
        "excluded_nodes": {"type": "array", "items": {"type": "string"}},
    }

    def skip_reason(self, spec: AotiTarget) -> str | None:
        return cuda_missing() if spec.device == "cuda" else None

    def build(self, source, spec: AotiTarget, ctx: BuildContext) -> Artifact:
        path = ctx.workdir / MODEL
        extra: dict = {}
        if spec.precision == "int8":
            program, record = _int8_package(source, spec, ctx, path, extra)
        elif spec.precision in ("bf16", "fp16"):
            dtype = {"bf16": "bfloat16", "fp16": "float16"}[spec.precision]
            module = _autocast(source.module, len(source.input_names), spec.device, dtype)
            program, record, extra["aoti"] = _reduced_package(source, spec, ctx, path, module)
            extra["aoti"] = {"precision": spec.precision, "autocast": dtype, "io": "float32"} | extra["aoti"]
        elif spec.freezing == "auto" and spec.device == "cpu":
            program, record, extra["aoti"] = _fp32_freezing_choice(source, spec, ctx, path)
        else:
            program, record = compile_package(source, spec.device, path, configs={"freezing": spec.freezing == "on"})
            extra["aoti"] = {"precision": "fp32", "freezing": spec.freezing == "on"}
        source.module.to("cpu")
        kernels = package_kernels.summarize(path)
        if kernels is not None:
            extra["aoti"]["kernels"] = kernels
            if spec.precision == "int8" and not kernels["int8"]:
                extra.setdefault("warnings", []).append(
                    "the compiled package calls no oneDNN INT8 kernel (qlinear/qconv): "
                    + (
                        "Inductor did not lower the PT2E q/dq pairs"
                        if extra["quantization"].get("quantized_layers")
                        else "every layer it could quantize is kept in float (see quantization.kept_float_for_lowering)"
                        if extra["quantization"].get("kept_float_for_lowering")
                        else "the quantizer found no layer it quantizes"
                    )  # fmt: skip
                    + ", so it computes in float (see aoti.kernels)"
                )
            if spec.precision == "int8":
                unsupported = pt2e.unquantizable_modules(source.module)
                if unsupported:
                    extra.setdefault("warnings", []).append(
                        f"PT2E's x86 quantizer quantizes Conv1d/Conv2d and Linear only: {unsupported} stay in float, so the package runs "
                        f"{kernels['int8']} INT8 and {kernels['onednn_float'] + kernels['aten_float']} float GEMM/conv kernels (see aoti.kernels)"
                    )
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
            extra={"export": record, **extra},
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
