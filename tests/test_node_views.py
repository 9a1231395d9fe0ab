"""Node views that follow bindings: what node N sees of workloads, service
accounts and secrets is recomputed here from the whole stored state after each
write, and every node stream (live, resumed from any earlier revision, or
started with a snapshot) must show exactly the changes of that view.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import pytest
from failures import failure
from kinds import ALL, SECRETS, SERVICE_ACCOUNTS, WORKLOADS, Kind
from watchkit import ADDED, DELETED, MODIFIED, SYNCED, Watcher, check_stream

from satchel.v1 import service_account_pb2

NODES = ("n1", "n2")
Views = dict[tuple[str, str], dict[str, int]]  # (node, kind) -> {namespace/name: resource_version}


def refs(*names: str) -> list[service_account_pb2.SecretReference]:
    return [service_account_pb2.SecretReference(name=n) for n in names]


async def stored(admin) -> tuple[int, dict[str, dict[str, object]]]:
    """Every stored object by kind and namespace/name, and the revision read at."""
    state: dict[str, dict[str, object]] = {}
    revision = 0
    for kind in ALL:
        response = await kind.api(admin).list()  # one page holds every object of these tests
        assert not response.next_page_token
        state[kind.name] = {f"{o.metadata.namespace}/{o.metadata.name}": o for o in getattr(response, kind.items)}
        revision = max(revision, response.revision)
    return revision, state


def views(state: dict[str, dict[str, object]]) -> Views:
    """What each node sees: its workloads; the accounts they use; the secrets
    they list and those their accounts list. Objects that exist, only."""
    out: Views = {}
    for node in NODES:
        workloads = {k: w for k, w in state[WORKLOADS.name].items() if w.node_name == node}
        accounts: set[str] = set()
        secrets: set[str] = set()
        for w in workloads.values():
            ns = w.metadata.namespace
            secrets.update(f"{ns}/{s}" for s in w.secrets)
            account = state[SERVICE_ACCOUNTS.name].get(f"{ns}/{w.service_account}")
            if account is not None:
                accounts.add(f"{ns}/{w.service_account}")
                secrets.update(f"{ns}/{r.name}" for r in account.secrets)
        for kind, keys in ((WORKLOADS, set(workloads)), (SERVICE_ACCOUNTS, accounts), (SECRETS, secrets)):
            objects = state[kind.name]
            out[node, kind.name] = {k: objects[k].metadata.resource_version for k in keys if k in objects}
    return out


def changes(before: dict[str, int], after: dict[str, int], revision: int) -> list[tuple[str, int, str]]:
    """The events a view owes for going from `before` to `after` at `revision`."""
    events = []
    for key in sorted(before.keys() | after.keys()):
        if key not in before:
            events.append((ADDED, revision, key))
        elif key not in after:
            events.append((DELETED, revision, key))
        elif before[key] != after[key]:
            events.append((MODIFIED, revision, key))
    return events


def seen(watcher: Watcher, after: int = 0) -> list[tuple[str, int, str]]:
    return sorted((e.type, e.revision, e.key) for e in watcher.object_events() if e.revision > after)


@dataclass
class Scenario:
    """Writes one at a time, keeping each revision's views as recomputed from the store."""

    admin: object
    revisions: list[int] = field(default_factory=list)
    history: list[Views] = field(default_factory=list)

    async def step(self, write: Callable[[], Awaitable[object]]) -> int:
        await write()
        revision, state = await stored(self.admin)
        self.revisions.append(revision)
        self.history.append(views(state))
        return revision

    def expected(self, node: str, kind: Kind, since: int) -> list[tuple[str, int, str]]:
        events = []
        for i in range(1, len(self.history)):
            if self.revisions[i] > since:
                key = (node, kind.name)
                events += changes(self.history[i - 1][key], self.history[i][key], self.revisions[i])
        return sorted(events)


