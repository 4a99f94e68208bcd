"""A test double of Triton's triton_python_backend_utils (only present inside a
Triton server), so generated model.py files can be driven in-process."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path


class StubPbUtils:
    """Just enough of triton_python_backend_utils to drive model.py outside Triton."""

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    class TritonError:
        def __init__(self, msg):
            self.msg = msg

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.outputs = {t.name: t.array for t in output_tensors}
            self.error = error

    @staticmethod
    def triton_string_to_numpy(name):
        import numpy as np

        return {"TYPE_FP32": np.float32, "TYPE_INT64": np.int64, "TYPE_BOOL": np.bool_}[name]

    @staticmethod
    def get_input_tensor_by_name(request, name):
        return request.get(name)


def load_model_py(model_dir: Path, config_text: str, monkeypatch, instance_kind: str = "CPU"):
    """Import <model_dir>/1/model.py with the stand-in and call initialize() as Triton would."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2 as mc

    cfg = text_format.Parse(config_text, mc.ModelConfig())
    config_json = json_format.MessageToDict(cfg, preserving_proto_field_name=True)
    config_json.setdefault("max_batch_size", 0)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", StubPbUtils)
    mod = types.ModuleType("generated_model")
    exec(compile((model_dir / "1" / "model.py").read_text(), "model.py", "exec"), mod.__dict__)
    m = mod.TritonPythonModel()
    m.initialize(
        {
            "model_config": json.dumps(config_json),
            "model_repository": str(model_dir),
            "model_version": "1",
            "model_instance_kind": instance_kind,
            "model_instance_device_id": "0",
        }
    )
    return m
