"""The store's boundary: what the services, the watch hub and the compactor may
ask of any backend (SQLite today; PostgreSQL for several replicas later).

Every read is a coroutine, so a backend does its I/O, decoding and decryption
off the event loop (SQLite: reader threads; PostgreSQL: an async driver).
Writes are functions of a `Transaction`, run where the backend runs them (the
SQLite writer thread) and committed durably before `write` returns; after each
commit the backend calls its listeners on the event loop, in revision order,
before any writer of that commit resumes. That ordering is what keeps caches
fed by listeners (Get responses, watch views) never staler than a published
commit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple, Protocol, TypeVar

from ..model import Key, R, Resource
from ._keyring import KeyRing

T = TypeVar("T")
Match = Callable[[Resource], bool]
Opens = bool | Match  # whether to open secret data: for all objects, or for those it admits
Page = tuple[list[Resource], bool, int]  # the objects, whether more follow, the revision read at
Snapshot = tuple[int, list[Resource]]  # the revision read at, the objects


@dataclass(frozen=True, slots=True)
class Change:
    """One object's change within a committed revision, as listeners see it.
    Listeners share the objects: none may change them."""

    revision: int
    kind: str
    type: int  # meta_pb2.EventType
    obj: Resource  # the new state; the last state for DELETED (secrets with data)
    prev: Resource | None  # the state before a MODIFIED or DELETED, without data
    # For a change of what the object binds (model.binding_changed): every object
    # it binds or bound that exists at this revision, in its state at this
    # revision (secrets with data), so that views that follow bindings need no
    # read of their own, live or in a replay.
    related: tuple[Resource, ...] = ()


class Resealed(NamedTuple):
    """What a reseal did: how many sealed values it sealed again, and under which key."""

    resealed: int
    key_id: str


Listener = Callable[[list[Change]], None]
History = tuple[int, list[Change]]  # the compact revision, the changes


class Transaction(Protocol):
    """What a write function sees: reads include its own writes; all its changes
    share one revision; it takes effect only if the function returns."""

    @property
    def revision(self) -> int: ...

    def get(self, kind: str, namespace: str, name: str, *, with_data: bool = True) -> Resource | None: ...

    def put(self, obj: R) -> R:
        """Creates or replaces `obj`, filling uid, resource_version, etag and times;
        returns the stored object."""
        ...

    def delete(self, kind: str, namespace: str, name: str) -> Resource:
        """Deletes the object (NotFound if absent); returns its last state."""
        ...


class Store(Protocol):
    """Objects of every kind, the global revision and the history of changes."""

    @property
    def revision(self) -> int:
        """The last revision published to listeners."""
        ...

    def add_listener(self, listener: Listener) -> None:
        """`listener(changes)` runs on the event loop after each commit, in revision order."""
        ...

    async def write(self, fn: Callable[[Transaction], T]) -> T:
        """Runs `fn` in one transaction; returns its result once durable and published."""
        ...

    async def committed_revision(self) -> int:
        """The last revision committed (which List reports); may lead `revision`."""
        ...

    async def get(self, kind: str, namespace: str, name: str, *, with_data: bool = True) -> Resource | None: ...

    async def list(
        self,
        kind: str,
        *,
        namespace: str = "",
        after: tuple[str, str] = ("", ""),
        limit: int,
        max_bytes: int,
        match: Match = ...,
        with_data: Opens = True,
    ) -> Page:
        """Up to `limit` objects after `after` in (namespace, name) order that
        `match`, fewer if they would pass `max_bytes` (never none); whether more
        follow; the revision they were read at."""
        ...

    async def snapshot(self, kind: str, match: Match, with_data: bool) -> Snapshot:
        """The matching objects of `kind` and the revision of that one consistent read."""
        ...

    async def read(self, kind: str, keys: Iterable[Key], with_data: bool) -> Snapshot:
        """The objects of `kind` with these keys that exist, and the revision of
        that one consistent read."""
        ...

    async def history(
        self,
        kinds: str | tuple[str, ...],
        after: int,
        upto: int,
        relevant: Callable[[Change], bool],
        with_data: Opens,
        *,
        related: bool = False,
    ) -> History:
        """The compact revision (history after it is complete) and the `relevant`
        changes of `kinds` in revisions (after, upto], in order; with their
        `related` objects only if asked."""
        ...

    async def compact(self, *, keep_seconds: float, keep_events: int) -> int:
        """Forgets history both older than `keep_seconds` and beyond the newest
        `keep_events` events; returns the compact revision."""
        ...

    def set_keyring(self, keyring: KeyRing) -> None:
        """Seals new writes under `keyring`'s primary key from now on, and opens with its keys."""
        ...

    async def reseal(self) -> Resealed:
        """Seals every stored sealed value (current objects and all of history)
        again under the primary key, online, letting writes through between
        chunks; then keys other than the primary may be removed."""
        ...

    async def close(self) -> None:
        """Finishes the queued writes and releases the backend."""
        ...
