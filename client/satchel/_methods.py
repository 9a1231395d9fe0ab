"""The machinery that makes both clients' methods from the request builders: each method gets
its builder's name, signature and documentation, builds the call, and runs it on the client's
transport with the options the call was given.

The per-call options (`timeout=`, `metadata=`; watches: `metadata=`) are declared once, by the
builders' `**options: Unpack[CallOptionsArgs]` (`WatchOptionsArgs`), so a type checker sees them
through the methods' ParamSpec. At runtime `**options` would take any keyword, so each method's
signature spells them out as keyword-only parameters defaulting to None, and a keyword that is
in none of its parameters is refused here, by the method's name, as Python would.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from google.protobuf.message import Message

from satchel._pages import AsyncListIterator, ListIterator
from satchel._requests import CallOptionsArgs, ListCall, UnaryCall, WatchCall, WatchOptionsArgs
from satchel._watch import AsyncWatchStream, WatchStream

if TYPE_CHECKING:
    from satchel._client import AsyncClient, Client

P = ParamSpec("P")
R = TypeVar("R")
E = TypeVar("E", bound=Message)
F = TypeVar("F", bound=Callable[..., Any])

_KEYWORD = inspect.Parameter.KEYWORD_ONLY
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, _KEYWORD)


class _Spec:
    """What a method takes from its builder: the signature (`self` first, the builder's
    `**options` spelled out last) and the keywords it accepts."""

    def __init__(self, build: Callable[..., Any], options: type[Mapping[str, Any]], wraps: Any = None) -> None:
        self._build = build
        hints = typing.get_type_hints(build)
        signature = inspect.signature(build)
        params = list(signature.parameters.values())
        last = params.pop() if params else None
        if (
            last is None
            or last.kind is not inspect.Parameter.VAR_KEYWORD
            or typing.get_args(hints[last.name]) != (options,)
        ):
            raise TypeError(f"{build.__name__}() must take **options: Unpack[{options.__name__}] last")
        clash = [name for name in options.__annotations__ if name in signature.parameters]
        if clash:
            raise TypeError(f"{build.__name__}() may not take {', '.join(clash)}: it is a per-call option")
        # The TypedDict's annotations as written (strings, as the builder's own under PEP 563).
        spelled = [
            inspect.Parameter(name, _KEYWORD, default=None, annotation=getattr(hint, "__forward_arg__", hint))
            for name, hint in options.__annotations__.items()
        ]
        self_ = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
        result = typing.get_args(hints["return"])[0]
        self.signature = signature.replace(
            parameters=[self_, *params, *spelled], return_annotation=result if wraps is None else wraps[result]
        )
        self._keywords = frozenset(p.name for p in self.signature.parameters.values() if p.kind in _NAMED)

    def check(self, kwargs: Mapping[str, object]) -> None:
        """Refuses a keyword the method does not take (the builder's `**options` would)."""
        if not self._keywords.issuperset(kwargs):
            unknown = min(kwargs.keys() - self._keywords)
            raise TypeError(f"{self._build.__name__}() got an unexpected keyword argument {unknown!r}")

    def method(self, function: F) -> F:
        """`function` with the builder's name, documentation and (spelled-out) signature."""
        function.__name__ = function.__qualname__ = self._build.__name__
        function.__doc__ = self._build.__doc__
        function.__signature__ = self.signature  # type: ignore[attr-defined]  # any function takes it
        return function


def unary(build: Callable[P, UnaryCall[R]]) -> Callable[Concatenate[Client, P], R]:
    spec = _Spec(build, CallOptionsArgs)

    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> R:
        spec.check(kwargs)
        call = build(*args, **kwargs)
        options = self._transport.options(call.timeout, call.metadata)
        response = self._transport.unary(call.stub, call.rpc, call.request, options, read=call.read)
        return call.result(response)

    return spec.method(method)


def async_unary(build: Callable[P, UnaryCall[R]]) -> Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, R]]:
    spec = _Spec(build, CallOptionsArgs)

    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
        spec.check(kwargs)
        call = build(*args, **kwargs)
        options = self._transport.options(call.timeout, call.metadata)
        response = await self._transport.unary(call.stub, call.rpc, call.request, options, read=call.read)
        return call.result(response)

    return spec.method(method)


def listing(build: Callable[P, ListCall[R]]) -> Callable[Concatenate[Client, P], ListIterator[R]]:
    spec = _Spec(build, CallOptionsArgs, ListIterator)

    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> ListIterator[R]:
        spec.check(kwargs)
        call = build(*args, **kwargs)
        return ListIterator(self._transport, call, self._transport.options(call.timeout, call.metadata))

    return spec.method(method)


def async_listing(build: Callable[P, ListCall[R]]) -> Callable[Concatenate[AsyncClient, P], AsyncListIterator[R]]:
    spec = _Spec(build, CallOptionsArgs, AsyncListIterator)

    def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> AsyncListIterator[R]:
        spec.check(kwargs)
        call = build(*args, **kwargs)
        return AsyncListIterator(self._transport, call, self._transport.options(call.timeout, call.metadata))

    return spec.method(method)


def watch(build: Callable[P, WatchCall[E]]) -> Callable[Concatenate[Client, P], WatchStream[E]]:
    spec = _Spec(build, WatchOptionsArgs, WatchStream)

    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> WatchStream[E]:
        spec.check(kwargs)
        call = build(*args, **kwargs)
        stream = WatchStream(self._transport, call, self._transport.options(metadata=call.metadata))
        self._streams.add(stream)
        return stream

    return spec.method(method)


def async_watch(build: Callable[P, WatchCall[E]]) -> Callable[Concatenate[AsyncClient, P], AsyncWatchStream[E]]:
    spec = _Spec(build, WatchOptionsArgs, AsyncWatchStream)

    def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> AsyncWatchStream[E]:
        spec.check(kwargs)
        call = build(*args, **kwargs)
        stream = AsyncWatchStream(self._transport, call, self._transport.options(metadata=call.metadata))
        self._streams.add(stream)
        return stream

    return spec.method(method)
