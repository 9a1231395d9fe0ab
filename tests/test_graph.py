"""The node graph's accounts snapshot: what a node stream's initial part reads
stays as it was taken, whatever account changes the graph applies afterwards."""

from __future__ import annotations

from satchel.v1 import meta_pb2, service_account_pb2
from satcheld.auth import NodeGraph
from satcheld.model import SERVICE_ACCOUNTS
from satcheld.store import Change

ADDED, MODIFIED, DELETED = meta_pb2.EVENT_TYPE_ADDED, meta_pb2.EVENT_TYPE_MODIFIED, meta_pb2.EVENT_TYPE_DELETED


def account(name: str, *secrets: str) -> service_account_pb2.ServiceAccount:
    return service_account_pb2.ServiceAccount(
        metadata=meta_pb2.ObjectMeta(namespace="ns", name=name),
        secrets=[service_account_pb2.SecretReference(name=s) for s in secrets],
    )


def test_an_accounts_snapshot_keeps_the_accounts_as_they_were_when_taken() -> None:
    graph = NodeGraph()
    graph.apply([Change(1, SERVICE_ACCOUNTS, ADDED, account("a", "s1"), None)])
    first = graph.accounts_snapshot()
    graph.apply(
        [
            Change(2, SERVICE_ACCOUNTS, MODIFIED, account("a", "s2"), account("a", "s1")),
            Change(2, SERVICE_ACCOUNTS, ADDED, account("b"), None),
        ]
    )
    second = graph.accounts_snapshot()
    graph.apply([Change(3, SERVICE_ACCOUNTS, DELETED, account("a", "s2"), account("a", "s2"))])
    graph.apply([Change(4, SERVICE_ACCOUNTS, MODIFIED, account("b", "s3"), account("b"))])

    assert first == {("ns", "a"): frozenset({"s1"})}
    assert second == {("ns", "a"): frozenset({"s2"}), ("ns", "b"): frozenset()}
    assert graph.accounts == {("ns", "b"): frozenset({"s3"})}
