"""One Watch stream's bounded buffer: the hub pushes and never waits; a stream
that falls behind is cut off, its buffer freed, and resumes from its last revision.
The chunk of its initial part being sent counts against the same budget."""

from __future__ import annotations

import asyncio
import collections

from ..auth import Principal
from ..errors import ResourceExhausted, SatchelError
from ._view import View


class Subscription:
    """One stream's bounded buffer of (revision, serialized event, is a bookmark)."""

    __slots__ = (
        "_bytes",
        "_failure",
        "_items",
        "_limits",
        "_waiter",
        "floor",
        "idle_since",
        "last_revision",
        "owner",
        "view",
    )

    def __init__(
        self, view: View, floor: int, limits: tuple[int, int], now: float, owner: Principal | None = None
    ) -> None:
        self.view = view
        self.owner = owner  # the caller, whose scope a policy reload may change
        self.floor = floor  # events at or below this revision were already sent
        self._items: collections.deque[tuple[int, bytes, bool]] = collections.deque()
        self._bytes = 0
        self._waiter: asyncio.Future | None = None
        self._failure: SatchelError | None = None
        self._limits = limits
        self.idle_since = now
        self.last_revision = floor

    def push(self, revision: int, payload: bytes, bookmark: bool = False) -> None:
        if self._failure is not None:
            return
        max_events, max_bytes = self._limits
        if len(self._items) >= max_events or self._bytes + len(payload) > max_bytes:
            self.fail(self.overflow())
            return
        self._items.append((revision, payload, bookmark))
        self._bytes += len(payload)
        self._wake()

    def overflow(self, why: str = "the watch fell behind its buffer") -> ResourceExhausted:
        return ResourceExhausted(
            f"{why} and was cut off; resume from the last revision received",
            reason="WATCH_BUFFER_OVERFLOW",
            metadata={"last_revision": str(self.last_revision)},
        )

    def hold(self, size: int) -> None:
        """Counts a chunk of the initial part, read but not yet sent, against the
        buffer's bytes: the live events queued meanwhile and it share one budget
        (the count of events bounds the live queue alone)."""
        if self._failure is not None:
            return
        if self._bytes + size > self._limits[1]:
            self.fail(self.overflow())
            return
        self._bytes += size

    def sent(self, size: int) -> None:
        """A held event of `size` bytes has gone to the stream."""
        if self._failure is None:
            self._bytes -= size

    def check(self) -> None:
        """Raises the error the stream was cut off with, if it was."""
        if self._failure is not None:
            raise self._failure

    def fail(self, error: SatchelError) -> None:
        """Ends the stream with `error` once it asks for its next event; frees the buffer."""
        if self._failure is None:
            self._failure = error
            self._items.clear()
            self._bytes = 0
            self._wake()

    @property
    def idle(self) -> bool:
        return not self._items

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self) -> tuple[int, bytes, bool]:
        while True:
            if self._failure is not None:
                raise self._failure
            if self._items:
                item = self._items.popleft()
                self._bytes -= len(item[1])
                return item
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
