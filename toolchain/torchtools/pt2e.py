"""INT8 for AOTInductor on x86 CPUs: PT2E static quantization (torchao's
X86InductorQuantizer), calibrated on the calibration split (never the parity
samples), judged against the same budget as ONNX INT8, with the same
`fallback: auto` contract: modules that break the budget are kept in float.

The quantized model is judged in eager mode (its q/dq reference form) while the
search runs, which is cheap; only the configuration chosen is compiled (with
Inductor's freezing, which lowers q/dq pairs to oneDNN INT8 kernels).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from toolchain.errors import StepError
from toolchain.parity import compare
from toolchain.records import ParityReport
from toolchain.search import PrecisionSearch
from toolchain.tensors import to_numpy
from toolchain.torchtools import inductor_patches

INSTALL_HINT = "pip install torchao  (INT8 AOTInductor uses torchao's PT2E quantizer; `make install` installs it)"
REPORT_MODULES = 10  # modules listed in the manifest's node_report
SENSITIVITY_CANDIDATES = 12  # modules whose one-at-a-time exclusion is measured


def _torchao():
    try:
        from torchao.quantization.pt2e import quantizer as _  # noqa: F401
        from torchao.quantization.pt2e.inductor_passes import x86 as passes

        inductor_patches.symbolic_linear_check(passes)  # before the quantizer's import registers torchao's patterns
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError as e:
        raise StepError(f"precision: int8 needs torchao, which is not importable here ({e})", hint=INSTALL_HINT) from None
    return prepare_pt2e, convert_pt2e, xiq


def _float_only(quantizer):
    """The quantizer, but never on integer tensors: it annotates an integer `add` (RoBERTa's
    position ids) like a float one, and its histogram observer then fails ('histogram_cpu' not
    implemented for 'Int')."""
    import torch

    def is_float(node) -> bool:
        val = node.meta.get("val") if hasattr(node, "meta") else None
        return not isinstance(val, torch.Tensor) or val.dtype.is_floating_point

    annotate = quantizer.annotate

    def float_annotate(model):
        model = annotate(model)
        for node in model.graph.nodes:
            ann = node.meta.get("quantization_annotation")
            if ann is None:
                continue
            for arg in [a for a in ann.input_qspec_map if not is_float(a)]:
                del ann.input_qspec_map[arg]
            if ann.output_qspec is not None and not is_float(node):
                ann.output_qspec = None
        return model

    quantizer.annotate = float_annotate
    return quantizer


def _with_plain_conv1d(quantizer, xiq):
    """The quantizer, also annotating a Conv1d that no nn.ReLU module follows: X86InductorQuantizer
    finds Conv1d only in its [Conv1d, ReLU] pattern, so a TCN's convs (a causal slice or a
    functional relu after each) stayed float and its "INT8" package ran no INT8 kernel. Inductor
    lowers a q/dq conv1d like a conv2d (qconv)."""
    import torch

    fusion = getattr(quantizer, "_annotate_conv2d_fusion_pattern", None)
    helper = getattr(quantizer, "_annotate_conv_node_helper", None)
    skip = getattr(xiq, "_skip_annotate", None)
    if fusion is None or helper is None or skip is None:  # another torchao: its own patterns only
        return quantizer

    def conv_patterns(model, config, filter_fn=None):
        fusion(model, config, filter_fn)
        for node in model.graph.nodes:
            if node.op == "call_function" and node.target == torch.ops.aten.conv1d.default and not skip([node], filter_fn):
                helper(node, True, config)

    quantizer._annotate_conv2d_fusion_pattern = conv_patterns
    return quantizer


def _resolve(cls):
    if isinstance(cls, type):
        return cls
    import importlib

    module, _, name = str(cls).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _find(parent: dict, x):
    """Union-find root, halving the path."""
    while parent[x] is not x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


def untag_shape_arithmetic(gm) -> int:
    """Drop the source-module tags of nodes that compute no tensor: the size arithmetic and
    deferred run-time asserts export records while tracing a layer (a conv before a
    MaxPool2d(ceil_mode=True) under dynamic sizes: SqueezeNet) carry that layer's tag, and
    the quantizer then finds partitions of the layer with no tensor output (IndexError in
    `_annotate_conv2d`). Returns how many nodes were untagged."""
    untagged = 0
    for n in gm.graph.nodes:
        if n.op == "call_function" and not _computes_tensor(n):
            tags = [n.meta.pop(k, None) for k in ("source_fn_stack", "torch_fn")]  # the partitioner reads both
            untagged += any(t is not None for t in tags)
    return untagged


def _computes_tensor(node) -> bool:
    import torch

    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) or (isinstance(val, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in val))


def split_reused_modules(gm) -> int:
    """Give each call of a module called more than once (torchvision's ResNet blocks call one
    `relu` twice) a partition of its own. The quantizer groups nodes by their source module;
    two calls make one partition with two outputs, and its fusion matching then fails
    ("Input partition has more than one output node"). Returns how many modules were split."""
    groups: dict[tuple, list] = {}
    for n in gm.graph.nodes:
        if n.op != "call_function" or not _computes_tensor(n):  # size arithmetic: see untag_shape_arithmetic
            continue
        stack = n.meta.get("source_fn_stack")
        if stack:
            key = (stack[-1][0], stack[-1][1])
        elif n.meta.get("nn_module_stack"):
            key = tuple(list(n.meta["nn_module_stack"].values())[-1])
        else:
            continue
        groups.setdefault(key, []).append(n)
    split = 0
    for (name, cls), nodes in groups.items():
        if len(nodes) < 2 or not name:  # '' is the root module: its own ops are no module call
            continue
        parent = {n: n for n in nodes}
        for n in nodes:
            for u in n.users:
                if u in parent:
                    parent[_find(parent, u)] = _find(parent, n)
        calls: dict = {}
        for n in nodes:
            calls.setdefault(_find(parent, n), []).append(n)
        typ = _resolve(cls)
        if len(calls) < 2 or typ is None:
            continue
        split += 1
        for i, call in enumerate(calls.values()):
            for n in call:
                n.meta["source_fn_stack"] = [*(n.meta.get("source_fn_stack") or [])[:-1], (f"{name}__call{i}", typ)]
    return split


# Module types the x86 quantizer finds its patterns by (conv, linear, their batch norms and activations).
_BASES = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose2d", "Linear", "BatchNorm2d", "ReLU", "ReLU6", "Hardtanh",
          "Hardswish", "SiLU", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d")  # fmt: skip


def relabel_subclassed_modules(gm) -> int:
    """Name each node made by a subclass of a torch.nn layer (EfficientNet's
    `Conv2dStaticSamePadding(nn.Conv2d)`) after the layer it extends. A non-strict export keeps
    a node's module class as a string in `nn_module_stack`, and the quantizer's partitioning
    (get_source_partitions) matches those strings exactly, so a subclass's convolutions were
    never quantized: EfficientNet-Lite0's INT8 package had 1 INT8 kernel and 49 float convs.
    Only classes already imported are resolved (nothing is imported here). Returns how many
    nodes were relabelled."""
    import sys

    import torch

    bases = [getattr(torch.nn, b) for b in _BASES]
    relabelled = 0
    for n in gm.graph.nodes:
        stack = n.meta.get("nn_module_stack") if n.op == "call_function" else None
        if not stack:
            continue
        key, (fqn, cls) = list(stack.items())[-1]
        if not isinstance(cls, str) or not fqn:
            continue
        module, _, name = cls.rpartition(".")
        typ = getattr(sys.modules.get(module), name, None)
        if not isinstance(typ, type) or module.startswith("torch."):  # torch's own layers are known by name (ReLU6 is a Hardtanh)
            continue
        base = next((b for b in bases if issubclass(typ, b)), None)
        if base is not None:
            stack[key] = (fqn, f"{base.__module__}.{base.__qualname__}")
            relabelled += 1
    return relabelled


def label_functional_linears(gm) -> int:
    """Label as F.linear calls the linears a layer computes inside its own functional code:
    nn.MultiheadAttention's input and output projections (F.multi_head_attention_forward). The
    quantizer finds linears by their source (an nn.Linear module or an F.linear call), and these
    carry neither, so every nn.TransformerEncoder's attention stayed float. Returns how many."""
    import torch

    labelled = 0
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target != torch.ops.aten.linear.default or n.meta.get("source_fn_stack"):
            continue
        torch_fn = (n.meta.get("torch_fn") or ("", ""))[1]
        stack = n.meta.get("nn_module_stack") or {}
        innermost = str(list(stack.values())[-1][1]) if stack else ""
        if torch_fn.endswith(".linear") or innermost.endswith("Linear"):
            continue  # found by the quantizer already
        n.meta["source_fn_stack"] = [(n.name, torch.nn.functional.linear)]
        labelled += 1
    return labelled


