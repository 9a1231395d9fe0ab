"""The three google.rpc messages the client reads from a failed call's
`grpc-status-details-bin` trailer: Status, ErrorInfo and BadRequest.

Built here with the fields the client reads, under googleapis' field numbers
(google/rpc/status.proto and error_details.proto), in a descriptor pool of
their own: the client then needs only grpcio and protobuf (no
googleapis-common-protos), and does not clash with that package's definitions
where it is installed too (as in the server). A detail, a google.protobuf.Any
on the wire, is read as its two fields and known by its type URL's last part.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
ERROR_INFO_TYPE = "google.rpc.ErrorInfo"
BAD_REQUEST_TYPE = "google.rpc.BadRequest"


def _field(name: str, number: int, type_: int, *, repeated: bool = False, message: str = "") -> _F:
    label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
    return _F(name=name, number=number, type=type_, label=label, type_name=message or None)


def _file() -> descriptor_pb2.FileDescriptorProto:
    string, bytes_, int32, message = _F.TYPE_STRING, _F.TYPE_BYTES, _F.TYPE_INT32, _F.TYPE_MESSAGE
    entry = descriptor_pb2.DescriptorProto(
        name="MetadataEntry",
        field=[_field("key", 1, string), _field("value", 2, string)],
        options=descriptor_pb2.MessageOptions(map_entry=True),
    )
    violation = descriptor_pb2.DescriptorProto(
        name="FieldViolation", field=[_field("field", 1, string), _field("description", 2, string)]
    )
    return descriptor_pb2.FileDescriptorProto(
        name="satchel/_rpc_status.proto",
        package="google.rpc",
        syntax="proto3",
        message_type=[
            # google.protobuf.Any's two fields, under a name of this file.
            descriptor_pb2.DescriptorProto(name="Detail", field=[_field("type_url", 1, string), _field("value", 2, bytes_)]),
            descriptor_pb2.DescriptorProto(
                name="Status",
                field=[
                    _field("code", 1, int32),
                    _field("message", 2, string),
                    _field("details", 3, message, repeated=True, message=".google.rpc.Detail"),
                ],
            ),
            descriptor_pb2.DescriptorProto(
                name="ErrorInfo",
                field=[
                    _field("reason", 1, string),
                    _field("domain", 2, string),
                    _field("metadata", 3, message, repeated=True, message=".google.rpc.ErrorInfo.MetadataEntry"),
                ],
                nested_type=[entry],
            ),
            descriptor_pb2.DescriptorProto(
                name="BadRequest",
                field=[
                    _field(
                        "field_violations", 1, message, repeated=True, message=".google.rpc.BadRequest.FieldViolation"
                    )
                ],
                nested_type=[violation],
            ),
        ],
    )


_pool = descriptor_pool.DescriptorPool()
_pool.Add(_file())
Status = message_factory.GetMessageClass(_pool.FindMessageTypeByName("google.rpc.Status"))
ErrorInfo = message_factory.GetMessageClass(_pool.FindMessageTypeByName("google.rpc.ErrorInfo"))
BadRequest = message_factory.GetMessageClass(_pool.FindMessageTypeByName("google.rpc.BadRequest"))
