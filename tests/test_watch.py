"""Watch semantics over the real mTLS server, one focused test each: the initial
listing and SYNCED, resuming from a revision, compacted and future revisions,
namespace and label filters (objects entering and leaving a view), DELETED's
last state, bookmarks, slow consumers, shutdown and restart."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest
from kinds import ALL, SECRETS, Kind
from watchkit import (
    ADDED,
    BOOKMARK,
    DELETED,
    MODIFIED,
    SYNCED,
    WAIT,
    Channels,
    Event,
    Watcher,
    check_stream,
    running,
    state_of,
)

from satchel.v1 import meta_pb2

Code = grpc.StatusCode
each_kind = pytest.mark.parametrize("kind", ALL, ids=lambda k: k.name)


async def revision_now(stubs, kind: Kind) -> int:
    """The store's latest revision, as a List reads it."""
    return (await kind.api(stubs).list(page_size=1)).revision


async def earlier_write(stubs, kind: Kind) -> int:
    """Writes an object in another namespace; returns its revision, a
    since_revision (never 0: see the client tests) that precedes what follows."""
    obj = await kind.api(stubs).create(kind.make("earlier", namespace="elsewhere"))
    return obj.metadata.resource_version


def by_key(event: Event) -> str:
    return event.key


def added(obj, revision: int | None = None) -> Event:
    """The event a watcher with data sees for `obj` (from kinds.Api, so already redacted)."""
    meta = obj.metadata
    rev = meta.resource_version if revision is None else revision
    return Event(ADDED, rev, f"{meta.namespace}/{meta.name}", state_of(obj, redacted=True))


def modified(obj) -> Event:
    meta = obj.metadata
    return Event(MODIFIED, meta.resource_version, f"{meta.namespace}/{meta.name}", state_of(obj, redacted=True))


def relabel(kind: Kind, name: str, labels: dict[str, str], namespace: str = "default"):
    obj = kind.message()
    obj.metadata.namespace, obj.metadata.name = namespace, name
    obj.metadata.labels.update(labels)
    return obj


# -- send_initial ----------------------------------------------------------------


@each_kind
async def test_send_initial_lists_every_object_at_one_revision_then_synced_then_live(admin, kind: Kind) -> None:
    api = kind.api(admin)
    objects = [await api.create(kind.make(name, labels={"n": name})) for name in ("a", "b", "c")]
    revision = await revision_now(admin, kind)

    watcher = Watcher.open(admin, kind, send_initial=True)
    initial = await watcher.take(4)

    assert sorted(initial[:3], key=by_key) == [added(o, revision) for o in objects]
    assert initial[3] == Event(SYNCED, revision)
    # Then the live tail: the next write, and nothing before it.
    updated = await api.update(relabel(kind, "b", {"n": "b2"}), paths=["metadata.labels"])
    assert updated.metadata.resource_version > revision
    assert await watcher.next_after(4) == modified(updated)
    check_stream(watcher.events)
    await watcher.close()


async def test_send_initial_with_writes_racing_the_snapshot_has_no_gap_and_no_duplicate(connect, pki) -> None:
    """Watchers start while four writers commit: each gets a snapshot at some R,
    then exactly the writes after R, in order."""
    writers = [SECRETS.api(connect(pki.admin)) for _ in range(4)]
    watching = connect(pki.admin)
    recorder = Watcher.open(watching, SECRETS, "recorder", send_initial=True)
    await recorder.take(1)  # SYNCED at 0: it sees every write from now on

    async def write(api, w: int) -> None:
        for i in range(15):
            name = f"w{w}-{i % 5}"
            if i < 5:
                await api.create(SECRETS.make(name))
            else:
                await api.update(relabel(SECRETS, name, {"i": str(i)}), paths=["metadata.labels"])

    tasks = [asyncio.create_task(write(api, w)) for w, api in enumerate(writers)]
    watchers = []
    for i in range(8):
        await recorder.take(1 + 6 * i)  # start each one a few writes further on
        watchers.append(Watcher.open(connect(pki.admin), SECRETS, f"watcher-{i}", send_initial=True))
    await asyncio.gather(*tasks)
    final = await revision_now(watching, SECRETS)
    await recorder.reach(final)

    history = recorder.object_events()
    for watcher in watchers:
        await watcher.wait_for(lambda w=watcher: any(e.type == SYNCED for e in w.events), "SYNCED")
        await watcher.reach(final)
        check_stream(watcher.events, watcher.name)
        synced = next(i for i, e in enumerate(watcher.events) if e.type == SYNCED)
        r = watcher.events[synced].revision
        # The snapshot: the latest state at R of every object.
        state: dict[str, Event] = {}
        for e in history:
            if e.revision <= r:
                state[e.key] = e
        expected_initial = sorted((Event(ADDED, r, key, e.state) for key, e in state.items()), key=by_key)
        assert sorted(watcher.events[:synced], key=by_key) == expected_initial, watcher.name
        tail = [e for e in watcher.events[synced + 1 :] if e.type != BOOKMARK]
        assert tail == [e for e in history if e.revision > r], watcher.name
    await asyncio.gather(*(w.close() for w in [recorder, *watchers]))


