"""torch.export and AOTInductor for the aoti kind: the export variants, the capture ladder that
compiles a package (export, eager check, compile, probe at the dims' corners), and the hint a
failure over dynamic dims gets. Heavy imports stay inside the functions.
"""

from __future__ import annotations

import contextlib
import re
import traceback
from functools import partial
from pathlib import Path
from unittest import mock

from toolchain.capture import AttemptFailed, CaptureFailed, Strategy, climb
from toolchain.corners import check_corners
from toolchain.errors import StepError, one_line
from toolchain.records import Attempt, ExportRecord
from toolchain.samples import Feed
from toolchain.tensors import to_numpy
from toolchain.torchtools import export_errors, inductor_patches, isa, rewrites
from toolchain.torchtools.assertions import sizes_hint

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


def _as_args(source, feed: Feed, device: str) -> list:
    import torch

    return [torch.from_numpy(feed[n]).to(device).contiguous() for n in source.input_names]


def _named(out, names: list[str]) -> dict:
    """A module's or package's outputs as numpy arrays by the recipe's output names."""
    import torch

    leaves = [out] if isinstance(out, torch.Tensor) else list(torch.utils._pytree.tree_leaves(out))
    return {n: to_numpy(t) for n, t in zip(names or [f"output_{i}" for i in range(len(leaves))], leaves)}


def _probe(path: Path, source, device: str, program=None) -> tuple[str, str] | None:
    """(stage, why) when the compiled package fails at the dims' extremes, or None; stage is
    "run" (it raised) or "values" (it computes other values than the exported program).

    program: the exported program it was compiled from, to compare values with (FP32 only), also at
    min+1 and max-1: Inductor decides some shapes from the example input's sizes (MaxPool2d
    ceil_mode after a strided conv: SqueezeNet's feature maps one row short at half the heights,
    cosine 0.997), and a package cannot check that at run time.
    """
    import torch
    import torch._inductor

    runner = torch._inductor.aoti_load_package(str(path))
    eager = program.module() if program is not None else None
    names = source.output_names

    def call(fn):
        def run(feed: Feed) -> dict:
            with torch.no_grad():
                return _named(fn(*_as_args(source, feed, device)), names)

        return run

    levels = ("min", "max", "min+1", "max-1") if eager is not None else ("min", "max")
    miss = check_corners(source.recipe, levels, call(runner), call(eager) if eager is not None else None)
    if miss is None:
        return None
    if miss.stage == "run":
        return "run", f"at every dim's {miss.level}: {miss.raised}"
    return "values", f"at every dim's {miss.level} the package computes other values than the model (output {miss.output} {miss.how})"


def _fails_eagerly(program, source, device: str) -> str | None:
    """Why the exported program itself fails at a dim's min, max or opt, or None: size-oblivious
    export of an RNN asserts its sequence is not 1. Seconds, where compiling first costs minutes."""
    import torch

    module = program.module()

    def run(feed: Feed) -> dict:
        with torch.no_grad():
            module(*_as_args(source, feed, device))
        return {}

    miss = check_corners(source.recipe, ("min", "max", "opt"), run)
    if miss is None:
        return None
    traceback.print_exception(miss.error)  # into the target's log
    return f"fails at every dim's {miss.level}: {miss.raised}"


def _exported(source, device: str, label: str, oblivious: bool, module, for_compile: bool = True):
    """(program, the attempt's label): an export variant, checked to run at the dims' corners; for
    compiling, with the rewrites that work around AOTInductor's miscompiles."""
    try:
        program, note = _export_any_size(source, device, oblivious, module)
    except Exception as e:
        raise AttemptFailed("export", one_line(e), strategy=label, detail=str(e)) from e
    label = f"{label}, {note}" if note else label
    if for_compile:
        program = _without_broken_fallbacks(program)
        _contiguous_one_channel_convs(program)
    problem = _fails_eagerly(program, source, device)
    if problem:  # a size-oblivious RNN asserts seq != 1: no compile would run at the min
        raise AttemptFailed("run", f"the exported program {problem}", strategy=label, detail=f"the exported program {problem}{_symbols_text(program, source)}")
    return program, label


def _symbols_text(program, source) -> str:
    """ "\nsymbols: s4=batch s40=seq": which recipe dim each size symbol of the exported program's inputs is, so a failed
    run-time assertion over those symbols can be read as sizes (torchtools/assertions.py)."""
    names = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in program.graph_signature.user_inputs]
    pairs = {}
    for spec, node in zip(source.recipe.inputs, names):
        shape = getattr(node.meta.get("val"), "shape", ())
        for dim, size in zip(spec.shape, shape):
            if isinstance(dim, str) and re.fullmatch(r"s\d+", str(size)):
                pairs[str(size)] = dim
    return ("\nsymbols: " + " ".join(f"{k}={v}" for k, v in pairs.items())) if pairs else ""


