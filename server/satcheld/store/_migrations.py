"""The SQLite schema as numbered migrations, applied in order on open and
recorded in the `migrations` table (sqlite-utils' table API makes the schema)."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import sqlite_utils


# Numbered migrations, applied in order and recorded in the `migrations` table.
def _m1_initial(db: sqlite_utils.Database) -> None:
    db.table("state").create({"id": int, "revision": int, "compact_revision": int}, pk="id")
    db.table("state").insert({"id": 1, "revision": 0, "compact_revision": 0})
    db.table("objects").create(
        {
            "kind": str,
            "namespace": str,
            "name": str,
            "uid": str,
            "resource_version": int,
            "body": bytes,
            "sealed": bytes,
        },
        pk=("kind", "namespace", "name"),
    )
    db.table("events").create(
        {
            "revision": int,
            "seq": int,
            "time_ns": int,
            "kind": str,
            "type": int,
            "body": bytes,
            "sealed": bytes,
            "prev_body": bytes,
        },
        pk=("revision", "seq"),
    )


def _m2_related(db: sqlite_utils.Database) -> None:
    # Rows of type REFERENCED follow a change of what an object binds: the state
    # of each object it binds at that revision (`kind` is the change's kind,
    # `ref_kind` the bound object's).
    db.table("events").add_column("ref_kind", str)


def _m3_signing_keys(db: sqlite_utils.Database) -> None:
    # The token signing keys (ES256). The one with no `retire_time_ns` signs; a
    # retired one verifies until `expire_time_ns`, when the last token it signed
    # expires. `sealed` is the PKCS#8 private key under the key ring (associated
    # data: uid `signing-key:<kid>`, version 0).
    db.table("signing_keys").create(
        {
            "kid": str,
            "create_time_ns": int,
            "lifetime_ns": int,
            "retire_time_ns": int,
            "expire_time_ns": int,
            "public_jwk": str,
            "sealed": bytes,
        },
        pk="kid",
        not_null={"create_time_ns", "lifetime_ns", "public_jwk", "sealed"},
    )


MIGRATIONS: list[tuple[int, str, Callable[[sqlite_utils.Database], None]]] = [
    (1, "initial", _m1_initial),
    (2, "related objects in history", _m2_related),
    (3, "token signing keys", _m3_signing_keys),
]


def connect(path: Path) -> sqlite_utils.Database:
    if not path.exists():
        # SQLite gives the -wal and -shm files the database file's mode.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA foreign_keys=ON")
    # No sqlite-utils plugins: nothing installed beside Satchel gets a hook into the store.
    return sqlite_utils.Database(conn, execute_plugins=False, recursive_triggers=False)


def migrate(db: sqlite_utils.Database) -> None:
    if "migrations" not in db.table_names():
        db.table("migrations").create({"id": int, "name": str, "applied_at": str}, pk="id")
    done = {row["id"] for row in db.table("migrations").rows}
    for number, name, apply in MIGRATIONS:
        if number in done:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            apply(db)
            db.table("migrations").insert(
                {"id": number, "name": name, "applied_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            )
            db.commit()
        except BaseException:
            db.rollback()
            raise
