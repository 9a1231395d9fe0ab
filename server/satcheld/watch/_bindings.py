"""Views that follow bindings: what a node sees of service accounts and secrets
is what its workloads bind, so a commit that binds or unbinds an object is
ADDED or DELETED for the node though that object did not change.

One function, `view_changes`, turns one revision's changes into one node
view's events, given the node's bindings after the revision and which objects
were bound before. Live streams get those bindings from the node graph; a
resumed stream from a copy of its node's part, moved back to the revision it
resumes from (undoing the binding changes since, whose previous states the
history keeps) and then forward again through the same `apply`. So a resume
yields the same events a stream open since then saw. Objects entering a view
are taken from the changes' `related` states, recorded with the commit.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from itertools import groupby

from satchel.v1 import workload_pb2

from ..auth import Before, NodeBindings, NodeGraph, binding_of, undo_accounts, update_accounts
from ..errors import OutOfRange
from ..model import BINDING_KINDS, SECRETS, WORKLOADS, Key, Resource, kind_name
from ..store import Change, Reading, Store
from ._view import ADDED, DELETED, MODIFIED, SYNCED, View, encode

# An initial part is read and sent in chunks: of about this many bytes (less if
# the stream's buffer is small), rows looked at, or keys read.
CHUNK_BYTES = 1024 * 1024
CHUNK_ROWS = 1000
CHUNK_KEYS = 256
Chunk = list[tuple[int, bytes]]  # (revision, serialized event)


def key_of(obj: Resource) -> Key:
    meta = obj.metadata
    return kind_name(obj), meta.namespace, meta.name


class Digest:
    """One revision's changes, indexed once for every node view they reach."""

    __slots__ = ("changes", "first", "last", "related", "revision")

    def __init__(self, changes: list[Change]) -> None:
        self.changes = changes
        self.revision = changes[0].revision
        self.first: dict[Key, Change] = {}
        self.last: dict[Key, Change] = {}
        self.related: dict[Key, Resource] = {}
        for change in changes:
            meta = change.obj.metadata
            key = (change.kind, meta.namespace, meta.name)
            self.first.setdefault(key, change)
            self.last[key] = change
            for obj in change.related:
                self.related[key_of(obj)] = obj

    def changed_keys(self, kind: str) -> Iterator[Key]:
        return (key for key in self.last if key[0] == kind)


def view_changes(view: View, bindings: NodeBindings, before: Before, digest: Digest) -> list[tuple[int, Resource]]:
    """The events of one revision for a node's view of accounts or secrets:
    `bindings` as they are after the revision, `before` whether each object
    whose binding changed was bound before it."""
    kind = view.kind
    events: list[tuple[int, Resource]] = []
    keys = [*digest.changed_keys(kind), *sorted(k for k in before if k[0] == kind and k not in digest.last)]
    for key in keys:
        bound_now = bindings.binds(key)
        bound_before = before.get(key, bound_now)
        last = digest.last.get(key)
        if last is not None:
            first = digest.first[key]
            was = None if first.type == ADDED else first.prev
            now = None if last.type == DELETED else last.obj
            changed = True
        else:
            was = now = digest.related.get(key)
            if now is None:
                continue  # bound, but no such object
            changed = False
        seen_before = bound_before and was is not None and view.asked_for(was)
        if bound_now and now is not None and view.asked_for(now):
            if not seen_before:
                events.append((ADDED, now))
            elif changed:
                events.append((MODIFIED, now))
        elif seen_before:
            gone = last.obj if last is not None else was
            assert gone is not None
            events.append((DELETED, gone))
    return events


def encode_event(view: View, event_type: int, revision: int, obj: Resource) -> bytes:
    """A node sees the data of the secrets in its view; DELETED never carries data."""
    return encode(view.kind, event_type, revision, obj, with_data=view.kind == SECRETS and event_type != DELETED)


def by_revision(changes: Iterable[Change]) -> Iterator[list[Change]]:
    for _, group in groupby(changes, key=lambda c: c.revision):
        yield list(group)


def compacted(after: int, compact: int) -> OutOfRange:
    return OutOfRange(
        f"revision {after} has been compacted (history starts after {compact}); list again",
        reason="REVISION_COMPACTED",
        metadata={"compact_revision": str(compact)},
    )


