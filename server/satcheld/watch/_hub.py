"""The watch hub: fans committed changes out to Watch streams.

The store calls `publish` on the event loop after each commit, in revision
order. Streams with the same view (kind, namespace, selector, data
visibility) share one group, and an event is built and serialized once per
group, not once per stream. Each stream has a bounded buffer; the hub never
waits for a stream, and one that falls behind is cut off with
RESOURCE_EXHAUSTED and resumes from its last revision.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from ..errors import OutOfRange, SatchelError, Unavailable
from ..model import KINDS
from ..store import Change, Store
from ._subscription import Subscription
from ._view import ADDED, BOOKMARK, SYNCED, View, encode

_HISTORY_CHUNK = 1000


class WatchHub:
    def __init__(
        self,
        store: Store,
        *,
        bookmark_interval: float = 10.0,
        buffer_events: int = 10_000,
        buffer_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self._store = store
        self.bookmark_interval = bookmark_interval
        self._limits = (buffer_events, buffer_bytes)
        # kind -> view -> subscriptions with that view
        self._groups: dict[str, dict[View, set[Subscription]]] = {k: {} for k in KINDS}
        self._closed: SatchelError | None = None
        store.add_listener(self.publish)

    @property
    def revision(self) -> int:
        return self._store.revision

    def streams(self) -> int:
        return sum(len(subs) for groups in self._groups.values() for subs in groups.values())

    # -- fan-out ------------------------------------------------------------

    def publish(self, changes: list[Change]) -> None:
        for change in changes:
            encoded: dict[tuple[int, bool], bytes] = {}
            for view, subs in self._groups[change.kind].items():
                event_type = view.event_for(change)
                if event_type is None:
                    continue
                key = (event_type, view.with_data)
                payload = encoded.get(key)
                if payload is None:
                    payload = encoded[key] = encode(view, event_type, change.revision, change.obj)
                for sub in subs:
                    sub.push(change.revision, payload)

    def _subscribe(self, view: View) -> Subscription:
        if self._closed is not None:
            raise self._closed
        loop = asyncio.get_running_loop()
        sub = Subscription(view, self.revision, self._limits, loop.time())
        self._groups[view.kind].setdefault(view, set()).add(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        group = self._groups[sub.view.kind]
        subs = group.get(sub.view)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del group[sub.view]

    def close(self) -> None:
        """Ends every stream with UNAVAILABLE (the server is going away)."""
        self._closed = Unavailable("the server is shutting down; resume from the last revision received")
        for groups in self._groups.values():
            for subs in groups.values():
                for sub in subs:
                    sub.fail(self._closed)

    async def run_bookmarks(self) -> None:
        """Sends BOOKMARK to streams idle for about the bookmark interval. A stream
        whose buffer is empty has been sent every event up to the hub's revision,
        so the bookmark never precedes an event at or below it."""
        tick = self.bookmark_interval / 5
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(tick)
            now, revision = loop.time(), self.revision
            encoded: dict[str, bytes] = {}
            for kind, groups in self._groups.items():
                for view, subs in groups.items():
                    for sub in subs:
                        if (
                            sub.idle
                            and now - sub.idle_since >= self.bookmark_interval - tick
                            and revision >= sub.last_revision
                        ):
                            payload = encoded.get(kind)
                            if payload is None:
                                payload = encoded[kind] = encode(view, BOOKMARK, revision)
                            sub.push(revision, payload, bookmark=True)

    # -- one stream -----------------------------------------------------------

    async def stream(self, view: View, *, since_revision: int, send_initial: bool) -> AsyncIterator[bytes]:
        """The serialized events of one Watch call, in revision order, without
        gaps or duplicates between its initial part and the live tail. The
        request was validated by the caller (`since_revision` is not negative
        and not beyond the committed revision)."""
        sub = self._subscribe(view)  # first, so nothing committed from now on is missed
        loop = asyncio.get_running_loop()
        try:
            if send_initial:
                initial = self._initial(view)
            elif since_revision:
                initial = self._replay(view, since_revision, upto=sub.floor)
                sub.floor = max(sub.floor, since_revision)  # committed but not yet published
            else:
                initial = self._now(view, sub.floor)
            async for revision, payload in initial:
                sub.floor = max(sub.floor, revision)
                sub.last_revision = revision
                yield payload
            while True:
                revision, payload, bookmark = await sub.next()
                if revision <= sub.floor and not bookmark:
                    continue  # already sent by the initial part
                if revision < sub.last_revision:
                    continue  # a bookmark queued while the initial part ran: revisions never go back
                sub.last_revision = revision
                yield payload
                sub.idle_since = loop.time()
        finally:
            self._unsubscribe(sub)

    async def _now(self, view: View, revision: int) -> AsyncIterator[tuple[int, bytes]]:
        """A watch "from now" starts with BOOKMARK{now}, so that its client knows
        where to resume even if the stream breaks before any change."""
        yield revision, encode(view, BOOKMARK, revision)

    async def _initial(self, view: View) -> AsyncIterator[tuple[int, bytes]]:
        revision, objects = await self._store.snapshot(view.kind, view.matches, view.with_data)
        for obj in objects:
            yield revision, encode(view, ADDED, revision, obj)
        yield revision, encode(view, SYNCED, revision)

    async def _replay(self, view: View, since: int, *, upto: int) -> AsyncIterator[tuple[int, bytes]]:
        after = since
        while after < upto:
            last = min(upto, after + _HISTORY_CHUNK)
            compact, changes = await self._store.history(view.kind, after, last, _has_event_for(view), view.with_data)
            if after < compact:  # events after `after` are gone; those up to it were sent
                raise OutOfRange(
                    f"revision {after} has been compacted (history starts after {compact}); list again",
                    reason="REVISION_COMPACTED",
                    metadata={"compact_revision": str(compact)},
                )
            for change in changes:
                event_type = view.event_for(change)
                if event_type is not None:
                    yield change.revision, encode(view, event_type, change.revision, change.obj)
            after = last


def _has_event_for(view: View) -> Callable[[Change], bool]:
    return lambda change: view.event_for(change) is not None
