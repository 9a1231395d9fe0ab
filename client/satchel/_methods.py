"""The machinery that makes both clients' methods from the request builders: each method gets
its builder's name, signature and documentation plus the per-call options (`timeout=`,
`metadata=`), builds the call, and runs it on the client's transport.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from google.protobuf.message import Message

from satchel._pages import AsyncListIterator, ListIterator
from satchel._requests import ListCall, UnaryCall, WatchCall
from satchel._transport import Metadata, Timeout
from satchel._watch import AsyncWatchStream, WatchStream

if TYPE_CHECKING:
    from satchel._client import AsyncClient, Client

P = ParamSpec("P")
R = TypeVar("R")
E = TypeVar("E", bound=Message)

# The keyword-only parameters every method has beyond its builder's (watches: metadata only).
# Static type checkers do not see them: a ParamSpec cannot gain keyword parameters (PEP 612).
_KEYWORD = inspect.Parameter.KEYWORD_ONLY
_TIMEOUT = inspect.Parameter("timeout", _KEYWORD, default=None, annotation="float | timedelta | None")
_METADATA = inspect.Parameter("metadata", _KEYWORD, default=None, annotation="Metadata | None")


def _method(
    function: Callable[..., Any], build: Callable[..., Any], returns: Any, options: tuple[inspect.Parameter, ...]
) -> Any:
    """Gives `function` the name and documentation of `build`, and its signature with `self`
    first and `options` last."""
    signature = inspect.signature(build)
    clash = [p.name for p in options if p.name in signature.parameters]
    if clash:
        raise TypeError(f"{build.__name__}() may not take {', '.join(clash)}: every method adds it")
    function.__name__ = function.__qualname__ = build.__name__
    function.__doc__ = build.__doc__
    self = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    function.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[self, *signature.parameters.values(), *options], return_annotation=returns
    )
    return function


def _result_type(build: Callable[..., Any]) -> Any:
    return typing.get_args(typing.get_type_hints(build)["return"])[0]


def unary(build: Callable[P, UnaryCall[R]]) -> Callable[Concatenate[Client, P], R]:
    def method(
        self: Client, /, *args: Any, timeout: Timeout | None = None, metadata: Metadata | None = None, **kwargs: Any
    ) -> R:
        options = self._transport.options(timeout, metadata)
        call = build(*args, **kwargs)
        response = self._transport.unary(call.stub, call.rpc, call.request, options, read=call.read)
        return call.result(response)

    return _method(method, build, _result_type(build), (_TIMEOUT, _METADATA))  # type: ignore[no-any-return]


def async_unary(build: Callable[P, UnaryCall[R]]) -> Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, R]]:
    async def method(
        self: AsyncClient,
        /,
        *args: Any,
        timeout: Timeout | None = None,
        metadata: Metadata | None = None,
        **kwargs: Any,
    ) -> R:
        options = self._transport.options(timeout, metadata)
        call = build(*args, **kwargs)
        response = await self._transport.unary(call.stub, call.rpc, call.request, options, read=call.read)
        return call.result(response)

    return _method(method, build, _result_type(build), (_TIMEOUT, _METADATA))  # type: ignore[no-any-return]


def listing(build: Callable[P, ListCall[R]]) -> Callable[Concatenate[Client, P], ListIterator[R]]:
    def method(
        self: Client, /, *args: Any, timeout: Timeout | None = None, metadata: Metadata | None = None, **kwargs: Any
    ) -> ListIterator[R]:
        options = self._transport.options(timeout, metadata)
        return ListIterator(self._transport, build(*args, **kwargs), options)

    returns: Any = ListIterator[_result_type(build)]  # type: ignore[misc]
    return _method(method, build, returns, (_TIMEOUT, _METADATA))  # type: ignore[no-any-return]


def async_listing(build: Callable[P, ListCall[R]]) -> Callable[Concatenate[AsyncClient, P], AsyncListIterator[R]]:
    def method(
        self: AsyncClient,
        /,
        *args: Any,
        timeout: Timeout | None = None,
        metadata: Metadata | None = None,
        **kwargs: Any,
    ) -> AsyncListIterator[R]:
        options = self._transport.options(timeout, metadata)
        return AsyncListIterator(self._transport, build(*args, **kwargs), options)

    returns: Any = AsyncListIterator[_result_type(build)]  # type: ignore[misc]
    return _method(method, build, returns, (_TIMEOUT, _METADATA))  # type: ignore[no-any-return]


def watch(build: Callable[P, WatchCall[E]]) -> Callable[Concatenate[Client, P], WatchStream[E]]:
    def method(self: Client, /, *args: Any, metadata: Metadata | None = None, **kwargs: Any) -> WatchStream[E]:
        options = self._transport.options(metadata=metadata)
        stream = WatchStream(self._transport, build(*args, **kwargs), options)
        self._streams.add(stream)
        return stream

    returns: Any = WatchStream[_result_type(build)]  # type: ignore[misc]
    return _method(method, build, returns, (_METADATA,))  # type: ignore[no-any-return]


def async_watch(build: Callable[P, WatchCall[E]]) -> Callable[Concatenate[AsyncClient, P], AsyncWatchStream[E]]:
    def method(
        self: AsyncClient, /, *args: Any, metadata: Metadata | None = None, **kwargs: Any
    ) -> AsyncWatchStream[E]:
        options = self._transport.options(metadata=metadata)
        stream = AsyncWatchStream(self._transport, build(*args, **kwargs), options)
        self._streams.add(stream)
        return stream

    returns: Any = AsyncWatchStream[_result_type(build)]  # type: ignore[misc]
    return _method(method, build, returns, (_METADATA,))  # type: ignore[no-any-return]
