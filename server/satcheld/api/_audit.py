"""The audit log: one JSON line per request (who, what, the verb, the decision and
why, the status, how long it took), appended before the outcome leaves. A stream
has two: one when it is allowed, before its first response, and one when it ends.
Never given request bodies, so never secret values; a token appears only as its
HMAC under a per-server key.

Records, each one line (wrapped here); `stage` is "started" for a stream's
first record and "completed" for the one every request ends with, and
`duration_ms` runs from the guard's start of the request to the write:

    {"time":"2026-12-01T15:32:15.697Z","request_id":"ci-42","principal":"user:alice",
     "token":"","method":"/satchel.v1.SecretService/GetSecret","resource":"secrets/default/db",
     "verb":"get","decision":"deny","reason":"user:alice may not get secrets in namespace \\"default\\"",
     "code":"PERMISSION_DENIED","stage":"completed","duration_ms":0.391}
    {"time":"2026-12-01T15:32:15.706Z","request_id":"3f9c0e1d2a4b-7","principal":"user:admin",
     "token":"","method":"/satchel.v1.SecretService/WatchSecrets","resource":"secrets/prod",
     "verb":"watch","decision":"allow","reason":"","code":"OK","stage":"started","duration_ms":0.305}
"""

from __future__ import annotations

import hashlib
import hmac
import json.encoder
import logging
import os
import secrets
import time
from dataclasses import dataclass, field

import grpc

from ..auth import Principal

_quote = json.encoder.encode_basestring_ascii  # a JSON string literal, in C
log = logging.getLogger("satcheld.audit")
MAX_FIELD = 256  # characters of any one string a caller can influence: no request makes a long record

STARTED = "started"  # a stream, allowed, before its first response
COMPLETED = "completed"  # a request's outcome: every request has one such record


def _bounded(value: str) -> str:
    """A JSON string literal of `value`, cut to MAX_FIELD characters."""
    return _quote(value if len(value) <= MAX_FIELD else value[: MAX_FIELD - 3] + "...")


@dataclass(slots=True)
class Request:
    """What the audit record of one request says; handlers fill in the middle."""

    request_id: str
    method: str
    start: float  # time.perf_counter() when the guard began the request
    principal: Principal | None = None
    # The bearer token the caller presented, if any. The record holds only its
    # HMAC (AuditLog.token_digest); kept out of repr, so a logged Request shows none.
    token: str = field(default="", repr=False)
    resource: str = ""
    verb: str = ""  # the authorization verb the handler asked about
    decision: str = ""
    reason: str = ""


class AuditLog:
    """JSON lines, one per request (two per stream), each appended with one write
    before the response leaves, so a crash loses no record of an answered request.
    Never given request bodies, so never secret values."""

    def __init__(self, path: os.PathLike[str] | str | None, hmac_key: bytes | None = None) -> None:
        self.path = path
        self._hmac_key = secrets.token_bytes(32) if hmac_key is None else hmac_key
        self._fd = None if path is None else _open(path)
        self._second = -1
        self._stamp = ""

    def token_digest(self, token: str) -> str:
        """What a record says of a bearer token: its HMAC-SHA256 under this
        server's key, so that records of one token can be matched with each other
        (and with a token one holds, by a holder of the key) but never give the
        token away."""
        mac = hmac.new(self._hmac_key, token.encode(), hashlib.sha256).hexdigest()
        return f"hmac-sha256:{mac}"

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

    def write(self, request: Request, code: grpc.StatusCode, stage: str = COMPLETED) -> bool:
        """Appends the record; False if it could not be written (the guard then
        refuses the request with UNAVAILABLE rather than leave it unrecorded).
        `stage` is STARTED or COMPLETED."""
        # One JSON object per line, built field by field: on every request, a dict
        # through json.dumps costs more than the rest of a small read.
        q = _bounded
        token = request.token
        line = (
            f'{{"time":"{self._time()}","request_id":{q(request.request_id)},'
            f'"principal":{q(str(request.principal) if request.principal else "")},'
            f'"token":"{self.token_digest(token) if token else ""}",'
            f'"method":{q(request.method)},"resource":{q(request.resource)},"verb":{q(request.verb)},'
            f'"decision":{q(request.decision)},"reason":{q(request.reason)},"code":"{code.name}",'
            f'"stage":"{stage}","duration_ms":{(time.perf_counter() - request.start) * 1000:.3f}}}'
        )
        if self._fd is None:
            log.info("%s", line)
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
