"""The audit log: one JSON line per request (who, what, the decision and why,
the status), appended before the outcome leaves. Never given request bodies,
so never secret values."""

from __future__ import annotations

import json.encoder
import logging
import os
import time
from dataclasses import dataclass

import grpc

from ..auth import Principal

_quote = json.encoder.encode_basestring_ascii  # a JSON string literal, in C
log = logging.getLogger("satcheld.audit")
MAX_FIELD = 256  # characters of any one string a caller can influence: no request makes a long record


def _bounded(value: str) -> str:
    """A JSON string literal of `value`, cut to MAX_FIELD characters."""
    return _quote(value if len(value) <= MAX_FIELD else value[: MAX_FIELD - 3] + "...")


@dataclass(slots=True)
class Request:
    """What the audit record of one request says; handlers fill in the middle."""

    request_id: str
    method: str
    principal: Principal | None = None
    resource: str = ""
    decision: str = ""
    reason: str = ""


class AuditLog:
    """JSON lines, one per request, each appended with one write before the
    response leaves, so a crash loses no record of an answered request. Never
    given request bodies, so never secret values."""

    def __init__(self, path: os.PathLike[str] | str | None) -> None:
        self.path = path
        self._fd = None if path is None else _open(path)
        self._second = -1
        self._stamp = ""

    def reopen(self) -> None:
        """Opens the file at `path` afresh (after log rotation moved it away); on
        OSError the old file stays in use and the error propagates."""
        if self.path is None:
            return
        fd, old = _open(self.path), self._fd
        self._fd = fd
        if old is not None:
            os.close(old)

    def _time(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int(now * 1000) % 1000:03d}Z"

    def write(self, request: Request, code: grpc.StatusCode) -> bool:
        """Appends the record; False if it could not be written (the guard then
        refuses the request with UNAVAILABLE rather than leave it unrecorded)."""
        # One JSON object per line, built field by field: on every request, a dict
        # through json.dumps costs more than the rest of a small read.
        q = _bounded
        line = (
            f'{{"time":"{self._time()}","request_id":{q(request.request_id)},'
            f'"principal":{q(str(request.principal) if request.principal else "")},'
            f'"method":{q(request.method)},"resource":{q(request.resource)},'
            f'"decision":{q(request.decision)},"reason":{q(request.reason)},"code":"{code.name}"}}'
        )
        if self._fd is None:
            logging.getLogger("satcheld.audit").info("%s", line)
            return True
        try:
            os.write(self._fd, (line + "\n").encode())
        except OSError as e:
            log.error("cannot write the audit log (%s); refusing request %s", e.strerror, request.request_id)
            return False
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _open(path: os.PathLike[str] | str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
