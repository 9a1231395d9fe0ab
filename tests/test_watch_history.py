"""The history checker: concurrent writers make random changes to secrets while
watchers start at random points (send_initial from revision 0 or later,
since_revision mid-history) with namespace and label filters. Every watcher's
sequence must equal the committed history filtered to its view, in order,
without gaps or duplicates.

The committed history is recorded by an unfiltered watcher started before any
write, and that record is checked against what each write call returned, so
that the watchers are compared with history the writers vouch for.

The second half does the same for node views, which follow bindings: writers
change workloads (create, move between nodes, their secrets and account,
delete), service accounts (create, their secrets, delete) and secrets, while
node streams of every kind start live, resumed or with a snapshot. Each node's
view after every revision is recomputed from the recorded history of all three
kinds, and every node stream must show exactly the changes of its view.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from datetime import timedelta

import grpc
import pytest
from google.protobuf.message import Message
from kinds import ALL, SECRETS, SERVICE_ACCOUNTS, WORKLOADS, Kind
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

from satchel.v1 import secret_pb2, service_account_pb2

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
    kind: str = SECRETS.name


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


def check_lives(history: list[Event], name: str) -> None:
    """Each object's life in `history` (of one kind) is ADDED (MODIFIED)* DELETED,
    a DELETED carrying the last state, every life with a uid of its own, every
    state at the revision that wrote it."""
    current: dict[str, State] = {}
    uids: set[str] = set()
    for e in history:
        prev = current.get(e.key)
        if e.type == ADDED:
            assert prev is None, f"{name}: {e} while it exists"
            assert e.state.uid not in uids, f"{name}: {e} reuses a uid"
            uids.add(e.state.uid)
        else:
            assert prev is not None, f"{name}: {e} while it does not exist"
            assert e.state.uid == prev.uid, f"{name}: {e} changed the uid"
        if e.type == DELETED:
            last = State(prev.uid, e.revision, prev.labels, prev.data, prev.body)
            assert e.state == last, f"{name}: {e} does not carry the last state"
            del current[e.key]
        else:
            assert e.state.resource_version == e.revision, f"{name}: {e}"
            current[e.key] = e.state


def check_history(recorder: Watcher, outcomes: list[Outcome], final: int) -> list[Event]:
    """The recorder's events must be a consistent history of exactly the writes
    that succeeded: one event per revision 1..final, each object's life
    ADDED (MODIFIED)* DELETED, a DELETED carrying the last state, and every
    state a create or update returned at its revision."""
    check_stream(recorder.events, "recorder")
    assert recorder.events[0] == Event(SYNCED, 0)
    history = recorder.object_events()
    assert [e.revision for e in history] == list(range(1, final + 1)), "not one event per revision"
    check_lives(history, "recorder")

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


# == node views: what each node sees follows its bindings ================================================

NODES = ("n1", "n2", "n3")
WORKLOAD_NAMES = ("w0", "w1", "w2", "w3")
NODE_OPS = 80  # per writer
ACCOUNT_NAMES = ("default", "a0", "a1")  # `default` is also created by a workload that uses it
BINDING_OPS = {  # op: weight
    "secret-create": 3,
    "secret-update": 3,
    "secret-delete": 1,
    "workload-create": 3,
    "workload-move": 2,
    "workload-secrets": 2,
    "workload-account": 2,
    "workload-delete": 1,
    "account-create": 2,
    "account-secrets": 2,
    "account-delete": 1,
}
OBJECTS = {
    "secret": (SECRETS, NAMES),
    "workload": (WORKLOADS, WORKLOAD_NAMES),
    "account": (SERVICE_ACCOUNTS, ACCOUNT_NAMES),
}
NODE_VIEWS = (  # (kind, namespace, label selector) besides the unfiltered view of each kind
    (SECRETS, "alpha", ""),
    (SECRETS, "", "tier=web"),
    (SERVICE_ACCOUNTS, "", "team"),
    (WORKLOADS, "beta", ""),
)

Ident = tuple[str, str]  # kind name, namespace/name


def some(rng: random.Random, names: tuple[str, ...]) -> list[str]:
    return rng.sample(names, rng.randint(0, 3))


def refs(names: list[str]) -> list[service_account_pb2.SecretReference]:
    return [service_account_pb2.SecretReference(name=n) for n in names]


def new_fields(kind: Kind, rng: random.Random) -> dict:
    """The kind-specific fields of a new object."""
    if kind == SECRETS:
        return {"data": random_data(rng)}
    if kind == WORKLOADS:
        return {
            "node_name": rng.choice(NODES),
            "service_account": rng.choice(ACCOUNT_NAMES),
            "secrets": some(rng, NAMES),
        }
    return {"secrets": refs(some(rng, NAMES))}


def changed_fields(op: str, obj: Message, rng: random.Random) -> list[str]:
    """Sets in `obj` what update `op` changes; returns the update mask's paths."""
    if op == "secret-update":
        paths = rng.choice([["metadata.labels"], ["data"], ["metadata.labels", "data"]])
        if "data" in paths:
            obj.data.update(random_data(rng))
        if "metadata.labels" in paths:
            obj.metadata.labels.update(random_labels(rng))
        return paths
    if op == "workload-move":
        obj.node_name = rng.choice(NODES)
        return ["node_name"]
    if op == "workload-account":
        obj.service_account = rng.choice(ACCOUNT_NAMES)
        return ["service_account"]
    if op == "workload-secrets":
        obj.secrets.extend(some(rng, NAMES))
    else:
        assert op == "account-secrets", op
        obj.secrets.extend(refs(some(rng, NAMES)))
    return ["secrets"]


