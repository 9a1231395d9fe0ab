"""The store: objects, revisions and history behind one interface (`Store`),
with secret data sealed under the key ring. Knows nothing of callers: it
imports no service, no authorizer and no watch view."""

from ._interface import Change, Cursor, Listener, Reading, Resealed, SigningKey, Store, Transaction
from ._keyring import KeyFileError, KeyRing, add_key, key_id_of
from ._migrations import MIGRATIONS
from ._sqlite import SqliteStore, etag_of

__all__ = [
    "MIGRATIONS",
    "Change",
    "Cursor",
    "KeyFileError",
    "KeyRing",
    "Listener",
    "Reading",
    "Resealed",
    "SigningKey",
    "SqliteStore",
    "Store",
    "Transaction",
    "add_key",
    "etag_of",
    "key_id_of",
]
