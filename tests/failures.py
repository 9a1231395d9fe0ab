"""What a failed call says: its code, its one ErrorInfo and its BadRequest fields.

`await failure(call, code)` runs a call that must fail with `code` and checks
the rule every error of the server follows: exactly one `google.rpc.ErrorInfo`
(domain `satchel.dev`) in the `grpc-status-details-bin` trailer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "satchel.dev"
_DETAILS = "grpc-status-details-bin"


@dataclass(frozen=True)
class Failure:
    code: grpc.StatusCode
    message: str
    info: error_details_pb2.ErrorInfo
    violations: list[tuple[str, str]]  # (field, description) from BadRequest
    trailers: dict[str, str | bytes]

    @property
    def fields(self) -> list[str]:
        return [field for field, _ in self.violations]


def parse(error: grpc.aio.AioRpcError) -> Failure:
    """Checks and unpacks the status details of `error`."""
    trailers = dict(error.trailing_metadata() or ())
    assert _DETAILS in trailers, f"{error.code().name} without {_DETAILS}: {error.details()!r}"
    status = status_pb2.Status.FromString(trailers[_DETAILS])
    assert status.code == error.code().value[0], "status details disagree with the status code"
    assert status.message == error.details()
    infos, violations = [], []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend((v.field, v.description) for v in bad.field_violations)
    assert len(infos) == 1, f"{error.code().name} carries {len(infos)} ErrorInfo details, not one"
    assert infos[0].domain == DOMAIN
    assert infos[0].reason, "ErrorInfo without a reason"
    return Failure(error.code(), error.details() or "", infos[0], violations, trailers)


async def failure(call: Awaitable[object], code: grpc.StatusCode) -> Failure:
    """Awaits `call`, which must fail with `code`; returns what the failure says."""
    try:
        await call
    except grpc.aio.AioRpcError as e:
        assert e.code() == code, f"expected {code.name}, got {e.code().name}: {e.details()}"
        return parse(e)
    raise AssertionError(f"expected {code.name}, but the call succeeded")


def digest(data: Mapping[str, bytes]) -> dict[str, str]:
    """Secret data as hashes, so that a failed comparison never prints a value."""
    return {key: hashlib.sha256(value).hexdigest() for key, value in data.items()}
