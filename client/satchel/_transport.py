"""Transports: the channel to the server, its credentials and metadata, and `grpc.RpcError`
turned into typed `SatchelError`s — the tier between the generated stubs and the clients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from satchel import kinds
from satchel._config import ClientConfig
from satchel._errors import from_rpc_error
from satchel.v1 import token_pb2_grpc

Stub = Callable[[Any], Any]  # a generated stub class, called with a channel
# The stubs of every service the clients call.
_STUBS: tuple[Stub, ...] = (*(kind.stub for kind in kinds.ALL), token_pb2_grpc.TokenServiceStub)


class Transport:
    """A blocking gRPC channel to the server with its stubs."""

    def __init__(self, config: ClientConfig) -> None:
        self._timeout = config.timeout
        self._metadata = config.metadata()
        self._channel = grpc.secure_channel(config.server, config.credentials(), options=config.channel_options())
        self._stubs = {stub: stub(self._channel) for stub in _STUBS}

    def unary(self, stub: Stub, rpc: str, request: Message) -> Any:
        try:
            return getattr(self._stubs[stub], rpc)(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e

    def stream(self, stub: Stub, rpc: str, request: Message) -> Any:
        """Starts a server-streaming call: an iterator of responses that also has `cancel()`."""
        return getattr(self._stubs[stub], rpc)(request, metadata=self._metadata)

    def close(self) -> None:
        self._channel.close()


class AsyncTransport:
    """An asyncio gRPC channel to the server with its stubs.

    The channel is opened on first use, so that a client may be made before its event loop runs.
    """

    def __init__(self, config: ClientConfig) -> None:
        self._server = config.server
        self._timeout = config.timeout
        self._metadata = config.metadata()
        self._credentials = config.credentials()
        self._options = config.channel_options()
        self._channel: grpc.aio.Channel | None = None
        self._stubs: dict[Stub, Any] = {}

    def _stub(self, stub: Stub) -> Any:
        if self._channel is None:
            self._channel = grpc.aio.secure_channel(self._server, self._credentials, options=self._options)
            self._stubs = {stub: stub(self._channel) for stub in _STUBS}
        return self._stubs[stub]

    async def unary(self, stub: Stub, rpc: str, request: Message) -> Any:
        try:
            return await getattr(self._stub(stub), rpc)(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e

    def stream(self, stub: Stub, rpc: str, request: Message) -> Any:
        """Starts a server-streaming call (`grpc.aio.UnaryStreamCall`)."""
        return getattr(self._stub(stub), rpc)(request, metadata=self._metadata)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
