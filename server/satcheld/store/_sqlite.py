"""The SQLite store: objects, the global revision counter and the event history
in one file (WAL), behind the `Store` interface.

One writer thread owns the write connection and commits batches of queued
write functions in one transaction (group commit: one fsync for many writes),
each function with its own revision; a function's writes are kept aside and
applied with the batch only if it returns. Reads run in a small pool of reader
threads, each with its own connection, and never block the writer (WAL);
reading, decoding and decrypting never run on the event loop.

Rows are read and written with plain SQL through sqlite-utils' `Database.execute`
(and its connection's `executemany` for a batch), because the table API looks
the table up in the schema on every call, which cost CreateSecret some 7% of its
throughput; the table API makes the schema (`_migrations`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

import sqlite_utils
from cryptography.exceptions import InvalidTag
from google.protobuf.message import DecodeError

from satchel.v1 import meta_pb2, secret_pb2

from ..errors import DataLoss, NotFound, Unavailable
from ..model import KINDS, SECRETS, SERVICE_ACCOUNTS, Key, R, Resource, binding_changed, copy_of, kind_name, references
from ._codec import Codec
from ._interface import (
    Change,
    History,
    HistoryChunk,
    Listener,
    Match,
    Opens,
    Page,
    Resealed,
    SigningKey,
    Snapshot,
    Transaction,
)
from ._keyring import KeyRing, key_id_of
from ._migrations import connect, migrate
from ._reading import SqliteReading

T = TypeVar("T")
log = logging.getLogger("satcheld.store")

_BATCH = 256
READING_CACHE_KIB = 256  # the page cache of a `reading`'s connection
# Reads run here, off the event loop; each thread keeps its own connection.
READER_THREADS = 4
# List scans run on a pool of their own, this small: however many scan at once,
# they can never take the reader threads that Gets and chunks need.
SCAN_THREADS = 2
_GROUP_COMMIT_WINDOW = 0.004  # seconds a busy writer waits for company
_STOP = None  # queued by close(): the writer stops after the jobs before it


def etag_of(uid: str, resource_version: int) -> str:
    return hashlib.blake2b(f"{uid}/{resource_version}".encode(), digest_size=8).hexdigest()


_Key = Key
# The type of a history row holding an object a change binds (never sent: an
# EventType is never negative).
REFERENCED = -1
_SELECT_ROW = "SELECT body, sealed FROM objects WHERE kind=? AND namespace=? AND name=?"
_SELECT_SEALED = "SELECT sealed FROM objects WHERE kind=? AND namespace=? AND name=?"
_SIGNING_KEY = "SELECT kid FROM signing_keys WHERE retire_time_ns IS NULL ORDER BY create_time_ns DESC LIMIT 1"
_SIGNING_KEYS = (
    "SELECT kid, sealed, public_jwk, lifetime_ns, create_time_ns, retire_time_ns, expire_time_ns"
    " FROM signing_keys ORDER BY create_time_ns, kid"
)
# A reseal job looks at most this many sealed rows, or this many sealed bytes,
# before it lets the queued writes through.
RESEAL_ROWS = 100
RESEAL_BYTES = 1024 * 1024
# Where sealed data lives: objects (current state), then history (every earlier
# version, DELETED last states, and the states REFERENCED rows keep). The
# columns after the rowid: the kind the body is of, the body, the blob.
_Lost = list[str]  # the secrets whose sealed values no key of the ring opens
_SEALED_TABLES = {
    "objects": "kind, body, sealed",
    "events": f"CASE WHEN type = {REFERENCED} THEN ref_kind ELSE kind END, body, sealed",
}


class _Row(NamedTuple):
    """An objects-table row, in its column order."""

    kind: str
    namespace: str
    name: str
    uid: str
    resource_version: int
    body: bytes
    sealed: bytes | None


def _stored(row: _Row | None) -> tuple[bytes, bytes | None] | None:
    return None if row is None else (row.body, row.sealed)


class _Batch:
    """One write transaction's pending changes, applied to SQLite in bulk when
    all its jobs have run: a few statements per batch rather than several per
    write, and a job that fails needs no savepoint, since none of its writes
    reached SQLite."""

    def __init__(self, db: sqlite_utils.Database, revision: int) -> None:
        self.db = db
        self.revision = revision
        self.objects: dict[_Key, _Row | None] = {}  # the final row per written key; None: deleted
        self.events: list[list[Any]] = []
        self.changes: list[Change] = []
        self._read: dict[_Key, tuple[bytes, bytes | None] | None] = {}  # as SQLite had them before this batch

    def row(self, key: _Key) -> tuple[bytes, bytes | None] | None:
        """(body, sealed) of the object as this batch has left it so far."""
        if key in self.objects:
            return _stored(self.objects[key])
        if key not in self._read:
            self._read[key] = self.db.execute(_SELECT_ROW, key).fetchone()
        return self._read[key]

    def add(self, txn: Txn) -> None:
        """Takes on a job's writes once it has succeeded."""
        self.objects.update(txn.objects)
        self.events.extend(txn.events)
        self.changes.extend(txn.changes)
        self.revision = txn.revision

    def apply(self) -> None:
        conn = self.db.conn
        upserts = [row for row in self.objects.values() if row is not None]
        deletes = [key for key, row in self.objects.items() if row is None]
        if upserts:
            conn.executemany(
                "INSERT OR REPLACE INTO objects (kind, namespace, name, uid, resource_version, body, sealed)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                upserts,
            )
        if deletes:
            conn.executemany("DELETE FROM objects WHERE kind=? AND namespace=? AND name=?", deletes)
        if self.events:
            conn.executemany(
                "INSERT INTO events (revision, seq, time_ns, kind, type, body, sealed, prev_body, ref_kind)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                self.events,
            )
            conn.execute("UPDATE state SET revision=? WHERE id=1", (self.revision,))


