"""List iterators: `ListIterator` (blocking) and `AsyncListIterator` (asyncio) read a List page
after page as iteration needs it, and keep the revision the listing was read at, so that a watch
can start where the listing ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from satchel._requests import ListCall
from satchel._transport import AsyncTransport, CallOptions, Transport

R = TypeVar("R")


class _Pages(Generic[R]):
    """What both iterators share: the page being yielded, whether another follows, and the first
    page's revision. It does no I/O."""

    def __init__(self, call: ListCall[R], options: CallOptions) -> None:
        self._call = call
        self._options = options
        self._page: Iterator[R] = iter(())
        self._more = True  # a page is still to be read
        self._revision: int | None = None

    def _took(self, response: Any) -> int:
        """Records a page just read; returns the listing's revision."""
        if self._revision is None:
            self._revision = int(response.revision)
        self._page = iter(getattr(response, self._call.items))
        self._more = bool(response.next_page_token)
        self._call.request.page_token = response.next_page_token
        return self._revision


class ListIterator(_Pages[R]):
    """The objects a `list_*` method finds, read page by page as the iteration goes.

    `revision` is the revision the listing was read at: that of its first page (the List
    response's `revision`). A watch from it misses nothing that changed after the listing:

        listing = client.list_secrets()
        state = {s.metadata.name: s for s in listing}
        for event in client.watch_secrets(since_revision=listing.revision): ...

    Each page is read when it is needed, at the revision current then, so an object that changed
    after the first page may appear in its newer state; the watch then also replays that change.
    Reading `revision` before iterating reads the first page. Iterate once, from one thread.
    """

    def __init__(self, transport: Transport, call: ListCall[R], options: CallOptions) -> None:
        super().__init__(call, options)
        self._transport = transport

    @property
    def revision(self) -> int:
        """The revision of the first page, which is read now if it was not yet."""
        if self._revision is None:
            return self._read_page()
        return self._revision

    def __iter__(self) -> ListIterator[R]:
        return self

    def __next__(self) -> R:
        while True:
            try:
                return next(self._page)
            except StopIteration:
                if not self._more:
                    raise
            self._read_page()

    def _read_page(self) -> int:
        call = self._call
        return self._took(self._transport.unary(call.stub, call.rpc, call.request, self._options, read=True))


class AsyncListIterator(_Pages[R]):
    """The asyncio form of `ListIterator`, iterated with `async for`.

    `revision` is known once the first page was read: by the iteration, or by
    `await listing.fetch_revision()`, which reads it without yielding anything. Before that,
    reading `revision` raises RuntimeError (a property cannot wait for the server).
    """

    def __init__(self, transport: AsyncTransport, call: ListCall[R], options: CallOptions) -> None:
        super().__init__(call, options)
        self._transport = transport

    @property
    def revision(self) -> int:
        """The revision of the first page; RuntimeError if it was not read yet."""
        if self._revision is None:
            raise RuntimeError(
                "the listing's revision is known once its first page was read: "
                "iterate first, or use `await listing.fetch_revision()`"
            )
        return self._revision

    async def fetch_revision(self) -> int:
        """The revision of the first page, which is read now if it was not yet."""
        if self._revision is None:
            return await self._read_page()
        return self._revision

    def __aiter__(self) -> AsyncListIterator[R]:
        return self

    async def __anext__(self) -> R:
        while True:
            try:
                return next(self._page)
            except StopIteration:
                if not self._more:
                    raise StopAsyncIteration from None
            await self._read_page()

    async def _read_page(self) -> int:
        call = self._call
        return self._took(await self._transport.unary(call.stub, call.rpc, call.request, self._options, read=True))
