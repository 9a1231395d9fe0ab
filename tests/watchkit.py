"""Helpers for the Watch tests: servers of our own configuration, raw watch
streams read by a background task, events reduced to comparable records
(secret data as hashes, so a failing assert prints no value), and the
per-stream rules every watch must keep.

Nothing here sleeps: waits are on the stream's next event, bounded by WAIT.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from conftest import Identity, Pki, Stubs, make_config, secure_channel
from failures import Failure, digest, parse
from google.protobuf.message import Message
from kinds import Kind
from leaks import assert_no_leak, recorded_logs

from satchel.v1 import meta_pb2, secret_pb2
from satcheld._server import Server

WAIT = 10.0  # seconds: the bound for anything that should happen at once


async def until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Polls a condition of the server's (or of files a process writes on its own schedule)
    under a deadline, where there is no event to wait on."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"
BOOKMARK = "BOOKMARK"
SYNCED = "SYNCED"
OBJECT_EVENTS = (ADDED, MODIFIED, DELETED)


def type_name(event_type: int) -> str:
    return meta_pb2.EventType.Name(event_type).removeprefix("EVENT_TYPE_")


# -- servers and channels -------------------------------------------------------


def free_port() -> int:
    """A port nothing listens on now, so that a restarted server can take the same one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def running(pki: Pki, data: Path, **overrides: Any) -> AsyncIterator[Server]:
    """A server on the data directory `data`, configured by `overrides` (see ServerConfig)."""
    server = Server(make_config(pki, data, **overrides))
    with recorded_logs() as logs:
        await server.start()
        try:
            yield server
        finally:
            await server.stop()
    assert_no_leak(server.config, logs)


class Channels:
    """Opens channels to any server (each its own), closes them all at the end."""

    def __init__(self, pki: Pki) -> None:
        self._pki = pki
        self._channels: list[grpc.aio.Channel] = []

    def stubs(self, address: str, identity: Identity, options: list[tuple[str, Any]] | None = None) -> Stubs:
        if options:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=self._pki.ca.read_bytes(),
                private_key=identity.key.read_bytes(),
                certificate_chain=identity.cert.read_bytes(),
            )
            ch = grpc.aio.secure_channel(address, credentials, options=options)
        else:
            ch = secure_channel(address, self._pki, identity)
        self._channels.append(ch)
        return Stubs.over(ch)

    async def close(self) -> None:
        for ch in self._channels:
            await ch.close()
        self._channels.clear()


# -- events ------------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    """An object's state as a watcher compares it: no secret value, only its hash."""

    uid: str
    resource_version: int
    labels: tuple[tuple[str, str], ...]
    data: tuple[tuple[str, str], ...]  # (key, sha256 hex) of secret data
    body: str  # kind-specific fields (node_name, description, data_keys...), as text

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


def state_of(obj: Message, *, redacted: bool = False) -> State:
    """`obj`'s State; `redacted` for objects from kinds.Api, whose data values are hashes already."""
    meta = obj.metadata
    rest = type(obj)()
    rest.CopyFrom(obj)
    rest.ClearField("metadata")
    data: tuple[tuple[str, str], ...] = ()
    if isinstance(rest, secret_pb2.Secret):
        hashes = {k: v.decode() for k, v in rest.data.items()} if redacted else digest(rest.data)
        data = tuple(sorted(hashes.items()))
        rest.ClearField("data")
    return State(
        meta.uid,
        meta.resource_version,
        tuple(sorted(meta.labels.items())),
        data,
        str(rest),
    )


@dataclass(frozen=True)
class Event:
    """One watch response, reduced: type, revision, which object and its state."""

    type: str
    revision: int
    key: str = ""  # namespace/name; empty for BOOKMARK and SYNCED
    state: State | None = None

    def __repr__(self) -> str:  # short, for assertion diffs
        if not self.key:
            return f"{self.type}@{self.revision}"
        s = self.state
        return (
            f"{self.type}@{self.revision} {self.key} rv={s.resource_version} labels={dict(s.labels)}"
            if s
            else (f"{self.type}@{self.revision} {self.key}")
        )

    def bare(self) -> Event:
        return Event(self.type, self.revision, self.key)


def event_of(response: Message, kind: Kind) -> Event:
    name = type_name(response.type)
    if name in OBJECT_EVENTS:
        obj = getattr(response, kind.field)
        return Event(name, response.revision, f"{obj.metadata.namespace}/{obj.metadata.name}", state_of(obj))
    return Event(name, response.revision)


def watch_call(stubs: Stubs, kind: Kind, **request: Any) -> grpc.aio.UnaryStreamCall:
    """Starts WatchX on `stubs` with the request fields given."""
    rpc = getattr(kind.stub(stubs.channel), kind.rpc("watch"))
    return rpc(kind.request_type("watch")(**request))