def quantize(program, calibration: list[tuple], dynamic: bool, excluded: list[str], reduce_range: bool = False):
    """The exported float program as a PT2E-quantized GraphModule (reference q/dq form). reduce_range: activations in
    7 bits, so that u8 x s8 pairs cannot saturate where oneDNN has no VNNI (toolchain/cpuclass.py)."""
    import torch

    prepare_pt2e, convert_pt2e, xiq = _torchao()
    quantizer = _float_only(_with_plain_conv1d(xiq.X86InductorQuantizer(), xiq)).set_global(
        xiq.get_default_x86_inductor_quantization_config(is_dynamic=dynamic, reduce_range=reduce_range)
    )
    for name in excluded:
        quantizer.set_module_name_qconfig(name, None)
    module = program.module()
    # Dead outputs (BERT's pooler when only the hidden states are kept) leave partitions with no
    # output node, on which the quantizer's pattern matching fails (IndexError).
    module.graph.eliminate_dead_code()
    module.recompile()
    untag_shape_arithmetic(module)
    relabel_subclassed_modules(module)
    label_functional_linears(module)
    split_reused_modules(module)
    prepared = prepare_pt2e(module, quantizer)
    with torch.no_grad():
        for args in calibration:
            prepared(*args)
    return convert_pt2e(prepared)


