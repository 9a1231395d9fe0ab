"""The watch hub: fans committed changes out to Watch streams.

The store calls `publish` on the event loop after each commit, in revision
order. Streams with the same view (kind, namespace, selector, scope) share
one group, and an event is built and serialized once per (event, data
visibility), not once per stream. Views that follow a node's bindings are
grouped by node: the hub first moves the node graph through the commit (it is
the graph's one feed), then asks only the nodes the commit reaches. Each
stream has a bounded buffer; the hub never waits for a stream, and one that
falls behind is cut off with RESOURCE_EXHAUSTED and resumes from its last
revision. A stream's initial part (snapshot or replay) is read from the store in
chunks, each counted against that buffer while it is sent, a bounded number of
streams at a time (`InitialReads`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator

from ..auth import Before, NodeBindings, NodeGraph, Principal, Scope
from ..errors import PermissionDenied, SatchelError, Unavailable
from ..model import KINDS, SECRETS, SERVICE_ACCOUNTS, Requirement
from ..store import Change, Cursor, Reading, Store
from . import _bindings
from ._bindings import (
    CHUNK_BYTES,
    CHUNK_ROWS,
    Chunk,
    Digest,
    NodeStart,
    by_revision,
    compacted,
    encode_event,
    view_changes,
)
from ._initial import InitialReads, Turn
from ._quota import Slot
from ._subscription import Subscription
from ._view import ADDED, BOOKMARK, SYNCED, View, encode

Groups = dict[View, set[Subscription]]


class WatchHub:
    def __init__(
        self,
        store: Store,
        *,
        graph: NodeGraph | None = None,
        bookmark_interval: float = 10.0,
        buffer_events: int = 10_000,
        buffer_bytes: int = 16 * 1024 * 1024,
        initial_reads: int = 16,
        initial_stall: float = 30.0,
        initial_reads_per_principal: int | None = None,
    ) -> None:
        self._store = store
        self._graph = graph if graph is not None else NodeGraph()
        self.bookmark_interval = bookmark_interval
        self._limits = (buffer_events, buffer_bytes)
        # A chunk of an initial part fits in the buffer beside live events.
        self._chunk_bytes = min(CHUNK_BYTES, max(1, buffer_bytes // 4))
        self.initials = InitialReads(initial_reads, initial_stall, initial_reads_per_principal)
        # kind -> view -> subscriptions with that view
        self._groups: dict[str, Groups] = {k: {} for k in KINDS}
        # node -> view -> subscriptions: views that follow that node's bindings
        self._nodes: dict[str, Groups] = {}
        self._closed: SatchelError | None = None
        store.add_listener(self.publish)

    @property
    def revision(self) -> int:
        return self._store.revision

    def streams(self) -> int:
        return sum(len(subs) for _, subs in self._all_groups())

    def _all_groups(self) -> Iterator[tuple[View, set[Subscription]]]:
        for registry in (self._groups, self._nodes):
            for groups in registry.values():
                yield from groups.items()

    # -- fan-out ------------------------------------------------------------

    def publish(self, changes: list[Change]) -> None:
        for group in by_revision(changes):
            before = self._graph.apply(group)
            self._publish_views(group)
            if self._nodes:
                self._publish_nodes(group, before)

    def _publish_views(self, changes: list[Change]) -> None:
        for change in changes:
            encoded: dict[tuple[int, bool], bytes] = {}
            secret = change.kind == SECRETS
            for view, subs in self._groups[change.kind].items():
                event_type = view.event_for(change)
                if event_type is None:
                    continue
                with_data = secret and view.scope.shows_data(change.obj)
                key = (event_type, with_data)
                payload = encoded.get(key)
                if payload is None:
                    payload = encoded[key] = encode(change.kind, event_type, change.revision, change.obj, with_data)
                for sub in subs:
                    sub.push(change.revision, payload)

    def _publish_nodes(self, changes: list[Change], before: dict[str, dict]) -> None:
        """The commit's events for the node views it reaches: nodes whose bindings
        it changed and nodes that bind an account or secret it changed. A node
        whose bindings the commit left as they were sees what every such node
        sees that binds the same changed objects through a view asking for the
        same: those events are worked out once, not once per node."""
        reached = set(before)
        referrers = self._graph.referrers
        for change in changes:
            if change.kind in (SECRETS, SERVICE_ACCOUNTS):
                meta = change.obj.metadata
                reached.update(referrers.get((change.kind, meta.namespace, meta.name), ()))
        digest = Digest(changes)
        revision = digest.revision
        changed = list(digest.last)
        encoded: dict[tuple[int, int, str], bytes] = {}  # (event type, id of the object, kind)
        # (kind, namespace, selector's requirements, which changed objects are bound) -> payloads,
        # for the nodes not in `before`
        unmoved: dict[tuple[str, str, tuple[Requirement, ...], tuple[bool, ...]], list[bytes]] = {}
        for node in reached:
            groups = self._nodes.get(node)
            if not groups:
                continue
            bindings = self._graph.nodes.get(node) or NodeBindings(node)
            node_before = before.get(node)
            if node_before is None:
                refs = bindings.refs
                bound = tuple([key in refs for key in changed])
            for view, subs in groups.items():
                if node_before is None:
                    shared = (view.kind, view.namespace, view.selector.requirements, bound)
                    payloads = unmoved.get(shared)
                    if payloads is None:
                        payloads = unmoved[shared] = self._node_payloads(view, bindings, {}, digest, encoded)
                else:
                    payloads = self._node_payloads(view, bindings, node_before, digest, encoded)
                for payload in payloads:
                    for sub in subs:
                        sub.push(revision, payload)

    @staticmethod
    def _node_payloads(
        view: View, bindings: NodeBindings, before: Before, digest: Digest, encoded: dict[tuple[int, int, str], bytes]
    ) -> list[bytes]:
        payloads = []
        for event_type, obj in view_changes(view, bindings, before, digest):
            key = (event_type, id(obj), view.kind)
            payload = encoded.get(key)
            if payload is None:
                payload = encoded[key] = encode_event(view, event_type, digest.revision, obj)
            payloads.append(payload)
        return payloads

    def _registry(self, view: View) -> Groups:
        if view.follows_bindings:
            return self._nodes.setdefault(view.scope.node, {})
        return self._groups[view.kind]

    def _subscribe(self, view: View, owner: Principal | None) -> Subscription:
        if self._closed is not None:
            raise self._closed
        loop = asyncio.get_running_loop()
        sub = Subscription(view, self.revision, self._limits, loop.time(), owner)
        self._registry(view).setdefault(view, set()).add(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        registry = self._registry(sub.view)
        subs = registry.get(sub.view)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del registry[sub.view]
        if sub.view.follows_bindings and not registry:
            del self._nodes[sub.view.scope.node]

    def rescope(self, scope_of: Callable[[Principal, View], Scope | None]) -> None:
        """After a policy reload: each stream's view gets the scope its caller has
        now. A stream whose caller may no longer watch ends with PERMISSION_DENIED;
        one whose scope changed goes on with the new one (data included or not)."""
        for view, subs in list(self._all_groups()):
            for sub in list(subs):
                if sub.owner is None:
                    continue
                scope = scope_of(sub.owner, view)
                if scope is None:
                    sub.fail(PermissionDenied(f"{sub.owner} may no longer watch {view.kind}; the policy changed"))
                elif scope != view.scope:
                    self._unsubscribe(sub)
                    sub.view = View(view.kind, view.namespace, view.selector, scope)
                    self._registry(sub.view).setdefault(sub.view, set()).add(sub)

    def close(self) -> None:
        """Ends every stream with UNAVAILABLE (the server is going away)."""
        self._closed = Unavailable("the server is shutting down; resume from the last revision received")
        for _, subs in self._all_groups():
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
            for view, subs in list(self._all_groups()):
                for sub in subs:
                    if (
                        sub.idle
                        and now - sub.idle_since >= self.bookmark_interval - tick
                        and revision >= sub.last_revision
                    ):
                        payload = encoded.get(view.kind)
                        if payload is None:
                            payload = encoded[view.kind] = encode(view.kind, BOOKMARK, revision)
                        sub.push(revision, payload, bookmark=True)

    # -- one stream -----------------------------------------------------------

    async def stream(
        self,
        view: View,
        *,
        since_revision: int,
        send_initial: bool,
        owner: Principal | None = None,
        slot: Slot | None = None,
    ) -> AsyncIterator[bytes]:
        """The serialized events of one Watch call, in revision order, without
        gaps or duplicates between its initial part and the live tail. The
        request was validated by the caller (`since_revision` is not negative
        and not beyond the committed revision). `owner` is the caller, whose
        scope a policy reload may change; `slot` its place in the quota of
        streams per principal, held from the stream's first step to its end,
        however it ends (a stream with a slot not exempt also waits for its
        owner's share of the initial parts' turns)."""
        sub = self._subscribe(view, owner)  # first, so nothing committed from now on is missed
        # A view that follows bindings starts from the graph as it is now, at the
        # subscription's revision: taken before anything awaits.
        replays = send_initial or since_revision
        start = NodeStart(self._graph, view.scope.node, sub.floor) if view.follows_bindings and replays else None
        loop = asyncio.get_running_loop()
        try:
            if slot is not None:
                slot.take()
            async with contextlib.AsyncExitStack() as stack:
                initial: AsyncGenerator[Chunk, None]
                if send_initial or since_revision:
                    sharer = None if slot is None or slot.exempt else owner  # admins have no share
                    turn = await stack.enter_async_context(self.initials.turn(sub, sharer))
                    hold = _holder(turn)
                    sub.check()  # cut off while it waited its turn
                    if send_initial:
                        initial = (
                            self._initial(view, hold)
                            if start is None
                            else _bindings.initial(self._store, view, start, hold, self._chunk_bytes)
                        )
                    else:
                        if start is None:
                            initial = self._replay(view, since_revision, upto=sub.floor)
                        else:
                            initial = _bindings.replay(self._store, view, start, since_revision, self._chunk_bytes)
                        sub.floor = max(sub.floor, since_revision)  # committed but not yet published
                else:
                    turn = None
                    initial = self._now(view, sub.floor)
                initial = await stack.enter_async_context(contextlib.aclosing(initial))
                async for chunk in initial:
                    sub.hold(sum(len(payload) for _, payload in chunk))
                    for revision, payload in chunk:
                        sub.check()
                        sub.floor = max(sub.floor, revision)
                        sub.last_revision = revision
                        if turn is not None:
                            turn.sending_since = loop.time()
                        yield payload
                        if turn is not None:
                            turn.sending_since = None
                        sub.sent(len(payload))
                    del chunk
                    sub.check()  # before the next chunk is read: a stream cut off reads no more
            # The live tail needs neither: an idle stream must not keep its node's bindings as they started.
            del initial, start, turn
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
            if slot is not None:
                slot.release()

    async def _now(self, view: View, revision: int) -> AsyncGenerator[Chunk, None]:
        """A watch "from now" starts with BOOKMARK{now}, so that its client knows
        where to resume even if the stream breaks before any change."""
        yield [(revision, encode(view.kind, BOOKMARK, revision))]

    async def _initial(self, view: View, hold: Callable[[Reading], None]) -> AsyncGenerator[Chunk, None]:
        """Every object of the view at one revision, read by cursor in one read
        transaction, a chunk at a time; data opened only where the view shows it."""
        scope = view.scope
        opens = scope.shows_data if view.kind == SECRETS else _never
        async with self._store.reading() as reading:
            hold(reading)
            revision = reading.revision
            after: Cursor | None = ("", "")
            while after is not None:
                objects, after = await reading.objects(
                    view.kind,
                    namespace=view.namespace,
                    after=after,
                    match=view.matches,
                    opens=opens,
                    max_rows=CHUNK_ROWS,
                    max_bytes=self._chunk_bytes,
                )
                chunk = [(revision, encode(view.kind, ADDED, revision, obj, opens(obj))) for obj in objects]
                del objects  # while the chunk is sent, only its serialized events are held
                if chunk:
                    yield chunk
        yield [(revision, encode(view.kind, SYNCED, revision))]

    async def _replay(self, view: View, since: int, *, upto: int) -> AsyncGenerator[Chunk, None]:
        after = since
        scope = view.scope
        while after < upto:
            compact, changes, reached = await self._store.history_chunk(
                view.kind, after, upto, _has_event_for(view), scope.shows_data, max_bytes=self._chunk_bytes
            )
            if after < compact:  # events after `after` are gone; those up to it were sent
                raise compacted(after, compact)
            chunk: Chunk = []
            for change in changes:
                event_type = view.event_for(change)
                if event_type is not None:
                    obj = change.obj
                    chunk.append(
                        (change.revision, encode(view.kind, event_type, change.revision, obj, scope.shows_data(obj)))
                    )
            del changes
            if chunk:
                yield chunk
            after = reached


def _holder(turn: Turn) -> Callable[[Reading], None]:
    """What an initial part calls with each store reading it opens: the turn
    closes it if the stream is cut off before the reading's context exits."""
    return lambda reading: turn.on_end(reading.close)


def _never(_obj: object) -> bool:
    return False


def _has_event_for(view: View) -> Callable[[Change], bool]:
    return lambda change: view.event_for(change) is not None
