"""The node authorizer's graph (after Kubernetes' node authorizer): which
service accounts and secrets each node's workloads bind, kept in memory and
fed by the store's commit stream, so that "may node N read secret S?" is a
dictionary lookup made before any read of S.

`NodeBindings` is one node's part: its workloads and a count, per bound
object, of the workloads that bind it. The same `apply` moves the live graph
and a replay's copy of one node through a commit, and records which objects
were bound before it, so that the watch hub can tell what entered or left a
node's view. `NodeGraph` holds every node's part and is written only by
`apply` (the watch hub calls it first for each published commit) and `load`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from satchel.v1 import meta_pb2, service_account_pb2, workload_pb2

from ..model import SECRETS, SERVICE_ACCOUNTS, WORKLOADS, Key, Resource
from ..store import Change, Store

DELETED = meta_pb2.EVENT_TYPE_DELETED
ADDED = meta_pb2.EVENT_TYPE_ADDED

Name = tuple[str, str]  # namespace, name
Accounts = dict[Name, frozenset[str]]  # each service account's secret names
Before = dict[Key, bool]  # per object whose binding a commit changed: whether it was bound before


@dataclass(frozen=True, slots=True)
class Binding:
    """What one workload binds: its node, account and secret names."""

    node: str
    account: str
    secrets: tuple[str, ...]


def binding_of(workload: workload_pb2.Workload) -> Binding:
    return Binding(workload.node_name, workload.service_account, tuple(workload.secrets))


def _name(obj: Resource) -> Name:
    return obj.metadata.namespace, obj.metadata.name


def _present(change: Change) -> Resource | None:
    return None if change.type == DELETED else change.obj


def update_accounts(accounts: Accounts, change: Change) -> None:
    """Moves `accounts` through one change of a service account."""
    if change.kind != SERVICE_ACCOUNTS:
        return
    now = _present(change)
    if now is None:
        accounts.pop(_name(change.obj), None)
    else:
        assert isinstance(now, service_account_pb2.ServiceAccount)
        accounts[_name(now)] = frozenset(ref.name for ref in now.secrets)


def undo_accounts(accounts: Accounts, change: Change) -> None:
    """Moves `accounts` back through one change of a service account."""
    if change.kind != SERVICE_ACCOUNTS:
        return
    if change.prev is None:
        accounts.pop(_name(change.obj), None)
    else:
        assert isinstance(change.prev, service_account_pb2.ServiceAccount)
        accounts[_name(change.prev)] = frozenset(ref.name for ref in change.prev.secrets)


class NodeBindings:
    """One node's workloads and the objects they bind, each counted once per workload."""

    __slots__ = ("_bound_by", "node", "refs", "workloads")

    def __init__(self, node: str) -> None:
        self.node = node
        self.workloads: dict[Name, Binding] = {}
        self._bound_by: dict[Name, frozenset[Key]] = {}  # per workload, what it binds
        self.refs: dict[Key, int] = {}  # per bound object, how many workloads bind it

    @classmethod
    def of(cls, node: str, workloads: Mapping[Name, Binding], accounts: Mapping[Name, frozenset[str]]) -> NodeBindings:
        nb = cls(node)
        for name, binding in workloads.items():
            nb.rebind(name, binding, accounts, {})
        return nb

    def copy(self) -> NodeBindings:
        nb = NodeBindings(self.node)
        nb.workloads = dict(self.workloads)
        nb._bound_by = dict(self._bound_by)
        nb.refs = dict(self.refs)
        return nb

    def binds(self, key: Key) -> bool:
        return key in self.refs

    def rebind(
        self, name: Name, binding: Binding | None, accounts: Mapping[Name, frozenset[str]], before: Before
    ) -> None:
        """Sets what workload `name` on this node binds (None: it is not on this
        node), noting in `before` whether each object it changes was bound."""
        old = self._bound_by.pop(name, frozenset())
        if binding is None:
            self.workloads.pop(name, None)
            new: frozenset[Key] = frozenset()
        else:
            self.workloads[name] = binding
            new = _bound(name[0], binding, accounts)
            if new:
                self._bound_by[name] = new
        refs = self.refs
        for key in old - new:
            before.setdefault(key, True)
            count = refs[key] - 1
            if count:
                refs[key] = count
            else:
                del refs[key]
        for key in new - old:
            before.setdefault(key, key in refs)
            refs[key] = refs.get(key, 0) + 1

    def apply(self, change: Change, accounts: Mapping[Name, frozenset[str]], before: Before) -> None:
        """Moves this node through one change (`accounts` already moved through it)."""
        if change.kind == WORKLOADS:
            name = _name(change.obj)
            now = _present(change)
            assert now is None or isinstance(now, workload_pb2.Workload)
            binding = binding_of(now) if now is not None and now.node_name == self.node else None
            if binding is not None or name in self.workloads:
                self.rebind(name, binding, accounts, before)
        elif change.kind == SERVICE_ACCOUNTS:
            account = _name(change.obj)
            for name in [n for n, b in self.workloads.items() if (n[0], b.account) == account]:
                self.rebind(name, self.workloads[name], accounts, before)


