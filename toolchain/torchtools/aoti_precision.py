"""The aoti kind's precisions: FP32 compiled with and without Inductor freezing (the faster that
passes is kept), BF16/FP16 under autocast, and INT8 through PT2E with the shared precision search,
its compiled package judged again. Each returns (program, export record, the kind's precision record).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from toolchain import cpuclass
from toolchain.errors import StepError, one_line
from toolchain.judge import judge
from toolchain.kinds.base import BuildContext
from toolchain.records import ParityReport
from toolchain.runners.aoti import AotiRunner
from toolchain.samples import calibration_samples
from toolchain.timing import interleaved
from toolchain.torchtools import attention, concat_linear, gemm, package_kernels, pt2e
from toolchain.torchtools.aoti_compile import CompileFailed, compile_package, runnable_export
from toolchain.torchtools.package_kernels import Kernels


def autocast(module, inputs: int, device: str, dtype: str):
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


@dataclass
class _Frozen:
    """One FP32 package of the freezing choice, and how it did (a row of aoti.freezing_choice)."""

    freezing: bool
    path: Path | None = None
    program: object = None
    record: dict | None = None
    report: ParityReport | None = None
    median_ms: float | None = None
    error: str | None = None

    def row(self) -> dict:
        if self.report is None:
            return {"freezing": self.freezing, "passed": False, "error": self.error}
        kernels = package_kernels.summarize(self.path)
        row = {"freezing": self.freezing, **self.report.summary(), "kernels": kernels.to_dict() if kernels else None}
        return row | ({"median_ms": self.median_ms} if self.median_ms is not None else {})


def fp32_freezing_choice(source, spec, ctx: BuildContext, path: Path):
    """Compile with and without freezing; keep the faster of those that pass parity (timed interleaved, one thread)."""
    import torch

    variants: list[_Frozen] = []
    for freezing in (True, False):
        variant = path.with_name(f"freezing-{str(freezing).lower()}.pt2")
        try:
            program, record = compile_package(source, spec.device, variant, precision=spec.precision, configs={"freezing": freezing})
        except StepError as e:
            if freezing:  # freezing's own passes failed: the unfrozen package may still build
                variants.append(_Frozen(True, error=str(e)[:500]))
                continue
            raise
        variants.append(_Frozen(freezing, variant, program, record, _judge_package(variant, source, spec, ctx)[0]))
    built = [v for v in variants if v.report is not None]
    runners = {v.freezing: AotiRunner(v.path, source.input_names, source.output_names, spec.device).__enter__() for v in built}
    feed = source.example_feed()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = interleaved({f: (lambda r=r: r.infer(feed)) for f, r in runners.items()}, rounds=5, seconds=0.1, warmup=2)
    finally:
        torch.set_num_threads(threads)
    for v in built:
        v.median_ms = round(times[v.freezing].median_ms, 4)
    best = min([v for v in built if v.report.passed] or built, key=lambda v: v.median_ms)
    choice = [v.row() for v in variants]
    shutil.move(best.path, path)
    for v in built:
        if v is not best:
            v.path.unlink(missing_ok=True)
    return best.program, best.record, {"precision": "fp32", "freezing": best.freezing, "freezing_choice": choice, "timed_threads": 1}


def reduced_package(source, spec, ctx: BuildContext, path: Path, module):
    """BF16/FP16 under autocast, frozen unless `freezing: off`. With `auto`, a frozen package that
    misses the budget is compiled again unfrozen and the better of the two kept: freezing folds
    batch norms into weights already rounded to bfloat16 (EfficientNet-Lite0, real weights:
    cosine 0.99821 frozen against 0.9994 unfrozen)."""
    frozen = spec.freezing != "off"
    tuned, why, split = gemm.configs_for(source.recipe, spec.gemm, spec.precision) if spec.device == "cpu" else ({}, "a CUDA package", None)
    program, record, tuned, why = _compile_tuned(source, spec, path, module, {"freezing": frozen}, tuned, why)
    fields = {"gemm": gemm_record(tuned, why, split)}
    if not (frozen and spec.freezing == "auto"):
        return program, record, {"freezing": frozen} | fields
    first, _ = _judge_package(path, source, spec, ctx)
    if first.passed:
        return program, record, {"freezing": True} | fields
    unfrozen = path.with_name("unfrozen.pt2")
    program2, record2, tuned2, why2 = _compile_tuned(source, spec, unfrozen, module, {"freezing": False}, tuned, why)
    second, _ = _judge_package(unfrozen, source, spec, ctx)
    choice = [{"freezing": True, **first.summary()}, {"freezing": False, **second.summary()}]
    if (second.passed, second.margin()) > (first.passed, first.margin()):
        unfrozen.replace(path)
        return program2, record2, {"freezing": False, "freezing_choice": choice, "gemm": gemm_record(tuned2, why2, split)}
    unfrozen.unlink(missing_ok=True)
    return program, record, {"freezing": True, "freezing_choice": choice} | fields


def gemm_record(tuned: dict, why: str, split: dict | None) -> dict:
    """The manifest's `aoti.gemm`: whether the GEMMs were autotuned, why, and the threads they are split for."""
    return {"autotuned": bool(tuned), "why": why, **(split if tuned and split else {})}


