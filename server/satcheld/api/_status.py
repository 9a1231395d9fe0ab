"""The one error map: domain errors become gRPC statuses here and nowhere else
(spiffe/spire's `MakeErr`). Each status carries exactly one
`google.rpc.ErrorInfo` (AIP-193); an invalid argument also a `BadRequest`.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..errors import InvalidArgument, SatchelError

DOMAIN = "satchel.dev"


def _packed(detail: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed


def status_of(error: SatchelError) -> grpc.Status:
    """The status a caller receives for `error`."""
    details = [_packed(error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata))]
    if isinstance(error, InvalidArgument):
        violations = [
            error_details_pb2.BadRequest.FieldViolation(field=field, description=why) for field, why in error.violations
        ]
        details.append(_packed(error_details_pb2.BadRequest(field_violations=violations)))
    status = status_pb2.Status(code=error.code.value[0], message=error.message, details=details)
    return rpc_status.to_status(status)


def internal_status() -> grpc.Status:
    """The status for a bug: no internal detail reaches the caller."""
    info = error_details_pb2.ErrorInfo(reason="INTERNAL", domain=DOMAIN)
    status = status_pb2.Status(code=code_pb2.INTERNAL, message="internal error", details=[_packed(info)])
    return rpc_status.to_status(status)
