"""The history checker: concurrent writers make random changes to secrets while
watchers start at random points (send_initial from revision 0 or later,
since_revision mid-history) with namespace and label filters. Every watcher's
sequence must equal the committed history filtered to its view, in order,
without gaps or duplicates.

The committed history is recorded by an unfiltered watcher started before any
write, and that record is checked against what each write call returned, so
that the watchers are compared with history the writers vouch for.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

import grpc
import pytest
from kinds import SECRETS
from watchkit import (
    ADDED,
    BOOKMARK,
    DELETED,
    MODIFIED,
    SYNCED,
    Channels,
    Event,
    State,
    Watcher,
    check_stream,
    running,
    state_of,
)

SEEDS = [11, 23, 37]
WRITERS = 4
OPS = 40  # per writer
NAMESPACES = ("alpha", "beta")
NAMES = ("s0", "s1", "s2", "s3")
LABELS = {"tier": ("web", "db"), "team": ("red", "blue")}
VIEWS = (  # (namespace, label selector)
    ("", ""),
    ("alpha", ""),
    ("", "tier=web"),
    ("beta", "tier!=web,team"),
    ("alpha", "!team,tier"),
)


# -- the views, judged independently of the server's selector code ------------------------


@dataclass(frozen=True)
class ViewSpec:
    namespace: str
    selector: str

    def matches(self, key: str, state: State | None) -> bool:
        if state is None:
            return False
        if self.namespace and not key.startswith(self.namespace + "/"):
            return False
        labels = state.label_map
        for term in filter(None, self.selector.split(",")):
            if "!=" in term:
                k, v = term.split("!=")
                ok = labels.get(k) != v
            elif "=" in term:
                k, v = term.split("=")
                ok = labels.get(k) == v
            elif term.startswith("!"):
                ok = term[1:] not in labels
            else:
                ok = term in labels
            if not ok:
                return False
        return True


@dataclass
class Expected:
    events: list[Event]
    leaves: set[int] = field(default_factory=set)  # indexes of DELETED for leaving the view


def expected_after(history: list[Event], view: ViewSpec, start: int) -> Expected:
    """What a watcher of `view` must see after revision `start`: ADDED / MODIFIED /
    DELETED as objects enter, change in and leave the view."""
    state: dict[str, State | None] = {}
    out = Expected([])
    for e in history:
        before = state.get(e.key)
        now = None if e.type == DELETED else e.state
        state[e.key] = now
        if e.revision <= start:
            continue
        was, is_ = view.matches(e.key, before), view.matches(e.key, now)
        if e.type == DELETED:
            if was:
                out.events.append(e)
        elif is_:
            out.events.append(Event(MODIFIED if was else ADDED, e.revision, e.key, e.state))
        elif was:
            out.leaves.add(len(out.events))
            out.events.append(Event(DELETED, e.revision, e.key))
    return out


def state_at(history: list[Event], revision: int) -> dict[str, State]:
    state: dict[str, State] = {}
    for e in history:
        if e.revision > revision:
            break
        if e.type == DELETED:
            state.pop(e.key, None)
        else:
            state[e.key] = e.state
    return state


# -- the writers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    op: str
    key: str
    state: State | None  # what a create/update returned; None for a delete


def random_labels(rng: random.Random) -> dict[str, str]:
    return {k: rng.choice(values) for k, values in LABELS.items() if rng.random() < 0.6}


def random_data(rng: random.Random) -> dict[str, bytes]:
    return {k: rng.randbytes(8) for k in rng.sample(["a", "b", "c"], rng.randint(1, 2))}


class Progress:
    """How many write calls have been made; launchers wait on it."""

    def __init__(self) -> None:
        self.attempted = 0
        self._changed = asyncio.Condition()

    async def step(self) -> None:
        self.attempted += 1
        async with self._changed:
            self._changed.notify_all()

    async def reach(self, n: int) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: self.attempted >= n), 60)


async def write(api, rng: random.Random, outcomes: list[Outcome], progress: Progress) -> None:
    """Random creates, updates (labels, data or both) and deletes; the choice of
    operations depends only on `rng`, not on what other writers did."""
    for _ in range(OPS):
        namespace, name = rng.choice(NAMESPACES), rng.choice(NAMES)
        key = f"{namespace}/{name}"
        op = rng.choices(["create", "labels", "data", "both", "delete"], weights=[3, 3, 2, 2, 2])[0]
        try:
            if op == "create":
                obj = SECRETS.make(name, namespace=namespace, labels=random_labels(rng), data=random_data(rng))
                outcomes.append(Outcome(op, key, state_of(await api.create(obj), redacted=True)))
            elif op == "delete":
                await api.delete(name, namespace=namespace)
                outcomes.append(Outcome(op, key, None))
            else:
                obj = SECRETS.message()
                obj.metadata.namespace, obj.metadata.name = namespace, name
                paths = []
                if op in ("labels", "both"):
                    obj.metadata.labels.update(random_labels(rng))
                    paths.append("metadata.labels")
                if op in ("data", "both"):
                    obj.data.update(random_data(rng))
                    paths.append("data")
                outcomes.append(Outcome(op, key, state_of(await api.update(obj, paths=paths), redacted=True)))
        except grpc.aio.AioRpcError as e:
            expected = grpc.StatusCode.ALREADY_EXISTS if op == "create" else grpc.StatusCode.NOT_FOUND
            assert e.code() == expected, f"{op} {key}: {e.code().name}: {e.details()}"
        await progress.step()


# -- the committed history, checked against the writers -------------------------------------


def check_history(recorder: Watcher, outcomes: list[Outcome], final: int) -> list[Event]:
    """The recorder's events must be a consistent history of exactly the writes
    that succeeded: one event per revision 1..final, each object's life
    ADDED (MODIFIED)* DELETED, a DELETED carrying the last state, and every
    state a create or update returned at its revision."""
    check_stream(recorder.events, "recorder")
    assert recorder.events[0] == Event(SYNCED, 0)
    history = recorder.object_events()
    assert [e.revision for e in history] == list(range(1, final + 1)), "not one event per revision"

    current: dict[str, State] = {}
    uids: set[str] = set()
    for e in history:
        prev = current.get(e.key)
        if e.type == ADDED:
            assert prev is None, f"{e} while it exists"
            assert e.state.uid not in uids, f"{e} reuses a uid"
            uids.add(e.state.uid)
        else:
            assert prev is not None, f"{e} while it does not exist"
            assert e.state.uid == prev.uid, f"{e} changed the uid"
        if e.type == DELETED:
            last = State(prev.uid, e.revision, prev.labels, prev.data, prev.body)
            assert e.state == last, f"{e} does not carry the last state"
            del current[e.key]
        else:
            assert e.state.resource_version == e.revision
            current[e.key] = e.state

    by_revision = {e.revision: e for e in history}
    put_revisions = set()
    for o in outcomes:
        if o.state is None:
            continue
        e = by_revision.get(o.state.resource_version)
        ok = e is not None and e.key == o.key and e.state == o.state
        assert ok, f"{o.op} {o.key} returned a state not in history"
        put_revisions.add(o.state.resource_version)
    assert put_revisions == {e.revision for e in history if e.type != DELETED}, "history has writes nobody made"
    deletes = Counter(o.key for o in outcomes if o.op == "delete")
    assert Counter(e.key for e in history if e.type == DELETED) == deletes
    return history


# -- the test ----------------------------------------------------------------------------------------


@dataclass
class Plan:
    name: str
    view: ViewSpec
    after: int  # start once this many write calls were made
    since: bool  # since_revision (from a revision some write returned) or send_initial


def plans(rng: random.Random) -> list[Plan]:
    total = WRITERS * OPS
    out = []
    for i, (namespace, selector) in enumerate(VIEWS):
        view = ViewSpec(namespace, selector)
        out.append(Plan(f"v{i}-initial-0", view, 0, False))
        out.append(Plan(f"v{i}-initial-mid", view, rng.randint(1, total * 3 // 4), False))
        out.append(Plan(f"v{i}-since-mid", view, rng.randint(total // 4, total * 3 // 4), True))
    return sorted(out, key=lambda p: p.after)


@pytest.mark.parametrize("seed", SEEDS)
async def test_every_watcher_sees_the_committed_history_filtered_to_its_view(pki, tmp_path, seed: int) -> None:
    rng = random.Random(seed)
    channels = Channels(pki)
    async with running(pki, tmp_path / "data", bookmark_interval=timedelta(milliseconds=200)) as server:

        def stubs():
            return channels.stubs(server.address, pki.admin)

        admin = stubs()
        recorder = Watcher.open(admin, SECRETS, "recorder", send_initial=True)
        await recorder.take(1)

        outcomes: list[Outcome] = []
        progress = Progress()
        writers = [
            asyncio.create_task(write(SECRETS.api(stubs()), random.Random(seed * 100 + i), outcomes, progress))
            for i in range(WRITERS)
        ]
        watchers: list[tuple[Plan, int | None, Watcher]] = []  # plan, since_revision, watcher
        for plan in plans(rng):
            await progress.reach(plan.after)
            request = dict(namespace=plan.view.namespace, label_selector=plan.view.selector)
            revisions = [o.state.resource_version for o in outcomes if o.state is not None]
            since = rng.choice(revisions) if plan.since and revisions else None
            if since is None:
                request["send_initial"] = True
            else:
                request["since_revision"] = since
            watchers.append((plan, since, Watcher.open(stubs(), SECRETS, plan.name, **request)))
        await asyncio.gather(*writers)

        final = (await SECRETS.api(admin).list(page_size=1)).revision
        await recorder.reach(final)
        history = check_history(recorder, outcomes, final)
        listed, _ = await SECRETS.api(admin).list_all()
        assert {f"{o.metadata.namespace}/{o.metadata.name}": state_of(o, redacted=True) for o in listed} == (
            state_at(history, final)
        )

        for plan, since, watcher in watchers:
            await watcher.settle(final)
            check_stream(watcher.events, plan.name)
            events = [e for e in watcher.events if e.type != BOOKMARK]
            if since is None:
                synced = next(i for i, e in enumerate(events) if e.type == SYNCED)
                r = events[synced].revision
                assert r <= final
                at_r = sorted(state_at(history, r).items())
                snapshot = [Event(ADDED, r, key, s) for key, s in at_r if plan.view.matches(key, s)]
                assert sorted(events[:synced], key=lambda e: e.key) == snapshot, f"{plan.name}: snapshot at {r}"
                tail, start = events[synced + 1 :], r
            else:
                tail, start = events, since
            expected = expected_after(history, plan.view, start)
            got = [e.bare() if i in expected.leaves else e for i, e in enumerate(tail)]
            assert got == expected.events, f"{plan.name} (seed {seed}) after revision {start}"

        await asyncio.gather(*(w.close() for _, _, w in watchers), recorder.close())
    await channels.close()
