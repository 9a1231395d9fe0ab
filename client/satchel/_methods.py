"""The machinery that makes both clients' methods from the request builders: each method gets
its builder's name, signature and documentation, builds the call, and runs it on the client's
transport (unary calls, auto-paging lists, resuming watches).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from google.protobuf.message import Message

from satchel._requests import ListCall, UnaryCall, WatchCall
from satchel._transport import AsyncTransport, Transport
from satchel._watch import AsyncWatchStream, WatchStream

if TYPE_CHECKING:
    from satchel._client import AsyncClient, Client

P = ParamSpec("P")
R = TypeVar("R")
E = TypeVar("E", bound=Message)


def _method(function: Callable[..., Any], build: Callable[..., Any], returns: Any) -> Any:
    """Gives `function` the name, documentation and signature (with `self`) of `build`."""
    name = build.__name__
    function.__name__ = function.__qualname__ = name
    function.__doc__ = build.__doc__
    signature = inspect.signature(build)
    self = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    function.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[self, *signature.parameters.values()], return_annotation=returns
    )
    return function


def _result_type(build: Callable[..., Any]) -> Any:
    return typing.get_args(typing.get_type_hints(build)["return"])[0]


def unary(build: Callable[P, UnaryCall[R]]) -> Callable[Concatenate[Client, P], R]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> R:
        call = build(*args, **kwargs)
        return call.result(self._transport.unary(call.stub, call.rpc, call.request))

    return _method(method, build, _result_type(build))


def async_unary(build: Callable[P, UnaryCall[R]]) -> Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, R]]:
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
        call = build(*args, **kwargs)
        return call.result(await self._transport.unary(call.stub, call.rpc, call.request))

    return _method(method, build, _result_type(build))


def listing(build: Callable[P, ListCall[R]]) -> Callable[Concatenate[Client, P], Iterator[R]]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[R]:
        call = build(*args, **kwargs)
        return _pages(self._transport, call)

    return _method(method, build, Iterator[_result_type(build)])  # type: ignore[misc]


def _pages(transport: Transport, call: ListCall[R]) -> Iterator[R]:
    while True:
        response = transport.unary(call.stub, call.rpc, call.request)
        yield from getattr(response, call.items)
        if not response.next_page_token:
            return
        call.request.page_token = response.next_page_token


def async_listing(build: Callable[P, ListCall[R]]) -> Callable[Concatenate[AsyncClient, P], AsyncIterator[R]]:
    def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> AsyncIterator[R]:
        call = build(*args, **kwargs)
        return _async_pages(self._transport, call)

    return _method(method, build, AsyncIterator[_result_type(build)])  # type: ignore[misc]


async def _async_pages(transport: AsyncTransport, call: ListCall[R]) -> AsyncIterator[R]:
    while True:
        response = await transport.unary(call.stub, call.rpc, call.request)
        for item in getattr(response, call.items):
            yield item
        if not response.next_page_token:
            return
        call.request.page_token = response.next_page_token


def watch(build: Callable[P, WatchCall[E]]) -> Callable[Concatenate[Client, P], WatchStream[E]]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> WatchStream[E]:
        stream = WatchStream(self._transport, build(*args, **kwargs))
        self._streams.add(stream)
        return stream

    return _method(method, build, WatchStream[_result_type(build)])  # type: ignore[misc]


def async_watch(build: Callable[P, WatchCall[E]]) -> Callable[Concatenate[AsyncClient, P], AsyncWatchStream[E]]:
    def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> AsyncWatchStream[E]:
        stream = AsyncWatchStream(self._transport, build(*args, **kwargs))
        self._streams.add(stream)
        return stream

    return _method(method, build, AsyncWatchStream[_result_type(build)])  # type: ignore[misc]
