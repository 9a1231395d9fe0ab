"""The server's method table: every RPC it serves, found with one dict lookup.

Services are added through a `Registrar`, which stands in for the grpc server
when a generated `add_*Servicer_to_server` runs; the table is then given to
grpc as the server's one generic handler.

Nothing is registered with grpc as a "registered method", although the
generated code asks for it. grpc.aio's serving loop keeps one pending
request-call future per registered method and waits on all of them with
`asyncio.wait` each time it accepts a call, so every registered method costs
every call: with 30 of them a 300-byte echo took some 20-80 µs more server
CPU per call (5-15% of its throughput) than with none (`bench/dispatch.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import grpc

Wrap = Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler]


class MethodTable(grpc.GenericRpcHandler):
    """Full method name (`/package.Service/Method`) → handler. A name not in the
    table gets `unknown(name)` if given, else grpc's bare UNIMPLEMENTED."""

    def __init__(self, unknown: Callable[[str], grpc.RpcMethodHandler] | None = None) -> None:
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._unknown = unknown

    def registrar(self, wrap: Wrap | None = None) -> Registrar:
        """Adds services to this table, each handler passed through `wrap` if given."""
        return Registrar(self, wrap)

    def add(self, method: str, handler: grpc.RpcMethodHandler) -> None:
        if method in self._handlers:
            raise ValueError(f"{method} is added twice")
        self._handlers[method] = handler

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None and self._unknown is not None:
            return self._unknown(method)
        return handler


class Registrar:
    """What a generated `add_*Servicer_to_server` calls, in place of the server."""

    def __init__(self, table: MethodTable, wrap: Wrap | None) -> None:
        self._table = table
        self._wrap = wrap

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        """Ignored: the generated code passes the same handlers to
        `add_registered_method_handlers` too, by name."""

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
        for name, handler in handlers.items():
            method = f"/{service}/{name}"
            self._table.add(method, self._wrap(method, handler) if self._wrap else handler)
