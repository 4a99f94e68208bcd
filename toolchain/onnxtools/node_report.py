"""Which nodes of a quantized graph lose the most accuracy.

Both graphs are run on one sample with every intermediate tensor exposed as a
graph output. The quantizers keep the FP32 graph's tensor names, so each
node's output can be compared across the two. A node's score is the error it
adds: the relative error of its output minus the largest relative error among
its inputs, so the error a node merely passes on is not blamed on it. (The
quantized graph runs a little differently with its intermediates exposed: ONNX
Runtime cannot fuse across a graph output. Good enough to rank nodes.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass
class NodeError:
    node: str
    op_type: str
    added_error: float  # relative L2 error of the output beyond that of its inputs
    output_error: float  # relative L2 error of the output against the FP32 graph
    quantized: bool  # whether the quantizer touched this node (what nodes_to_exclude can undo)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["added_error"] = round(self.added_error, 6)
        d["output_error"] = round(self.output_error, 6)
        return d


def _run_exposed(model, names: list[str], feed: dict, device: str) -> dict[str, np.ndarray]:
    """Run `model` (a ModelProto, changed in place) returning `names` too."""
    import onnx
    import onnxruntime as ort

    present = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in present)
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(model.SerializeToString(), providers=providers)
    wanted = {i.name for i in session.get_inputs()}
    values = session.run(None, {k: v for k, v in feed.items() if k in wanted})
    return {o.name: v for o, v in zip(session.get_outputs(), values)}


def _relative_error(ref: np.ndarray | None, got: np.ndarray | None) -> float | None:
    if ref is None or got is None or ref.shape != got.shape or not np.issubdtype(ref.dtype, np.floating):
        return None
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    if not (np.isfinite(ref64).all() and np.isfinite(got64).all()):
        return None  # masks hold -inf; their error says nothing about a node
    norm = np.linalg.norm(ref64)
    diff = np.linalg.norm(got64 - ref64)
    return float(diff / norm) if norm > 0 else float(diff)


def node_errors(fp32_path: Path, quant_path: Path, feed: dict, device: str = "cpu") -> list[NodeError]:
    """Every FP32 node with a comparable float output, worst added error first.

    A tensor is compared as the quantized graph's consumers read it: after its
    QuantizeLinear/DequantizeLinear pair when it has one. Its error is blamed
    on the node producing it in the quantized graph when that node exists in
    the FP32 graph (the quantizer may fold e.g. a Relu into its Conv), else on
    its FP32 producer (QOperator formats replace nodes with helpers).
    """
    import onnx

    fp32, quant = onnx.load(str(fp32_path)), onnx.load(str(quant_path))
    fp32_nodes = {n.name: n for n in fp32.graph.node}
    fp32_producer = {o: n.name for n in fp32.graph.node for o in n.output}
    quant_producer = {o: n for n in quant.graph.node for o in n.output}
    q_of = {n.input[0]: n.output[0] for n in quant.graph.node if n.op_type == "QuantizeLinear"}
    dq_of = {n.input[0]: n.output[0] for n in quant.graph.node if n.op_type == "DequantizeLinear"}

    def seen(t: str) -> str:
        return dq_of.get(q_of.get(t, ""), t)

    tensors = [t for t in fp32_producer if t in quant_producer]
    inputs = [i.name for i in fp32.graph.input if seen(i.name) != i.name]
    ref = {**feed, **_run_exposed(fp32, tensors, feed, device)}
    got = _run_exposed(quant, [seen(t) for t in tensors + inputs], feed, device)
    err = {t: e for t in tensors + inputs if (e := _relative_error(ref.get(t), got.get(seen(t)))) is not None}

    blamed: dict[str, list[float]] = {}
    for t in tensors:
        if t in err:
            producer = quant_producer[t].name
            blamed.setdefault(producer if producer in fp32_nodes else fp32_producer[t], []).append(err[t])
    # What nodes_to_exclude can undo: a node reading other tensors than in FP32
    # (dequantized activations, quantized weights), or one replaced outright.
    quant_nodes = {n.name: n for n in quant.graph.node}
    touched = {name for name, n in fp32_nodes.items() if name not in quant_nodes or list(quant_nodes[name].input) != list(n.input)}
    rows = []
    for name, outs in blamed.items():
        ins = [err[i] for i in fp32_nodes[name].input if i in err]
        added = max(outs) - max(ins, default=0.0)
        rows.append(NodeError(name, fp32_nodes[name].op_type, max(added, 0.0), max(outs), name in touched))
    return sorted(rows, key=lambda r: (-r.added_error, -r.output_error, r.node))
