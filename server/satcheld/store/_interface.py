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

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
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


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A token signing key as the store keeps it; its private key is sealed at
    rest under the key ring, like secret data, and open here."""

    kid: str
    # PKCS#8 DER; None if the key ring cannot open it (the key then only verifies).
    private_key: bytes | None
    public_jwk: str  # the JWK (RFC 7517, JSON) of its public key
    lifetime_ns: int  # the longest lifetime of a token it signs
    create_time_ns: int = 0
    retire_time_ns: int | None = None  # when it stopped signing; None while it signs
    # When the last token it signed expires (its retirement plus its lifetime);
    # None while it signs. It verifies, and is published, until then.
    expire_time_ns: int | None = None


class Resealed(NamedTuple):
    """What a reseal did: how many sealed values it sealed again, and under which key."""

    resealed: int
    key_id: str


Listener = Callable[[list[Change]], None]
History = tuple[int, list[Change]]  # the compact revision, the changes
# The compact revision, the changes, and the revision read up to: every change
# of a revision is in the same chunk, so the next chunk starts after it.
HistoryChunk = tuple[int, list[Change], int]
Cursor = tuple[str, str]  # (namespace, name): a chunk of objects starts after it


class Reading(Protocol):
    """One consistent read of the objects at one revision, taken in chunks of
    bounded size, so that a large view need never be in memory at once. It
    holds a read transaction (and a connection) until it ends: callers keep
    it short, and bounded in number."""

    @property
    def revision(self) -> int:
        """The revision every chunk is read at."""
        ...

    def close(self) -> None:
        """Ends the read now, before its context exits (a stalled stream cut
        off); a chunk asked for after it raises RuntimeError."""
        ...

    async def objects(
        self, kind: str, *, namespace: str, after: Cursor, match: Match, opens: Match, max_rows: int, max_bytes: int
    ) -> tuple[list[Resource], Cursor | None]:
        """The objects of `kind` after `after` in (namespace, name) order, in
        `namespace` if not empty, that `match`, data opened where `opens`
        admits; at most `max_rows` rows looked at, and no more than `max_bytes`
        of them (their bodies and the sealed data opened), but at least one.
        Returns them and the cursor to go on from, None at the end."""
        ...

    async def keys(
        self, kind: str, keys: Sequence[Key], *, with_data: bool, max_bytes: int
    ) -> tuple[list[Resource], int]:
        """Of `keys` (all of `kind`), in order, the objects that exist, until they
        hold `max_bytes` (at least one key is read); and how many keys were read."""
        ...


class Transaction(Protocol):
    """What a write function sees: reads include its own writes; all its changes
    share one revision; it takes effect only if the function returns."""

    @property
    def revision(self) -> int: ...

    def get(self, kind: str, namespace: str, name: str, *, with_data: bool = True) -> Resource | None: ...

    def put(self, obj: R) -> R:
        """Creates or replaces `obj`, filling uid, resource_version, etag and times;
        returns the stored object. A new object keeps a uid the server's own code
        has already given it (a token names its secret's uid before the secret
        is written); callers' uids never get here (`model.prepare_create`)."""
        ...

    def delete(self, kind: str, namespace: str, name: str) -> Resource:
        """Deletes the object (NotFound if absent); returns its last state."""
        ...

    def signing_key_id(self) -> str | None:
        """The kid of the token signing key that signs, as of this transaction."""
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

    async def history_chunk(
        self,
        kinds: str | tuple[str, ...],
        after: int,
        upto: int,
        relevant: Callable[[Change], bool],
        with_data: Opens,
        *,
        max_bytes: int,
        related: bool = False,
    ) -> HistoryChunk:
        """`history`, from `after` on, ending at the first revision boundary past
        `max_bytes` of rows read (bodies, and the sealed data it opened): the
        compact revision, the changes, and the revision it read up to (above
        `after`; `upto` once done). Sealed data is read only where opened."""
        ...

    def reading(self) -> AbstractAsyncContextManager[Reading]:
        """A consistent read in chunks (`Reading`), ended when the context exits."""
        ...

    async def compact(self, *, keep_seconds: float, keep_events: int) -> int:
        """Forgets history both older than `keep_seconds` and beyond the newest
        `keep_events` events; returns the compact revision."""
        ...

    async def signing_keys(self) -> tuple[SigningKey, ...]:
        """Every token signing key, oldest first."""
        ...

    async def add_signing_key(
        self, kid: str, private_key: bytes, public_jwk: str, lifetime_ns: int
    ) -> tuple[SigningKey, ...]:
        """Stores a new key that signs from now on, in one write with the
        retirement of the one that signed (its tokens expire at the latest by
        then plus its lifetime); returns every key."""
        ...

    async def delete_signing_keys(self, expired_by_ns: int) -> tuple[str, ...]:
        """Deletes the retired keys whose last token expired by `expired_by_ns`;
        returns their kids."""
        ...

    async def reseal_signing_keys(self) -> int:
        """Seals every signing key's private key afresh under the key ring's
        primary key (for ResealSecrets); returns how many."""

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