class Watcher:
    """A watch stream read by a background task into `events`; ends with `error`
    or cleanly. The stream is a raw grpc call (`Watcher.open`) or any async
    iterator of WatchXResponses, such as the client's AsyncWatchStream
    (`Watcher.consume`). Every wait is bounded by WAIT."""

    def __init__(
        self,
        call: grpc.aio.UnaryStreamCall | None,
        kind: Kind,
        name: str = "watcher",
        responses: AsyncIterator[Message] | None = None,
    ) -> None:
        self.call = call
        self.kind = kind
        self.name = name
        self.events: list[Event] = []
        self.objects: list[Message] = []  # the objects of object events, as received
        self.error: BaseException | None = None  # an AioRpcError, or the client's SatchelError
        self.done = False
        self._changed = asyncio.Condition()
        self._responses = responses if responses is not None else self._read_call()
        self._task = asyncio.create_task(self._read(), name=f"read-{name}")

    @classmethod
    def open(cls, stubs: Stubs, kind: Kind, name: str = "watcher", **request: Any) -> Watcher:
        return cls(watch_call(stubs, kind, **request), kind, name)

    @classmethod
    def consume(cls, responses: AsyncIterator[Message], kind: Kind, name: str = "consumer") -> Watcher:
        return cls(None, kind, name, responses)

    async def _read_call(self) -> AsyncIterator[Message]:
        assert self.call is not None
        while (response := await self.call.read()) is not grpc.aio.EOF:
            yield response

    async def _read(self) -> None:
        try:
            async for response in self._responses:
                event = event_of(response, self.kind)
                if event.key:
                    self.objects.append(getattr(response, self.kind.field))
                self.events.append(event)
                async with self._changed:
                    self._changed.notify_all()
        except Exception as e:  # the stream's end, for the test to judge
            self.error = e
        finally:
            self.done = True
            async with self._changed:
                self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        """Waits until `predicate()` holds (checked after every event), at most `timeout`."""
        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(lambda: predicate() or self.done), timeout)
        except TimeoutError:
            raise AssertionError(f"{self.name}: no {what} within {timeout} s; received {self.events[-20:]}") from None
        if not predicate():
            raise AssertionError(
                f"{self.name}: the stream ended ({self._ending()}) before {what}; received {self.events[-20:]}"
            )

    def _ending(self) -> str:
        if self.error is None:
            return "cleanly"
        if isinstance(self.error, grpc.aio.AioRpcError):
            return f"{self.error.code().name}: {self.error.details()}"
        return repr(self.error)

    async def take(self, n: int, timeout: float = WAIT) -> list[Event]:
        """The first `n` events, waiting for them."""
        await self.wait_for(lambda: len(self.events) >= n, f"{n} events", timeout)
        return self.events[:n]

    async def next_after(self, count: int, timeout: float = WAIT) -> Event:
        """The event that follows the first `count`."""
        return (await self.take(count + 1, timeout))[count]

    async def reach(self, revision: int, timeout: float = WAIT) -> None:
        """Waits for any event (a BOOKMARK included) at or after `revision`."""
        await self.wait_for(
            lambda: bool(self.events) and self.events[-1].revision >= revision,
            f"event at or after revision {revision}",
            timeout,
        )

    async def settle(self, revision: int, timeout: float = WAIT) -> None:
        """Waits until everything up to `revision` has been delivered: a BOOKMARK or
        SYNCED at or after it, or an event after it. Unlike `reach`, this does not
        stop inside a listing whose ADDED events all carry the same revision."""
        await self.wait_for(
            lambda: (
                bool(self.events)
                and (
                    self.events[-1].revision > revision
                    or (not self.events[-1].key and self.events[-1].revision >= revision)
                )
            ),
            f"BOOKMARK or SYNCED at or after revision {revision}",
            timeout,
        )

    async def ended(self, timeout: float = WAIT) -> BaseException:
        """The error the stream ended with."""
        await self.wait_for(lambda: self.done, "end of stream", timeout)
        assert self.error is not None, f"{self.name} ended cleanly, not with an error"
        return self.error

    async def failure(self, code: grpc.StatusCode, timeout: float = WAIT) -> Failure:
        """The status a raw stream ended with, which must have `code`."""
        error = await self.ended(timeout)
        assert isinstance(error, grpc.aio.AioRpcError), f"{self.name} ended with {error!r}"
        assert error.code() == code, f"{self.name}: expected {code.name}, got {error.code().name}: {error.details()}"
        return parse(error)

    def object_events(self) -> list[Event]:
        return [e for e in self.events if e.key]

    async def close(self) -> None:
        if self.call is not None:
            self.call.cancel()
        else:
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def check_stream(events: Iterable[Event], name: str = "stream") -> None:
    """The rules of one stream: revisions never go down; no event at or below a
    BOOKMARK's or SYNCED's revision after it; no object event twice; SYNCED once
    at most, right after the initial ADDED events at its revision."""
    events = list(events)
    floor = 0  # the last BOOKMARK/SYNCED revision
    last = 0
    seen: set[tuple[str, int, str]] = set()
    synced = [i for i, e in enumerate(events) if e.type == SYNCED]
    assert len(synced) <= 1, f"{name}: SYNCED {len(synced)} times"
    for i, e in enumerate(events):
        assert e.revision >= last, f"{name}: revision went down at #{i}: {events[max(0, i - 3) : i + 1]}"
        last = e.revision
        if e.key:
            assert e.revision > floor, f"{name}: {e} after a BOOKMARK/SYNCED at {floor}"
            ident = (e.type, e.revision, e.key)
            assert ident not in seen, f"{name}: {e} twice"
            seen.add(ident)
        else:
            floor = max(floor, e.revision)
    if synced:
        initial = events[: synced[0]]
        revision = events[synced[0]].revision
        assert all(e.type == ADDED and e.revision == revision for e in initial), (
            f"{name}: the initial part is not all ADDED at the SYNCED revision {revision}: {initial}"
        )
