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

from typing import TYPE_CHECKING, TypeAlias

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

if TYPE_CHECKING:
    from google.protobuf.internal.containers import RepeatedCompositeFieldContainer, ScalarMap
    from google.protobuf.message import Message

_F: TypeAlias = descriptor_pb2.FieldDescriptorProto
ERROR_INFO_TYPE = "google.rpc.ErrorInfo"
BAD_REQUEST_TYPE = "google.rpc.BadRequest"


def _scalar(name: str, number: int, type_: _F.Type.ValueType) -> _F:
    return _F(name=name, number=number, type=type_, label=_F.LABEL_OPTIONAL)


def _repeated(name: str, number: int, message: str) -> _F:
    return _F(
        name=name, number=number, type=_F.TYPE_MESSAGE, label=_F.LABEL_REPEATED, type_name=f".google.rpc.{message}"
    )


def _message(
    name: str, *fields: _F, nested: tuple[descriptor_pb2.DescriptorProto, ...] = (), map_entry: bool = False
) -> descriptor_pb2.DescriptorProto:
    options = descriptor_pb2.MessageOptions(map_entry=True) if map_entry else None
    return descriptor_pb2.DescriptorProto(name=name, field=fields, nested_type=nested, options=options)


_STRING, _BYTES, _INT32 = _F.TYPE_STRING, _F.TYPE_BYTES, _F.TYPE_INT32
_FILE = descriptor_pb2.FileDescriptorProto(
    name="satchel/_rpc_status.proto",
    package="google.rpc",
    syntax="proto3",
    message_type=[
        _message("Detail", _scalar("type_url", 1, _STRING), _scalar("value", 2, _BYTES)),  # Any's two fields
        _message(
            "Status", _scalar("code", 1, _INT32), _scalar("message", 2, _STRING), _repeated("details", 3, "Detail")
        ),
        _message(
            "ErrorInfo",
            _scalar("reason", 1, _STRING),
            _scalar("domain", 2, _STRING),
            _repeated("metadata", 3, "ErrorInfo.MetadataEntry"),
            nested=(
                _message("MetadataEntry", _scalar("key", 1, _STRING), _scalar("value", 2, _STRING), map_entry=True),
            ),
        ),
        _message(
            "BadRequest",
            _repeated("field_violations", 1, "BadRequest.FieldViolation"),
            nested=(_message("FieldViolation", _scalar("field", 1, _STRING), _scalar("description", 2, _STRING)),),
        ),
    ],
)

_pool = descriptor_pool.DescriptorPool()
_pool.Add(_FILE)

if TYPE_CHECKING:
    # The classes below as a type checker sees them, declared as protoc's .pyi stubs would
    # declare them, with the fields of _FILE (GetMessageClass can only say `type[Message]`).

    class Detail(Message):
        type_url: str
        value: bytes

    class Status(Message):
        code: int
        message: str

        @property
        def details(self) -> RepeatedCompositeFieldContainer[Detail]: ...

    class ErrorInfo(Message):
        reason: str
        domain: str

        @property
        def metadata(self) -> ScalarMap[str, str]: ...

    class BadRequest(Message):
        class FieldViolation(Message):
            field: str
            description: str

        @property
        def field_violations(self) -> RepeatedCompositeFieldContainer[BadRequest.FieldViolation]: ...

else:
    Status = message_factory.GetMessageClass(_pool.FindMessageTypeByName("google.rpc.Status"))
    ErrorInfo = message_factory.GetMessageClass(_pool.FindMessageTypeByName("google.rpc.ErrorInfo"))
    BadRequest = message_factory.GetMessageClass(_pool.FindMessageTypeByName("google.rpc.BadRequest"))