async def run_binding_changes(admin, scenario: Scenario) -> None:
    """Each binding change of the issue, for two nodes at once."""
    secrets, accounts, workloads = SECRETS.api(admin), SERVICE_ACCOUNTS.api(admin), WORKLOADS.api(admin)
    step = scenario.step
    for name in ("a", "b", "c", "t"):
        await step(lambda name=name: secrets.create(SECRETS.make(name)))
    await step(lambda: accounts.create(SERVICE_ACCOUNTS.make("app", secrets=refs("t"))))
    # A workload created on a node: its secrets and its account's secrets enter.
    await step(lambda: workloads.create(WORKLOADS.make("w1", node_name="n1", service_account="app", secrets=["a"])))
    await step(lambda: workloads.create(WORKLOADS.make("w2", node_name="n2", secrets=["a", "b"])))
    # A bound secret changes: both nodes see it.
    await step(lambda: secrets.update(SECRETS.make("a", data={"password": b"rotated"}), ["data"]))
    # A workload moves from n1 to n2.
    await step(lambda: workloads.update(WORKLOADS.make("w1", node_name="n2"), ["node_name"]))
    # A workload's secrets change (a stays bound through w1).
    await step(lambda: workloads.update(WORKLOADS.make("w2", secrets=["b", "c"]), ["secrets"]))
    # A workload's account changes.
    await step(lambda: workloads.update(WORKLOADS.make("w1", service_account="default"), ["service_account"]))
    # An account's secrets change, naming a secret that does not exist yet; then it is created.
    await step(lambda: accounts.update(SERVICE_ACCOUNTS.make("default", secrets=refs("later")), ["secrets"]))
    await step(lambda: secrets.create(SECRETS.make("later")))
    # A workload is deleted; a bound secret is deleted.
    await step(lambda: workloads.delete("w2"))
    await step(lambda: secrets.delete("a"))
    # An account used on n1 gains a secret, then is deleted.
    await step(lambda: workloads.create(WORKLOADS.make("w3", node_name="n1", service_account="app")))
    await step(lambda: accounts.update(SERVICE_ACCOUNTS.make("app", secrets=refs("t", "b")), ["secrets"]))
    await step(lambda: accounts.delete("app"))
    # An unbound secret changes: no node sees it.
    await step(lambda: secrets.update(SECRETS.make("c", data={"password": b"unseen"}), ["data"]))


@pytest.mark.parametrize("kind", [SECRETS, SERVICE_ACCOUNTS, WORKLOADS], ids=lambda k: k.name)
async def test_node_streams_show_exactly_the_changes_of_their_view(connect, pki, admin, kind: Kind) -> None:
    scenario = Scenario(admin)
    start = await scenario.step(lambda: SECRETS.api(admin).create(SECRETS.make("unbound")))
    live = {n: Watcher.open(connect(pki.identity("node", n)), kind, n, since_revision=start) for n in NODES}
    await run_binding_changes(admin, scenario)
    await scenario.step(lambda: WORKLOADS.api(admin).create(WORKLOADS.make("marker", node_name="n1", secrets=["b"])))
    await scenario.step(lambda: WORKLOADS.api(admin).create(WORKLOADS.make("marker2", node_name="n2", secrets=["t"])))
    final = scenario.revisions[-1]

    for node, watcher in live.items():
        expected = scenario.expected(node, kind, start)
        if expected:
            await watcher.wait_for(lambda w=watcher, e=expected: seen(w) == e or len(seen(w)) > len(e), "the view")
        assert seen(watcher) == expected, node
        check_stream(watcher.events, node)
        await watcher.close()
    assert any(scenario.expected(n, kind, start) for n in NODES), "the scenario changed no view"

    # Resuming from any earlier revision replays exactly the view's changes since then.
    for node in NODES:
        identity = connect(pki.identity("node", node))
        for since in scenario.revisions[:-1]:
            expected = scenario.expected(node, kind, since)
            if not expected:
                continue
            resumed = Watcher.open(identity, kind, f"{node} from {since}", since_revision=since)
            await resumed.wait_for(lambda w=resumed, e=expected: len(seen(w)) >= len(e), "the replay")
            assert seen(resumed) == expected, (node, since)
            check_stream(resumed.events)
            await resumed.close()

    # A snapshot is the view at one revision.
    view = scenario.history[-1]
    for node in NODES:
        snap = Watcher.open(connect(pki.identity("node", node)), kind, f"{node} snapshot", send_initial=True)
        await snap.wait_for(lambda w=snap: any(e.type == SYNCED for e in w.events), "SYNCED")
        synced = next(e for e in snap.events if e.type == SYNCED)
        assert synced.revision == final
        added = {e.key: e.state.resource_version for e in snap.object_events()}
        assert added == view[node, kind.name]
        check_stream(snap.events)
        await snap.close()


async def test_a_node_gets_the_data_of_its_secrets_and_nothing_of_others(connect, pki, admin) -> None:
    secrets = SECRETS.api(admin)
    await secrets.create(SECRETS.make("mine"))
    await secrets.create(SECRETS.make("theirs"))
    await WORKLOADS.api(admin).create(WORKLOADS.make("w", node_name="n1", secrets=["mine"]))
    await WORKLOADS.api(admin).create(WORKLOADS.make("x", node_name="n2", secrets=["theirs"]))
    node = connect(pki.identity("node", "n1"))
    snap = Watcher.open(node, SECRETS, "n1", send_initial=True)
    await snap.wait_for(lambda: any(e.type == SYNCED for e in snap.events), "SYNCED")
    # Its workload's secret, and the token secret of the account it runs as (`default`).
    assert [e.key for e in snap.object_events()] == ["default/default-token", "default/mine"]
    assert snap.objects[0].data["token"] and snap.objects[1].data["password"], "a node reads the data of its secrets"
    # Get follows the same graph, and is refused before existence is known.
    got = await SECRETS.api(node).get("mine")
    assert got.data
    for name in ("theirs", "missing"):
        f = await failure(SECRETS.api(node).get(name), grpc.StatusCode.PERMISSION_DENIED)
        assert f.message.startswith("node:n1 may not get secrets")
    await snap.close()
