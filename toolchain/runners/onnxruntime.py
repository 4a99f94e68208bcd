"""ONNX Runtime: CPU provider, or CUDA first where the target asks for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class OnnxRuntimeRunner:
    def __init__(self, path: Path, input_names: list[str], output_names: list[str], device: str = "cpu", threads: int | None = None,
                 rows: bool = False):  # fmt: skip
        self.path, self.input_names, self.output_names, self.device, self.threads = Path(path), input_names, output_names, device, threads
        # rows: the graph takes one batch row per call (ORT GenAI builder's GroupQueryAttention when it extends a
        # cache by several tokens); rows are independent, so the batch runs row by row and is stacked back.
        self.rows = rows
        self.session = None

    def __enter__(self):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # Explicit, as servers should be: INT8 graphs reach integer kernels only through
        # level-2 fusions (onnxtools/kernels.py), so parity judges what a default server runs.
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            opts.intra_op_num_threads = self.threads
        providers = ["CPUExecutionProvider"]
        if self.device == "cuda":
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        # The graph's own input names: a plugin's graph may order them differently.
        self.feed_names = [i.name for i in self.session.get_inputs()]
        return self

    def __exit__(self, *exc) -> None:
        self.session = None

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = feed[self.feed_names[0]].shape[0] if self.rows and feed[self.feed_names[0]].ndim else 1
        if batch > 1:
            parts = [self.infer({n: feed[n][i : i + 1] for n in self.feed_names}) for i in range(batch)]
            return {n: np.concatenate([p[n] for p in parts]) for n in self.output_names}
        out = self.session.run(self.output_names, {n: np.ascontiguousarray(feed[n]) for n in self.feed_names})
        return dict(zip(self.output_names, out))
