"""The source model run eagerly: the reference every artifact is judged against."""

from __future__ import annotations

import numpy as np

from toolchain.tensors import to_numpy


class TorchEagerRunner:
    def __init__(self, module, input_names: list[str], output_names: list[str], device: str = "cpu", threads: int | None = None):
        self.module, self.input_names, self.output_names, self.device, self.threads = module, input_names, output_names, device, threads

    def __enter__(self):
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        self.module = self.module.to(self.device)  # already in eval mode (see sources)
        return self

    def __exit__(self, *exc) -> None:
        pass

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        args = [torch.from_numpy(np.ascontiguousarray(feed[n])).to(self.device) for n in self.input_names]
        with torch.no_grad():
            out = self.module(*args)
        return {n: to_numpy(t) for n, t in zip(self.output_names, out)}
