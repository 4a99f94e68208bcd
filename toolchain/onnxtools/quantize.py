"""INT8 for ONNX models (FP16 is onnxtools/fp16.py). ONNX Runtime's tools:
pre-processing, then static QDQ quantization calibrated on samples disjoint
from the parity samples, or dynamic quantization for transformer-style
models. An INT8 model is checked against the parity budget here, so that a
miss can name the nodes that cost the most and, with `fallback: auto`,
keep them in float and try again.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolchain import cpuclass
from toolchain.errors import StepError, one_line
from toolchain.judge import judge
from toolchain.onnxtools.kernels import runtime_kernels
from toolchain.onnxtools.node_report import node_errors
from toolchain.parity import cosine
from toolchain.records import ParityReport
from toolchain.runners.onnxruntime import OnnxRuntimeRunner
from toolchain.samples import CalibrationSet, calibration_samples
from toolchain.search import CandidateError, PrecisionSearch

CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
REPORT_NODES = 10  # nodes listed in the manifest's node_report
SEARCH_SHARE = 0.5  # of the target's timeout, for fallback: auto's search
UNBOUNDED_ROUNDS = 4  # re-quantizations (from the cached ranges) keeping nodes with non-finite ranges in float


# ONNX Runtime's pre-processing, most thorough first: its symbolic shape inference
# crashes on some graphs (wav2vec2, pooled encoders: "object of type 'NoneType' has
# no len()"), and the quantizers work without it.
PRE_PROCESS = (
    ("full", {}),
    ("without symbolic shape inference", {"skip_symbolic_shape": True}),
    ("without symbolic shape inference and graph optimization", {"skip_symbolic_shape": True, "skip_optimization": True}),
)


def pre_process(src: Path, dst: Path) -> dict:
    """ONNX Runtime's pre-quantization step (shape inference and graph cleanup); returns what ran.

    Symbolic shape inference is incomplete on some dynamo exports (e.g. BERT);
    auto_merge lets it reconcile the symbolic dims it cannot prove equal.
    """
    import onnx
    from onnxruntime.quantization import quant_pre_process

    failed = []
    for label, options in PRE_PROCESS:
        try:
            quant_pre_process(str(src), str(dst), auto_merge=True, **options)
            break
        except Exception as e:
            failed.append(f"{label}: {one_line(e)}")
            print(f"quant_pre_process ({label}) failed: {one_line(e)}")  # into the target's log
    else:
        raise StepError(f"ONNX Runtime's quant_pre_process failed every way: {'; '.join(failed)}")
    model = onnx.load(str(dst))
    unnamed = [n for n in model.graph.node if not n.name]
    if unnamed:  # nodes_to_exclude and the node report address nodes by name
        for i, n in enumerate(unnamed):
            n.name = f"{n.op_type}_{i}_unnamed"
        onnx.save(model, str(dst))
    return {"pre_process": label, "pre_process_failures": failed}


class _Reader:
    """A CalibrationDataReader over a list of feeds, readable in ranges.

    Calibration feeds span the dims like parity samples, so their shapes
    differ; ORT's histogram calibrators stack the outputs of one collection
    pass, so the quantizer collects feed by feed (CalibStridedMinMax: 1) and
    merges the ranges or histograms across passes.
    """

    def __init__(self, feeds: list[dict]):
        self._feeds = feeds
        self.set_range(0, len(feeds))

    def __len__(self) -> int:
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self._feeds[start_index:end_index])

    def get_next(self) -> dict | None:
        return next(self._it, None)


def quantize_static_qdq(prep: Path, dst: Path, calib: CalibrationSet, method: str, excluded: list[str], symmetric: bool, cache: Path | None = None,
                        op_types: tuple[str, ...] | None = None, reduce_range: bool = False) -> list[str]:  # fmt: skip
    """Static QDQ with per-channel weights; returns the nodes kept in float because a tensor they
    write or read calibrated to a range that is not finite.

    symmetric=True (TensorRT) puts every zero point at 0, as TensorRT requires;
    otherwise activations are asymmetric uint8, ONNX Runtime's CPU choice.
    `cache` keeps the calibrated ranges so search rounds skip recalibrating;
    `op_types` limits which op types are quantized (None: ONNX Runtime's default set);
    `reduce_range`: 7-bit weights, whose u8 x s8 pairs cannot saturate on CPUs without VNNI.

    A range reaching inf or nan (MPNet's and T5's relative-position buckets take log(0) = -inf in a
    branch `where` discards) gives an infinite scale: its DequantizeLinear then writes nan everywhere,
    the discarded branch included, and a Cast to int64 turns that into a Gather index of INT64_MIN.
    """
    import onnx

    graph = onnx.load(str(prep), load_external_data=False).graph
    kept: list[str] = []
    for _ in range(UNBOUNDED_ROUNDS):
        _quantize_static(prep, dst, calib, method, excluded + kept, symmetric, cache, op_types, reduce_range)
        more = [n for n in _touching(graph, unbounded_tensors(dst)) if n not in excluded and n not in kept]
        if not more:
            return kept
        kept += more
    raise StepError(f"static INT8: tensors still calibrate to ranges that are not finite after keeping {len(kept)} nodes in float: {', '.join(kept[:5])}")


def unbounded_tensors(path: Path) -> list[str]:
    """Tensors whose QuantizeLinear scale in the model at `path` is not finite."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path), load_external_data=False).graph
    scales = {i.name: i for i in graph.initializer}
    return [n.input[0] for n in graph.node if n.op_type == "QuantizeLinear" and n.input[1] in scales
            and not np.all(np.isfinite(numpy_helper.to_array(scales[n.input[1]])))]  # fmt: skip


def _touching(graph, tensors: list[str]) -> list[str]:
    """The named nodes that write or read any of `tensors` (a tensor is quantized for either)."""
    wanted = set(tensors)
    return [n.name for n in graph.node if n.name and wanted & {*n.input, *n.output}]


def _quantize_static(prep: Path, dst: Path, calib: CalibrationSet, method: str, excluded: list[str], symmetric: bool, cache: Path | None,
                     op_types: tuple[str, ...] | None, reduce_range: bool) -> None:  # fmt: skip
    from onnxruntime import quantization as q

    q.quantize_static(
        str(prep),
        str(dst),
        _Reader(calib.feeds),
        quant_format=q.QuantFormat.QDQ,
        op_types_to_quantize=list(op_types) if op_types else None,
        per_channel=True,
        activation_type=q.QuantType.QInt8 if symmetric else q.QuantType.QUInt8,
        weight_type=q.QuantType.QInt8,
        calibrate_method=getattr(q.CalibrationMethod, CALIBRATION_METHODS[method]),
        nodes_to_exclude=excluded,
        extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True, "CalibStridedMinMax": 1},
        calibration_cache_path=str(cache) if cache else None,
        reduce_range=reduce_range,
    )


