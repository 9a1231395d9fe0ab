"""What an object binds: a workload its service account and the secrets it
lists, an account the secrets it lists. The node authorizer's graph is made of
these edges, and the store records the objects a change of them binds."""

from __future__ import annotations

from satchel.v1 import service_account_pb2, workload_pb2

from ._kinds import SECRETS, SERVICE_ACCOUNTS, WORKLOADS, Resource

Key = tuple[str, str, str]  # kind, namespace, name
BINDING_KINDS = (WORKLOADS, SERVICE_ACCOUNTS)  # the kinds whose objects bind others


def references(obj: Resource | None) -> frozenset[Key]:
    """The objects `obj` names directly (none for a secret or for None)."""
    if isinstance(obj, workload_pb2.Workload):
        ns = obj.metadata.namespace
        keys = {(SECRETS, ns, name) for name in obj.secrets}
        if obj.service_account:
            keys.add((SERVICE_ACCOUNTS, ns, obj.service_account))
        return frozenset(keys)
    if isinstance(obj, service_account_pb2.ServiceAccount):
        ns = obj.metadata.namespace
        return frozenset((SECRETS, ns, ref.name) for ref in obj.secrets)
    return frozenset()


def binding_changed(prev: Resource | None, obj: Resource | None) -> bool:
    """Whether going from `prev` to `obj` (None: absent) may change what some
    node sees: a workload's node, account or secrets, an account's secrets."""
    if prev is None or obj is None:
        return isinstance(prev or obj, (workload_pb2.Workload, service_account_pb2.ServiceAccount))
    if isinstance(obj, workload_pb2.Workload):
        assert isinstance(prev, workload_pb2.Workload)
        return obj.node_name != prev.node_name or references(obj) != references(prev)
    if isinstance(obj, service_account_pb2.ServiceAccount):
        return references(obj) != references(prev)
    return False