# -- since_revision -----------------------------------------------------------------


@each_kind
async def test_since_revision_sends_every_later_event_in_order_then_live(admin, kind: Kind) -> None:
    api = kind.api(admin)
    a = await api.create(kind.make("a"))
    b = await api.create(kind.make("b", labels={"x": "1"}))
    a2 = await api.update(relabel(kind, "a", {"x": "2"}), paths=["metadata.labels"])
    await api.delete("b")
    deleted_at = await revision_now(admin, kind)

    watcher = Watcher.open(admin, kind, since_revision=a.metadata.resource_version)
    events = await watcher.take(3)

    assert events[:2] == [added(b), modified(a2)]
    assert events[2].bare() == Event(DELETED, deleted_at, "default/b")
    assert deleted_at > a2.metadata.resource_version
    c = await api.create(kind.make("c"))
    assert await watcher.next_after(3) == added(c)
    check_stream(watcher.events)
    await watcher.close()


@each_kind
async def test_since_revision_older_than_the_history_is_out_of_range_revision_compacted(
    pki, tmp_path, kind: Kind
) -> None:
    channels = Channels(pki)
    async with running(pki, tmp_path / "data", history_events=2, history_age=timedelta(0)) as server:
        stubs = channels.stubs(server.address, pki.admin)
        api = kind.api(stubs)
        for i in range(6):
            await api.create(kind.make(f"o{i}"))
        compact = await server.compact()
        latest = await revision_now(stubs, kind)
        assert latest > compact > 1

        gone = Watcher.open(stubs, kind, "too-old", since_revision=compact - 1)
        failure = await gone.failure(Code.OUT_OF_RANGE)
        assert failure.info.reason == "REVISION_COMPACTED"
        assert failure.info.metadata["compact_revision"] == str(compact)

        # From the compact revision itself, history is complete.
        kept = Watcher.open(stubs, kind, "kept", since_revision=compact)
        await kept.reach(latest)
        assert [e.revision for e in kept.object_events()] == list(range(compact + 1, latest + 1))
        await kept.close()
    await channels.close()


@each_kind
async def test_since_revision_in_the_future_is_invalid_argument(admin, kind: Kind) -> None:
    await kind.api(admin).create(kind.make("a"))
    latest = await revision_now(admin, kind)
    watcher = Watcher.open(admin, kind, since_revision=latest + 1)
    failure = await watcher.failure(Code.INVALID_ARGUMENT)
    assert failure.fields == ["since_revision"]
    # The latest revision itself is fine: nothing after it yet.
    current = Watcher.open(admin, kind, since_revision=latest)
    obj = await kind.api(admin).create(kind.make("b"))
    assert await current.next_after(0) == added(obj)
    await current.close()


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"since_revision": -1}, "since_revision"),
        ({"label_selector": "tier=a=b"}, "label_selector"),
        ({"label_selector": "=web"}, "label_selector"),
        ({"label_selector": "bad key!=x"}, "label_selector"),
        ({"namespace": "Not_A_Namespace"}, "namespace"),
    ],
    ids=["negative-since", "selector-bad-value", "selector-no-key", "selector-bad-key", "bad-namespace"],
)
async def test_malformed_watch_requests_are_invalid_argument_naming_the_field(admin, request_fields, field) -> None:
    watcher = Watcher.open(admin, SECRETS, **request_fields)
    failure = await watcher.failure(Code.INVALID_ARGUMENT)
    assert failure.fields == [field]