def _value_site(program) -> str:
    """Where the exported program reads a value into a size (`.item()`), as the frame torch.export's own data-dependent
    errors print, so export_errors.data_dependent_site names the model's line; "" when no node says."""
    import torch

    reads = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default)
    for node in program.graph.nodes:
        frames = re.findall(r'File "[^"]+", line \d+, in \w+', node.meta.get("stack_trace") or "") if node.target in reads else []
        if frames:
            return f"\n\nThe following call raised this error:\n  {frames[-1]}\n"
    return ""


def _compile_strategies(source, device: str, path: Path, module, configs: dict, exported: dict, precision: str | None = None):
    """Per export variant: export and compile, then (after a failure in Inductor's loop-body passes) compile again without them."""
    import torch
    import torch._inductor

    for label, oblivious in EXPORTS:

        def attempt(label=label, oblivious=oblivious, extra: dict | None = None):
            if extra is None:
                exported[label] = _exported(source, device, label, oblivious, module)
            program, shown = exported[label]
            run_configs = configs | (extra or {})
            try:
                # Inductor freezes only with grad off (compile_fx checks torch.is_grad_enabled()):
                # without no_grad `freezing: True` is silently ignored, and with it the oneDNN weight
                # prepacking and the INT8 q/dq -> qlinear/qconv lowerings (PT2E) never run.
                # Size-oblivious as exported: otherwise Inductor's guard_or_false/true decide shape
                # branches from the example input, guards a package never checks.
                with (
                    torch.no_grad(),
                    torch.fx.experimental._config.patch(backed_size_oblivious=oblivious),
                    inductor_patches.compiling(),
                    isa.compile_for(isa.portable_class(source.recipe, precision)),
                ):
                    torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs=run_configs or None)
            except Exception as e:
                detail = str(e) + (_value_site(program) if "GuardOnDataDependentSymNode" in str(e) else "")
                raise AttemptFailed("compile", one_line(e), strategy=shown, configs=run_configs, detail=detail) from e
            problem = _probe(path, source, device, program if module is None else None)
            if problem is not None:
                raise AttemptFailed(problem[0], problem[1], strategy=shown, configs=run_configs)
            return program, shown, run_configs

        def loop_body_broke(tried: list[Attempt], label=label) -> bool:
            """The variant's compile failed in a loop body Inductor's pattern passes rewrote: compile again without them."""
            last = tried[-1]
            return (
                last.stage == "compile"
                and label in exported
                and last.strategy == exported[label][1]
                and last.inductor_configs == configs
                and ("FakeTensorUpdater" in (last.detail or ""))
            )

        yield Strategy(label, attempt)
        yield Strategy(label, partial(attempt, extra=LOOP_SAFE_CONFIGS), loop_body_broke)


def _run_failures(tried: list[Attempt]) -> tuple[list[str], dict[str, str]]:
    """The run-stage failures' texts, and the size symbols their exported programs named (_symbols_text)."""
    texts = [t.detail or t.error or "" for t in tried if t.stage == "run"]
    symbols = dict(p.split("=", 1) for t in texts for line in re.findall(r"^symbols: (.*)$", t, re.M) for p in line.split())
    return texts, symbols


def _kept_sizes(tried: list[Attempt], source) -> tuple[dict, str] | None:
    """(dims, hint) when the attempts failed on run-time assertions that hold over a narrower range of sizes."""
    texts, symbols = _run_failures(tried)
    kept = export_errors.corner_assertion_sizes(texts, source.recipe, symbols)
    if not kept:
        return None
    return kept, export_errors.kept_hint(kept)


class CompileFailed(StepError):
    """No package runs over the recipe's dims; `tried` says how each attempt failed."""

    def __init__(self, tried: list[Attempt], source):
        summary = "; ".join(f"{t.strategy} ({t.stage}): {t.error}" for t in tried)
        errors = [t.detail or t.error or "" for t in tried if t.stage == "export"]
        dims, hint = (export_errors.dynamic_fix(errors, source.recipe.dims), constraint_hint(tried, source)) if source is not None else ({}, None)
        kept = _kept_sizes(tried, source) if source is not None and not dims else None
        if kept:  # a branch on a size kept as a run-time check: the sizes at which it holds
            dims, hint = kept
        elif source is not None and not dims:
            texts, symbols = _run_failures(tried)
            said = next(
                ((t, h) for t, h in ((t, sizes_hint(t, source.recipe.dims, export_errors.level_sizes(t, source.recipe), symbols)) for t in texts) if h), None
            )
            site = export_errors.assertion_site(source, said[0]) if said and hasattr(source, "dynamic_shapes") else None
            hint = (f"the check comes from {site}; " if site else "") + said[1] if said else hint
            if tried and all(t.stage == "export" and export_errors.specialized(t.detail or t.error or "") for t in tried):
                dims = export_errors.static_fix(errors, source)  # applied only where no target keeps the range (build.py)
        super().__init__(f"AOTInductor could not build a package that runs over the recipe's dims: {summary}", hint=hint, dims=dims)
        self.tried = tried


