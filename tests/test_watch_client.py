"""The client's resuming watch against the real server: a watch from a listing's
revision (list-then-watch) misses nothing, blocking or asyncio, also when the
listing's later pages were read after changes; it resumes across a
server restart (same data, same port) with nothing missed or repeated, also
when all it had seen was BOOKMARK{0}; relists when the history it needs was
compacted (while it was away, or before it started) and converges to the true
state, calling on_relist; resumes after the server cut it off for falling
behind; and stops with the typed error when it may not watch.

To keep the client away while the server changes, the same data directory is
served for a while on another port, which the client does not know.
"""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import timedelta

import pytest
from conftest import make_config
from kinds import SECRETS
from watchkit import (
    ADDED,
    BOOKMARK,
    DELETED,
    MODIFIED,
    SYNCED,
    WAIT,
    Event,
    Watcher,
    check_stream,
    event_of,
    free_port,
    running,
    state_of,
)

from satchel import AsyncClient, AsyncListIterator, Client, EventType, ListIterator, PermissionDeniedError
from satcheld._server import Server


def client_for(pki, address: str, identity=None) -> AsyncClient:
    identity = identity or pki.admin
    return AsyncClient(server=address, ca=pki.ca, cert=identity.cert, key=identity.key)


async def serve(pki, data, listen: str, **overrides) -> Server:
    server = Server(make_config(pki, data, listen=listen, **overrides))
    await server.start()
    return server


async def latest_revision(client: AsyncClient) -> int:
    """The revision a ListSecrets reads at."""
    return await client.list_secrets(page_size=1).fetch_revision()


def event_of_response(response) -> Event:
    return event_of(response, SECRETS)


def ev(kind: str, obj, revision: int | None = None) -> Event:
    meta = obj.metadata
    rev = meta.resource_version if revision is None else revision
    return Event(kind, rev, f"{meta.namespace}/{meta.name}", state_of(obj))


class Relists:
    """on_relist: notes how many events the consumer had received when each
    relisting began (the caller would drop its state there)."""

    def __init__(self) -> None:
        self.consumer: Watcher | None = None
        self.at: list[int] = []

    def __call__(self) -> None:
        assert self.consumer is not None
        self.at.append(len(self.consumer.events))


def rebuild(events: list[Event]) -> dict[str, Event]:
    """The state a caller keeps from events."""
    state: dict[str, Event] = {}
    for e in events:
        if e.type == DELETED:
            state.pop(e.key, None)
        elif e.key:
            state[e.key] = e
    return state


def truth_of(listed) -> dict[str, object]:
    return {f"{s.metadata.namespace}/{s.metadata.name}": state_of(s) for s in listed}


def applied(state: dict[str, object], events: list[Event]) -> dict[str, object]:
    """`state` (from a listing) with `events` applied, as a caller keeps it."""
    state = dict(state)
    for e in events:
        if e.type == DELETED:
            state.pop(e.key, None)
        elif e.key:
            state[e.key] = e.state
    return state


async def test_list_then_watch_from_the_listings_revision_misses_nothing(server, pki) -> None:
    """`for s in (it := client.list_secrets()): ...` then `watch_secrets(since_revision=it.revision)`:
    the changes made after the listing arrive, and the state rebuilt from both is the truth."""
    client = client_for(pki, server.address)
    try:
        await client.create_secret("a", data={"k": b"1"})
        b = await client.create_secret("b", data={"k": b"2"})
        listing = client.list_secrets()
        assert isinstance(listing, AsyncListIterator)
        listed = [s async for s in listing]
        assert listing.revision == b.metadata.resource_version  # the last write before the listing

        c = await client.create_secret("c", data={"k": b"3"})
        a2 = await client.update_secret("a", labels={"after": "listing"})
        await client.delete_secret("b")
        final = await latest_revision(client)

        consumer = Watcher.consume(client.watch_secrets(since_revision=listing.revision), SECRETS)
        try:
            await consumer.settle(final)
        finally:
            await consumer.close()
        events = consumer.object_events()
        expected = [(ADDED, "default/c"), (MODIFIED, "default/a"), (DELETED, "default/b")]
        assert [(e.type, e.key) for e in events] == expected
        assert events[0] == ev(ADDED, c) and events[1] == ev(MODIFIED, a2)
        check_stream(consumer.events, "list-then-watch")
        truth = truth_of([s async for s in client.list_secrets()])
        assert applied(truth_of(listed), events) == truth
        assert sorted(truth) == ["default/a", "default/c"]
    finally:
        await client.close()