def _run(module, samples: list[tuple], output_names: list[str]) -> list[dict]:
    import torch

    outs = []
    with torch.no_grad():
        for args in samples:
            out = module(*args)
            out = [out] if isinstance(out, torch.Tensor) else list(out)
            outs.append({n: to_numpy(t) for n, t in zip(output_names, out)})
    return outs


def module_report(program, quantized, args: tuple) -> list[dict]:
    """Per module: the worst SQNR (dB) of its quantized nodes' outputs against float, worst first."""
    import torch
    from torchao.quantization.pt2e._numeric_debugger import compare_results, extract_results_from_loggers, prepare_for_propagation_comparison

    with torch.no_grad():
        ref_logger = prepare_for_propagation_comparison(program.module())
        ref_logger(*args)
        q_logger = prepare_for_propagation_comparison(quantized)
        q_logger(*args)
    rows: dict[str, dict] = {}
    for summary_ in compare_results(extract_results_from_loggers(ref_logger), extract_results_from_loggers(q_logger)).values():
        module = summary_.ref_module_stack
        if not module or module.startswith("{"):
            continue
        try:
            sqnr = min(float(r.sqnr) for r in summary_.results)
        except (TypeError, ValueError):
            continue
        row = rows.setdefault(module, {"module": module, "sqnr_db": sqnr, "node": summary_.ref_node_name})
        if sqnr < row["sqnr_db"]:
            row.update(sqnr_db=sqnr, node=summary_.ref_node_name)
    return sorted(rows.values(), key=lambda r: r["sqnr_db"])


