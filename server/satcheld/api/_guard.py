"""What happens around every Satchel RPC, in order:

1. a request id (the caller's `x-request-id`, or a new one), sent back in the
   trailers so that a call can be matched to its audit record;
2. authentication: the principal from the client certificate's SPIFFE ID, or
   the service account of an `authorization: Bearer <token>` on a connection
   whose certificate authenticates too (`auth.Tokens`);
3. the handler, which asks the authorizer and notes its verb and decision;
4. the audit record (`_audit.py`), written before the outcome leaves: before a
   unary response is handed back to grpc, before an error status is sent, before
   a stream's final status; so whoever learns the outcome finds the record. A
   stream (server-streaming or bidirectional) has a first record too, once it is
   allowed and before its first response, so that a server killed mid-stream
   still leaves a record of what it began to send;
5. the one error map: domain errors become statuses, anything else a bare INTERNAL.

These are applied once per method as services are added to the server's
method table (`Guard.wrap`), not by grpc.aio interceptors, whose per-call
dispatch costs more than a small RPC itself.

Health and reflection go through the guard too, open to every principal of the
trust domain (`allow_all`): Health/Watch and Health/List are recorded with verb
"watch" and "list" on resource "health", both reflection services (v1 and
v1alpha) with verb "get" on resource "reflection" (see `_assembly.py`). Only
`grpc.health.v1.Health/Check` is left unguarded and unaudited, so that a load
balancer's probe with any certificate of the client CA, SPIFFE ID or not, is
answered.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import itertools
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, cast

import grpc
from grpc import aio

from ..auth import Principal, Tokens, principal_from_certificate
from ..errors import InvalidArgument, ResourceExhausted, SatchelError, Unauthenticated, Unavailable
from ._audit import STARTED, AuditLog, Request
from ._status import REQUEST_ID_KEY, Status, internal_status, status_of

log = logging.getLogger("satcheld")

Context = aio.ServicerContext[Any, Any]


_REQUEST_ID = re.compile(r"[-_.:A-Za-z0-9]{1,128}")


_BOOT = uuid.uuid4().hex[:12]  # request ids are unique across restarts: boot prefix + counter
_COUNTER = itertools.count(1)


_current: contextvars.ContextVar[Request] = contextvars.ContextVar("satchel_request")


def current() -> Request:
    return _current.get()


def principal() -> Principal:
    p = _current.get().principal
    assert p is not None, "handler reached without authentication"
    return p


class Guard:
    """Wraps a method handler with request id, authentication, error map and audit."""

    def __init__(self, audit: AuditLog, trust_domain: str, tokens: Tokens) -> None:
        self._audit = audit
        self._trust_domain = trust_domain
        self._tokens = tokens

    def _begin(self, method: str, context: aio.ServicerContext, metadata: Any) -> Request:
        given = _metadata_value(metadata, REQUEST_ID_KEY)
        rid = given if given and _REQUEST_ID.fullmatch(given) else f"{_BOOT}-{next(_COUNTER)}"
        req = Request(rid, method, time.perf_counter())
        _current.set(req)
        context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
        return req

    def _authenticate(self, req: Request, context: aio.ServicerContext, metadata: Any) -> None:
        pems = context.auth_context().get("x509_pem_cert")
        if not pems:
            raise Unauthenticated("no client certificate was presented", reason="NO_CLIENT_CERTIFICATE")
        token = _bearer_token(req, metadata)
        # Only the URI SAN names a SPIFFE ID; a CN or DNS name that looks like one does not.
        # With a token too, the connection must be one that authenticates by itself.
        principal = principal_from_certificate(next(iter(pems)), self._trust_domain)
        req.principal = self._tokens.authenticate(token) if token else principal

    def wrap(
        self, method: str, handler: grpc.RpcMethodHandler, *, allow_all: tuple[str, str] | None = None
    ) -> grpc.RpcMethodHandler:
        """The handler with the guard around it. It takes the raw request bytes and
        parses them itself, so that a malformed request is an audited
        INVALID_ARGUMENT like any other bad input, not grpc's bare UNKNOWN.

        `allow_all=(verb, resource)` is for a method that every authenticated
        principal may call (health, reflection): its handler asks no authorizer,
        and its records say "allow" with this verb and resource."""
        audit = self._audit
        begin = self._begin
        authenticate = self._authenticate if allow_all is None else self._allowing_all(*allow_all)
        parse = _parser(handler.request_deserializer)
        # Handlers may answer with bytes serialized earlier: Get responses are
        # cached, and the watch hub serializes each event once per view.
        serialize = _serializer(handler.response_serializer)
        ok = grpc.StatusCode.OK

        def single_response(answer: Callable[[Any, Context], Awaitable[Any]]) -> Callable[[Any, Context], Any]:
            async def guarded(request: Any, context: Context) -> Any:
                metadata = context.invocation_metadata()
                req = begin(method, context, metadata)
                try:
                    authenticate(req, context, metadata)
                    response = await answer(request, context)
                except BaseException as e:
                    await _fail(e, context, req, audit)
                if not audit.write(req, ok):  # grpc sends the response only once this returns
                    await context.abort_with_status(_unrecorded(req))
                return response

            return guarded

        def streaming(open_stream: Callable[[Any, Context], Any]) -> Callable[[Any, Context], AsyncIterator[Any]]:
            async def guarded(request: Any, context: Context) -> AsyncIterator[Any]:
                metadata = context.invocation_metadata()
                req = begin(method, context, metadata)
                try:
                    authenticate(req, context, metadata)
                    responses = open_stream(request, context)
                    request = None  # a long-lived call keeps nothing of its request but what it uses
                    if inspect.isawaitable(responses):  # checks the request, then returns the stream
                        responses = await responses
                except BaseException as e:
                    await _fail(e, context, req, audit)
                # Allowed: recorded before the first response, so that even a
                # server killed mid-stream leaves a record of what it sent.
                if not audit.write(req, ok, STARTED):
                    await _close(responses)
                    await context.abort_with_status(_unrecorded(req))
                # A call cancelled while grpc waits to send leaves this generator
                # and `responses` suspended at a yield until the garbage collector
                # finds them; closing `responses` when the call ends lets go at once
                # of what it holds (a Watch's subscription, its quota slot, its
                # initial part's turn in the hub and its read transaction). Such a
                # call's end is recorded then too, not whenever the collector comes.
                ended = False

                def let_go(_: Context) -> None:
                    nonlocal ended
                    if not ended:
                        ended = True
                        req.reason = req.reason or "cancelled"
                        audit.write(req, grpc.StatusCode.CANCELLED)
                    _close_later(responses)

                context.add_done_callback(cast(Any, let_go))  # the stubs want a class where any callable does
                try:
                    async for response in responses:
                        yield response
                except BaseException as e:
                    if ended:  # let go and recorded already; only the generator itself is left
                        raise
                    ended = True
                    await _fail(e, context, req, audit)
                ended = True
                if not audit.write(req, ok):  # grpc sends the final status once the generator ends
                    await context.abort_with_status(_unrecorded(req))

            return guarded

        # grpc.aio runs coroutine functions where grpc's type stubs name the
        # synchronous behaviour types: `Any` bridges the two.
        if handler.unary_unary is not None:
            inner: Any = handler.unary_unary
            answer = single_response(lambda raw, context: inner(parse(raw), context))
            return grpc.unary_unary_rpc_method_handler(answer, response_serializer=serialize)
        if handler.stream_unary is not None:
            # grpc parses the requests it hands over; the one such handler, the
            # answer to an unknown method, reads none.
            answer = single_response(cast(Any, handler.stream_unary))
            return grpc.stream_unary_rpc_method_handler(
                answer, request_deserializer=handler.request_deserializer, response_serializer=serialize
            )
        if handler.unary_stream is not None:
            inner_stream: Any = handler.unary_stream
            stream = streaming(lambda raw, context: inner_stream(parse(_small(raw)), context))
            return grpc.unary_stream_rpc_method_handler(cast(Any, stream), response_serializer=serialize)
        if handler.stream_stream is not None:
            inner_bidi: Any = handler.stream_stream
            bidi = streaming(lambda requests, context: inner_bidi(_parsed(requests, parse), context))
            return grpc.stream_stream_rpc_method_handler(cast(Any, bidi), response_serializer=serialize)
        raise TypeError(f"{method}: a handler of no known kind")

    def _allowing_all(self, verb: str, resource: str) -> Callable[[Request, aio.ServicerContext, Any], None]:
        """Authentication, then the decision for a method open to every principal."""
        authenticate = self._authenticate

        def authenticate_and_allow(req: Request, context: aio.ServicerContext, metadata: Any) -> None:
            authenticate(req, context, metadata)
            req.verb, req.resource, req.decision = verb, resource, "allow"
            req.reason = "open to every principal"

        return authenticate_and_allow


_BEARER = "bearer "


def _bearer_token(req: Request, metadata: Any) -> str:
    """The token of the call's one `authorization: Bearer <token>`, noted for the
    audit record (which shows only its HMAC); empty if there is none. Anything
    else that looks like credentials is refused rather than ignored: a caller
    never ends up with the certificate's identity beside a token it sent."""
    values = []
    for key, value in metadata or ():
        if key == "authorization":
            values.append(value)
        elif key == "authorization-bin":
            raise Unauthenticated(
                "binary authorization metadata is not accepted; send 'authorization: Bearer <token>'",
                reason="BAD_AUTHORIZATION",
            )
    if not values:
        return ""
    value = values[0]
    scheme, token = (value[: len(_BEARER)], value[len(_BEARER) :]) if isinstance(value, str) else ("", "")
    if scheme.lower() == _BEARER:
        req.token = token  # the record shows which token, as its HMAC
    if len(values) > 1:
        raise Unauthenticated(
            f"the call carries {len(values)} authorization values; send one", reason="BAD_AUTHORIZATION"
        )
    if scheme.lower() != _BEARER or not token or token != token.strip():
        raise Unauthenticated("authorization must be 'Bearer <token>'", reason="BAD_AUTHORIZATION")
    return token


