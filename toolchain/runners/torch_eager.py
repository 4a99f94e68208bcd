"""The source model run eagerly: the reference every artifact is judged against."""

from __future__ import annotations

import numpy as np


class TorchEagerRunner:
    def __init__(self, module, input_names: list[str], output_names: list[str], device: str = "cpu"):
        self.module, self.input_names, self.output_names, self.device = module, input_names, output_names, device

    def __enter__(self):
        self.module = self.module.to(self.device)  # already in eval mode (see sources)
        return self

    def __exit__(self, *exc) -> None:
        pass

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from toolchain.tensors import to_numpy

        args = [torch.from_numpy(np.ascontiguousarray(feed[n])).to(self.device) for n in self.input_names]
        with torch.no_grad():
            out = self.module(*args)
        return {n: to_numpy(t) for n, t in zip(self.output_names, out)}
