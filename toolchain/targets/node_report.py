"""Which nodes of a quantized graph lose the most accuracy.

Both graphs are run on one sample with every intermediate tensor exposed as a
graph output. The quantizers keep the FP32 graph's tensor names, so each
node's output can be compared across the two. A node's score is the error it
adds: the relative error of its output minus the largest relative error among
its inputs, so the error a node merely passes on is not blamed on it.
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
    """Every FP32 node with a comparable float output, worst added error first."""
    import onnx

    fp32, quant = onnx.load(str(fp32_path)), onnx.load(str(quant_path))
    weights = {i.name for i in fp32.graph.initializer}
    producer = {o: n.op_type for n in quant.graph.node for o in n.output}
    names = [o for n in fp32.graph.node for o in n.output if o in producer]
    quant_names = {n.name for n in quant.graph.node}
    # QDQ keeps a node and feeds it DequantizeLinear outputs; QOperator
    # formats (int8-dynamic) replace it, so its name disappears.
    touched = {n.name for n in quant.graph.node if any(producer.get(i) == "DequantizeLinear" for i in n.input)}
    touched |= {n.name for n in fp32.graph.node} - quant_names
    ref = _run_exposed(fp32, names, feed, device)
    got = _run_exposed(quant, names, feed, device)
    err = {n: e for n in names if (e := _relative_error(ref.get(n), got.get(n))) is not None}
    rows = []
    for node in fp32.graph.node:
        outs = [err[o] for o in node.output if o in err]
        if not outs:
            continue
        ins = [err[i] for i in node.input if i and i not in weights and i in err]
        added = max(outs) - max(ins, default=0.0)
        rows.append(NodeError(node.name, node.op_type, max(added, 0.0), max(outs), node.name in touched))
    return sorted(rows, key=lambda r: (-r.added_error, -r.output_error, r.node))