@pytest.mark.parametrize(
    ("request_fields", "fields"),
    [
        ({"namespace": "Not_A_Namespace", "since_revision": -1}, ["namespace", "since_revision"]),
        ({"label_selector": "=web", "since_revision": -1}, ["label_selector", "since_revision"]),
        (
            {"namespace": "Bad", "label_selector": "=web", "since_revision": 10**9},
            ["namespace", "label_selector", "since_revision"],
        ),
    ],
    ids=["namespace-and-negative-since", "selector-and-negative-since", "all-three-with-future-since"],
)
async def test_every_bad_field_of_a_watch_request_is_named_at_once(admin, request_fields, fields) -> None:
    watcher = Watcher.open(admin, SECRETS, **request_fields)
    failure = await watcher.failure(Code.INVALID_ARGUMENT)
    assert failure.fields == fields


# -- filters --------------------------------------------------------------------------


@each_kind
async def test_namespace_filter(admin, kind: Kind) -> None:
    api = kind.api(admin)
    start = await earlier_write(admin, kind)
    x = await api.create(kind.make("x", namespace="alpha"))
    await api.create(kind.make("y", namespace="beta"))

    listing = Watcher.open(admin, kind, "listing", namespace="alpha", send_initial=True)
    replay = Watcher.open(admin, kind, "replay", namespace="alpha", since_revision=start)
    revision = await revision_now(admin, kind)
    assert await listing.take(2) == [added(x, revision), Event(SYNCED, revision)]
    assert await replay.take(1) == [added(x)]

    await api.create(kind.make("z", namespace="beta"))
    w = await api.create(kind.make("w", namespace="alpha"))
    assert await listing.next_after(2) == added(w)
    assert await replay.next_after(1) == added(w)
    for watcher in (listing, replay):
        assert all(e.key.startswith("alpha/") for e in watcher.object_events())
        await watcher.close()


@each_kind
async def test_label_selector_filter_and_objects_entering_and_leaving_the_view(admin, kind: Kind) -> None:
    api = kind.api(admin)
    start = await earlier_write(admin, kind)
    live = Watcher.open(admin, kind, "live", label_selector="tier=web", since_revision=start)

    x = await api.create(kind.make("x", labels={"tier": "web"}))
    await api.create(kind.make("y", labels={"tier": "db"}))  # not in the view
    x_out = await api.update(relabel(kind, "x", {"tier": "db"}), paths=["metadata.labels"])  # leaves
    y_in = await api.update(relabel(kind, "y", {"tier": "web"}), paths=["metadata.labels"])  # enters
    y_mod = await api.update(relabel(kind, "y", {"tier": "web", "e": "1"}), paths=["metadata.labels"])
    await api.update(relabel(kind, "x", {"tier": "db", "e": "1"}), paths=["metadata.labels"])  # still out
    await api.delete("x")  # out of the view: nothing
    await api.delete("y")
    end = await revision_now(admin, kind)

    expected = [
        added(x),
        Event(DELETED, x_out.metadata.resource_version, "default/x"),
        added(y_in),
        modified(y_mod),
        Event(DELETED, end, "default/y"),
    ]
    replay = Watcher.open(admin, kind, "replay", label_selector="tier=web", since_revision=start)
    for watcher in (live, replay):
        await watcher.reach(end)
        events = watcher.object_events()
        # Which labels a DELETED for leaving the view carries is not part of the contract.
        got = [e.bare() if e.type == DELETED else e for e in events]
        assert got == [e.bare() if e.type == DELETED else e for e in expected], watcher.name
        # A real deletion carries the last state.
        assert events[-1].state.label_map == {"tier": "web", "e": "1"}
        check_stream(watcher.events, watcher.name)
        await watcher.close()


