"""The servers' own config protos: every config mlpack writes or reads is one of
these messages, printed or parsed with protobuf's text_format.

- Triton's ModelConfig: tritonclient's generated `model_config_pb2`, loaded from
  its file so that `tritonclient.grpc` (and grpc, 0.2 s) is not imported.
- TF Serving's ModelServerConfig: tensorflow-serving-api's `model_server_config_pb2`
  (imports no TensorFlow).
- TF Serving's BatchingParameters: not shipped by any wheel; built here from its
  field list (tensorflow_serving/servables/tensorflow/session_bundle_config.proto:
  names, numbers and types), so an unknown or misspelt field fails to parse as
  it does in the server.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from functools import lru_cache
from pathlib import Path

from google.protobuf import text_format

from toolchain.errors import UsageError

TRITONCLIENT_HINT = "pip install tritonclient (a dependency of mlpack: reinstall mlpack)"
TF_SERVING_HINT = "pip install 'mlpack[tensorflow]' (tensorflow-serving-api holds TF Serving's config protos)"


@lru_cache(maxsize=1)
def triton_pb2():
    """Triton's model_config_pb2 module."""
    name = "tritonclient.grpc.model_config_pb2"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("tritonclient")
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py" if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise UsageError("Triton's model config proto is not importable here (tritonclient is missing)", TRITONCLIENT_HINT)
    # Registered under its own name: a later `import tritonclient.grpc` reuses it
    # instead of adding model_config.proto to the descriptor pool a second time.
    loader_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    try:
        loader_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def model_config():
    """A new, empty Triton ModelConfig."""
    return triton_pb2().ModelConfig()


@lru_cache(maxsize=1)
def tfserving_config_pb2():
    try:
        return importlib.import_module("tensorflow_serving.config.model_server_config_pb2")
    except ImportError as e:
        raise UsageError(f"TF Serving's config protos are not importable here ({e})", TF_SERVING_HINT) from None


@lru_cache(maxsize=1)
def batching_parameters_class():
    """TF Serving's BatchingParameters message class."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    F = descriptor_pb2.FieldDescriptorProto
    fields = [
        ("max_batch_size", 1, F.TYPE_MESSAGE, ".google.protobuf.Int64Value", F.LABEL_OPTIONAL),
        ("batch_timeout_micros", 2, F.TYPE_MESSAGE, ".google.protobuf.Int64Value", F.LABEL_OPTIONAL),
        ("max_enqueued_batches", 3, F.TYPE_MESSAGE, ".google.protobuf.Int64Value", F.LABEL_OPTIONAL),
        ("num_batch_threads", 4, F.TYPE_MESSAGE, ".google.protobuf.Int64Value", F.LABEL_OPTIONAL),
        ("thread_pool_name", 5, F.TYPE_MESSAGE, ".google.protobuf.StringValue", F.LABEL_OPTIONAL),
        ("allowed_batch_sizes", 6, F.TYPE_INT64, None, F.LABEL_REPEATED),
        ("pad_variable_length_inputs", 7, F.TYPE_BOOL, None, F.LABEL_OPTIONAL),
    ]
    fd = descriptor_pb2.FileDescriptorProto(name="mlpack/tensorflow_serving_batching.proto", package="tensorflow.serving", syntax="proto3")
    fd.dependency.append(wrappers_pb2.DESCRIPTOR.name)
    msg = fd.message_type.add(name="BatchingParameters")
    for name, number, typ, type_name, label in fields:
        f = msg.field.add(name=name, number=number, type=typ, label=label)
        if type_name:
            f.type_name = type_name
    pool = descriptor_pool.DescriptorPool()  # its own pool: never collides with a real TF Serving proto
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(wrappers_pb2.DESCRIPTOR.serialized_pb))
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def to_text(message, comments: list[str] = ()) -> str:
    """The message as text proto (deterministic: fields in number order), comment lines first."""
    return "".join(f"{c}\n" for c in comments) + text_format.MessageToString(message)


def parse(text: str, message):
    """Parse text proto into `message` (a new, empty one); ValueError naming the message when it does not parse."""
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        raise ValueError(f"does not parse as {message.DESCRIPTOR.full_name}: {e}") from None
    return message


def set_version_policy(policy_message, policy) -> None:
    """Fill a Triton ModelVersionPolicy or a TF Serving ServableVersionPolicy (same fields) from the recipe's policy."""
    specific = getattr(policy, "specific", None)
    if specific is not None:
        policy_message.specific.versions.extend(sorted(set(specific)))
    elif policy == "all":
        policy_message.all.SetInParent()
    else:
        policy_message.latest.num_versions = 1