async def write_bindings(stubs, rng: random.Random, outcomes: list[Outcome], progress: Progress) -> None:
    """Random writes of all three kinds, most of them binding changes; as above,
    the choice depends only on `rng`. A write may be refused for what another
    writer did (the object exists or not, a workload's account does not exist)."""
    for _ in range(NODE_OPS):
        op = rng.choices(list(BINDING_OPS), weights=list(BINDING_OPS.values()))[0]
        what, verb = op.split("-")
        kind, names = OBJECTS[what]
        namespace, name = rng.choice(NAMESPACES), rng.choice(names)
        key = f"{namespace}/{name}"
        api = kind.api(stubs)
        try:
            state = None
            if verb == "delete":
                await api.delete(name, namespace=namespace)
            elif verb == "create":
                obj = kind.make(name, namespace=namespace, labels=random_labels(rng), **new_fields(kind, rng))
                state = state_of(await api.create(obj), redacted=True)
            else:
                obj = kind.message()
                obj.metadata.namespace, obj.metadata.name = namespace, name
                paths = changed_fields(op, obj, rng)
                state = state_of(await api.update(obj, paths=paths), redacted=True)
            outcomes.append(Outcome(op, key, state, kind.name))
        except grpc.aio.AioRpcError as e:
            allowed = {grpc.StatusCode.ALREADY_EXISTS if verb == "create" else grpc.StatusCode.NOT_FOUND}
            if op in ("workload-create", "workload-account"):
                allowed.add(grpc.StatusCode.FAILED_PRECONDITION)  # the account it names does not exist
            assert e.code() in allowed, f"{op} {key}: {e.code().name}: {e.details()}"
        await progress.step()


@dataclass(frozen=True)
class Record:
    """One object event of the committed history, with the object as received."""

    kind: str
    event: Event
    obj: Message

    @property
    def ident(self) -> Ident:
        return self.kind, self.event.key

    def __repr__(self) -> str:
        return f"{self.kind} {self.event!r}"


def recorded(recorder: Watcher) -> list[Record]:
    check_stream(recorder.events, recorder.name)
    assert recorder.events[0] == Event(SYNCED, 0), f"{recorder.name}: the store was not empty"
    events = recorder.object_events()
    assert len(events) == len(recorder.objects)
    check_lives(events, recorder.name)
    return [Record(recorder.kind.name, e, o) for e, o in zip(events, recorder.objects, strict=True)]