def bake_parametrizations(module):
    """(module, how many weights were baked): a copy whose parametrized weights (weight_norm,
    spectral_norm, old hook-style or torch.nn.utils.parametrizations) are plain parameters, or
    the module itself when it has none. The quantizer only recognises a layer whose weight is a
    parameter: a TCN's weight-normed convs computed their weight in the graph and stayed float.
    The user's model is left as it was (its parametrized classes are shared with the copy, so
    torch's remove_parametrizations, which edits the class, cannot be used on the copy)."""
    import copy

    import torch
    from torch.nn.utils import parametrize

    def hooks(m):
        return [h for h in m._forward_pre_hooks.values() if type(h).__name__ in ("WeightNorm", "SpectralNorm")]

    old_style = [(m, h.name) for m in module.modules() for h in hooks(m)]
    if not old_style and not any(parametrize.is_parametrized(m) for m in module.modules()):
        return module, 0
    # a hook-style weight is a computed tensor in the module's __dict__, which deepcopy refuses
    computed = {(id(m), name): m.__dict__.pop(name) for m, name in old_style}
    try:
        module = copy.deepcopy(module)
    finally:
        for m, name in old_style:
            setattr(m, name, computed[(id(m), name)])
    baked = 0
    with torch.no_grad():
        for m in [m for m in module.modules() if parametrize.is_parametrized(m)]:
            values = {name: getattr(m, name).detach().clone() for name in m.parametrizations}
            m.__class__ = m.__class__.__bases__[0]  # this copy's own class back, the shared one untouched
            del m._modules["parametrizations"]
            for name, value in values.items():
                m.register_parameter(name, torch.nn.Parameter(value, requires_grad=False))
            baked += len(values)
        for m in module.modules():
            for hook in hooks(m):  # torch.nn.utils.weight_norm / spectral_norm (deprecated, still common)
                value = hook.compute_weight(m) if type(hook).__name__ == "WeightNorm" else hook.compute_weight(m, do_power_iteration=False)
                for suffix in ("_g", "_v", "_orig", "_u"):
                    m._parameters.pop(hook.name + suffix, None)
                    m._buffers.pop(hook.name + suffix, None)
                m.register_parameter(hook.name, torch.nn.Parameter(value.detach().clone(), requires_grad=False))
                m._forward_pre_hooks = type(m._forward_pre_hooks)((k, h) for k, h in m._forward_pre_hooks.items() if h is not hook)
                baked += 1
    return module, baked


def quantized_modules(source) -> list[str]:
    """Names of the source's Linear and Conv modules, as the quantizer's module-name configs address them."""
    import torch

    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.MultiheadAttention)
    names = [name for name, m in source.module.named_modules() if isinstance(m, kinds)]
    # an attention layer's own projections are computed inside it, addressed by the layer's name (label_functional_linears)
    attention = [n for n, m in source.module.named_modules() if isinstance(m, torch.nn.MultiheadAttention)]
    return [n for n in names if not any(n.startswith(f"{a}.") for a in attention)]


def lowering_hazards(source_module, program) -> dict[str, str]:
    """Modules Inductor's INT8 lowering computes wrongly, kept in float whatever the search finds: {name: why}.

    A Conv2d with one input channel, compiled with symbolic sizes (a dynamic batch): Inductor assumes the
    oneDNN qconv returns a contiguous tensor when its input's channel dim is 1 (true of the float
    conv, which is not prepacked under dynamic shapes), but the prepacked qconv always returns
    channels-last, so the ops after it read it in the wrong order (torch 2.13, mkldnn_ir.py
    `_prepare_convolution_fusion_create`; CREPE's first conv: cosine 0.03 compiled, 0.9999 eager).
    Static shapes take the channels-last path on both sides and are right.

    A MaxPool2d with ceil_mode=True under symbolic sizes: the INT8 pool Inductor substitutes sizes
    its output from the example input (whether ceil mode adds a row), a guard the package never
    checks: SqueezeNet's INT8 feature maps were one row short at half the heights (0.99689
    compiled, 0.99995 eager). Kept in float, the pool runs Inductor's own size-oblivious lowering.
    """
    import torch

    dynamic = any(
        isinstance(d, torch.SymInt)
        for n in program.graph.nodes
        if n.op == "placeholder" and isinstance(n.meta.get("val"), torch.Tensor)
        for d in n.meta["val"].shape
    )
    if not dynamic:
        return {}
    conv = "one input channel and dynamic sizes: Inductor's qconv lowering assumes the wrong output layout (torch 2.13)"
    pool = "ceil_mode and dynamic sizes: the INT8 pool's output size is fixed from the example input (torch 2.13)"
    hazards = {}
    for name, m in source_module.named_modules():
        if isinstance(m, torch.nn.Conv2d) and m.in_channels == 1:
            hazards[name] = conv
        elif isinstance(m, torch.nn.MaxPool2d) and m.ceil_mode:
            hazards[name] = pool
    return hazards