def quantize_dynamic(prep: Path, dst: Path, excluded: list[str], op_types: tuple[str, ...] | None = None, reduce_range: bool = False) -> None:
    """Weights INT8 ahead of time (per output channel), activations quantized per batch at run time.

    Per-channel weights: on real all-MiniLM-L6-v2 weights, per-tensor dynamic INT8
    reached cosine 0.965 to FP32 and per-channel 0.993.
    """
    from onnxruntime import quantization as q

    q.quantize_dynamic(str(prep), str(dst), weight_type=q.QuantType.QInt8, per_channel=True, nodes_to_exclude=excluded,
                       op_types_to_quantize=list(op_types) if op_types else None, reduce_range=reduce_range)  # fmt: skip


def _worst_sample(reference: list[dict], outputs: list[dict]) -> int:
    """Index of the sample whose outputs are least like the reference (lowest cosine)."""
    scores = [min(cosine(r[k], o[k]) for k in r if k in o) for r, o in zip(reference, outputs)]
    return int(np.argmin(scores))


# Compute-heavy ops: quantizing only these leaves activations, residual adds and
# squeeze-excite gates in float, where most of a CNN's INT8 error starts.
COMPUTE_OPS = ("Conv", "MatMul", "Gemm")
SENSITIVITY_CANDIDATES = 12  # nodes whose one-at-a-time exclusion is measured
GROUPS_TRIED = 6  # op-type groups whose exclusion is tried


@dataclass(frozen=True)
class Config:
    """One quantization tried by the search."""

    method: str | None  # calibration method (static INT8); None for dynamic
    op_types: tuple[str, ...] | None = None  # op types quantized (None: ONNX Runtime's default)
    excluded: tuple[str, ...] = ()  # nodes kept in float
    why: str = "plain"  # what this attempt tried

    def to_dict(self) -> dict:
        return {"why": self.why, "calibration": self.method, "op_types": list(self.op_types) if self.op_types else "default", "excluded": len(self.excluded)}


