"""Server reflection under both names, v1 and v1alpha, so every grpcurl works.

grpcio-reflection ships only v1alpha. The v1 protocol is the same messages
under package `grpc.reflection.v1`, so the v1 service reuses the v1alpha
servicer on the wire and registers a renamed copy of its descriptor.

The servicer answers from the default descriptor pool, for any symbol in it,
not only for the services it lists. That is how it serves the types of the
status details (`google.rpc.ErrorInfo`, `google.rpc.BadRequest`): grpcurl asks
for them by name to decode an error's details. They are imported here so that
they are in the pool whatever else the server imports. (buf curl never asks:
it decodes details only with the types compiled into it; see
tests/test_buf_curl.py.)
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.rpc import error_details_pb2  # noqa: F401  (served: see above)
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from ._methods import Registrar

V1_SERVICE = "grpc.reflection.v1.ServerReflection"


def _register_v1_descriptor() -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindServiceByName(V1_SERVICE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = "grpc.reflection.v1"
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = new + field.type_name[len(old) :]
    for service in proto.service:
        for method in service.method:
            method.input_type = new + method.input_type[len(old) :]
            method.output_type = new + method.output_type[len(old) :]
    pool.Add(proto)


def enable(registrar: Registrar, service_names: Iterable[str]) -> None:
    """Adds both reflection services, describing `service_names` and themselves."""
    _register_v1_descriptor()
    names = (*service_names, reflection.SERVICE_NAME, V1_SERVICE)
    servicer = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, registrar)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    registrar.add_registered_method_handlers(V1_SERVICE, {"ServerReflectionInfo": handler})