async def test_blocking_list_then_watch_replays_a_change_made_between_pages(server, pki) -> None:
    """The revision is the first page's: a change made while the listing is being paged
    through (here to an object of its second page) is replayed by the watch, so the state
    rebuilt is still the truth. Reading `revision` before iterating reads the first page."""
    writer = client_for(pki, server.address)
    client = Client(server=server.address, ca=pki.ca, cert=pki.admin.cert, key=pki.admin.key)
    try:
        for name in ("a", "b", "c"):
            await writer.create_secret(name, data={"k": name.encode()})
        listing = client.list_secrets(page_size=2)
        assert isinstance(listing, ListIterator)
        revision = await asyncio.to_thread(lambda: listing.revision)  # reads page 1 (a, b)
        first = await asyncio.to_thread(next, listing)
        second = await asyncio.to_thread(next, listing)
        assert [first.metadata.name, second.metadata.name] == ["a", "b"]
        c2 = await writer.update_secret("c", data={"k": b"c2"})  # c is on page 2, not read yet
        d = await writer.create_secret("d", data={"k": b"d"})
        listed = [first, second, *await asyncio.to_thread(list, listing)]
        assert [s.metadata.name for s in listed] == ["a", "b", "c", "d"]  # page 2: c as it is now, and d
        assert listing.revision == revision  # still the first page's

        stream = client.watch_secrets(since_revision=revision)
        stop = threading.Timer(WAIT, stream.close)  # a bound on the wait, not a synchronization
        stop.start()

        def until(target: int) -> list:
            got = []
            for event in stream:
                got.append(event)
                if event.revision >= target:
                    return got
            raise AssertionError(f"the watch ended before revision {target}: {list(map(event_of_response, got))}")

        try:
            responses = await asyncio.to_thread(until, d.metadata.resource_version)
        finally:
            stop.cancel()
            stream.close()
        events = [e for e in map(event_of_response, responses) if e.key]
        assert [(e.type, e.key) for e in events] == [(MODIFIED, "default/c"), (ADDED, "default/d")]
        assert events[0] == ev(MODIFIED, c2)
        truth = truth_of([s async for s in writer.list_secrets()])
        assert applied(truth_of(listed), events) == truth
    finally:
        await asyncio.to_thread(client.close)
        await writer.close()


async def test_async_listing_revision_is_known_once_the_first_page_was_read(server, pki) -> None:
    client = client_for(pki, server.address)
    try:
        made = await client.create_secret("only", data={"k": b"1"})
        listing = client.list_secrets()
        with pytest.raises(RuntimeError, match="iterate first"):
            _ = listing.revision
        assert await listing.fetch_revision() == made.metadata.resource_version
        assert [s.metadata.name async for s in listing] == ["only"]  # the page read is not lost
        assert listing.revision == made.metadata.resource_version
    finally:
        await client.close()


async def test_the_watch_resumes_across_a_server_restart_with_nothing_missed_or_repeated(pki, tmp_path) -> None:
    data, listen = tmp_path / "data", f"127.0.0.1:{free_port()}"
    server = await serve(pki, data, listen)
    client = client_for(pki, listen)
    relists = Relists()
    consumer = relists.consumer = Watcher.consume(client.watch_secrets(send_initial=True, on_relist=relists), SECRETS)
    try:
        assert await consumer.take(1) == [Event(SYNCED, 0)]
        a = await client.create_secret("a", data={"k": b"1"})
        b = await client.create_secret("b", data={"k": b"2"})
        await consumer.reach(b.metadata.resource_version)
        await server.stop()

        # While the client cannot reach it, the server changes: a resume must replay this.
        elsewhere = f"127.0.0.1:{free_port()}"
        server = await serve(pki, data, elsewhere)
        side = client_for(pki, elsewhere)
        c = await side.create_secret("c", data={"k": b"3"})
        await side.close()
        await server.stop()

        server = await serve(pki, data, listen)
        await consumer.reach(c.metadata.resource_version)
        # And live events after the resume.
        writer = client_for(pki, listen)
        a2 = await writer.update_secret("a", labels={"after": "restart"})
        await writer.delete_secret("b")
        deleted_at = await latest_revision(writer)
        await writer.close()
        await consumer.reach(deleted_at)

        events = [e for e in consumer.events if e.type != BOOKMARK]
        check_stream(consumer.events, "client")
        assert events[:3] == [Event(SYNCED, 0), ev(ADDED, a), ev(ADDED, b)]
        assert events[3:5] == [ev(ADDED, c), ev(MODIFIED, a2)]
        assert [e.bare() for e in events[5:]] == [Event(DELETED, deleted_at, "default/b")]
        assert relists.at == []
        assert consumer.error is None
    finally:
        await consumer.close()
        await client.close()
        await server.stop()