def check_binding_history(recorders: list[Watcher], outcomes: list[Outcome], final: int) -> list[Record]:
    """The three recorders together must be a consistent history of exactly the
    writes that succeeded: every revision 1..final one write's commit, with what
    the server writes beside it (an account's token secret, created and deleted
    with the account; the `default` account a workload creates, and its token
    secret), every state a write returned at its revision."""
    history = sorted((r for w in recorders for r in recorded(w)), key=lambda r: r.event.revision)
    by_revision: dict[int, list[Record]] = defaultdict(list)
    for r in history:
        by_revision[r.event.revision].append(r)
    assert sorted(by_revision) == list(range(1, final + 1)), "a revision without a change, or beyond the last"

    claimed: dict[int, set[Ident]] = defaultdict(set)  # per revision, what writers say they wrote at it
    for o in outcomes:
        if o.state is None:
            continue
        revision = o.state.resource_version
        ok = any(r.ident == (o.kind, o.key) and r.event.state == o.state for r in by_revision.get(revision, ()))
        assert ok, f"{o.op} {o.kind} {o.key} returned a state not in history"
        claimed[revision].add((o.kind, o.key))
    cascaded: list[Ident] = []  # token secrets deleted with their account
    for revision, records in sorted(by_revision.items()):
        if any(r.event.type == DELETED for r in records):
            # A delete alone, or an account's with its token secret's.
            if len(records) == 2:
                account, token = sorted(records, key=lambda r: r.kind != SERVICE_ACCOUNTS.name)
                assert (account.kind, token.kind) == (SERVICE_ACCOUNTS.name, SECRETS.name), f"{revision}: {records}"
                assert token.event.key == f"{account.event.key}-token", f"revision {revision}: {records}"
                assert {r.event.type for r in records} == {DELETED}, f"revision {revision}: {records}"
                cascaded.append(token.ident)
            else:
                assert len(records) == 1, f"revision {revision}: a delete and other changes: {records}"
            continue
        # An update that changed nothing returns the state it found: the `default`
        # account a workload made may be claimed at the workload's revision too.
        claims = [r for r in records if r.ident in claimed[revision]]
        written = [r for r in claims if r.kind == WORKLOADS.name] or claims
        assert len(written) == 1, f"revision {revision}: a change nobody made: {records}"
        put = written[0]
        namespace = put.event.key.split("/")[0]
        made = {r.ident: r for r in records if r is not put}
        expected: set[Ident] = set()
        if put.kind == SERVICE_ACCOUNTS.name and put.event.type == ADDED:
            expected = {(SECRETS.name, f"{put.event.key}-token")}
        elif put.kind == WORKLOADS.name and made:
            assert put.obj.service_account == "default", f"revision {revision}: {records}"
            expected = {(SERVICE_ACCOUNTS.name, f"{namespace}/default"), (SECRETS.name, f"{namespace}/default-token")}
        assert set(made) == expected, f"revision {revision}: a change nobody made: {records}"
        for ident, r in made.items():
            assert r.event.type == ADDED, f"revision {revision}: {records}"
            if ident[0] == SECRETS.name:
                account = ident[1].removesuffix("-token").split("/")[1]
                assert (r.obj.type, r.obj.service_account) == (secret_pb2.SECRET_TYPE_SERVICE_ACCOUNT_TOKEN, account)
            else:
                assert [ref.name for ref in r.obj.secrets] == ["default-token"], f"revision {revision}: {records}"
        if put.kind == SERVICE_ACCOUNTS.name:
            # The account lists its token secret, whatever its writer gave as its secrets.
            assert f"{put.event.key.split('/')[1]}-token" in [ref.name for ref in put.obj.secrets], f"{records}"
    deletes = Counter((o.kind, o.key) for o in outcomes if o.state is None)
    deleted = Counter(r.ident for r in history if r.event.type == DELETED)
    assert deleted - Counter(cascaded) == deletes
    return history


