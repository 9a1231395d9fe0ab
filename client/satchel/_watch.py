"""Watch streams that resume by themselves: `WatchStream` (blocking) and `AsyncWatchStream`
(asyncio), and `_Resume`, the I/O-free rules both follow for where and when to reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import threading
import typing
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.message import Message

from satchel._errors import RevisionCompactedError, SatchelError, from_rpc_error
from satchel._requests import WatchCall
from satchel._transport import AsyncTransport, CallOptions, Transport
from satchel.v1.meta_pb2 import EventType

E = TypeVar("E", bound=Message)

# Watch reconnects: exponential backoff with full jitter, reset by every event received.
BACKOFF_BASE = 0.1
BACKOFF_CAP = 10.0
# The errors after which a watch reconnects from its last revision rather than giving up.
_RESUMABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


class _Resume:
    """Where a watch reconnects after its stream breaks, and how long it waits first.

    Shared by the blocking and the asyncio stream; it does no I/O.
    """

    def __init__(self, request: Any, max_backoff: float | None = None) -> None:
        self._request = request
        self._max_backoff = BACKOFF_CAP if max_backoff is None else max_backoff
        if not self._max_backoff > 0:
            raise ValueError(f"max_backoff must be positive, not {max_backoff!r}")
        self._connected = False
        self.revision = int(request.since_revision)
        # True from connecting with send_initial until its SYNCED: resuming mid-listing is not
        # possible, so a break there restarts the listing.
        self._listing = bool(request.send_initial)
        self._listing_started = self._listing
        self._yielded = False
        self._attempt = 0

    def request(self) -> Any:
        """The request for the next connection."""
        request = type(self._request)()
        request.CopyFrom(self._request)
        if self._connected:
            request.send_initial = self._listing
            request.since_revision = 0 if self._listing else self.revision
        self._connected = True
        return request

    def received(self, event: Any) -> bool:
        """Records an event about to be yielded; True if it begins a relisting."""
        if event.revision:
            self.revision = event.revision
        if event.type == EventType.EVENT_TYPE_SYNCED:
            self._listing = False
        if not self._listing:  # a listing that keeps breaking must not retry at full speed
            self._attempt = 0
        # A listing the caller did not ask for (compaction, or a listing that broke and restarts).
        relisting = self._listing_started and (self._yielded or not self._request.send_initial)
        self._listing_started = False
        self._yielded = True
        return relisting

    def broken(self, error: SatchelError | None) -> float | None:
        """Seconds to wait before reconnecting after the stream ended (`error` None: the server
        closed it cleanly), or None when the error is final."""
        if isinstance(error, RevisionCompactedError):
            self._listing = True
        elif error is not None and error.code not in _RESUMABLE:
            return None
        elif self.revision == 0:
            # since_revision=0 means "from now": with no revision learned yet, only a
            # listing is sure to miss nothing that happened while disconnected.
            self._listing = True
        if self._listing:
            self._listing_started = True
        delay = random.uniform(0, min(self._max_backoff, BACKOFF_BASE * 2 ** min(self._attempt, 60)))
        self._attempt += 1
        return delay


class WatchStream(Generic[E]):
    """An endless iterator of watch events (`WatchXResponse`) that resumes by itself.

    It remembers the revision of the last event, BOOKMARK and SYNCED included. When the stream
    breaks with UNAVAILABLE or RESOURCE_EXHAUSTED, or the server ends it, it reconnects with
    `since_revision` set to that revision, after a backoff with full jitter (0.1 s doubling up to
    10 s, or the watch's `max_backoff=`; reset by every event): no event is lost or repeated.
    `connected` is True while the current call has delivered an event and not broken.

    When the server no longer keeps that history (OUT_OF_RANGE, reason REVISION_COMPACTED), or
    the stream broke before any revision was learned, it relists: it reconnects with
    `send_initial` and yields every matching object as ADDED, then SYNCED, then live events.
    Events were missed in between, DELETED ones among them, so the caller must rebuild its state
    from that listing: objects not in it are gone. `on_relist`, if given, is called just before
    the first event of such a listing (also when a listing breaks before its SYNCED and starts
    over), e.g. `on_relist=state.clear`.

    Any other error ends the iteration with its typed exception (`PermissionDeniedError`, ...).
    `close()`, or leaving a `with` block, cancels the call and ends the iteration; it may be
    called from another thread.

    `watch_*` methods take `metadata=`, sent on every connection, but no `timeout=`: a watch is
    meant to run until closed, across reconnections, and a gRPC deadline would end it with
    DEADLINE_EXCEEDED, a final error, however healthy the stream. To stop after a while, call
    `close()` from a timer (or, with asyncio, wrap the reads in `asyncio.timeout`).
    """

    def __init__(self, transport: Transport, watch: WatchCall[E], options: CallOptions | None = None) -> None:
        self._transport = transport
        self._watch = watch
        self._options = options or transport.options()
        self._resume = _Resume(watch.request, watch.max_backoff)
        self._call: Any = None
        self._connected = False
        self._closed = threading.Event()
        self._lock = threading.Lock()

    @property
    def revision(self) -> int:
        """The revision of the last event received (or the `since_revision` asked for)."""
        return self._resume.revision

    @property
    def connected(self) -> bool:
        """True from the first event of the current call until it breaks."""
        return self._connected

    def __iter__(self) -> WatchStream[E]:
        return self

    def __next__(self) -> E:
        while not self._closed.is_set():
            with self._lock:
                if self._closed.is_set():
                    break
                if self._call is None:
                    self._call = self._transport.stream(
                        self._watch.stub, self._watch.rpc, self._resume.request(), self._options
                    )
                call = self._call
            try:
                event = next(call)
            except StopIteration:
                delay = self._resume.broken(None)
            except grpc.RpcError as e:
                if self._closed.is_set():
                    break
                error = from_rpc_error(e)
                delay = self._resume.broken(error)
                if delay is None:
                    self.close()
                    raise error from e
            else:
                self._connected = True
                if self._resume.received(event) and self._watch.on_relist is not None:
                    self._watch.on_relist()
                return typing.cast(E, event)
            self._connected = False
            self._call = None
            self._closed.wait(delay)
        raise StopIteration

    def close(self) -> None:
        """Cancel the call and end the iteration."""
        with self._lock:
            self._closed.set()
            self._connected = False
            if self._call is not None:
                self._call.cancel()

    def __enter__(self) -> WatchStream[E]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncWatchStream(Generic[E]):
    """The asyncio form of `WatchStream` (`async for`, `aclose()`, `async with`); the same rules."""

    def __init__(self, transport: AsyncTransport, watch: WatchCall[E], options: CallOptions | None = None) -> None:
        self._transport = transport
        self._watch = watch
        self._options = options or transport.options()
        self._resume = _Resume(watch.request, watch.max_backoff)
        self._call: Any = None
        self._connected = False
        self._closed = False
        self._wake = asyncio.Event()

    @property
    def revision(self) -> int:
        """The revision of the last event received (or the `since_revision` asked for)."""
        return self._resume.revision

    @property
    def connected(self) -> bool:
        """True from the first event of the current call until it breaks."""
        return self._connected

    def __aiter__(self) -> AsyncWatchStream[E]:
        return self

    async def __anext__(self) -> E:
        while not self._closed:
            if self._call is None:
                self._call = self._transport.stream(
                    self._watch.stub, self._watch.rpc, self._resume.request(), self._options
                )
            call = self._call
            try:
                event = await call.read()
            except asyncio.CancelledError:
                call.cancel()
                task = asyncio.current_task()
                if self._closed and task is not None and not task.cancelling():
                    break  # aclose() from another task cancelled the read
                raise
            except grpc.RpcError as e:
                if self._closed:
                    break
                error = from_rpc_error(e)
                delay = self._resume.broken(error)
                if delay is None:
                    await self.aclose()
                    raise error from e
            else:
                if event is not grpc.aio.EOF:
                    self._connected = True
                    if self._resume.received(event) and self._watch.on_relist is not None:
                        result = self._watch.on_relist()
                        if inspect.isawaitable(result):
                            await result
                    return typing.cast(E, event)
                delay = self._resume.broken(None)
            self._connected = False
            self._call = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Cancel the call and end the iteration."""
        self._closed = True
        self._connected = False
        self._wake.set()
        if self._call is not None:
            self._call.cancel()

    async def __aenter__(self) -> AsyncWatchStream[E]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