async def test_the_watch_relists_after_compaction_while_away_and_converges(pki, tmp_path) -> None:
    data, listen = tmp_path / "data", f"127.0.0.1:{free_port()}"
    history = dict(history_events=2, history_age=timedelta(0))
    server = await serve(pki, data, listen, **history)
    client = client_for(pki, listen)
    relists = Relists()
    consumer = relists.consumer = Watcher.consume(client.watch_secrets(send_initial=True, on_relist=relists), SECRETS)
    try:
        assert await consumer.take(1) == [Event(SYNCED, 0)]
        for name in ("a", "b", "c"):
            last = await client.create_secret(name, data={"k": name.encode()})
        await consumer.reach(last.metadata.resource_version)
        seen = len(consumer.events)
        await server.stop()

        elsewhere = f"127.0.0.1:{free_port()}"
        server = await serve(pki, data, elsewhere, **history)
        side = client_for(pki, elsewhere)
        await side.delete_secret("b")
        await side.update_secret("a", data={"k": b"a2"}, labels={"v": "2"})
        for name in ("d", "e", "f"):
            await side.create_secret(name, data={"k": name.encode()})
        compact = await server.compact()
        assert compact > last.metadata.resource_version  # the client's revision is gone
        await side.close()
        await server.stop()

        server = await serve(pki, data, listen, **history)
        # A fresh channel for our own calls: the watcher's is still backing off.
        writer = client_for(pki, listen)
        final = await latest_revision(writer)
        await consumer.wait_for(
            lambda: any(e.type == SYNCED for e in consumer.events[seen:]), "a second SYNCED (the relisting)"
        )
        relisted = consumer.events[seen:]
        synced = next(i for i, e in enumerate(relisted) if e.type == SYNCED)
        assert relisted[synced].revision == final
        assert all(e.type == ADDED and e.revision == final for e in relisted[:synced])
        assert relists.at == [seen]  # called once, just before the listing

        state = rebuild(consumer.events[seen:])  # what a caller has after dropping its state there
        truth = {f"default/{s.metadata.name}": state_of(s) async for s in writer.list_secrets(namespace="default")}
        assert {key: e.state for key, e in state.items()} == truth
        assert sorted(truth) == ["default/a", "default/c", "default/d", "default/e", "default/f"]

        # Live again after the listing.
        g = await writer.create_secret("g", data={"k": b"g"})
        await writer.close()
        await consumer.reach(g.metadata.resource_version)
        assert consumer.events[-1] == ev(ADDED, g)
    finally:
        await consumer.close()
        await client.close()
        await server.stop()


async def test_a_watch_from_a_compacted_revision_relists_and_says_so(pki, tmp_path) -> None:
    """A caller resuming from its own revision (say, a List's) that the server
    has compacted away gets a fresh listing, and on_relist tells it to drop the
    state it built up to that revision."""
    async with running(pki, tmp_path / "data", history_events=2, history_age=timedelta(0)) as server:
        client = client_for(pki, server.address)
        relists = Relists()
        try:
            gone = await client.create_secret("gone", data={"k": b"0"})
            for name in ("a", "b", "c"):
                await client.create_secret(name, data={"k": name.encode()})
            await client.delete_secret("gone")
            compact = await server.compact()
            since = gone.metadata.resource_version
            assert compact > since

            consumer = relists.consumer = Watcher.consume(
                client.watch_secrets(since_revision=since, on_relist=relists), SECRETS
            )
            await consumer.wait_for(lambda: any(e.type == SYNCED for e in consumer.events), "SYNCED")
            assert [e.key for e in consumer.events if e.type == ADDED] == ["default/a", "default/b", "default/c"]
            assert relists.at == [0], "on_relist was not called before the listing"
            await consumer.close()
        finally:
            await client.close()


async def test_a_watch_from_now_cut_off_after_a_bookmark_at_revision_0_misses_nothing(pki, tmp_path) -> None:
    """A watch of an empty store that has only seen BOOKMARK{0} knows it is
    at revision 0; after a restart, the changes made while it was away must
    still reach it."""
    data, listen = tmp_path / "data", f"127.0.0.1:{free_port()}"
    quick = dict(bookmark_interval=timedelta(milliseconds=200))
    server = await serve(pki, data, listen, **quick)
    client = client_for(pki, listen)
    consumer = Watcher.consume(client.watch_secrets(), SECRETS)
    try:
        await consumer.wait_for(lambda: bool(consumer.events), "a first BOOKMARK")
        assert consumer.events[0] == Event(BOOKMARK, 0)
        await server.stop()

        elsewhere = f"127.0.0.1:{free_port()}"
        server = await serve(pki, data, elsewhere, **quick)
        side = client_for(pki, elsewhere)
        x = await side.create_secret("x", data={"k": b"x"})
        await side.close()
        await server.stop()

        server = await serve(pki, data, listen, **quick)
        writer = client_for(pki, listen)  # the watcher's channel may still be backing off
        y = await writer.create_secret("y", data={"k": b"y"})
        await writer.close()
        await consumer.settle(y.metadata.resource_version)
        # As ADDED events, by a replay or by a fresh listing: what matters is that none is missing.
        got = [(e.type, e.key, e.state) for e in consumer.object_events()]
        assert got == [(ADDED, "default/x", state_of(x)), (ADDED, "default/y", state_of(y))], consumer.events
    finally:
        await consumer.close()
        await client.close()
        await server.stop()


