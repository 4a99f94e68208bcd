"""TF Serving's BatchingParameters, which the tensorflow-serving-api wheel does not ship.

Mirrors tensorflow_serving/servables/tensorflow/session_bundle_config.proto
(field names, numbers and types) so tests can parse batching_parameters.txt
the way the server does: an unknown or misspelt field fails to parse.
"""

from __future__ import annotations


def batching_parameters_class():
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
    fd = descriptor_pb2.FileDescriptorProto(name="mlpack_test_batching.proto", package="mlpack_test", syntax="proto3")
    fd.dependency.append(wrappers_pb2.DESCRIPTOR.name)
    msg = fd.message_type.add(name="BatchingParameters")
    for name, number, typ, type_name, label in fields:
        f = msg.field.add(name=name, number=number, type=typ, label=label)
        if type_name:
            f.type_name = type_name
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(wrappers_pb2.DESCRIPTOR.serialized_pb))
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("mlpack_test.BatchingParameters"))