# -- DELETED ----------------------------------------------------------------------------


@each_kind
async def test_deleted_carries_the_last_state(admin, kind: Kind) -> None:
    api = kind.api(admin)
    start = await earlier_write(admin, kind)
    live = Watcher.open(admin, kind, "live", since_revision=start)
    await api.create(kind.make("gone", labels={"v": "1"}))
    if kind is SECRETS:
        await api.update(SECRETS.make("gone", data={"password": b"second", "user": b"u"}), paths=["data"])
    last = await api.update(relabel(kind, "gone", {"v": "2"}), paths=["metadata.labels"])
    await api.delete("gone")
    deleted_at = await revision_now(admin, kind)
    replay = Watcher.open(admin, kind, "replay", since_revision=start)

    for watcher in (live, replay):
        await watcher.reach(deleted_at)
        event, obj = watcher.object_events()[-1], watcher.objects[-1]
        assert (event.type, event.revision, event.key) == (DELETED, deleted_at, "default/gone")
        assert obj.metadata.resource_version == deleted_at
        want, got = state_of(last, redacted=True), event.state
        assert (got.uid, got.labels, got.data, got.body) == (want.uid, want.labels, want.data, want.body), watcher.name
        if kind is SECRETS:
            assert obj.version == 2 and [k.name for k in obj.data_keys] == ["password", "user"]
            assert dict(got.data).keys() == {"password", "user"}
        await watcher.close()


# -- bookmarks --------------------------------------------------------------------------


@each_kind
async def test_bookmarks_arrive_on_an_idle_stream_and_nothing_older_follows_them(pki, tmp_path, kind: Kind) -> None:
    channels = Channels(pki)
    async with running(pki, tmp_path / "data", bookmark_interval=timedelta(milliseconds=200)) as server:
        stubs = channels.stubs(server.address, pki.admin)
        api = kind.api(stubs)
        watcher = Watcher.open(stubs, kind, send_initial=True)
        assert await watcher.take(1) == [Event(SYNCED, 0)]
        assert await watcher.next_after(1) == Event(BOOKMARK, 0)
        for name in ("a", "b", "c"):
            obj = await api.create(kind.make(name))
            revision = obj.metadata.resource_version
            # The write, then (idle again) a bookmark at its revision.
            await watcher.wait_for(
                lambda r=revision: watcher.events[-1] == Event(BOOKMARK, r), f"BOOKMARK at {revision}", WAIT
            )
        assert [e.key for e in watcher.object_events()] == ["default/a", "default/b", "default/c"]
        check_stream(watcher.events)
        await watcher.close()
    await channels.close()


async def test_no_bookmark_below_synced_while_writes_race_the_snapshot(pki, tmp_path) -> None:
    """Idle send_initial watchers start while writers commit, with a very short
    bookmark interval. A BOOKMARK must never carry a revision below the SYNCED
    before it (nor below any event sent). The race it checks for needs a
    bookmark tick while a snapshot is read; a correct server always passes."""
    channels = Channels(pki)
    async with running(pki, tmp_path / "data", bookmark_interval=timedelta(milliseconds=2)) as server:
        stubs = channels.stubs(server.address, pki.admin)
        recorder = Watcher.open(stubs, SECRETS, "recorder", send_initial=True)
        await recorder.take(1)

        async def write(w: int) -> None:
            api = SECRETS.api(channels.stubs(server.address, pki.admin))
            for i in range(40):
                await api.create(SECRETS.make(f"w{w}-{i}", labels={"tier": "web"}))

        writers = [asyncio.create_task(write(w)) for w in range(6)]
        watchers = []
        for i in range(40):
            await recorder.take(2 + 5 * i)  # start each one a few writes further on
            # A selector nothing matches: the stream stays idle and gets bookmarks.
            watchers.append(Watcher.open(stubs, SECRETS, f"watcher-{i}", send_initial=True, label_selector="tier=none"))
        await asyncio.gather(*writers)
        final = await revision_now(stubs, SECRETS)
        for watcher in watchers:
            await watcher.reach(final)
        for watcher in watchers:
            check_stream(watcher.events, watcher.name)
        bookmarked = [w.name for w in watchers if any(e.type == BOOKMARK for e in w.events)]
        assert bookmarked, "idle watchers got bookmarks while the writes raced their snapshots"
        await asyncio.gather(*(w.close() for w in [recorder, *watchers]))
    await channels.close()


