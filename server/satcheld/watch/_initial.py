"""The initial parts of Watch streams (a snapshot, or a replay of history): at
most `limit` are read at once, the others wait their turn in order; and one
whose consumer has taken nothing for `stall` seconds is cut off, so that a
stream that stopped reading neither keeps a turn nor a read transaction."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from ._subscription import Subscription


class Turn:
    """One stream's turn: what it holds (its slot, its store reading) is
    released once, when the initial part ends or the stream is cut off."""

    __slots__ = ("_ends", "sending_since", "sub")

    def __init__(self, sub: Subscription, release: Callable[[], None]) -> None:
        self.sub = sub
        self.sending_since: float | None = None  # when the stream began waiting to send an event
        self._ends: list[Callable[[], None]] = [release]

    def on_end(self, fn: Callable[[], None]) -> None:
        """`fn` runs when the turn ends (a store reading's `close`)."""
        self._ends.append(fn)

    def end(self) -> None:
        ends, self._ends = self._ends, []
        for fn in reversed(ends):
            fn()


class InitialReads:
    """The cap on initial parts read at once, and the cut-off of stalled ones."""

    def __init__(self, limit: int, stall: float) -> None:
        self.limit = limit
        self.stall = stall
        self._slots = asyncio.Semaphore(limit)
        self._turns: set[Turn] = set()

    @property
    def reading(self) -> int:
        """How many streams are reading their initial part now."""
        return len(self._turns)

    @contextlib.asynccontextmanager
    async def turn(self, sub: Subscription) -> AsyncIterator[Turn]:
        """Waits for a slot (FIFO) and holds it until the context exits or the
        stream is cut off."""
        await self._slots.acquire()
        turn = Turn(sub, self._slots.release)
        self._turns.add(turn)
        try:
            yield turn
        finally:
            self._end(turn)

    def _end(self, turn: Turn) -> None:
        if turn in self._turns:
            self._turns.discard(turn)
            turn.end()

    def cut_stalled(self, now: float) -> None:
        """Cuts off every stream that has waited `stall` seconds or more to send
        one event of its initial part, and frees what its turn held."""
        for turn in list(self._turns):
            since = turn.sending_since
            if since is not None and now - since >= self.stall:
                turn.sub.fail(turn.sub.overflow(f"the watch took none of its initial events for {self.stall:g} s"))
                self._end(turn)

    async def run(self) -> None:
        """Looks for stalled initial parts a few times per `stall`."""
        loop = asyncio.get_running_loop()
        tick = min(1.0, self.stall / 4)
        while True:
            await asyncio.sleep(tick)
            self.cut_stalled(loop.time())