async def _parsed(requests: AsyncIterator[bytes], parse: Callable[[bytes], Any]) -> AsyncIterator[Any]:
    """The requests of a client stream, each parsed as it arrives (a malformed one
    ends the call with INVALID_ARGUMENT, as a malformed unary request does)."""
    async for raw in requests:
        yield parse(raw)


def _close_later(responses: Any) -> None:
    """Closes `responses` in a task of its own, if it is not running (a call
    that ended inside it has already unwound it)."""
    if inspect.isasyncgen(responses) and not responses.ag_running:
        task = asyncio.get_running_loop().create_task(_close(responses))
        _closing.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(_closing.discard)


_closing: set[asyncio.Task[None]] = set()


async def _close(responses: Any) -> None:
    """Ends a stream that will not be sent, so that whatever it holds is let go."""
    aclose = getattr(responses, "aclose", None)
    if aclose is not None:
        await aclose()


def _serializer(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    if serialize is None:
        return None

    def serialize_unless_bytes(response: Any) -> bytes:
        return response if response.__class__ is bytes else serialize(response)

    return serialize_unless_bytes


# A streaming call (Watch, Health/Watch) lives long and holds what its request made (a selector,
# a service name) all along; the largest valid Watch request is a few KiB (a 4,096-character
# selector), so anything much larger is refused before it is parsed.
MAX_STREAM_REQUEST_BYTES = 16 * 1024


def _small(raw: bytes) -> bytes:
    if len(raw) > MAX_STREAM_REQUEST_BYTES:
        raise ResourceExhausted(
            f"the request is {len(raw)} bytes; a streaming call takes at most {MAX_STREAM_REQUEST_BYTES}",
            reason="STREAM_REQUEST_TOO_LARGE",
            metadata={"max_bytes": str(MAX_STREAM_REQUEST_BYTES), "bytes": str(len(raw))},
        )
    return raw


def _parser(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    if deserialize is None:
        return lambda raw: raw

    def parse(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception:  # DecodeError, or invalid UTF-8 in a string field
            raise InvalidArgument([("request", "is not a valid protobuf message for this method")]) from None

    return parse


def _metadata_value(metadata: Any, key: str) -> str:
    for k, v in metadata or ():
        if k == key and isinstance(v, str):
            return v
    return ""


async def _fail(error: BaseException, context: aio.ServicerContext, req: Request, audit: AuditLog) -> NoReturn:
    """Writes the audit record, then ends the RPC with the status for `error`
    (abort_with_status sends it and raises). What must propagate is re-raised:
    cancellation is never swallowed, not even by a failed write (grpc issue 43360)."""
    if isinstance(error, SatchelError):
        if not req.reason and error.code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
            req.reason = error.message
        recorded = audit.write(req, error.code)
        await context.abort_with_status(status_of(error, req.request_id) if recorded else _unrecorded(req))
    elif isinstance(error, (asyncio.CancelledError, GeneratorExit, aio.AbortError)):
        req.reason = req.reason or "cancelled"
        try:
            audit.write(
                req, grpc.StatusCode.INTERNAL if isinstance(error, aio.AbortError) else grpc.StatusCode.CANCELLED
            )
        finally:
            raise error
    else:
        log.error("internal error in %s (request %s)", req.method, req.request_id, exc_info=error)
        recorded = audit.write(req, grpc.StatusCode.INTERNAL)
        await context.abort_with_status(internal_status(req.request_id) if recorded else _unrecorded(req))
    raise AssertionError("abort_with_status returned")  # it raises AbortError once the status is sent


def _unrecorded(req: Request) -> Status:
    """The status for a request whose audit record could not be written: refused
    rather than unrecorded (as Vault does). What it did may have taken effect."""
    error = Unavailable("the audit log cannot be written, so the request is refused", reason="AUDIT_UNAVAILABLE")
    return status_of(error, req.request_id)