def conv1d_modules(source_module) -> list[str]:
    import torch

    return [name for name, m in source_module.named_modules() if isinstance(m, torch.nn.Conv1d)]


def unquantizable_modules(source_module) -> str:
    """The conv layers X86InductorQuantizer leaves in float (it annotates conv1d/conv2d and linear),
    counted by type ("20 Conv3d"), or "" (R3D-18's "INT8" package: 1 INT8 kernel, 20 float Conv3d)."""
    import torch

    kinds = (torch.nn.Conv3d, torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
    counts: dict[str, int] = {}
    for m in source_module.modules():
        kind = next((k for k in kinds if isinstance(m, k)), None)
        if kind is not None:
            counts[kind.__name__] = counts.get(kind.__name__, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in counts.items())


@dataclass(frozen=True)
class Pt2eConfig:
    """One quantization tried by the search: dynamic or static activations, the modules kept in float."""

    dynamic: bool
    excluded: tuple[str, ...]
    why: str

    def to_dict(self) -> dict:
        return {"why": self.why, "activations": "dynamic" if self.dynamic else "static", "excluded": len(self.excluded)}


@dataclass
class Pt2eJob:
    """What one PT2E search quantizes and judges (eagerly, in q/dq form). `forced`: modules every
    configuration keeps in float (lowering_hazards)."""

    program: object
    calibration: list[tuple]
    samples: list[tuple]
    reference: list[dict]
    tol: object
    scores: list[str]
    output_names: list[str]
    forced: list[str]
    reduce_range: bool = False

    def config(self, dynamic: bool, excluded: list[str], why: str) -> Pt2eConfig:
        return Pt2eConfig(dynamic, tuple(self.forced + [e for e in excluded if e not in self.forced]), why)

    def evaluate(self, config: Pt2eConfig) -> tuple[ParityReport, object]:
        module = quantize(self.program, self.calibration, config.dynamic, list(config.excluded), self.reduce_range)
        return compare(self.reference, _run(module, self.samples, self.output_names), self.tol, self.scores), module


class Search(PrecisionSearch[Pt2eConfig, object]):
    """The precision search over PT2E configurations of one program."""

    def __init__(self, job: Pt2eJob, deadline: float):
        super().__init__(job.evaluate, Pt2eConfig.to_dict, deadline)
        self.job = job

    def try_(self, dynamic: bool, excluded: list[str], why: str):
        return self.run(self.job.config(dynamic, excluded, why))


@dataclass
class Pt2eOutcome:
    """What the search chose: the module to compile, the `quantization` record, and the chosen configuration's verdict."""

    module: object
    record: dict
    modules_in_float: list[str]
    report: ParityReport  # the chosen configuration, judged in eager (q/dq) form


def search(
    program,
    calibration,
    samples,
    reference,
    tol,
    scores,
    output_names,
    candidates: list[str],
    fallback: str,
    deadline: float,
    hazards: dict[str, str] | None = None,
    reduce_range: list[str] | None = None,
) -> Pt2eOutcome:
    """The quantized module to compile and the manifest's `quantization` record.

    hazards: {module: why} kept in float in every configuration (lowering_hazards);
    reduce_range: the fleet's classes without VNNI, for which activations are quantized in 7 bits.
    """
    hazards = hazards or {}
    s = Search(Pt2eJob(program, calibration, samples, reference, tol, scores, output_names, list(hazards), bool(reduce_range)), deadline)
    candidates = [c for c in candidates if c not in hazards]
    first = s.try_(False, [], "plain")
    report, module = first.report, first.artifact
    node_report = None
    if not report.passed:
        try:
            node_report = module_report(program, module, samples[0])[:REPORT_MODULES]
        except Exception as e:  # torchao's numeric debugger trips on some graphs (symbolic sizes): rank without it
            print(f"node report unavailable: {type(e).__name__}: {e}")
            node_report = []
        if fallback == "auto":
            _fallback(s, candidates, node_report)
    config, report, module = s.best.config, s.best.report, s.best.artifact
    record = {
        "mode": "int8",
        "format": "PT2E (torchao X86InductorQuantizer), lowered by Inductor freezing",
        "activations": f"{'uint7 (reduce_range)' if reduce_range else 'uint8'} {'dynamic' if config.dynamic else 'static'} per tensor",
        "weights": "int8 symmetric per channel",
        "fallback": fallback,
        "chosen": config.to_dict(),
        "attempts": s.attempts,
        "node_report": node_report,
        "quantized_layers": quantized_layers(module),
    }
    if reduce_range:
        record |= {"reduce_range": True, "reduce_range_for": list(reduce_range)}
    if hazards:
        record["kept_float_for_lowering"] = [{"module": m, "why": why} for m, why in hazards.items()]
    return Pt2eOutcome(module, record, list(config.excluded), report)


def quantized_layers(module) -> int:
    """How many layers of a converted module have INT8 weights (one per-channel weight dequantize each)."""
    return sum(1 for n in module.graph.nodes if n.op == "call_function" and "dequantize_per_channel" in str(n.target))


def roles(candidates: list[str]) -> dict[str, list[str]]:
    """Modules that play one role in repeated blocks (`encoder.layer.<i>.output.dense`), by role,
    for roles held by two or more modules."""
    groups: dict[str, list[str]] = {}
    for name in candidates:
        groups.setdefault(re.sub(r"(?<=\.)\d+(?=\.)", "*", name), []).append(name)
    return {role: names for role, names in groups.items() if len(names) > 1}


def _fallback(s: Search, candidates: list[str], node_report: list[dict]) -> None:
    """Dynamic activations; then roles in repeated blocks kept in float (every FFN down-projection
    of a transformer, say), alone and cumulatively; then single modules, ranked by how much keeping
    each alone in float improves the final outputs, kept in float cumulatively (1, 2, 4, ...).
    Never more than half of the modules. On a transformer the loss is spread over the layers
    (all-MiniLM-L6-v2: no single module is worth more than a quarter of it), so roles find what
    module-by-module probing would need every layer probed for."""
    if s.out_of_time():
        return
    s.try_(True, [], "dynamic activations")
    dynamic = s.best.config.dynamic
    base = s.try_(dynamic, [], "baseline for the module ranking").score if s.best.config.excluded else s.best.score
    cap = max(1, len(candidates) // 2)
    _by_role(s, dynamic, base, roles(candidates), cap)
    if s.passed or s.out_of_time():
        return
    _by_module(s, dynamic, base, candidates, node_report, cap)


def _by_role(s: Search, dynamic: bool, base: float, groups: dict[str, list[str]], cap: int) -> None:
    gains = []
    for role, names in groups.items():
        if s.passed or s.out_of_time():
            return
        if len(names) <= cap:
            score = s.try_(dynamic, names, f"every {role} in float").score
            gains.append((score - base, role))
    ranked = [r for gain, r in sorted(gains, key=lambda g: -g[0]) if gain > 0]
    kept: list[str] = []
    for i, role in enumerate(ranked):
        if s.passed or s.out_of_time() or len(kept) + len(groups[role]) > cap:
            return
        kept += groups[role]
        if i:  # the first role alone was run above
            s.try_(dynamic, list(kept), f"the {i + 1} most helpful roles in float")


def _by_module(s: Search, dynamic: bool, base: float, candidates: list[str], node_report: list[dict], cap: int) -> None:
    worst = [r["module"] for r in node_report if r["module"] in candidates] + [c for c in candidates if c not in {r["module"] for r in node_report}]
    gains = []
    for name in worst[:SENSITIVITY_CANDIDATES]:
        if s.passed or s.out_of_time():
            return
        score = s.try_(dynamic, [name], f"{name} in float").score
        gains.append((score - base, name))
    ranked = [n for _, n in sorted(gains, key=lambda g: -g[0])] + [n for n in worst if n not in {g[1] for g in gains}]
    k = 2
    while not s.passed and not s.out_of_time() and k <= min(cap, len(ranked)):
        s.try_(dynamic, ranked[:k], f"{k} most helpful modules in float")
        if k == min(cap, len(ranked)):
            break
        k = min(k * 2, cap, len(ranked))