def _compile_tuned(source, spec, dest: Path, module, configs: dict, tuned: dict, why: str):
    """(program, record, tuned, why): the package compiled with the autotuned GEMMs' configs, or, when Inductor's
    template does not compile (a template bug must not cost the artifact), again with oneDNN's kernels alone."""
    if tuned:
        try:
            return *compile_package(source, spec.device, dest, module=module, precision=spec.precision, configs=configs | tuned), tuned, why
        except CompileFailed as e:
            said = "; ".join(dict.fromkeys(t.error for t in e.tried if t.error)) or one_line(e)
            why = f"Inductor's C++ GEMM did not compile ({said[:200]}); oneDNN's kernels alone"
            print(f"{spec.precision}: {why}")
    return *compile_package(source, spec.device, dest, module=module, precision=spec.precision, configs=configs), {}, why


@dataclass
class Int8Choice:
    """A PT2E search's choice: the module to compile, its `quantization` record (attempts apart), the
    modules kept in float, the build's warnings, and the choice's verdict in eager (q/dq) form."""

    module: object
    record: dict
    attempts: list[dict]
    in_float: list[str]
    warnings: list[str]
    eager: ParityReport

    def fields(self, checks: list[dict]) -> dict:
        """The kind's manifest fields: quantization (with the compiled checks), excluded_nodes, warnings."""
        return {"quantization": self.record | {"attempts": self.attempts, "compiled_checks": checks}, "excluded_nodes": self.in_float,
                "warnings": self.warnings}  # fmt: skip


def _int8_module(source, spec, ctx: BuildContext, tol=None, deadline: float | None = None, hazards: dict | None = None) -> Int8Choice:
    """Search the PT2E configurations of the model (judging the eager q/dq form) and choose one.

    `tol`: the floors the search holds the eager q/dq model to (default: the target's);
    `hazards`: {module: why} kept in float besides pt2e.lowering_hazards.
    """
    import torch

    calib = calibration_samples(source.recipe)
    as_args = lambda feed: tuple(torch.from_numpy(feed[n]).contiguous() for n in source.input_names)  # noqa: E731
    samples, reference = ctx.parity_data()
    module, baked = pt2e.bake_parametrizations(source.module)
    program = runnable_export(source, module)
    deadline = deadline or time.monotonic() + spec.timeout * 0.5
    found = pt2e.search(program, [as_args(f) for f in calib.feeds], [as_args(f) for f in samples], reference, tol or source.recipe.tolerance(spec),
                        source.recipe.parity.scores, source.output_names, pt2e.quantized_modules(source), spec.fallback, deadline,
                        hazards=pt2e.lowering_hazards(source.module, program) | (hazards or {}),
                        reduce_range=cpuclass.saturating(source.recipe.serve.cpus))  # fmt: skip
    record = dict(found.record)
    attempts = record.pop("attempts")
    record["calibration"] = {"method": "histogram", **calib.to_dict()}
    if baked:
        record["parametrizations_baked"] = baked
    warnings = [calib.warning] if calib.warning else []
    if not found.report.passed:
        worst = ", ".join(f"{r['module']} ({r['sqnr_db']:.1f} dB)" for r in (record.get("node_report") or [])[:3])
        how = "set fallback: auto to keep the worst modules in float" if spec.fallback == "off" else f"fallback: auto stopped after {len(attempts)} attempts"
        warnings.append(f"int8 misses its budget; modules losing the most: {worst}; {how}")
    return Int8Choice(found.module, record, attempts, found.modules_in_float, warnings, found.report)


