"""A consistent read in chunks (`Reading`) on SQLite: one read transaction on a
connection of its own, held while its caller takes the chunks, each read in a
reader thread. Rows are found by cursor with the namespace filtered in SQL, and
a row's sealed data is read from the file only for the objects whose data is
opened, so a chunk holds what it returns and little more."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

import sqlite_utils

from ..model import Key, Resource
from ._codec import Codec
from ._interface import Cursor, Match

T = TypeVar("T")

_ROWS = (
    "SELECT namespace, name, body, length(sealed) FROM objects"
    " WHERE kind=? AND (namespace, name) > (?, ?){namespace} ORDER BY namespace, name LIMIT ?"
)
_SEALED = "SELECT sealed FROM objects WHERE kind=? AND namespace=? AND name=?"
_ROW = "SELECT body, {sealed} FROM objects WHERE kind=? AND namespace=? AND name=?"
_SIZE = "SELECT length(body) + IFNULL(length({sealed}), 0) FROM objects WHERE kind=? AND namespace=? AND name=?"


class SqliteReading:
    """One read transaction, begun by `begin` and ended by `close` (at most once
    in effect; `on_end` then runs, the connection free again). Every statement
    runs in the store's reader threads under `_lock`, so a job still running
    when its awaiting task was cancelled finishes before the transaction ends."""

    def __init__(self, db: sqlite_utils.Database, codec: Codec, pool: Executor, on_end: Callable[[], None]) -> None:
        self._db = db
        self._codec = codec
        self._pool = pool
        self._on_end = on_end
        self._lock = threading.Lock()
        self._ended = False
        self.revision = 0

    def _run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self._pool, self._locked, fn, *args)

    def _locked(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            if self._ended:
                raise RuntimeError("the reading has ended")
            return fn(*args)

    async def begin(self) -> None:
        self.revision = await self._run(self._begin)

    def _begin(self) -> int:
        self._db.execute("BEGIN")
        return int(self._db.execute("SELECT revision FROM state WHERE id=1").fetchone()[0])

    def close(self) -> None:
        """Ends the transaction in a reader thread, after any job still running.
        Returns at once: a cancelled stream's cleanup must not wait. A chunk
        asked for after it raises RuntimeError."""

        def finish() -> None:
            with self._lock:
                if self._ended:
                    return
                self._ended = True
                if self._db.conn.in_transaction:
                    self._db.execute("ROLLBACK")
            self._on_end()

        try:
            self._pool.submit(finish)
        except RuntimeError:  # the store has closed, and its connections with it
            pass

    async def objects(
        self, kind: str, *, namespace: str, after: Cursor, match: Match, opens: Match, max_rows: int, max_bytes: int
    ) -> tuple[list[Resource], Cursor | None]:
        return await self._run(self._objects, kind, namespace, after, match, opens, max_rows, max_bytes)

    def _objects(
        self, kind: str, namespace: str, after: Cursor, match: Match, opens: Match, max_rows: int, max_bytes: int
    ) -> tuple[list[Resource], Cursor | None]:
        db, decode = self._db, self._codec.decode
        args: list[Any] = [kind, *after]
        if namespace:
            args.append(namespace)
        args.append(max_rows)
        rows = db.execute(_ROWS.format(namespace=" AND namespace=?" if namespace else ""), args).fetchall()
        found: list[Resource] = []
        size = 0
        cursor: Cursor | None = None
        for ns, name, body, sealed_size in rows:
            obj = decode(kind, body, None, with_data=False)
            if match(obj):
                opened = bool(sealed_size) and opens(obj)
                row_size = len(body) + (sealed_size if opened else 0)
                if found and size + row_size > max_bytes:
                    return found, cursor  # this row starts the next chunk
                size += row_size
                if opened:
                    obj = decode(kind, body, db.execute(_SEALED, (kind, ns, name)).fetchone()[0])
                found.append(obj)
            cursor = (ns, name)
        return found, (cursor if len(rows) == max_rows else None)

    async def keys(
        self, kind: str, keys: Sequence[Key], *, with_data: bool, max_bytes: int
    ) -> tuple[list[Resource], int]:
        return await self._run(self._keys, kind, keys, with_data, max_bytes)

    def _keys(self, kind: str, keys: Sequence[Key], with_data: bool, max_bytes: int) -> tuple[list[Resource], int]:
        found: list[Resource] = []
        size = read = 0
        sql = _ROW.format(sealed="sealed" if with_data else "NULL")
        for key in keys:
            args = (kind, key[1], key[2])
            if found:  # this key starts the next chunk if it would take this one past max_bytes
                row_size = self._db.execute(_SIZE.format(sealed="sealed" if with_data else "NULL"), args).fetchone()
                if row_size is not None and size + row_size[0] > max_bytes:
                    break
            read += 1
            row = self._db.execute(sql, args).fetchone()
            if row is not None:
                size += len(row[0]) + len(row[1] or b"")
                found.append(self._codec.decode(kind, row[0], row[1], with_data))
        return found, read
