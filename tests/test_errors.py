"""satchel._errors.from_rpc_error: status codes to exception classes, google.rpc details parsed."""

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

import satchel
from satchel import from_rpc_error


class FakeRpcError(grpc.RpcError):
    """What grpc raises for a failed call: an RpcError that is also a grpc.Call."""

    def __init__(self, code, details="", trailing=()):
        self._code, self._details, self._trailing = code, details, tuple(trailing)

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailing


def packed(message):
    detail = any_pb2.Any()
    detail.Pack(message)
    return detail


def status_bin(code, message, *details):
    status = status_pb2.Status(code=code.value[0], message=message, details=[packed(d) for d in details])
    return status.SerializeToString()


def error_info(reason, **metadata):
    return error_details_pb2.ErrorInfo(reason=reason, domain="satchel.dev", metadata=metadata)


def failed(code, message, *details, request_id=None):
    trailing = [("grpc-status-details-bin", status_bin(code, message, *details))]
    if request_id:
        trailing.append(("x-request-id", request_id))
    return FakeRpcError(code, message, trailing)


CLASSES = [
    (grpc.StatusCode.INVALID_ARGUMENT, satchel.InvalidArgumentError),
    (grpc.StatusCode.NOT_FOUND, satchel.NotFoundError),
    (grpc.StatusCode.ALREADY_EXISTS, satchel.AlreadyExistsError),
    (grpc.StatusCode.ABORTED, satchel.ConflictError),
    (grpc.StatusCode.PERMISSION_DENIED, satchel.PermissionDeniedError),
    (grpc.StatusCode.UNAUTHENTICATED, satchel.UnauthenticatedError),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, satchel.ResourceExhaustedError),
    (grpc.StatusCode.FAILED_PRECONDITION, satchel.FailedPreconditionError),
    (grpc.StatusCode.OUT_OF_RANGE, satchel.OutOfRangeError),
    (grpc.StatusCode.UNAVAILABLE, satchel.UnavailableError),
    (grpc.StatusCode.DEADLINE_EXCEEDED, satchel.DeadlineExceededError),
    (grpc.StatusCode.CANCELLED, satchel.RequestCancelledError),
    (grpc.StatusCode.UNIMPLEMENTED, satchel.UnimplementedError),
    (grpc.StatusCode.INTERNAL, satchel.InternalError),
    (grpc.StatusCode.UNKNOWN, satchel.SatchelError),
    (grpc.StatusCode.DATA_LOSS, satchel.DataLossError),
]


@pytest.mark.parametrize(("code", "cls"), CLASSES, ids=[code.name for code, _ in CLASSES])
def test_each_status_code_has_its_class_with_error_info(code, cls):
    error = from_rpc_error(failed(code, "it went wrong", error_info("SOME_REASON", key="value"), request_id="r-1"))

    assert type(error) is cls
    assert isinstance(error, satchel.SatchelError)
    assert error.code is code
    assert error.message == "it went wrong"
    assert error.reason == "SOME_REASON"
    assert error.metadata == {"key": "value"}
    assert error.field_violations == []
    assert error.request_id == "r-1"
    assert str(error) == f"{code.name}: it went wrong (request id r-1)"


def test_bad_request_field_violations():
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="secret.metadata.name", description="must be DNS-1123"),
            error_details_pb2.BadRequest.FieldViolation(field="secret.data", description="key '..x' is not allowed"),
        ]
    )
    error = from_rpc_error(
        failed(grpc.StatusCode.INVALID_ARGUMENT, "invalid secret", error_info("INVALID_ARGUMENT"), bad)
    )

    assert isinstance(error, satchel.InvalidArgumentError)
    assert error.reason == "INVALID_ARGUMENT"
    assert error.field_violations == [
        ("secret.metadata.name", "must be DNS-1123"),
        ("secret.data", "key '..x' is not allowed"),
    ]


def test_revision_compacted_is_an_out_of_range_error_with_the_compact_revision():
    error = from_rpc_error(
        failed(
            grpc.StatusCode.OUT_OF_RANGE,
            "revision 3 is compacted",
            error_info("REVISION_COMPACTED", compact_revision="1200"),
        )
    )

    assert type(error) is satchel.RevisionCompactedError
    assert isinstance(error, satchel.OutOfRangeError)
    assert error.compact_revision == 1200


def test_out_of_range_for_another_reason_is_not_revision_compacted():
    error = from_rpc_error(failed(grpc.StatusCode.OUT_OF_RANGE, "page size too large", error_info("PAGE_SIZE")))
    assert type(error) is satchel.OutOfRangeError


def test_resource_exhausted_keeps_its_reason():
    error = from_rpc_error(
        failed(grpc.StatusCode.RESOURCE_EXHAUSTED, "watcher fell behind", error_info("WATCH_BUFFER_OVERFLOW"))
    )
    assert isinstance(error, satchel.ResourceExhaustedError)
    assert error.reason == "WATCH_BUFFER_OVERFLOW"


def test_without_details_the_code_and_message_still_count():
    error = from_rpc_error(FakeRpcError(grpc.StatusCode.NOT_FOUND, "secret default/db not found"))

    assert isinstance(error, satchel.NotFoundError)
    assert error.message == "secret default/db not found"
    assert (error.reason, error.metadata, error.field_violations, error.request_id) == ("", {}, [], "")


def test_message_comes_from_the_status_when_details_are_empty():
    error = from_rpc_error(
        FakeRpcError(
            grpc.StatusCode.ABORTED,
            "",
            [("grpc-status-details-bin", status_bin(grpc.StatusCode.ABORTED, "etag mismatch", error_info("ETAG")))],
        )
    )
    assert isinstance(error, satchel.ConflictError)
    assert error.message == "etag mismatch"
    assert error.reason == "ETAG"


def test_malformed_status_details_are_ignored():
    error = from_rpc_error(
        FakeRpcError(grpc.StatusCode.UNAVAILABLE, "going away", [("grpc-status-details-bin", b"\xff\xff not a status")])
    )
    assert isinstance(error, satchel.UnavailableError)
    assert error.message == "going away"
    assert error.reason == ""


def test_request_id_as_bytes_is_decoded():
    error = from_rpc_error(FakeRpcError(grpc.StatusCode.INTERNAL, "boom", [("x-request-id", b"abc123")]))
    assert error.request_id == "abc123"
