"""Transports: the channel to the server, its credentials and metadata, each call's own timeout
and metadata, `grpc.RpcError` turned into typed `SatchelError`s, and the retries of reads — the
tier between the generated stubs and the clients.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf.message import Message

from satchel import kinds
from satchel._config import ClientConfig
from satchel._errors import SatchelError, from_rpc_error
from satchel.v1 import admin_pb2_grpc, authorization_pb2_grpc, token_pb2_grpc

Stub = Callable[[Any], Any]  # a generated stub class, called with a channel
Metadata = Mapping[str, str | bytes] | Iterable[tuple[str, str | bytes]]
Timeout = float | timedelta
# The stubs of every service the clients call.
_STUBS: tuple[Stub, ...] = (
    *(kind.stub for kind in kinds.ALL),
    token_pb2_grpc.TokenServiceStub,
    authorization_pb2_grpc.AuthorizationServiceStub,
    admin_pb2_grpc.AdminServiceStub,
)

# A read that fails with UNAVAILABLE (the server restarting, a connection lost) is tried again, up
# to RETRY_ATTEMPTS times in all, after exponential backoff with full jitter: a random wait of up
# to RETRY_BASE, 2 * RETRY_BASE, ... capped at RETRY_CAP seconds, and never past the call's
# deadline. Writes are never retried: the first attempt may have been applied.
RETRY_ATTEMPTS = 5
RETRY_BASE = 0.1
RETRY_CAP = 2.0


@dataclass(frozen=True)
class CallOptions:
    """What a call is sent with: its deadline in seconds and all its metadata."""

    timeout: float
    metadata: tuple[tuple[str, str | bytes], ...]


class _Retry:
    """When a call that failed is tried again, and after how long; it does no I/O.

    Only reads are retried, only after UNAVAILABLE, and only while the wait ends before the
    deadline that the call's timeout set when the first attempt began.
    """

    def __init__(self, timeout: float, read: bool) -> None:
        self._deadline = time.monotonic() + timeout
        self._read = read
        self._attempts = 1

    def remaining(self) -> float:
        """The timeout for the next attempt: what is left until the deadline."""
        return max(0.0, self._deadline - time.monotonic())

    def after(self, error: SatchelError) -> float | None:
        """Seconds to wait before the next attempt, or None: `error` is final."""
        if not self._read or error.code is not grpc.StatusCode.UNAVAILABLE or self._attempts >= RETRY_ATTEMPTS:
            return None
        delay = random.uniform(0, min(RETRY_CAP, RETRY_BASE * 2 ** (self._attempts - 1)))
        if time.monotonic() + delay >= self._deadline:
            return None
        self._attempts += 1
        return delay


class _CallDefaults:
    """What both transports share: the config's timeout and metadata, and each call's own."""

    def __init__(self, config: ClientConfig) -> None:
        self._timeout = config.timeout
        self._metadata = config.metadata()

    def options(self, timeout: Timeout | None = None, metadata: Metadata | None = None) -> CallOptions:
        """A call's options: `timeout` (seconds or a timedelta; None: the config's) and the config's
        metadata (the bearer token) followed by `metadata`, which may not repeat a key of the
        config's: a second `authorization` would make the server refuse the call."""
        if timeout is None:
            seconds = self._timeout
        elif isinstance(timeout, timedelta):
            seconds = timeout.total_seconds()
        elif isinstance(timeout, int | float) and not isinstance(timeout, bool):
            seconds = float(timeout)
        else:
            raise TypeError(f"timeout must be seconds or a timedelta, not {type(timeout).__name__}")
        if not seconds > 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        pairs = tuple((metadata.items() if isinstance(metadata, Mapping) else metadata) or ())
        for pair in pairs:
            if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)):
                raise TypeError(f"metadata must be a mapping or (key, value) pairs, not {type(pair).__name__}")
        repeated = sorted({key.lower() for key, _ in pairs} & {key for key, _ in self._metadata})
        if repeated:
            raise ValueError(f"metadata may not repeat {', '.join(repeated)}: the client's config sends it")
        return CallOptions(seconds, (*self._metadata, *pairs))


class Transport(_CallDefaults):
    """A blocking gRPC channel to the server with its stubs."""

    def __init__(self, config: ClientConfig) -> None:
        super().__init__(config)
        self._channel = grpc.secure_channel(config.server, config.credentials(), options=config.channel_options())
        self._stubs = {make: make(self._channel) for make in _STUBS}

    def unary(
        self, stub: Stub, rpc: str, request: Message, options: CallOptions | None = None, *, read: bool = False
    ) -> Any:
        """The response to a unary call; a `read` is retried on UNAVAILABLE (see RETRY_ATTEMPTS)."""
        options = options or self.options()
        method = getattr(self._stubs[stub], rpc)
        retry = _Retry(options.timeout, read)
        while True:
            try:
                return method(request, timeout=retry.remaining(), metadata=options.metadata)
            except grpc.RpcError as e:
                error = from_rpc_error(e)
                delay = retry.after(error)
                if delay is None:
                    raise error from e
            time.sleep(delay)

    def stream(self, stub: Stub, rpc: str, request: Message, options: CallOptions | None = None) -> Any:
        """Starts a server-streaming call with no deadline: an iterator of responses that also has
        `cancel()`."""
        options = options or self.options()
        return getattr(self._stubs[stub], rpc)(request, metadata=options.metadata)

    def close(self) -> None:
        self._channel.close()


class AsyncTransport(_CallDefaults):
    """An asyncio gRPC channel to the server with its stubs.

    The channel is opened on first use, so that a client may be made before its event loop runs.
    """

    def __init__(self, config: ClientConfig) -> None:
        super().__init__(config)
        self._server = config.server
        self._credentials = config.credentials()
        self._options = config.channel_options()
        self._channel: grpc.aio.Channel | None = None
        self._stubs: dict[Stub, Any] = {}

    def _stub(self, stub: Stub) -> Any:
        if self._channel is None:
            self._channel = grpc.aio.secure_channel(self._server, self._credentials, options=self._options)
            self._stubs = {make: make(self._channel) for make in _STUBS}
        return self._stubs[stub]

    async def unary(
        self, stub: Stub, rpc: str, request: Message, options: CallOptions | None = None, *, read: bool = False
    ) -> Any:
        """The response to a unary call; a `read` is retried on UNAVAILABLE (see RETRY_ATTEMPTS)."""
        options = options or self.options()
        method = getattr(self._stub(stub), rpc)
        retry = _Retry(options.timeout, read)
        while True:
            try:
                return await method(request, timeout=retry.remaining(), metadata=options.metadata)
            except grpc.RpcError as e:
                error = from_rpc_error(e)
                delay = retry.after(error)
                if delay is None:
                    raise error from e
            await asyncio.sleep(delay)

    def stream(self, stub: Stub, rpc: str, request: Message, options: CallOptions | None = None) -> Any:
        """Starts a server-streaming call (`grpc.aio.UnaryStreamCall`) with no deadline."""
        options = options or self.options()
        return getattr(self._stub(stub), rpc)(request, metadata=options.metadata)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
