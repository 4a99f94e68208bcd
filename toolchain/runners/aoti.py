"""AOTInductor .pt2 packages through torch._inductor.aoti_load_package.

Inputs are made contiguous: a package fed a layout other than its export
example's returns silently wrong numbers (see FIELD_NOTES).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolchain.runners.pair import TwoPrograms
from toolchain.tensors import to_numpy


class AotiRunner:
    def __init__(self, path: Path, input_names: list[str], output_names: list[str], device: str = "cpu", threads: int | None = None):
        self.path, self.input_names, self.output_names, self.device, self.threads = Path(path), input_names, output_names, device, threads
        self.model = None

    def __enter__(self):
        import torch
        import torch._inductor

        if self.threads:
            torch.set_num_threads(self.threads)
        self.model = torch._inductor.aoti_load_package(str(self.path))
        return self

    def __exit__(self, *exc) -> None:
        self.model = None

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        args = [torch.from_numpy(np.require(feed[n], requirements="W")).to(self.device).contiguous() for n in self.input_names]  # read-only arrays are copied
        with torch.no_grad():
            out = self.model(*args)
        if isinstance(out, torch.Tensor):
            out = [out]
        return {n: to_numpy(t) for n, t in zip(self.output_names, out)}


class AotiDecoderRunner(TwoPrograms):
    """A decoder built as two packages (task: text-generation): `decode` for one new token, `prefill` for several.
    transformers' attention takes another path for one query token than for many, so one program cannot hold both;
    each call goes to the package that holds its shape. `path` is the folder holding both."""

    def __init__(self, path: Path, input_names: list[str], output_names: list[str], device: str = "cpu", threads: int | None = None,
                 prefill: str = "prefill.pt2", decode: str = "decode.pt2"):  # fmt: skip
        folder = Path(path)
        super().__init__(AotiRunner(folder / prefill, input_names, output_names, device, threads),
                         AotiRunner(folder / decode, input_names, output_names, device, threads))  # fmt: skip

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        one = np.asarray(feed["input_ids"]).shape[1] == 1
        return (self.decode if one else self.prefill).infer(feed)
