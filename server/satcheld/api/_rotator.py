"""The rotation schedule: a secret with a `rotation.period` is rotated by the
server when its `rotation.next_rotate_time` comes. The schedule is that field,
kept in the store with the secret, so it survives restarts; a rotation and the
next due time are one write, and a rotation happens only if the secret is still
due at the time it was found due, so one due time is rotated once, even if the
server dies mid-rotation (the write then never happened, and is made after the
restart)."""

from __future__ import annotations

import asyncio
import datetime
import logging

from google.protobuf import timestamp_pb2

from satchel.v1 import meta_pb2, secret_pb2

from ..model import SECRETS
from ..store import Change, Store
from ._crud import Crud

log = logging.getLogger("satcheld.rotation")

Name = tuple[str, str]
MAX_SLEEP = 60.0  # seconds between looks at the schedule when nothing changes
RETRY = datetime.timedelta(seconds=30)  # after a failed rotation


class Rotator:
    """Keeps every secret's next due time in memory (fed by the commit stream)
    and rotates each when it comes."""

    def __init__(self, store: Store, crud: Crud) -> None:
        self._store = store
        self._crud = crud
        self._due: dict[Name, timestamp_pb2.Timestamp] = {}
        self._failed: dict[Name, datetime.datetime] = {}  # not tried again before then
        self._changed = asyncio.Event()
        store.add_listener(self._note)

    async def load(self) -> None:
        _, secrets = await self._store.snapshot(SECRETS, _scheduled, False)
        for secret in secrets:
            self._due[_name(secret)] = _copy(secret.rotation.next_rotate_time)  # type: ignore[union-attr]

    def _note(self, changes: list[Change]) -> None:
        for change in changes:
            if change.kind != SECRETS:
                continue
            name = _name(change.obj)
            if change.type == meta_pb2.EVENT_TYPE_DELETED or not _scheduled(change.obj):
                self._due.pop(name, None)
            else:
                self._due[name] = _copy(change.obj.rotation.next_rotate_time)  # type: ignore[union-attr]
            self._failed.pop(name, None)
        self._changed.set()

    async def run(self) -> None:
        while True:
            await self.rotate_due()
            now = datetime.datetime.now(datetime.UTC)
            waits = [(_time(t) - now).total_seconds() for n, t in self._due.items() if n not in self._failed]
            waits += [(t - now).total_seconds() for t in self._failed.values()]
            timeout = min([MAX_SLEEP, *waits])
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(timeout, 0.01))
            except TimeoutError:
                pass

    async def rotate_due(self) -> int:
        """Rotates every secret due by now; returns how many were rotated."""
        now = datetime.datetime.now(datetime.UTC)
        self._failed = {n: t for n, t in self._failed.items() if t > now}
        due = sorted((_time(t), n, t) for n, t in self._due.items() if _time(t) <= now and n not in self._failed)
        rotated = 0
        for _, (namespace, name), stamp in due:
            try:
                secret = await self._crud.rotate_due(namespace, name, stamp)
            except Exception as e:
                self._failed[namespace, name] = now + RETRY
                log.error("scheduled rotation of secret %s/%s failed (%s); will retry", namespace, name, e)
                continue
            if secret is not None:
                rotated += 1
                log.info("rotated secret %s/%s to version %d on schedule", namespace, name, secret.version)
        return rotated


def _scheduled(obj: object) -> bool:
    return isinstance(obj, secret_pb2.Secret) and obj.rotation.HasField("next_rotate_time")


def _name(obj: object) -> Name:
    meta = obj.metadata  # type: ignore[attr-defined]
    return meta.namespace, meta.name


def _copy(ts: timestamp_pb2.Timestamp) -> timestamp_pb2.Timestamp:
    copy = timestamp_pb2.Timestamp()
    copy.CopyFrom(ts)
    return copy


def _time(ts: timestamp_pb2.Timestamp) -> datetime.datetime:
    return ts.ToDatetime(tzinfo=datetime.UTC)