def _bound(namespace: str, binding: Binding, accounts: Mapping[Name, frozenset[str]]) -> frozenset[Key]:
    keys = {(SECRETS, namespace, s) for s in binding.secrets}
    if binding.account:
        keys.add((SERVICE_ACCOUNTS, namespace, binding.account))
        keys.update((SECRETS, namespace, s) for s in accounts.get((namespace, binding.account), ()))
    return frozenset(keys)


class NodeGraph:
    """Every node's bindings, and the indexes that find the nodes a change reaches."""

    def __init__(self) -> None:
        self.workloads: dict[Name, Binding] = {}
        self.accounts: Accounts = {}
        self._accounts_shared = False  # `accounts` was handed out by accounts_snapshot()
        self.nodes: dict[str, NodeBindings] = {}
        self._users: dict[Name, set[Name]] = {}  # per account, the workloads (any node) using it
        self.referrers: dict[Key, set[str]] = {}  # per bound object, the nodes binding it

    async def load(self, store: Store) -> None:
        """Builds the graph from the store, before the server takes calls."""
        _, accounts = await store.snapshot(SERVICE_ACCOUNTS, lambda _obj: True, False)
        _, workloads = await store.snapshot(WORKLOADS, lambda _obj: True, False)
        changes = [Change(0, SERVICE_ACCOUNTS, ADDED, obj, None) for obj in accounts]
        changes += [Change(0, WORKLOADS, ADDED, obj, None) for obj in workloads]
        self.apply(changes)

    def binds(self, node: str, key: Key) -> bool:
        """Whether a workload on `node` binds the object `key` (which need not exist)."""
        nb = self.nodes.get(node)
        return nb is not None and key in nb.refs

    def runs(self, node: str, namespace: str, workload: str) -> bool:
        """Whether workload `namespace/workload` is on `node`."""
        binding = self.workloads.get((namespace, workload))
        return binding is not None and binding.node == node

    def accounts_snapshot(self) -> Mapping[Name, frozenset[str]]:
        """Every account's secrets as they are now, unchanged from then on: the
        graph writes its next account change to a copy (copy on write), so that
        a burst of streams opening at once does not copy every account each."""
        self._accounts_shared = True
        return self.accounts

    def bindings_of(self, node: str) -> NodeBindings:
        """A copy of one node's part, for a stream that replays from it."""
        nb = self.nodes.get(node)
        return NodeBindings(node) if nb is None else nb.copy()

    def apply(self, changes: Iterable[Change]) -> dict[str, Before]:
        """Moves the graph through the changes of one commit; returns, per node
        whose bindings changed, which objects were bound before."""
        touched: dict[str, Before] = {}
        for change in changes:
            if change.kind == WORKLOADS:
                self._apply_workload(change, touched)
            elif change.kind == SERVICE_ACCOUNTS:
                if self._accounts_shared:
                    self.accounts = dict(self.accounts)
                    self._accounts_shared = False
                update_accounts(self.accounts, change)
                for name in list(self._users.get(_name(change.obj), ())):
                    node = self.workloads[name].node
                    self._node(node).apply(change, self.accounts, touched.setdefault(node, {}))
        for node, before in touched.items():
            nb = self.nodes[node]
            for key, was in before.items():
                if was != (key in nb.refs):
                    nodes = self.referrers.setdefault(key, set())
                    if was:
                        nodes.discard(node)
                        if not nodes:
                            del self.referrers[key]
                    else:
                        nodes.add(node)
            if not nb.workloads:
                del self.nodes[node]
        return touched

    def _apply_workload(self, change: Change, touched: dict[str, Before]) -> None:
        name = _name(change.obj)
        old = self.workloads.get(name)
        now = _present(change)
        assert now is None or isinstance(now, workload_pb2.Workload)
        new = None if now is None else binding_of(now)
        if old is not None and old.account:
            users = self._users[(name[0], old.account)]
            users.discard(name)
            if not users:
                del self._users[(name[0], old.account)]
        if new is None:
            self.workloads.pop(name, None)
        else:
            self.workloads[name] = new
            if new.account:
                self._users.setdefault((name[0], new.account), set()).add(name)
        for node in {b.node for b in (old, new) if b is not None and b.node}:
            self._node(node).apply(change, self.accounts, touched.setdefault(node, {}))

    def _node(self, node: str) -> NodeBindings:
        nb = self.nodes.get(node)
        if nb is None:
            nb = self.nodes[node] = NodeBindings(node)
        return nb
