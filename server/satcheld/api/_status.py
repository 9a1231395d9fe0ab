"""The one error map: domain errors become gRPC statuses here and nowhere else
(spiffe/spire's `MakeErr`). Each status carries exactly one
`google.rpc.ErrorInfo` (AIP-193); an invalid argument also a `BadRequest`.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..errors import InvalidArgument, SatchelError

DOMAIN = "satchel.dev"
REQUEST_ID_KEY = "x-request-id"


def _packed(detail: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed


@dataclass(frozen=True)
class Status(grpc.Status):
    """What `abort_with_status` sends: the code, the message, and the trailers
    (the details, and the request id, since abort replaces the trailers set before)."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def _with_request_id(status: grpc.Status, request_id: str) -> Status:
    return Status(status.code, status.details, (*status.trailing_metadata, (REQUEST_ID_KEY, request_id)))


def status_of(error: SatchelError, request_id: str) -> Status:
    """The status a caller receives for `error`."""
    details = [_packed(error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata))]
    if isinstance(error, InvalidArgument):
        violations = [
            error_details_pb2.BadRequest.FieldViolation(field=field, description=why) for field, why in error.violations
        ]
        details.append(_packed(error_details_pb2.BadRequest(field_violations=violations)))
    status = status_pb2.Status(code=error.code.value[0], message=error.message, details=details)
    return _with_request_id(rpc_status.to_status(status), request_id)


def internal_status(request_id: str) -> Status:
    """The status for a bug: no internal detail reaches the caller."""
    info = error_details_pb2.ErrorInfo(reason="INTERNAL", domain=DOMAIN)
    status = status_pb2.Status(code=code_pb2.INTERNAL, message="internal error", details=[_packed(info)])
    return _with_request_id(rpc_status.to_status(status), request_id)