class Txn:
    """The view a write function gets: reads see its own writes and those of the
    jobs before it in the batch; all its changes share one revision, assigned on
    the first change. Its writes reach SQLite only if it returns normally."""

    def __init__(self, batch: _Batch, codec: Codec) -> None:
        self._batch = batch
        self._codec = codec
        self._before = batch.revision
        self.revision = batch.revision
        self.now_ns = time.time_ns()
        self.changes: list[Change] = []
        self.objects: dict[_Key, _Row | None] = {}
        self.events: list[list[Any]] = []

    @property
    def db(self) -> sqlite_utils.Database:
        """The write connection, for statements that must run at once (compaction).
        A SQLite error in them fails the whole batch."""
        return self._batch.db

    def _next_revision(self) -> int:
        if self.revision == self._before:
            self.revision = self._before + 1
        return self.revision

    def _row(self, key: _Key) -> tuple[bytes, bytes | None] | None:
        if key in self.objects:
            return _stored(self.objects[key])
        return self._batch.row(key)

    def get(self, kind: str, namespace: str, name: str, *, with_data: bool = True) -> Resource | None:
        row = self._row((kind, namespace, name))
        return None if row is None else self._codec.decode(kind, row[0], row[1], with_data)

    def put(self, obj: R) -> R:
        """Creates or replaces `obj`, filling uid, resource_version, etag and times."""
        kind = kind_name(obj)
        meta = obj.metadata
        key = (kind, meta.namespace, meta.name)
        row = self._row(key)
        prev = None if row is None else self._codec.decode(kind, row[0], None, with_data=False)
        revision = self._next_revision()
        stored = copy_of(obj)
        m: meta_pb2.ObjectMeta = stored.metadata
        if prev is None:
            m.uid = m.uid or str(uuid.uuid4())  # kept if the server's code made it (Transaction.put)
            m.create_time.FromNanoseconds(self.now_ns)
        else:
            m.uid = prev.metadata.uid
            m.create_time.CopyFrom(prev.metadata.create_time)
        m.resource_version = revision
        m.etag = etag_of(m.uid, revision)
        m.update_time.FromNanoseconds(self.now_ns)
        body, sealed = self._codec.encode(stored)
        self.objects[key] = _Row(*key, m.uid, revision, body, sealed)
        event_type = meta_pb2.EVENT_TYPE_ADDED if prev is None else meta_pb2.EVENT_TYPE_MODIFIED
        self._record(kind, event_type, stored, body, sealed, prev)
        return stored

    def delete(self, kind: str, namespace: str, name: str) -> Resource:
        key = (kind, namespace, name)
        row = self._row(key)
        if row is None:
            raise NotFound(f"{kind} {namespace}/{name} not found")
        revision = self._next_revision()
        prev = self._codec.decode(kind, row[0], None, with_data=False)
        try:
            last = self._codec.decode(kind, row[0], row[1])
        except DataLoss:  # data no key opens any more must still be deletable
            last = self._codec.decode(kind, row[0], None, with_data=False)
        # The DELETED event carries the last state at the deleting revision;
        # its sealed data stays bound to the uid and version it was sealed with.
        last.metadata.resource_version = revision
        body = self._codec.body(last)
        self.objects[key] = None
        self._record(kind, meta_pb2.EVENT_TYPE_DELETED, last, body, row[1], prev)
        return last

    def signing_key_id(self) -> str | None:
        row = self._batch.db.execute(_SIGNING_KEY).fetchone()
        return None if row is None else str(row[0])

    def _record(
        self, kind: str, event_type: int, obj: Resource, body: bytes, sealed: bytes | None, prev: Resource | None
    ) -> None:
        self.changes.append(Change(self.revision, kind, event_type, obj, prev))
        self.events.append(
            [
                self.revision,
                0,  # seq, numbered by finish()
                self.now_ns,
                kind,
                event_type,
                body,
                sealed,
                None if prev is None else prev.SerializeToString(),
                None,
            ]
        )

    def finish(self) -> None:
        """Once the write function has returned: each change of what an object
        binds gets the objects it binds or bound, as this transaction leaves
        them, recorded after it in history and attached to it for listeners."""
        events: list[list[Any]] = []
        for i, (change, event) in enumerate(zip(self.changes, self.events, strict=True)):
            events.append(event)
            now = None if change.type == meta_pb2.EVENT_TYPE_DELETED else change.obj
            if not binding_changed(change.prev, now):
                continue
            related = []
            for key in sorted(self._closure(references(now) | references(change.prev))):
                row = self._row(key)
                if row is None:
                    continue
                related.append(self._codec.decode(key[0], row[0], row[1]))
                events.append([self.revision, 0, self.now_ns, change.kind, REFERENCED, row[0], row[1], None, key[0]])
            self.changes[i] = dataclasses.replace(change, related=tuple(related))
        for seq, event in enumerate(events, 1):
            event[1] = seq
        self.events = events

    def _closure(self, keys: frozenset[Key]) -> set[Key]:
        """`keys` and what the accounts among them bind, as this transaction leaves them."""
        found = set(keys)
        for key in keys:
            row = self._row(key) if key[0] == SERVICE_ACCOUNTS else None
            if row is not None:
                found |= references(self._codec.decode(key[0], row[0], None, with_data=False))
        return found