def _judge_compiled(source, path: Path, ctx: BuildContext, tol) -> ParityReport:
    """The compiled package's parity report on the parity samples (what the gate will see)."""
    samples, reference = ctx.parity_data()
    return judge(AotiRunner(path, source.input_names, source.output_names), samples, reference, tol, source.recipe.parity.scores)[0]


def _check(eager: ParityReport | None, compiled: ParityReport, floor: float | None) -> dict:
    """One row of `compiled_checks`: the choice's cosine eagerly and compiled, against the floor searched for."""
    return {"eager_cosine": eager.worst_cosine if eager else None, "compiled_cosine": compiled.worst_cosine, "passed": compiled.passed, "floor": floor}


def int8_package(source, spec, ctx: BuildContext, path: Path) -> tuple[object, dict, dict, Int8Choice]:
    """Search (judging the eager q/dq model), compile the choice, and judge the compiled package;
    (program, export record, the kind's manifest fields, the choice).

    The compiled q/dq (oneDNN INT8 kernels, fused requantization) rounds differently from the
    eager reference: on an ill-conditioned model a choice that passes eagerly can land below
    the budget compiled (random-weight ResNet-50: cosine 0.9916 eager, 0.9760 compiled). With
    `fallback: auto` and time left, the search runs again with its floors raised by the gap
    seen, once, and the result is compiled again.
    """
    tol = source.recipe.tolerance(spec)
    deadline = time.monotonic() + spec.timeout * 0.5
    choice = _int8_module(source, spec, ctx, tol, deadline)
    bf16, in_bf16 = attention.bf16_reason(source.recipe, spec.device, spec.attention)
    form = attention.form_for(cpuclass.machine_class())
    tuned, gemm_why, split = gemm.configs_for(source.recipe, spec.gemm, "int8") if spec.device == "cpu" else ({}, "a CUDA package", None)

    def rewrite(module) -> tuple[int, int]:
        # concatenated where the GEMMs are autotuned only (oneDNN alone ran them slower), before the attention's rewrite
        # makes the projections write BF16
        return (concat_linear.fuse(module) if tuned else 0), (attention.to_bf16(module, form) if bf16 else 0)

    concatenated, rewritten = rewrite(choice.module)
    configs = {"freezing": spec.freezing != "off"} | (attention.COMPILE_CONFIGS if rewritten else {})

    def compile_choice(module, dest: Path):
        nonlocal tuned, gemm_why
        program, record, tuned, gemm_why = _compile_tuned(source, spec, dest, module, configs, tuned, gemm_why)
        return program, record

    try:
        program, record = compile_choice(choice.module, path)
    except CompileFailed as e:
        # Inductor's INT8 fusions fail on a Conv1d whose output reaches an add under a dynamic length
        # ("The size of tensor a (s0 + 2) must match ... (s0)", torch 2.13; a TCN, wav2vec2): keep them in float.
        convs = pt2e.conv1d_modules(source.module)
        if not convs or not any(t.stage == "compile" for t in e.tried):
            raise
        why = f"Inductor could not compile the model with its Conv1d layers in INT8 (torch 2.13): {str(e)[:200]}"
        print(f"int8: {why}; compiling again with them in float")
        choice = _int8_module(source, spec, ctx, tol, deadline + spec.timeout * 0.2, hazards=dict.fromkeys(convs, why))
        concatenated, rewritten = rewrite(choice.module)
        program, record = compile_choice(choice.module, path)
    eager = choice.eager
    compiled = _judge_compiled(source, path, ctx, tol)
    checks = [_check(eager, compiled, tol.cosine)]
    if eager.passed and not compiled.passed and spec.fallback == "auto" and tol.cosine is not None and time.monotonic() < deadline:
        raised = min(0.999999, tol.cosine + 1.5 * max(eager.worst_cosine - compiled.worst_cosine, 1e-4))
        print(f"int8: the compiled package reached cosine {compiled.worst_cosine:.6f} where its eager form reached {eager.worst_cosine:.6f}; "
              f"searching again with floor {raised:.6f}")  # fmt: skip
        second = _int8_module(source, spec, ctx, tol.model_copy(update={"cosine": raised}), deadline + spec.timeout * 0.2)
        counts = rewrite(second.module)
        retry = path.with_name("retry.pt2")
        program2, record2 = compile_choice(second.module, retry)
        again = _judge_compiled(source, retry, ctx, tol)
        checks.append(_check(None, again, raised))
        if again.passed or again.worst_cosine > compiled.worst_cosine:
            retry.replace(path)
            program, record = program2, record2
            second.attempts = choice.attempts + second.attempts
            choice = second
            concatenated, rewritten = counts
        else:  # keep the first package and its record
            retry.unlink(missing_ok=True)
    if eager.passed and not any(c["passed"] for c in checks):
        best = max(c["compiled_cosine"] for c in checks)
        choice.warnings.append(
            f"the quantized model passes in eager form (cosine {eager.worst_cosine:.6f}) but its compiled package reaches "
            f"{best:.6f}: Inductor's INT8 lowering (oneDNN qconv/qlinear) changes this model's results; "
            "serve another target for it (the ONNX INT8 target, or aoti bf16)"
        )
    dtype = "bfloat16" if rewritten else "float32"
    said = in_bf16 if rewritten or not bf16 else "the model has no scaled_dot_product_attention to rewrite"
    forms = {"form": form, "kernel": attention.FORMS[form]} if rewritten else {}
    fields = choice.fields(checks) | {"attention": {"dtype": dtype, "why": said, "rewritten": rewritten, **forms}}
    joined = {"concatenated": concatenated} if concatenated else {}  # groups of projections computed as one GEMM
    return program, record, fields | {"gemm": gemm_record(tuned, gemm_why, split) | joined}, choice


def int8_kernel_warnings(choice: Int8Choice, kernels: Kernels, source_module) -> list[str]:
    """What the compiled INT8 package's kernels say: none of them INT8, or layers PT2E leaves in float."""
    warnings = []
    if not kernels.integer:
        why = (
            "Inductor did not lower the PT2E q/dq pairs"
            if choice.record.get("quantized_layers")
            else "every layer it could quantize is kept in float (see quantization.kept_float_for_lowering)"
            if choice.record.get("kept_float_for_lowering")
            else "the quantizer found no layer it quantizes"
        )
        how = "oneDNN qlinear/qconv or Inductor's INT8 GEMM"
        warnings.append(f"the compiled package computes no GEMM in INT8 ({how}): {why}, so it computes in float (see aoti.kernels)")
    unsupported = pt2e.unquantizable_modules(source_module)
    if unsupported:
        warnings.append(
            f"PT2E's x86 quantizer quantizes Conv1d/Conv2d and Linear only: {unsupported} stay in float, so the package runs "
            f"{kernels.integer} INT8 and {kernels.float} float GEMM/conv kernels (see aoti.kernels)"
        )
    return warnings