class Timeline:
    """The committed history replayed: after each revision 0..final, every
    object's state, and what each node binds, recomputed here from the objects
    (independently of the server's node graph)."""

    def __init__(self, history: list[Record], final: int) -> None:
        self.states: list[dict[Ident, State]] = []  # index: revision
        self.deleted: list[dict[Ident, State]] = []  # the last states of the objects deleted at it
        self.bound: list[dict[tuple[str, str], set[str]]] = []  # (node, kind name) -> namespace/name
        objects: dict[Ident, Message] = {}
        states: dict[Ident, State] = {}
        records = iter(history)
        r = next(records, None)
        for revision in range(final + 1):
            deleted = {}
            while r is not None and r.event.revision == revision:
                if r.event.type == DELETED:
                    del objects[r.ident], states[r.ident]
                    deleted[r.ident] = r.event.state
                else:
                    objects[r.ident], states[r.ident] = r.obj, r.event.state
                r = next(records, None)
            self.states.append(dict(states))
            self.deleted.append(deleted)
            self.bound.append(self._bindings(objects))

    @staticmethod
    def _bindings(objects: dict[Ident, Message]) -> dict[tuple[str, str], set[str]]:
        """Node N's workloads (node_name N); the accounts they use that exist; the
        secrets they list and those their existing accounts list, that exist."""
        out: dict[tuple[str, str], set[str]] = {}
        for node in NODES:
            workloads = {k for (kind, k), o in objects.items() if kind == WORKLOADS.name and o.node_name == node}
            accounts: set[str] = set()
            secrets: set[str] = set()
            for key in workloads:
                w = objects[WORKLOADS.name, key]
                ns = w.metadata.namespace
                secrets.update(f"{ns}/{s}" for s in w.secrets)
                account = objects.get((SERVICE_ACCOUNTS.name, f"{ns}/{w.service_account}"))
                if account is not None:
                    accounts.add(f"{ns}/{w.service_account}")
                    secrets.update(f"{ns}/{ref.name}" for ref in account.secrets)
            out[node, WORKLOADS.name] = workloads
            out[node, SERVICE_ACCOUNTS.name] = accounts
            out[node, SECRETS.name] = {k for k in secrets if (SECRETS.name, k) in objects}
        return out

    def view(self, node: str, kind: Kind, spec: ViewSpec, revision: int) -> dict[str, State]:
        states = self.states[revision]
        keys = self.bound[revision][node, kind.name]
        return {k: states[kind.name, k] for k in keys if spec.matches(k, states[kind.name, k])}

    def exists(self, kind: Kind, key: str, revision: int) -> bool:
        return (kind.name, key) in self.states[revision]

    def expected(self, node: str, kind: Kind, spec: ViewSpec, start: int) -> list[Event]:
        """The events a node stream of `kind` and `spec` owes after revision `start`:
        ADDED for what enters the view, MODIFIED for what changes in it, DELETED
        for what leaves it (bare if the object still exists; else its last state,
        without data), ordered by revision, then key."""
        out = []
        before = self.view(node, kind, spec, start)
        for revision in range(start + 1, len(self.states)):
            after = self.view(node, kind, spec, revision)
            for key in sorted(before.keys() | after.keys()):
                if key not in before:
                    out.append(Event(ADDED, revision, key, after[key]))
                elif key not in after:
                    if self.exists(kind, key, revision):
                        out.append(Event(DELETED, revision, key))
                    else:
                        last = self.deleted[revision][kind.name, key]
                        out.append(Event(DELETED, revision, key, replace(last, data=())))
                elif before[key].resource_version != after[key].resource_version:
                    out.append(Event(MODIFIED, revision, key, after[key]))
            before = after
        return out


@dataclass
class NodePlan:
    name: str
    node: str
    kind: Kind
    view: ViewSpec
    after: int  # start once this many write calls were made
    start: str  # "initial" (send_initial), "since" (since_revision) or "live" (from now)


