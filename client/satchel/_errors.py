"""The exceptions the client raises: one per gRPC status code, made from `grpc.RpcError`.

    SatchelError                          any failed call; unknown codes (UNKNOWN)
    ├── InvalidArgumentError              INVALID_ARGUMENT, with `field_violations`
    ├── NotFoundError                     NOT_FOUND
    ├── AlreadyExistsError                ALREADY_EXISTS
    ├── ConflictError                     ABORTED (etag mismatch)
    ├── PermissionDeniedError             PERMISSION_DENIED
    ├── UnauthenticatedError              UNAUTHENTICATED
    ├── ResourceExhaustedError            RESOURCE_EXHAUSTED (e.g. WATCH_BUFFER_OVERFLOW)
    ├── FailedPreconditionError           FAILED_PRECONDITION
    ├── OutOfRangeError                   OUT_OF_RANGE
    │   └── RevisionCompactedError        reason REVISION_COMPACTED, with `compact_revision`
    ├── UnavailableError                  UNAVAILABLE
    ├── DeadlineExceededError             DEADLINE_EXCEEDED
    ├── RequestCancelledError             CANCELLED (not asyncio.CancelledError)
    ├── UnimplementedError                UNIMPLEMENTED
    ├── InternalError                     INTERNAL
    └── DataLossError                     DATA_LOSS (stored data the server cannot open)

Every error carries the server's `google.rpc.ErrorInfo` (domain `satchel.dev`) as `reason` and
`metadata`, and the `google.rpc.BadRequest` field violations where the server sent them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from ._rpc_status import BAD_REQUEST_TYPE, ERROR_INFO_TYPE, BadRequest, ErrorInfo, Status

_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_REQUEST_ID_KEY = "x-request-id"


class SatchelError(Exception):
    """A call to the Satchel server failed."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: Iterable[tuple[str, str]] = (),
        request_id: str = "",
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})
        self.field_violations = list(field_violations)
        self.request_id = request_id

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        if self.request_id:
            text += f" (request id {self.request_id})"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code.name}, reason={self.reason!r})"


class InvalidArgumentError(SatchelError):
    """The request is malformed; `field_violations` says which fields and why."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(SatchelError):
    """The object does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(SatchelError):
    """An object of that name already exists."""

    code = grpc.StatusCode.ALREADY_EXISTS


class ConflictError(SatchelError):
    """The object changed since it was read: the etag given no longer matches."""

    code = grpc.StatusCode.ABORTED


class PermissionDeniedError(SatchelError):
    """The caller may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class UnauthenticatedError(SatchelError):
    """The server could not tell who the caller is (certificate or token)."""

    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhaustedError(SatchelError):
    """A limit was hit, such as a watcher falling behind its buffer."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPreconditionError(SatchelError):
    """The object is not in a state that allows this, such as changing an immutable secret."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class OutOfRangeError(SatchelError):
    """A value is past the valid range."""

    code = grpc.StatusCode.OUT_OF_RANGE


class RevisionCompactedError(OutOfRangeError):
    """A watch asked for history the server no longer keeps; relist instead."""

    @property
    def compact_revision(self) -> int:
        """The oldest revision the server can still resume from (0 if it did not say)."""
        try:
            return int(self.metadata.get("compact_revision", 0))
        except ValueError:
            return 0


class UnavailableError(SatchelError):
    """The server cannot be reached or is shutting down; the call may be retried."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(SatchelError):
    """The call did not finish within its timeout."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class RequestCancelledError(SatchelError):
    """The call was cancelled."""

    code = grpc.StatusCode.CANCELLED


class UnimplementedError(SatchelError):
    """The server does not implement this call."""

    code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(SatchelError):
    """The server failed; it keeps the detail in its logs."""

    code = grpc.StatusCode.INTERNAL


class DataLossError(SatchelError):
    """Stored data cannot be read back (e.g. a secret sealed under a key no longer in the key ring)."""

    code = grpc.StatusCode.DATA_LOSS


_BY_CODE: dict[grpc.StatusCode, type[SatchelError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        AlreadyExistsError,
        ConflictError,
        PermissionDeniedError,
        UnauthenticatedError,
        ResourceExhaustedError,
        FailedPreconditionError,
        OutOfRangeError,
        UnavailableError,
        DeadlineExceededError,
        RequestCancelledError,
        UnimplementedError,
        InternalError,
        DataLossError,
    )
}


def from_rpc_error(error: Any) -> SatchelError:
    """The typed exception for a failed call (a `grpc.RpcError` that is also a `grpc.Call`)."""
    code = error.code() if callable(getattr(error, "code", None)) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    message = (error.details() if callable(getattr(error, "details", None)) else None) or ""
    trailing = error.trailing_metadata() if callable(getattr(error, "trailing_metadata", None)) else None

    reason, metadata, violations, request_id = "", {}, [], ""
    for key, value in trailing or ():
        if key == _REQUEST_ID_KEY:
            request_id = value.decode() if isinstance(value, bytes) else value
        elif key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            status = _parse_status(value)
            if status is None:
                continue
            message = message or status.message
            for detail in status.details:
                type_name = detail.type_url.rpartition("/")[2]  # as Any.Is: any URL prefix
                try:
                    if type_name == ERROR_INFO_TYPE:
                        info = ErrorInfo.FromString(detail.value)
                        reason, metadata = info.reason, dict(info.metadata)
                    elif type_name == BAD_REQUEST_TYPE:
                        bad = BadRequest.FromString(detail.value)
                        violations += [(v.field, v.description) for v in bad.field_violations]
                except DecodeError:
                    continue

    cls = _BY_CODE.get(code, SatchelError)
    if code is grpc.StatusCode.OUT_OF_RANGE and reason == "REVISION_COMPACTED":
        cls = RevisionCompactedError
    return cls(
        message or code.name.lower().replace("_", " "),
        code=code,
        reason=reason,
        metadata=metadata,
        field_violations=violations,
        request_id=request_id,
    )


def _parse_status(data: bytes) -> Status | None:
    try:
        return Status.FromString(data)
    except DecodeError:
        return None
