"""Interceptors, one concern each, outermost first:

1. RequestInterceptor — request id, the one error map (domain errors become
   statuses, anything else a bare INTERNAL), and one audit record per request.
2. AuthenticationInterceptor — the principal from the client certificate.

Health and reflection are infrastructure: they pass through untouched.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import IO, Any

import grpc
from grpc import aio

from ._errors import SatchelError, Unauthenticated, internal_status
from ._identity import Principal, principal_from_certificate

log = logging.getLogger("satcheld")

_INFRASTRUCTURE = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_REQUEST_ID = re.compile(r"[-_.:A-Za-z0-9]{1,128}")


@dataclass
class Request:
    """What the audit record of one request says; handlers fill in the middle."""

    request_id: str
    method: str
    principal: Principal | None = None
    resource: str = ""
    decision: str = ""
    reason: str = ""


_current: contextvars.ContextVar[Request] = contextvars.ContextVar("satchel_request")


def current() -> Request:
    return _current.get()


def principal() -> Principal:
    p = _current.get().principal
    assert p is not None, "handler reached without authentication"
    return p


def _wrap(handler: grpc.RpcMethodHandler, around: Callable[..., Any], streaming_around: Callable[..., Any]) -> grpc.RpcMethodHandler:
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary_unary(request: Any, context: aio.ServicerContext) -> Any:
            return await around(inner, request, context)

        return handler._replace(unary_unary=unary_unary)
    if handler.unary_stream is not None:
        inner_stream = handler.unary_stream

        async def unary_stream(request: Any, context: aio.ServicerContext) -> Any:
            async for item in streaming_around(inner_stream, request, context):
                yield item

        return handler._replace(unary_stream=unary_stream)
    return handler


class AuditLog:
    """JSON lines, one per request. Never given request bodies, so never secret values."""

    def __init__(self, stream: IO[str] | None) -> None:
        self._stream = stream

    def write(self, request: Request, code: grpc.StatusCode) -> None:
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z",
            "request_id": request.request_id,
            "principal": str(request.principal) if request.principal else "",
            "method": request.method,
            "resource": request.resource,
            "decision": request.decision,
            "reason": request.reason,
            "code": code.name,
        }
        line = json.dumps(record, separators=(",", ":"))
        if self._stream is not None:
            self._stream.write(line + "\n")
            self._stream.flush()
        else:
            logging.getLogger("satcheld.audit").info("%s", line)


class RequestInterceptor(aio.ServerInterceptor):
    def __init__(self, audit: AuditLog) -> None:
        self._audit = audit

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(_INFRASTRUCTURE):
            return handler
        method = details.method
        given = dict(details.invocation_metadata or ()).get("x-request-id", "")
        audit = self._audit

        def begin(context: aio.ServicerContext) -> Request:
            rid = given if isinstance(given, str) and _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
            req = Request(rid, method)
            _current.set(req)
            context.set_trailing_metadata((("x-request-id", rid),))
            return req

        async def around(inner, request, context):
            req = begin(context)
            code = grpc.StatusCode.OK
            try:
                return await inner(request, context)
            except BaseException as e:
                code = _code_of(e)
                await _abort(e, context, req)
            finally:
                audit.write(req, code)

        async def streaming_around(inner, request, context):
            req = begin(context)
            code = grpc.StatusCode.OK
            try:
                async for item in inner(request, context):
                    yield item
            except BaseException as e:
                code = _code_of(e)
                await _abort(e, context, req)
            finally:
                audit.write(req, code)

        return _wrap(handler, around, streaming_around)


def _code_of(error: BaseException) -> grpc.StatusCode:
    if isinstance(error, SatchelError):
        return error.code
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL


async def _abort(error: BaseException, context: aio.ServicerContext, req: Request) -> None:
    """Ends the RPC with the status for `error`; re-raises what must propagate
    (cancellation is never swallowed: see grpc issue 43360)."""
    if isinstance(error, SatchelError):
        if not req.reason and error.code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
            req.reason = error.message
        await context.abort_with_status(error.to_status())
    if isinstance(error, (asyncio.CancelledError, GeneratorExit, aio.AbortError)):
        req.reason = req.reason or "cancelled"
        raise error
    log.error("internal error in %s (request %s)", req.method, req.request_id, exc_info=error)
    await context.abort_with_status(internal_status())


class AuthenticationInterceptor(aio.ServerInterceptor):
    """Sets the request's principal from the client certificate's SPIFFE ID."""

    def __init__(self, trust_domain: str) -> None:
        self._trust_domain = trust_domain

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(_INFRASTRUCTURE):
            return handler
        trust_domain = self._trust_domain

        def authenticate(context: aio.ServicerContext) -> None:
            pem = next(iter(context.auth_context().get("x509_pem_cert", ())), None)
            if pem is None:
                raise Unauthenticated("no client certificate was presented", reason="NO_CLIENT_CERTIFICATE")
            _current.get().principal = principal_from_certificate(pem, trust_domain)

        async def around(inner, request, context):
            authenticate(context)
            return await inner(request, context)

        async def streaming_around(inner, request, context):
            authenticate(context)
            async for item in inner(request, context):
                yield item

        return _wrap(handler, around, streaming_around)


class PreserializedStreams(aio.ServerInterceptor):
    """Lets Watch handlers yield events already serialized (once per view, by
    the watch hub) instead of messages serialized again for every stream."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.unary_stream is None or details.method.startswith(_INFRASTRUCTURE):
            return handler
        serialize = handler.response_serializer

        def passthrough(message: Any) -> bytes:
            return message if isinstance(message, bytes) else serialize(message)

        return handler._replace(response_serializer=passthrough)