# -- slow consumers -------------------------------------------------------------------------


async def test_a_slow_consumer_is_cut_off_while_a_fast_one_receives_everything(pki, tmp_path) -> None:
    channels = Channels(pki)
    config = dict(watch_buffer_events=16, watch_buffer_bytes=1 << 20)
    async with running(pki, tmp_path / "data", **config) as server:
        writer = channels.stubs(server.address, pki.admin)
        # The slow consumer's channel takes little in flight (no BDP window growth),
        # so the server's buffer for it fills.
        slow_stubs = channels.stubs(server.address, pki.admin, options=[("grpc.http2.bdp_probe", 0)])
        fast = Watcher.open(channels.stubs(server.address, pki.admin), SECRETS, "fast", send_initial=True)
        slow_call = slow_stubs.secrets.WatchSecrets(SECRETS.module.WatchSecretsRequest(send_initial=True))
        first = await slow_call.read()  # the stream is established: SYNCED at 0
        assert first.type == meta_pb2.EVENT_TYPE_SYNCED
        await fast.take(1)

        api = SECRETS.api(writer)
        # 2 MiB in all: far more than the slow channel takes in flight plus 16 buffered.
        payload = {"blob": b"x" * 32 * 1024}
        writes = 64
        for i in range(writes):
            await api.create(SECRETS.make(f"s{i:03}", data=payload))
        latest = await revision_now(writer, SECRETS)

        await fast.reach(latest)
        assert [e.revision for e in fast.object_events()] == list(range(1, writes + 1))

        slow = Watcher(slow_call, SECRETS, "slow")
        failure = await slow.failure(Code.RESOURCE_EXHAUSTED)
        assert failure.info.reason == "WATCH_BUFFER_OVERFLOW"
        received = slow.object_events()
        assert len(received) < writes
        assert [e.revision for e in received] == list(range(1, len(received) + 1))
        assert failure.info.metadata["last_revision"] == str(received[-1].revision if received else 0)
        assert server.hub.streams() == 1  # the slow stream's buffer is gone; the fast one remains
        check_stream(fast.events, "fast")
        await fast.close()
    await channels.close()


# -- shutdown and restart -----------------------------------------------------------------


async def test_server_shutdown_ends_streams_with_unavailable(pki, tmp_path) -> None:
    channels = Channels(pki)
    async with running(pki, tmp_path / "data") as server:
        stubs = channels.stubs(server.address, pki.admin)
        watchers = [Watcher.open(stubs, kind, kind.name, send_initial=True) for kind in ALL]
        for watcher in watchers:
            await watcher.take(1)
        await server.stop()
        for watcher in watchers:
            failed = await watcher.failure(Code.UNAVAILABLE)
            assert failed.info.reason == "UNAVAILABLE"
            assert "resume from the last revision" in failed.message
    await channels.close()


async def test_a_restarted_server_resumes_streams_from_revisions_issued_before_it(pki, tmp_path) -> None:
    channels = Channels(pki)
    data = tmp_path / "data"
    async with running(pki, data) as server:
        api = SECRETS.api(channels.stubs(server.address, pki.admin))
        a = await api.create(SECRETS.make("a"))
        b = await api.create(SECRETS.make("b"))
    async with running(pki, data) as server:
        stubs = channels.stubs(server.address, pki.admin)
        api = SECRETS.api(stubs)
        c = await api.create(SECRETS.make("c"))
        watcher = Watcher.open(stubs, SECRETS, since_revision=a.metadata.resource_version)
        assert await watcher.take(2) == [added(b), added(c)]
        a2 = await api.update(relabel(SECRETS, "a", {"after": "restart"}), paths=["metadata.labels"])
        assert await watcher.next_after(2) == modified(a2)
        await watcher.close()
    await channels.close()
