"""The initial parts of Watch streams (a snapshot, or a replay of history): at
most `limit` are read at once, the others wait their turn in order; one
principal's streams hold at most `per_principal` of those turns, so that one
caller cannot take them all (its further streams wait for one of its own); and
one whose consumer has taken nothing for `stall` seconds is cut off, so that a
stream that stopped reading neither keeps a turn nor a read transaction."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from ..auth import Principal
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


class _Share:
    """One principal's turns, and how many of its streams hold or await one."""

    __slots__ = ("slots", "users")

    def __init__(self, limit: int) -> None:
        self.slots = asyncio.Semaphore(limit)
        self.users = 0


class InitialReads:
    """The cap on initial parts read at once, each principal's share of it,
    and the cut-off of stalled ones."""

    def __init__(self, limit: int, stall: float, per_principal: int | None = None) -> None:
        self.limit = limit
        self.stall = stall
        self.per_principal = limit if per_principal is None else per_principal
        self._slots = asyncio.Semaphore(limit)
        self._turns: set[Turn] = set()
        self._shares: dict[Principal, _Share] = {}
        self.waiting = 0  # streams waiting for a turn, their principal's or the cap's

    @property
    def reading(self) -> int:
        """How many streams are reading their initial part now."""
        return len(self._turns)

    @contextlib.asynccontextmanager
    async def turn(self, sub: Subscription, owner: Principal | None = None) -> AsyncIterator[Turn]:
        """Waits for a slot (FIFO), first one of `owner`'s share (none for an
        admin, who passes None) so that a stream waiting for its principal's
        turn holds none of the cap's, and holds both until the context exits or
        the stream is cut off."""
        share = None
        if owner is not None:
            share = self._shares.get(owner)
            if share is None:
                share = self._shares[owner] = _Share(self.per_principal)
            share.users += 1
        self.waiting += 1
        try:
            if share is not None:
                await share.slots.acquire()
            try:
                await self._slots.acquire()
            except BaseException:
                if share is not None:
                    share.slots.release()
                raise
        except BaseException:
            self._forget(owner, share)
            raise
        finally:
            self.waiting -= 1

        def release() -> None:
            self._slots.release()
            if share is not None:
                share.slots.release()
                self._forget(owner, share)

        turn = Turn(sub, release)
        self._turns.add(turn)
        try:
            yield turn
        finally:
            self._end(turn)

    def _forget(self, owner: Principal | None, share: _Share | None) -> None:
        if owner is not None and share is not None:
            share.users -= 1
            if not share.users:
                del self._shares[owner]

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
