"""A scope: what a caller sees of one kind in a List or a Watch, as the
authorizer grants it. Views and pages consult it; they never read the policy."""

from __future__ import annotations

from dataclasses import dataclass

from satchel.v1 import workload_pb2

from ..model import WORKLOADS, Resource


@dataclass(frozen=True, slots=True)
class Scope:
    """Namespaces where objects are seen and where secret data is; or, for a
    node, the node authorizer's view of that node (its workloads, and the
    accounts and secrets they bind, secrets with data)."""

    namespaces: frozenset[str] | None = None  # None: every namespace
    data: frozenset[str] | None = frozenset()  # None: every namespace
    node: str = ""

    def admits(self, obj: Resource) -> bool:
        """Whether `obj` is seen, for what is decided by the object alone: a node's
        accounts and secrets follow its bindings, which the watch hub tracks."""
        if self.node:
            return isinstance(obj, workload_pb2.Workload) and obj.node_name == self.node
        return self.namespaces is None or obj.metadata.namespace in self.namespaces

    def shows_data(self, obj: Resource) -> bool:
        if self.node:
            return True
        return self.data is None or obj.metadata.namespace in self.data

    def follows_bindings(self, kind: str) -> bool:
        """Whether what is seen of `kind` depends on other objects (the node graph)."""
        return bool(self.node) and kind != WORKLOADS


EVERYTHING = Scope(None, None)