class NodeStart:
    """One node's bindings and every account's secrets as the graph held them
    when a stream subscribed (at the hub's revision), for its initial part.
    The accounts are the graph's snapshot, shared: copied before any change."""

    def __init__(self, graph: NodeGraph, node: str, revision: int) -> None:
        self.bindings = graph.bindings_of(node)
        self.accounts = graph.accounts_snapshot()
        self.revision = revision


async def initial(
    store: Store, view: View, start: NodeStart, hold: Callable[[Reading], None], chunk_bytes: int = CHUNK_BYTES
) -> AsyncGenerator[Chunk, None]:
    """The node's view at one revision R as ADDED, then SYNCED{R}, read in
    chunks from one store reading. R is the reading's revision; that is the
    view at R if no commit between the start and R changed what the node
    binds, else it reads again from a later start."""
    nb, at = start.bindings, start.revision
    # A copy of start.accounts, made once the bindings must move on.
    accounts: dict[tuple[str, str], frozenset[str]] | None = None
    while True:
        keys = sorted(k for k in nb.refs if k[0] == view.kind)
        async with store.reading() as reading:
            hold(reading)
            revision = reading.revision
            if revision != at:
                compact, binding = await store.history(BINDING_KINDS, at, revision, _all, False)
                moved = compact > at
                if accounts is None:
                    accounts = dict(start.accounts)
                for group in by_revision(binding):
                    before: Before = {}
                    for change in group:
                        update_accounts(accounts, change)
                        nb.apply(change, accounts, before)
                    moved = moved or any(k[0] == view.kind and was != nb.binds(k) for k, was in before.items())
                del binding
                if moved:
                    at = revision  # read the view as it stands at `revision`, now that the bindings are known there
                    continue
            done = 0
            while done < len(keys):
                objects, read = await reading.keys(
                    view.kind, keys[done : done + CHUNK_KEYS], with_data=True, max_bytes=chunk_bytes
                )
                done += read
                chunk = [(revision, encode_event(view, ADDED, revision, obj)) for obj in objects if view.asked_for(obj)]
                del objects
                if chunk:
                    yield chunk
        yield [(revision, encode(view.kind, SYNCED, revision))]
        return


async def replay(
    store: Store, view: View, start: NodeStart, since: int, chunk_bytes: int = CHUNK_BYTES
) -> AsyncGenerator[Chunk, None]:
    """The node view's events in revisions (since, start.revision], the same a
    stream open since `since` saw."""
    node, upto = start.bindings.node, start.revision
    compact, binding = await store.history(BINDING_KINDS, since, upto, _all, False)
    if since < compact:
        raise compacted(since, compact)
    # The node's bindings as they stood at `since`: the binding changes undone.
    accounts = dict(start.accounts)
    workloads = dict(start.bindings.workloads)
    for change in reversed(binding):
        undo_accounts(accounts, change)
        if change.kind == WORKLOADS:
            meta, prev = change.obj.metadata, change.prev
            if isinstance(prev, workload_pb2.Workload) and prev.node_name == node:
                workloads[meta.namespace, meta.name] = binding_of(prev)
            else:
                workloads.pop((meta.namespace, meta.name), None)
    nb = NodeBindings.of(node, workloads, accounts)
    # Every object the node binds at some point of the replay: only their changes are read with data.
    candidates = set(nb.refs)
    dry, dry_accounts = nb.copy(), dict(accounts)
    for change in binding:
        update_accounts(dry_accounts, change)
        before: Before = {}
        dry.apply(change, dry_accounts, before)
        candidates.update(before)

    def relevant(change: Change) -> bool:
        return change.kind in BINDING_KINDS or key_of(change.obj) in candidates

    def opens(obj: Resource) -> bool:
        return key_of(obj) in candidates

    kinds = tuple(dict.fromkeys((view.kind, *BINDING_KINDS)))
    after = since
    while after < upto:
        compact, changes, reached = await store.history_chunk(
            kinds, after, upto, relevant, opens, max_bytes=chunk_bytes, related=True
        )
        if after < compact:
            raise compacted(after, compact)
        chunk: Chunk = []
        for group in by_revision(changes):
            before = {}
            for change in group:
                update_accounts(accounts, change)
                nb.apply(change, accounts, before)
            digest = Digest(group)
            for event_type, obj in view_changes(view, nb, before, digest):
                chunk.append((digest.revision, encode_event(view, event_type, digest.revision, obj)))
        del changes
        if chunk:
            yield chunk
        after = reached


def _all(_change: Change) -> bool:
    return True