def compile_package(source, device: str, path: Path, module=None, configs: dict | None = None, precision: str | None = None) -> tuple[object, ExportRecord]:
    """Export and compile, trying EXPORTS in order; (exported program, the manifest's `export` record).

    module: what to export (default: the source's); configs: Inductor options every compile uses (freezing).
    Raises CompileFailed with the attempts.
    """
    try:
        captured = climb(_compile_strategies(source, device, path, module, dict(configs or {}), {}, precision), "AOTInductor")
    except CaptureFailed as e:
        raise CompileFailed(e.tried, source) from None
    program, label, run_configs = captured.value
    return program, ExportRecord(label, captured.tried, run_configs, rewrites.found(source.module))


def runnable_export(source, module=None):
    """The first export variant (EXPORTS order) of `module` (default: the source's) whose program
    runs at every dim's min and max: calibration or parity samples at the dims' minimum would
    trip a size-oblivious RNN's assert."""
    strategies = [Strategy(label, partial(_exported, source, "cpu", label, oblivious, module, False), stage="export") for label, oblivious in EXPORTS]
    try:
        return climb(strategies, "AOTInductor").value[0]
    except CaptureFailed as e:
        errors = "; ".join(f"{t.strategy}: {t.error}" for t in e.tried)
        dims, hint = _kept_sizes(e.tried, source) or ({}, constraint_hint(e.tried, source))
        raise StepError(f"no export of the model runs over the recipe's dims for INT8 quantization: {errors}", hint=hint, dims=dims) from None


def constraint_hint(tried: list[Attempt], source=None) -> str | None:
    """torch.export's suggested fixes, as recipe changes, when it specialised a dim; or which
    dims to make static when the model's shape logic ties them in ways export or Inductor
    cannot keep dynamic (MaxPool2d ceil_mode after strided convs: GoogLeNet, SqueezeNet)."""
    errors = [t.detail or t.error or "" for t in tried if t.stage == "export"]  # torch.export's own words, suggested fixes included
    suggested = export_errors.suggested_hint(errors, source.recipe.dims) if source is not None else None
    if suggested:
        return suggested
    dynamic = [d for d, v in source.recipe.dims.items() if v.min != v.max] if source is not None else []
    compiled = [t.detail or "" for t in tried if t.stage == "compile"]
    site = next((x for x in map(export_errors.data_dependent_site, compiled) if x and x != "the model"), None)
    if site:  # Inductor met a size read from a value (`.item()`) that export had kept as an unbacked symbol
        return export_errors.data_dependent_hint(site, dynamic)
    dims = list(source.recipe.dims) if source is not None else []
    tied = [d for d in dims if any(re.search(rf"\b{re.escape(d)}\b", t) for t in errors if "Expected op to be" in t)]
    wrong = any(t.stage == "values" for t in tried)
    if tied or wrong:
        which = ", ".join(f"dims.{d}" for d in (tied or [d for d, v in source.recipe.dims.items() if v.min != v.max]))
        why = (
            "torch.export cannot express the constraints the model's shape logic puts on them"
            if tied
            else "Inductor fixed a shape branch from the example sizes"
        )
        also = " (dims shaped by the same layers, the other spatial dim say, may need it too)" if tied else ""
        return f"{why}: make {which} static for this target (min == max){also}, or build the onnx target, which keeps them dynamic"
    if any(t.stage == "run" and "Runtime assertion failed" in (t.error or "") for t in tried):
        return (
            "the exported program holds for part of the recipe's dims only: the model takes another code path at some sizes "
            "(a fast path at its configured size, say), which export turned into a run-time check; narrow or fix those dims "
            "for this target, or build the onnx target"
        )
    dynamic = [d for d, v in source.recipe.dims.items() if v.min != v.max] if source is not None else []
    if tried and dynamic and all(t.stage == "compile" for t in tried):
        return (f"Inductor could not compile the model over dynamic {', '.join(f'dims.{d}' for d in dynamic)}; the same model often compiles "
                "with the spatial or sequence dims static for this target (min == max; SegFormer's did), or build the onnx target")  # fmt: skip
    sites = [export_errors.data_dependent_site(text) for text in errors]
    if errors and all(sites):
        first = sites[0] if sites[0] != "the model" or source is None else export_errors.exported_site(source) or sites[0]
        return export_errors.data_dependent_hint(first, dynamic)
    for text in errors:
        dims = export_errors.specialized_dims(text)
        if dims:
            fixes = re.findall(r"^\s*(\w+) = (\d+)\s*$", text, flags=re.M)
            pinned = ", ".join(f"dims.{d}: {{min: {v}, max: {v}}}" for d, v in fixes) or ", ".join(f"dims.{d} static" for d in dims)
            site = export_errors.specialization_site(source, dims) if source is not None else None
            where = f" (the model fixes {'it' if len(dims) == 1 else 'them'} at {site})" if site else ""
            return (f"torch.export cannot keep {', '.join(dims)} dynamic for this model{where}; make {'it' if len(dims) == 1 else 'them'} static for "
                    f"this target ({pinned}), or build the onnx target, which keeps {'it' if len(dims) == 1 else 'them'} dynamic")  # fmt: skip
    return None


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