@dataclass
class Int8Job:
    """What one ONNX INT8 search quantizes and judges: the pre-processed model, the calibration
    feeds and the parity data. Attempts are written to scratch/attempt.onnx, the best kept as best.onnx."""

    source: object
    spec: object
    prep: Path
    scratch: Path
    calib: CalibrationSet | None
    samples: list[dict]
    reference: list[dict]
    tol: object
    reduce_range: bool = False  # for a fleet with CPUs without VNNI (toolchain/cpuclass.py SATURATING)
    unbounded: list[str] = field(default_factory=list)  # nodes the last attempt kept in float for non-finite ranges
    best_unbounded: list[str] = field(default_factory=list)  # ... and the best attempt's

    @property
    def attempt_path(self) -> Path:
        return self.scratch / "attempt.onnx"

    @property
    def best_path(self) -> Path:
        return self.scratch / "best.onnx"

    def evaluate(self, config: Config) -> tuple[ParityReport, list[dict]]:
        path = self.attempt_path
        if config.method is not None:
            self.unbounded = quantize_static_qdq(self.prep, path, self.calib, config.method, list(config.excluded), symmetric=False,
                                                 cache=self.scratch / f"calibration.{config.method}.json", op_types=config.op_types,
                                                 reduce_range=self.reduce_range)  # fmt: skip
        else:
            quantize_dynamic(self.prep, path, list(config.excluded), config.op_types, self.reduce_range)
        try:
            runner = OnnxRuntimeRunner(path, self.source.input_names, self.source.output_names, self.spec.device)
            return judge(runner, self.samples, self.reference, self.tol, self.source.recipe.parity.scores)
        except Exception as e:
            if type(e).__module__.startswith("onnxruntime"):  # its pybind errors; anything else is ours
                raise CandidateError(f"ONNX Runtime cannot run this candidate: {one_line(e)}") from e
            raise

    def search(self, deadline: float) -> PrecisionSearch[Config, list[dict]]:
        return PrecisionSearch(self.evaluate, Config.to_dict, deadline, keep=self._keep)

    def _keep(self, tried) -> None:
        shutil.copyfile(self.attempt_path, self.best_path)
        self.best_unbounded = self.unbounded


def _default_op_types(static: bool) -> list[str]:
    """The op types ONNX Runtime quantizes when not told which."""
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry, QLinearOpsRegistry

    return sorted(set(QDQRegistry) | set(QLinearOpsRegistry)) if static else sorted(IntegerOpsRegistry)


def _group_of(node) -> str:
    if node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute):
        return "depthwise Conv"
    return node.op_type


