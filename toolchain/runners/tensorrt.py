"""TensorRT engines (model.plan) through the TensorRT 10 runtime.

Device buffers are torch CUDA tensors (torch is already a dependency), bound
by name with set_tensor_address and run with execute_async_v3 on torch's
current stream. Before deserializing, the engine's recorded TensorRT version
and compute capability are checked against this machine's: TensorRT refuses a
foreign engine with a less helpful message, or not at all across some GPUs.

Not run in this workplace: TensorRT cannot be installed here (see the README).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolchain.errors import StepError
from toolchain.kinds import tensorrt as kind


class TensorRTRunner:
    def __init__(
        self, path: Path, input_names: list[str], output_names: list[str], device: str = "cuda", threads: int | None = None, built_with: dict | None = None
    ):
        self.path, self.output_names, self.built_with = Path(path), output_names, built_with
        self.engine = self.context = None

    def __enter__(self):
        import tensorrt as trt

        if self.built_with:
            problem = kind.compatibility_problem(self.built_with, kind.engine_env())
            if problem:
                raise StepError(f"{self.path}: {problem}")
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise StepError(f"{self.path}: TensorRT could not deserialize the engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        return self

    def __exit__(self, *exc) -> None:
        self.context = self.engine = self._runtime = None

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorrt as trt
        import torch

        bound = {}
        for name in self.inputs:
            t = torch.from_numpy(np.ascontiguousarray(feed[name])).cuda()
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
            bound[name] = t
        for name in self.output_names:
            dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
            t = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, t.data_ptr())
            bound[name] = t
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise StepError(f"{self.path}: TensorRT execution failed")
        stream.synchronize()
        return {name: bound[name].cpu().numpy() for name in self.output_names}
