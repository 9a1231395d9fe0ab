"""The domain errors every room raises, and the gRPC code each stands for.

    SatchelError                      (code, reason, message)
    ├── InvalidArgument               INVALID_ARGUMENT, with field violations
    ├── NotFound                      NOT_FOUND
    ├── AlreadyExists                 ALREADY_EXISTS
    ├── Conflict                      ABORTED (etag mismatch)
    ├── FailedPrecondition            FAILED_PRECONDITION
    ├── PermissionDenied              PERMISSION_DENIED
    ├── Unauthenticated               UNAUTHENTICATED
    ├── OutOfRange                    OUT_OF_RANGE (e.g. REVISION_COMPACTED)
    ├── ResourceExhausted             RESOURCE_EXHAUSTED (e.g. WATCH_BUFFER_OVERFLOW)
    ├── Unavailable                   UNAVAILABLE
    ├── DataLoss                      DATA_LOSS (stored data that cannot be opened)
    └── Unimplemented                 UNIMPLEMENTED

Every room raises these; `satcheld.api` alone turns them into gRPC statuses
(each with one `google.rpc.ErrorInfo`, AIP-193, and for invalid arguments a
`google.rpc.BadRequest`). Messages are written for callers and never contain
secret values or internal error text.
"""

from __future__ import annotations

from typing import ClassVar

import grpc


class SatchelError(Exception):
    """A failure the caller should see, with its gRPC code and a stable reason."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN
    default_reason: ClassVar[str] = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})


class InvalidArgument(SatchelError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        violations: list[tuple[str, str]],
        *,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.violations = list(violations)
        text = "; ".join(f"{field}: {why}" for field, why in self.violations)
        super().__init__(f"invalid argument: {text}", reason=reason, metadata=metadata)


class NotFound(SatchelError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(SatchelError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class Conflict(SatchelError):
    code = grpc.StatusCode.ABORTED
    default_reason = "ETAG_MISMATCH"


class FailedPrecondition(SatchelError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class PermissionDenied(SatchelError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Unauthenticated(SatchelError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class OutOfRange(SatchelError):
    code = grpc.StatusCode.OUT_OF_RANGE
    default_reason = "OUT_OF_RANGE"


class ResourceExhausted(SatchelError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class Unavailable(SatchelError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class DataLoss(SatchelError):
    code = grpc.StatusCode.DATA_LOSS
    default_reason = "DATA_UNREADABLE"


class Unimplemented(SatchelError):
    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "NOT_IMPLEMENTED"