def _search(search: PrecisionSearch, job: Int8Job, base: Config, static: bool, explicit_method: bool) -> None:
    """fallback: auto, in order until the budget holds (or time runs out):

    1. quantizing only compute-heavy ops (Conv, MatMul, Gemm);
    2. the other calibration methods (unless the recipe names one);
    3. op types (and depthwise convolutions) kept in float, greedily: a group
       stays in float when that brought the outputs closer to the reference;
    4. nodes ranked by how much keeping each one alone in float improves the final
       outputs (not by their own local error), then kept in float cumulatively,
       1, 2, 4, ... of them, up to half the quantizable nodes.
    """
    import onnx

    # Cheapest first: the op-type choice reuses the calibrated ranges; another method recalibrates.
    if static and not search.out_of_time():
        search.run(Config(base.method, COMPUTE_OPS, (), "compute-heavy ops only"))
    if search.best is None:
        return  # no candidate ran: there are no outputs to rank nodes by
    if static and not explicit_method:
        op_types = search.best.config.op_types
        # Not entropy: ONNX Runtime's KL threshold search took over ten minutes on EfficientNet-B0's
        # 240 tensors; a recipe can still ask for it with `calibration: entropy`.
        for method in ("percentile",):
            if search.passed or search.out_of_time():
                return
            search.run(Config(method, op_types, (), f"calibration {method}"))
    base = search.best.config
    if search.passed:
        return
    model = onnx.load(str(job.prep), load_external_data=False)
    quantizable = set(base.op_types or _default_op_types(static))
    groups: dict[str, list[str]] = {}
    for n in model.graph.node:
        if n.op_type in quantizable:
            groups.setdefault(_group_of(n), []).append(n.name)
    total = sum(len(v) for v in groups.values())
    excluded: list[str] = []
    current = search.best.score
    for group, names in sorted(groups.items(), key=lambda kv: -len(kv[1]))[:GROUPS_TRIED]:
        if search.passed or search.out_of_time():
            return
        if len(names) > total // 2:
            continue  # the bulk of the model: keeping it all in float is no INT8 artifact
        score = search.run(Config(base.method, base.op_types, tuple(excluded + names), f"{group} in float (greedy)")).score
        if score > current:
            excluded, current = excluded + names, score
    if search.passed or search.out_of_time():
        return
    baseline = search.run(Config(base.method, base.op_types, tuple(excluded), "baseline for the node ranking"))
    if baseline.report is None:
        return
    base_margin = baseline.score
    errors = node_errors(job.prep, job.attempt_path, job.samples[_worst_sample(job.reference, baseline.artifact)], job.spec.device)
    # Keeping a node in float must keep what it reads in float too: the quantizer puts a
    # Q/DQ pair on a tensor for its (quantized) producer, whatever the consumer is.
    producer = {o: n.name for n in model.graph.node for o in n.output}
    nodes = {n.name: n for n in model.graph.node}
    quantized = {n for names in groups.values() for n in names}

    def unit(name: str) -> list[str]:
        feeding = [producer[i] for i in nodes[name].input if i in producer and producer[i] in quantized] if name in nodes else []
        return [n for n in dict.fromkeys([name, *feeding]) if n not in excluded]

    by_error = [e.node for e in errors if e.node not in excluded and (e.quantized or unit(e.node)[1:])]
    gains = []
    for node in by_error[:SENSITIVITY_CANDIDATES]:
        if search.passed or search.out_of_time():
            return
        m = search.run(Config(base.method, base.op_types, tuple(excluded + unit(node)), f"{node} and its inputs in float")).score
        gains.append((m - base_margin, node))
    ranked = [n for _, n in sorted(gains, key=lambda g: -g[0])]
    ranked += [n for n in by_error if n not in ranked]
    cap = max(1, total // 2 - len(excluded))
    k = 1
    while not search.passed and not search.out_of_time():
        chosen = list(dict.fromkeys(x for n in ranked[:k] for x in unit(n)))[:cap]
        search.run(Config(base.method, base.op_types, tuple(excluded + chosen), f"{k} most helpful nodes and their inputs in float"))
        if k >= len(ranked) or len(chosen) >= cap:
            break
        k *= 2


def to_int8(source, spec, src: Path, dst: Path, scratch: Path, ctx) -> dict:
    """Quantize `src` into `dst`, check the budget, and with `fallback: auto` search for a configuration that meets it.

    `ctx` is the step's BuildContext (the parity data lies under its root).
    Returns the manifest fields: `quantization` (mode, calibration, the search's
    attempts, node_report), `excluded_nodes` and `warnings`.
    """
    recipe = source.recipe
    method = spec.calibration or "minmax"
    prep = scratch / "prep.onnx"
    record: dict = {"mode": spec.quantize, "fallback": spec.fallback, **pre_process(src, prep)}
    warnings: list[str] = []
    calib = None
    static = spec.quantize == "int8"
    if static:
        calib = calibration_samples(recipe)
        record |= {"format": "QDQ", "per_channel": True, "activations": "uint8 asymmetric", "weights": "int8 symmetric"}
        if calib.warning:
            warnings.append(calib.warning)
    else:
        record |= {"format": "dynamic (QOperator)", "weights": "int8 per channel"}
    samples, reference = ctx.parity_data()
    tol = recipe.tolerance(spec)
    # The search may use half the target's time; what is left builds the gate's own check.
    saturating = cpuclass.saturating(recipe.serve.cpus)
    if saturating:
        record["reduce_range"] = True
        record["reduce_range_for"] = saturating
    job = Int8Job(source, spec, prep, scratch, calib, samples, reference, tol, bool(saturating))
    search = job.search(time.monotonic() + spec.timeout * SEARCH_SHARE)
    base = Config(method if static else None)
    first = search.run(base)
    node_report = None
    if first.report is not None and not first.report.passed:
        node_report = [e.to_dict() for e in node_errors(prep, scratch / "attempt.onnx", samples[_worst_sample(reference, first.artifact)], spec.device)[:REPORT_NODES]]  # fmt: skip
    if not search.passed and spec.fallback == "auto":
        _search(search, job, base, static, spec.calibration is not None)
    if search.best is None:
        tried = f"none of the {len(search.attempts)} candidates runs" if len(search.attempts) > 1 else "the quantized model does not run"
        fix = "; set fallback: auto to search for one that does" if spec.fallback == "off" else ""
        raise StepError(f"{spec.quantize}: {tried}; the first: {first.error}{fix}")
    best, report = search.best.config, search.best.report
    shutil.copyfile(job.best_path, dst)
    record["runtime"] = runtime_kernels(dst)
    if static:
        record["calibration"] = {"method": best.method, **calib.to_dict()}
    record |= {"chosen": best.to_dict(), "op_types": list(best.op_types) if best.op_types else "default"}
    if not report.passed:
        names = ", ".join(f"{r['node']} ({r['op_type']}, +{r['added_error']:.3g})" for r in (node_report or [])[:3])
        if spec.fallback == "off":
            warnings.append(
                f"{spec.quantize} misses its budget; nodes adding the most error: {names}; set fallback: auto to search for a configuration that meets it"
            )
        else:
            cos = min(d.cosine for d in report.outputs.values())
            warnings.append(f"{spec.quantize} misses its budget after {len(search.attempts)} attempts; the best ({best.why}) reached cosine {cos:.6f}; "
                            f"nodes adding the most error: {names}")  # fmt: skip
    if job.best_unbounded:
        record["kept_float_why"] = {n: "a tensor it writes or reads calibrated to a range that is not finite (inf or nan)" for n in job.best_unbounded}
    record |= {"attempts": search.attempts, "node_report": node_report}
    return {"quantization": record, "excluded_nodes": [*best.excluded, *job.best_unbounded], "warnings": warnings}