@pytest.mark.parametrize("method", ["watch_secrets", "watch_service_accounts", "watch_workloads"])
async def test_the_watch_stops_with_permission_denied_for_a_user_who_may_not_watch(server, pki, method) -> None:
    client = client_for(pki, server.address, pki.alice)
    stream = getattr(client, method)(send_initial=True)
    try:
        with pytest.raises(PermissionDeniedError):
            await asyncio.wait_for(anext(stream), WAIT)
        # It does not try again: the iteration is over.
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(stream), WAIT)
    finally:
        await client.close()


async def test_the_watch_resumes_after_the_server_cuts_it_off_for_falling_behind(pki, tmp_path) -> None:
    """A caller that stops reading while many writes happen is cut off
    (RESOURCE_EXHAUSTED, as the audit log records); the helper resumes from its
    last revision and the caller gets every event once."""
    data = tmp_path / "data"
    server = await serve(pki, data, "127.0.0.1:0", watch_buffer_events=16)
    client = client_for(pki, server.address)
    # grpc's BDP probing would let the client's transport take in all 2 MiB
    # unread; without it, the server's buffer for the stream fills up.
    client._transport._options.append(("grpc.http2.bdp_probe", 0))
    stream = client.watch_secrets(send_initial=True)
    try:
        first = await asyncio.wait_for(anext(stream), WAIT)
        assert (first.type, first.revision) == (EventType.EVENT_TYPE_SYNCED, 0)
        writes = 64
        for i in range(writes):  # 2 MiB, not read meanwhile
            await client.create_secret(f"s{i:02}", data={"blob": b"x" * 32 * 1024})
        revisions = []
        while len(revisions) < writes:
            event = await asyncio.wait_for(anext(stream), WAIT)
            if event.type != EventType.EVENT_TYPE_BOOKMARK:
                revisions.append(event.revision)
        assert revisions == list(range(1, writes + 1))
        codes = [
            json.loads(line)["code"]
            for line in (data / "audit.log").read_text().splitlines()
            if json.loads(line)["method"].endswith("/WatchSecrets") and json.loads(line)["stage"] == "completed"
        ]
        assert codes == ["RESOURCE_EXHAUSTED"], codes
    finally:
        await stream.aclose()
        await client.close()
        await server.stop()


def test_max_backoff_caps_the_wait_between_reconnections() -> None:
    from satchel._errors import UnavailableError
    from satchel._watch import _Resume
    from satchel.v1.secret_pb2 import WatchSecretsRequest

    def delays(**kw) -> list[float]:
        resume = _Resume(WatchSecretsRequest(since_revision=5), **kw)
        resume.request()
        return [resume.broken(UnavailableError("down")) or 0.0 for _ in range(40)]

    assert max(delays(max_backoff=0.2)) <= 0.2
    assert max(delays()) > 0.2, "by default the waits grow to 10 s"
    with pytest.raises(ValueError, match="max_backoff must be positive"):
        _Resume(WatchSecretsRequest(), max_backoff=0)


async def test_connected_says_whether_the_current_call_is_delivering(pki, tmp_path) -> None:
    listen = f"127.0.0.1:{free_port()}"
    server = await serve(pki, tmp_path / "data", listen)
    client = client_for(pki, listen)
    stream = client.watch_secrets(send_initial=True, max_backoff=0.2)
    try:
        assert not stream.connected
        await client.create_secret("before", data={"k": b"1"})  # a revision to resume from
        assert (await anext(stream)).type == EventType.EVENT_TYPE_ADDED
        assert (await anext(stream)).type == EventType.EVENT_TYPE_SYNCED
        assert stream.connected
        reading = asyncio.create_task(anext(stream))
        await server.stop()
        async with asyncio.timeout(WAIT):
            while stream.connected:
                await asyncio.sleep(0.01)
        server = await serve(pki, tmp_path / "data", listen)
        async with client_for(pki, listen) as side:  # a channel of its own, not in backoff
            made = await side.create_secret("after", data={"k": b"1"})
        async with asyncio.timeout(WAIT):
            event = await reading
        assert event.revision == made.metadata.resource_version and stream.connected
    finally:
        await stream.aclose()
        assert not stream.connected
        await client.close()
        await server.stop()
