"""No secret value leaves the server through its audit log or its own log.

Every server a test starts (the `server` fixture, `watchkit.running`) is
checked when it stops: every secret value still in its database (objects and
history, opened with its key ring) is looked for, raw, in base64 and in hex,
in the audit log and in everything the server logged while it ran.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from satchel.v1 import secret_pb2
from satcheld._config import ServerConfig
from satcheld.errors import DataLoss
from satcheld.store import KeyRing
from satcheld.store._codec import Codec

MIN_LENGTH = 8  # shorter values ("a", "1") would be found by chance
REFERENCED = -1  # history rows holding a related object's state (store/_sqlite.py)
# A token secret's keys besides `token`: its namespace and the CA certificate, which are not secret.
PUBLIC_TOKEN_KEYS = ("namespace", "ca.crt")


def stored_values(config: ServerConfig) -> set[bytes]:
    """Every secret value in the database, current and in history."""
    codec = Codec(KeyRing.load(config.encryption_key_file))
    values: set[bytes] = set()
    with contextlib.closing(sqlite3.connect(f"file:{config.db}?mode=ro", uri=True)) as db:
        rows = [(kind, body, sealed) for kind, body, sealed in db.execute("SELECT kind, body, sealed FROM objects")]
        rows += [
            (ref_kind if event_type == REFERENCED else kind, body, sealed)
            for kind, event_type, body, sealed, ref_kind in db.execute(
                "SELECT kind, type, body, sealed, ref_kind FROM events"
            )
        ]
    for kind, body, sealed in rows:
        if sealed is None:
            continue
        try:
            obj = codec.decode(kind, body, sealed)
        except DataLoss:  # sealed under a key the test removed from the ring
            continue
        public = PUBLIC_TOKEN_KEYS if getattr(obj, "type", 0) == secret_pb2.SECRET_TYPE_SERVICE_ACCOUNT_TOKEN else ()
        values.update(v for k, v in getattr(obj, "data", {}).items() if len(v) >= MIN_LENGTH and k not in public)
    return values


class LogRecorder(logging.Handler):
    """Everything the server logs, as text (messages and tracebacks)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextlib.contextmanager
def recorded_logs() -> Iterator[LogRecorder]:
    recorder = LogRecorder()
    logger = logging.getLogger("satcheld")
    logger.addHandler(recorder)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        yield recorder
    finally:
        logger.removeHandler(recorder)
        logger.setLevel(level)


def assert_no_leak(config: ServerConfig, logs: LogRecorder) -> None:
    if not Path(config.db).exists():
        return
    audit_log = Path(config.audit_log) if config.audit_log else None
    audit = audit_log.read_bytes() if audit_log is not None and audit_log.is_file() else b""  # not /dev/full
    places = {"the audit log": audit, "the server log": "\n".join(logs.lines).encode()}
    for value in stored_values(config):
        for form in (value, base64.b64encode(value), value.hex().encode()):
            for where, text in places.items():
                assert form not in text, f"a secret value ({len(value)} bytes) appears in {where}"