def node_plans(rng: random.Random) -> list[NodePlan]:
    total = WRITERS * NODE_OPS
    out = []
    for node in NODES:
        for kind in (SECRETS, SERVICE_ACCOUNTS, WORKLOADS):
            view, name = ViewSpec("", ""), f"{node}-{kind.name}"
            out.append(NodePlan(f"{name}-initial-0", node, kind, view, 0, "initial"))
            out.append(NodePlan(f"{name}-initial-mid", node, kind, view, rng.randint(1, total * 3 // 4), "initial"))
            out.append(
                NodePlan(f"{name}-since-mid", node, kind, view, rng.randint(total // 4, total * 3 // 4), "since")
            )
            out.append(NodePlan(f"{name}-live-mid", node, kind, view, rng.randint(1, total * 3 // 4), "live"))
        for i, (kind, namespace, selector) in enumerate(NODE_VIEWS):
            start = rng.choice(["initial", "since", "live"])
            after = rng.randint(total // 4, total * 3 // 4)
            out.append(
                NodePlan(f"{node}-{kind.name}-v{i}-{start}", node, kind, ViewSpec(namespace, selector), after, start)
            )
    return sorted(out, key=lambda p: p.after)


def node_events(watcher: Watcher, plan: NodePlan, timeline: Timeline, seed: int) -> list[Event]:
    """The stream's object events, a DELETED for an object that still exists
    (it left the view) made bare. A node never gets the data of a DELETED."""
    out = []
    for e in watcher.events:
        if e.type == DELETED:
            assert e.state is not None and not e.state.data, f"{plan.name} (seed {seed}): {e} carries data"
            if timeline.exists(plan.kind, e.key, e.revision):
                e = e.bare()
        if e.key:
            out.append(e)
    return out


@pytest.mark.parametrize("seed", SEEDS)
async def test_every_node_stream_sees_the_changes_of_its_view_in_the_committed_history(
    pki, tmp_path, seed: int
) -> None:
    rng = random.Random(seed)
    channels = Channels(pki)
    identities = {node: pki.identity("node", node) for node in NODES}
    async with running(pki, tmp_path / "data", bookmark_interval=timedelta(milliseconds=200)) as server:

        def stubs(identity=pki.admin):
            return channels.stubs(server.address, identity)

        admin = stubs()
        recorders = [Watcher.open(admin, kind, f"recorder-{kind.name}", send_initial=True) for kind in ALL]
        for recorder in recorders:
            await recorder.take(1)

        outcomes: list[Outcome] = []
        progress = Progress()
        writers = [
            asyncio.create_task(write_bindings(stubs(), random.Random(seed * 100 + i), outcomes, progress))
            for i in range(WRITERS)
        ]
        watchers: list[tuple[NodePlan, int | None, Watcher]] = []  # plan, since_revision, watcher
        for plan in node_plans(rng):
            await progress.reach(plan.after)
            request: dict = dict(namespace=plan.view.namespace, label_selector=plan.view.selector)
            top = max((o.state.resource_version for o in outcomes if o.state is not None), default=0)
            since = rng.randint(1, top) if plan.start == "since" and top else None
            if plan.start == "initial":
                request["send_initial"] = True
            elif since is not None:
                request["since_revision"] = since
            watcher = Watcher.open(stubs(identities[plan.node]), plan.kind, plan.name, **request)
            watchers.append((plan, since, watcher))
        await asyncio.gather(*writers)

        final = max([(await kind.api(admin).list(page_size=1)).revision for kind in ALL])
        for recorder in recorders:
            await recorder.settle(final)
        history = check_binding_history(recorders, outcomes, final)
        timeline = Timeline(history, final)
        for kind in ALL:
            listed, _ = await kind.api(admin).list_all()
            stored = {f"{o.metadata.namespace}/{o.metadata.name}": state_of(o, redacted=True) for o in listed}
            assert stored == {k: s for (name, k), s in timeline.states[final].items() if name == kind.name}
        # The run changed every node's view of every kind, and bindings alone moved
        # objects into views and out of them (ADDED of an object written earlier,
        # DELETED of one that still exists).
        owed = {(n, k.name): timeline.expected(n, k, ViewSpec("", ""), 0) for n in NODES for k in ALL}
        assert all(owed.values()), f"(seed {seed}) a node view never changed"
        owed_events = [e for events in owed.values() for e in events]
        assert any(e.type == ADDED and e.state.resource_version < e.revision for e in owed_events), f"(seed {seed})"
        assert any(e.type == DELETED and e.state is None for e in owed_events), f"(seed {seed})"

        for plan, since, watcher in watchers:
            await watcher.settle(final)
            check_stream(watcher.events, plan.name)
            events = node_events(watcher, plan, timeline, seed)
            first = watcher.events[0]
            if plan.start == "initial":
                synced = next(e for e in watcher.events if e.type == SYNCED)
                start = synced.revision
                assert start <= final
                view = timeline.view(plan.node, plan.kind, plan.view, start)
                snapshot = [Event(ADDED, start, k, s) for k, s in sorted(view.items())]
                initial = events[: watcher.events.index(synced)]  # check_stream: only ADDED before SYNCED
                assert sorted(initial, key=lambda e: e.key) == snapshot, (
                    f"{plan.name} (seed {seed}): snapshot at {start}"
                )
                events = events[len(initial) :]
            elif since is not None:
                start = since
            else:
                assert first.type == BOOKMARK, f"{plan.name}: a stream from now starts with {first}"
                start = first.revision
            got = sorted(events, key=lambda e: (e.revision, e.key))
            assert got == timeline.expected(plan.node, plan.kind, plan.view, start), (
                f"{plan.name} (seed {seed}) after revision {start}"
            )

        await asyncio.gather(*(w.close() for _, _, w in watchers), *(r.close() for r in recorders))
    await channels.close()