@dataclass
class _Job:
    fn: Callable[[Txn], Any]
    future: asyncio.Future


class SqliteStore:
    """Objects and history in one SQLite file, created and migrated when opened."""

    def __init__(self, path: Path, keyring: KeyRing, *, readers: int = READER_THREADS) -> None:
        self.path = Path(path)
        self._codec = Codec(keyring)
        writer = connect(self.path)
        migrate(writer)
        self._writer = writer
        self._readers = threading.local()
        self._all_readers: list[sqlite_utils.Database] = []
        self._read_pool = ThreadPoolExecutor(readers, thread_name_prefix="satchel-store-reader")
        self._scan_pool = ThreadPoolExecutor(SCAN_THREADS, thread_name_prefix="satchel-store-scanner")
        self._idle_readings: list[sqlite_utils.Database] = []  # connections for `reading`, free again
        self._revision = self._committed_revision(writer)
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._listeners: list[Listener] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # where writers wait and listeners run
        self._closed = False
        self._closing = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="satchel-store-writer", daemon=True)
        self._thread.start()

    # -- writes -----------------------------------------------------------

    async def write(self, fn: Callable[[Transaction], T]) -> T:
        """Runs `fn(txn)` in the writer thread; returns its result once durable.
        All writes come from one event loop, the one listeners run on."""
        return await self._write(fn)

    async def _write(self, fn: Callable[[Txn], T]) -> T:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError("a Store is written from one event loop only")
        future = loop.create_future()
        with self._closing:  # a job is queued before _STOP, or not at all
            if self._closed:
                raise Unavailable("the server is shutting down")
            self._queue.put(_Job(fn, future))
        return await future

    def add_listener(self, listener: Listener) -> None:
        """`listener(changes)` runs on the event loop after each commit, in revision order."""
        self._listeners.append(listener)

    @property
    def revision(self) -> int:
        """The last revision published to listeners; it trails `committed_revision()`
        by the moment between a commit and its publication on the event loop."""
        return self._revision

    async def committed_revision(self) -> int:
        """The last revision committed to the database (what List reports)."""
        return await self._read(lambda: self._committed_revision(self._reader()))

    def _run(self) -> None:
        busy = False  # whether writes arrived while the last batch committed
        while True:
            job = self._queue.get()
            if job is None:
                return
            if busy:
                # Group commit: under load, let more writes arrive so that one
                # commit and fsync covers many. Sleeping, not waking per write,
                # leaves the GIL to the event loop that is producing them.
                time.sleep(_GROUP_COMMIT_WINDOW)
            batch = [job]
            while len(batch) < _BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(_STOP)
                    break
                batch.append(nxt)
            try:
                self._commit(batch)
            except Exception:  # a bug here must not leave every later write hanging
                log.exception("the store writer failed a batch")
                self._writer.rollback()
                self._fail(batch)
            busy = not self._queue.empty()

    def _commit(self, jobs: list[_Job]) -> None:
        """Runs the jobs in one transaction; a job that raises is left out, and a
        SQLite error (disk full, I/O) leaves the whole batch out."""
        db = self._writer
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            batch = _Batch(db, self._committed_revision(db))
            for job in jobs:
                txn = Txn(batch, self._codec)
                try:
                    result = job.fn(txn)
                    txn.finish()
                except sqlite3.Error:
                    raise
                except Exception as e:  # the job's own failure: none of its writes were applied
                    outcomes.append((job, None, e))
                    continue
                batch.add(txn)
                outcomes.append((job, result, None))
            batch.apply()
            db.commit()
        except sqlite3.Error as e:
            log.error("write failed in the database: %s", e)
            db.rollback()
            self._fail(jobs)
            return
        # One wake-up of the event loop per batch, not one per write.
        self._on_loop(self._finish, batch.changes, outcomes)

    def _fail(self, jobs: list[_Job]) -> None:
        error = Unavailable("the store could not commit the write; it was not applied")
        self._on_loop(self._finish, [], [(job, None, error) for job in jobs])

    def _on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None, "a job ran before any write set the loop"
        self._loop.call_soon_threadsafe(fn, *args)

    def _finish(self, changes: list[Change], outcomes: list[tuple[_Job, Any, BaseException | None]]) -> None:
        """On the event loop: listeners learn of a commit before its writers do."""
        if changes:
            self._publish(changes)
        for job, result, error in outcomes:
            _settle(job.future, result, error)

    def _publish(self, changes: list[Change]) -> None:
        self._revision = changes[-1].revision
        for listener in self._listeners:
            try:
                listener(changes)
            except Exception:  # a bug in one listener must not keep the commit from the others
                log.exception("a store listener failed at revision %d", self._revision)

    # -- reads: each runs in a reader thread ----------------------------

    def _read(self, fn: Callable[..., T], *args: Any, pool: ThreadPoolExecutor | None = None) -> asyncio.Future[T]:
        if self._closed:
            raise Unavailable("the server is shutting down")
        return asyncio.get_running_loop().run_in_executor(pool or self._read_pool, fn, *args)

    def _reader(self) -> sqlite_utils.Database:
        """A read connection per thread: reads in WAL mode never block the writer."""
        db = getattr(self._readers, "db", None)
        if db is None:
            db = self._readers.db = connect(self.path)
            self._all_readers.append(db)
        return db

    async def get(self, kind: str, namespace: str, name: str, *, with_data: bool = True) -> Resource | None:
        """One object as last committed, or None."""
        return await self._read(self._get, kind, namespace, name, with_data)

    def _get(self, kind: str, namespace: str, name: str, with_data: bool) -> Resource | None:
        row = self._reader().execute(_SELECT_ROW, (kind, namespace, name)).fetchone()
        return None if row is None else self._codec.decode(kind, row[0], row[1], with_data)

    async def list(
        self,
        kind: str,
        *,
        namespace: str = "",
        after: tuple[str, str] = ("", ""),
        limit: int,
        max_bytes: int,
        match: Match = lambda _obj: True,
        with_data: Opens = True,
    ) -> Page:
        """Up to `limit` matching objects after `after` in (namespace, name) order,
        and fewer if they would exceed `max_bytes` (never none, so a page always
        makes progress); whether more follow, and the revision they were read at."""
        # A scan that matches nothing reads the whole table: its own pool, so
        # that a few at once cannot queue every Get behind them. A pool, not a
        # semaphore: a cancelled List's scan keeps its thread until it ends.
        return await self._read(
            self._list, kind, namespace, after, limit, max_bytes, match, _opener(with_data), pool=self._scan_pool
        )

    def _list(
        self,
        kind: str,
        namespace: str,
        after: tuple[str, str],
        limit: int,
        max_bytes: int,
        match: Match,
        opens: Match,
    ) -> Page:
        db = self._reader()
        # Sealed data is read by key only for the rows whose data is opened: a
        # scan that matches few of many secrets reads their bodies alone.
        sql = (
            "SELECT namespace, name, body, sealed IS NOT NULL FROM objects WHERE kind=? AND (namespace, name) > (?, ?)"
        )
        args: list[Any] = [kind, *after]
        if namespace:
            sql += " AND namespace=?"
            args.append(namespace)
        sql += " ORDER BY namespace, name"
        found: list[Resource] = []
        size = 0
        more = False
        with db.atomic():  # the revision and the rows from one snapshot
            revision = self._committed_revision(db)
            for ns, name, body, sealed in db.execute(sql, args):
                obj = self._codec.decode(kind, body, None, with_data=False)
                if not match(obj):
                    continue
                if sealed and opens(obj):
                    obj = self._codec.decode(kind, body, db.execute(_SELECT_SEALED, (kind, ns, name)).fetchone()[0])
                size += obj.ByteSize()
                if len(found) == limit or (found and size > max_bytes):
                    more = True
                    break
                found.append(obj)
        return found, more, revision

    async def snapshot(self, kind: str, match: Match, with_data: bool) -> Snapshot:
        """The matching objects of `kind` and the revision they were read at, from
        one consistent read; data is opened only when asked for. Used for a
        watch's initial state."""
        return await self._read(self._snapshot, kind, match, with_data)

    def _snapshot(self, kind: str, match: Match, with_data: bool) -> Snapshot:
        db = self._reader()
        with db.atomic():
            revision = self._committed_revision(db)
            rows = db.execute(
                f"SELECT body, {'sealed' if with_data else 'NULL'} FROM objects WHERE kind=? ORDER BY namespace, name",
                (kind,),
            ).fetchall()
        found = []
        for body, sealed in rows:
            obj = self._codec.decode(kind, body, None, with_data=False)
            if match(obj):
                found.append(self._codec.decode(kind, body, sealed) if sealed and with_data else obj)
        return revision, found

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[SqliteReading]:
        """A consistent read in chunks on a connection of its own, taken from the
        idle ones (or opened); the watch hub bounds how many run at once."""
        if self._closed:
            raise Unavailable("the server is shutting down")
        db = self._idle_readings.pop() if self._idle_readings else None
        if db is None:
            db = connect(self.path)
            # Its pages are read once, in order: a small page cache (SQLite's
            # default is 2 MiB per connection) is all it needs, and all each
            # idle one keeps.
            db.execute(f"PRAGMA cache_size=-{READING_CACHE_KIB}")
            self._all_readers.append(db)
        reading = SqliteReading(db, self._codec, self._read_pool, lambda: self._idle_readings.append(db))
        try:
            await reading.begin()
            yield reading
        finally:
            reading.close()

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
        """The compact revision (history after it is complete) and the recorded
        changes of `kinds` in revisions (after, upto] that are `relevant`, in
        order, with their related objects if asked; data is opened only when
        asked for (for every object, or for those `with_data` admits)."""
        kinds = (kinds,) if isinstance(kinds, str) else kinds
        compact, changes, _ = await self._read(self._history, kinds, after, upto, relevant, _opener(with_data), related)
        return compact, changes

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
        """`history` in chunks of about `max_bytes` (see `Store.history_chunk`)."""
        kinds = (kinds,) if isinstance(kinds, str) else kinds
        return await self._read(self._history, kinds, after, upto, relevant, _opener(with_data), related, max_bytes)

    def _history(
        self,
        kinds: tuple[str, ...],
        after: int,
        upto: int,
        relevant: Callable[[Change], bool],
        opens: Match,
        related: bool,
        max_bytes: int | None = None,
    ) -> HistoryChunk:
        """The rows are read without their sealed data, which is read by key only
        for the changes whose data is opened: a change the view leaves out, or
        shows without data, costs its body alone."""
        db = self._reader()
        marks = ",".join("?" * len(kinds))
        decode = self._codec.decode
        changes: list[Change] = []
        kept = False  # whether the last change read was relevant (its related rows follow it)
        size = 0
        reached = upto
        with db.atomic():
            compact = db.execute("SELECT compact_revision FROM state WHERE id=1").fetchone()[0]
            rows = db.execute(
                "SELECT revision, seq, kind, type, body, length(sealed), prev_body, ref_kind FROM events"
                f" WHERE kind IN ({marks}) AND revision > ? AND revision <= ?"
                + ("" if related else f" AND type != {REFERENCED}")
                + " ORDER BY revision, seq",
                (*kinds, after, upto),
            )
            last_revision = after
            for revision, seq, kind, event_type, body, sealed, prev, ref_kind in rows:
                row_size = len(body) + len(prev or b"")
                if (
                    max_bytes is not None
                    and revision != last_revision
                    and size
                    and size + row_size + (sealed or 0) > max_bytes
                ):
                    reached = last_revision  # every row of it read: the next chunk starts after it
                    break
                last_revision = revision
                size += row_size
                if event_type == REFERENCED:
                    if kept:
                        obj = decode(ref_kind, body, None, with_data=False)
                        if sealed and opens(obj):
                            obj = decode(ref_kind, body, self._sealed_event(db, revision, seq))
                            size += sealed
                        last = changes[-1]
                        changes[-1] = dataclasses.replace(last, related=(*last.related, obj))
                    continue
                change = Change(
                    revision,
                    kind,
                    event_type,
                    decode(kind, body, None, with_data=False),
                    None if prev is None else cast(Resource, KINDS[kind].message.FromString(prev)),
                )
                kept = relevant(change)
                if kept:
                    if sealed and opens(change.obj):
                        change = dataclasses.replace(
                            change, obj=decode(kind, body, self._sealed_event(db, revision, seq))
                        )
                        size += sealed
                    changes.append(change)
            rows.close()
        return compact, changes, reached

    @staticmethod
    def _sealed_event(db: sqlite_utils.Database, revision: int, seq: int) -> bytes:
        return db.execute("SELECT sealed FROM events WHERE revision=? AND seq=?", (revision, seq)).fetchone()[0]

    async def compact(self, *, keep_seconds: float, keep_events: int, max_rows: int = 5000) -> int:
        """Forgets history that is both older than `keep_seconds` and beyond the
        newest `keep_events` events. Deletes at most `max_rows` rows per write
        job, so queued writes interleave and are never held up for long.
        Returns the compact revision: history after it is complete."""
        cutoff_ns = time.time_ns() - int(keep_seconds * 1e9)
        while True:
            deleted, compact = await self._write(
                lambda txn: self._compact_chunk(txn.db, cutoff_ns, keep_events, max_rows)
            )
            if deleted < max_rows:
                return compact

    def _compact_chunk(
        self, db: sqlite_utils.Database, cutoff_ns: int, keep_events: int, max_rows: int
    ) -> tuple[int, int]:
        row = db.execute(
            "SELECT revision FROM events ORDER BY revision DESC, seq DESC LIMIT 1 OFFSET ?",
            (max(keep_events, 1) - 1,),
        ).fetchone()
        by_count = row[0] if row else 0  # this revision and newer stay
        row = db.execute("SELECT MIN(revision) FROM events WHERE time_ns >= ?", (cutoff_ns,)).fetchone()
        by_age = row[0] if row[0] is not None else self._committed_revision(db) + 1
        keep_from = min(by_count, by_age)
        doomed = db.execute(
            "SELECT revision FROM events WHERE revision < ? ORDER BY revision LIMIT 1 OFFSET ?",
            (keep_from, max_rows),
        ).fetchone()
        below = doomed[0] if doomed else keep_from
        deleted = db.execute("DELETE FROM events WHERE revision < ?", (below,)).rowcount
        compact = db.execute("SELECT compact_revision FROM state WHERE id=1").fetchone()[0]
        if below - 1 > compact:
            compact = below - 1
            db.execute("UPDATE state SET compact_revision=? WHERE id=1", (compact,))
        return deleted, compact

    # -- token signing keys: written through the writer, read by the readers --

    async def signing_keys(self) -> tuple[SigningKey, ...]:
        """Every token signing key, oldest first, private keys opened."""
        return await self._read(lambda: self._signing_keys(self._reader()))

    def _signing_keys(self, db: sqlite_utils.Database) -> tuple[SigningKey, ...]:
        keys = []
        for kid, sealed, jwk, lifetime_ns, created, retired, expires in db.execute(_SIGNING_KEYS):
            private_key: bytes | None
            try:
                private_key = self._codec.keyring.open(sealed, uid=_signing_key_uid(kid), version=0)
            except (InvalidTag, KeyError, IndexError, UnicodeDecodeError):
                # Its public half (stored in the clear) still verifies the tokens it signed.
                log.error("token signing key %s cannot be decrypted with the key ring; it can only verify", kid)
                private_key = None
            keys.append(SigningKey(kid, private_key, jwk, lifetime_ns, created, retired, expires))
        return tuple(keys)

    async def add_signing_key(
        self, kid: str, private_key: bytes, public_jwk: str, lifetime_ns: int
    ) -> tuple[SigningKey, ...]:
        """Stores a new key that signs from now on and retires the one that
        signed, in one write: every token that key signed was signed before,
        so it expires by now plus that key's lifetime. Returns every key."""
        sealed = self._codec.keyring.seal(private_key, uid=_signing_key_uid(kid), version=0)

        def add(txn: Txn) -> tuple[SigningKey, ...]:
            db, now = txn.db, txn.now_ns
            keys = self._signing_keys(db)
            db.execute(
                "UPDATE signing_keys SET retire_time_ns=?, expire_time_ns=?+lifetime_ns WHERE retire_time_ns IS NULL",
                (now, now),
            )
            db.execute(
                "INSERT INTO signing_keys (kid, create_time_ns, lifetime_ns, public_jwk, sealed)"
                " VALUES (?, ?, ?, ?, ?)",
                (kid, now, lifetime_ns, public_jwk, sealed),
            )
            retired = [
                k
                if k.retire_time_ns is not None
                else dataclasses.replace(k, retire_time_ns=now, expire_time_ns=now + k.lifetime_ns)
                for k in keys
            ]
            return (*retired, SigningKey(kid, private_key, public_jwk, lifetime_ns, now))

        return await self._write(add)

    async def delete_signing_keys(self, expired_by_ns: int) -> tuple[str, ...]:
        """Deletes the retired keys whose last token expired by `expired_by_ns`."""

        def delete(txn: Txn) -> tuple[str, ...]:
            where = "FROM signing_keys WHERE retire_time_ns IS NOT NULL AND expire_time_ns <= ?"
            kids = tuple(row[0] for row in txn.db.execute(f"SELECT kid {where}", (expired_by_ns,)))
            if kids:
                txn.db.execute(f"DELETE {where}", (expired_by_ns,))
            return kids

        return await self._write(delete)

    async def reseal_signing_keys(self) -> int:
        """Seals every signing key afresh under the key ring's primary key."""
        keyring = self._codec.keyring

        def reseal(txn: Txn) -> int:
            # Every key opened before any is written; one no key opens is past saving,
            # and one sealed under the primary already is left as it is.
            current = {
                kid
                for kid, sealed in txn.db.execute("SELECT kid, sealed FROM signing_keys")
                if key_id_of(sealed) == keyring.primary_id
            }
            keys = [k for k in self._signing_keys(txn.db) if k.private_key is not None and k.kid not in current]
            txn.db.conn.executemany(
                "UPDATE signing_keys SET sealed=? WHERE kid=?",
                [
                    (keyring.seal(k.private_key, uid=_signing_key_uid(k.kid), version=0), k.kid)
                    for k in keys
                    if k.private_key
                ],
            )
            return len(keys)

        return await self._write(reseal)

    # -- keys -------------------------------------------------------------

    def set_keyring(self, keyring: KeyRing) -> None:
        """Seals new writes with `keyring`'s primary key from now on, and opens
        data with its keys (SIGHUP, after the key file changed)."""
        self._codec.keyring = keyring

    async def reseal(self, *, max_rows: int | None = None, max_bytes: int | None = None) -> Resealed:
        """Re-seals every sealed value (objects and history) that is not sealed
        under the primary key, online: each write job handles at most `max_rows`
        rows or `max_bytes` of sealed data, so queued writes interleave.

        Writes meanwhile seal under the primary, and copy a sealed value only
        from the objects table into history (DELETED, REFERENCED), so the objects
        are done first and then history up to where it ended when they were
        done: every newer row was sealed or copied after the objects were done.
        If the primary key changes meanwhile (SIGHUP), it starts over.
        DataLoss if some value opens with no key of the ring (the rest is
        re-sealed all the same)."""
        rows = max(1, RESEAL_ROWS if max_rows is None else max_rows)
        size = RESEAL_BYTES if max_bytes is None else max_bytes
        count = 0
        while True:
            primary = self._codec.keyring.primary_id
            done, used, lost = await self._reseal_pass(rows, size)
            count += done
            if used <= {primary} and self._codec.keyring.primary_id == primary:
                break
            log.info("reseal: the primary key changed meanwhile; sealing again under the new one")
        if lost:
            names = sorted(set(lost))
            shown = ", ".join(names[:5]) + (", …" if len(names) > 5 else "")
            raise DataLoss(
                f"re-sealed {count} values under key {primary}, but {len(lost)} sealed values open with no key"
                f" of the ring (secrets {shown}); they stay as they are"
            )
        log.info("reseal: re-sealed %d sealed values under key %s", count, primary)
        return Resealed(count, primary)

    async def _reseal_pass(self, rows: int, size: int) -> tuple[int, set[str], _Lost]:
        """One pass over every table: how many values it sealed again, the
        primary keys it sealed under, and the secrets whose values no key opens."""
        count = 0
        used: set[str] = set()
        lost: _Lost = []
        for table in _SEALED_TABLES:
            # Read in the writer: every batch that sealed under an earlier
            # primary has committed, every later one seals under this one.
            end = await self._write(functools.partial(self._last_rowid, table))
            after = 0
            while after < end:
                done, after, kid = await self._write(
                    functools.partial(self._reseal_chunk, table, after, end, rows, size, lost)
                )
                count += done
                used.add(kid)
        return count, used, lost

    def _reseal_chunk(
        self, table: str, after: int, end: int, max_rows: int, max_bytes: int, lost: _Lost, txn: Txn
    ) -> tuple[int, int, str]:
        """A write job: re-seals the rows of `table` after rowid `after` (up to
        `end`) that are not under the primary; how many, the last rowid looked
        at, and the primary key used."""
        db = txn.db
        ring = self._codec.keyring
        cursor = db.execute(
            f"SELECT rowid, {_SEALED_TABLES[table]} FROM {table}"
            " WHERE rowid > ? AND rowid <= ? AND sealed IS NOT NULL ORDER BY rowid",
            (after, end),
        )
        updates: list[tuple[bytes, int]] = []
        seen = size = 0
        last = end  # nothing left to look at, unless the limits stop us first
        for rowid, kind, body, sealed in cursor:
            if seen == max_rows or (seen and size >= max_bytes):
                last = after
                break
            after = rowid
            seen += 1
            size += len(sealed)
            if ring.is_primary(sealed):
                continue
            resealed = _resealed(ring, kind, body, sealed)
            if isinstance(resealed, str):
                lost.append(resealed)
            else:
                updates.append((resealed, rowid))
        cursor.close()
        if updates:
            db.conn.executemany(f"UPDATE {table} SET sealed=? WHERE rowid=?", updates)
        return len(updates), last, ring.primary_id

    @staticmethod
    def _last_rowid(table: str, txn: Txn) -> int:
        return txn.db.execute(f"SELECT COALESCE(MAX(rowid), 0) FROM {table}").fetchone()[0]

    @staticmethod
    def _committed_revision(db: sqlite_utils.Database) -> int:
        return db.execute("SELECT revision FROM state WHERE id=1").fetchone()[0]

    async def close(self) -> None:
        """Stops the writer after the queued writes and closes the database."""
        await asyncio.to_thread(self.close_now)

    def close_now(self) -> None:
        """`close`, blocking: for callers with no event loop."""
        if self._closed:
            return
        with self._closing:
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join()
        self._read_pool.shutdown(wait=True)
        self._scan_pool.shutdown(wait=True)
        self._writer.close()
        for db in self._all_readers:
            db.close()


def _signing_key_uid(kid: str) -> str:
    """The associated data a signing key is sealed with, as secret data is with its uid."""
    return f"signing-key:{kid}"


def _resealed(ring: KeyRing, kind: str, body: bytes, sealed: bytes) -> bytes | str:
    """`sealed` sealed again under the primary key, or the name of the secret
    whose value no key of the ring opens."""
    if kind != SECRETS:
        return f"({kind})"
    try:
        secret = secret_pb2.Secret.FromString(body)
    except DecodeError:
        return "(unreadable)"
    meta = secret.metadata
    try:
        payload = ring.open(sealed, uid=meta.uid, version=secret.version)
    except (InvalidTag, KeyError, IndexError, UnicodeDecodeError):
        return f"{meta.namespace}/{meta.name}"
    return ring.seal(payload, uid=meta.uid, version=secret.version)


def _opener(with_data: Opens) -> Match:
    if callable(with_data):
        return with_data
    return _ALWAYS if with_data else _NEVER


def _ALWAYS(_obj: Resource) -> bool:
    return True


def _NEVER(_obj: Resource) -> bool:
    return False


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
