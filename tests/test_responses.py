"""The cache of serialized Get responses: what it keeps, what a commit drops,
and its bounds. (Through the real server: tests/test_crud.py, `get_after_*`.)"""

from __future__ import annotations

import pytest

from satchel.v1 import meta_pb2, secret_pb2
from satcheld._kinds import SECRETS, WORKLOADS
from satcheld._responses import ResponseCache
from satcheld._store import Change


def _change(kind: str, namespace: str, name: str) -> Change:
    obj = secret_pb2.Secret(metadata=meta_pb2.ObjectMeta(namespace=namespace, name=name))
    return Change(7, kind, meta_pb2.EVENT_TYPE_MODIFIED, obj, None)


def test_builds_once_and_serves_the_same_bytes_after() -> None:
    cache = ResponseCache()
    builds = []

    def build() -> bytes:
        builds.append(1)
        return b"response"

    first = cache.get((SECRETS, "ns", "a", True), build)
    second = cache.get((SECRETS, "ns", "a", True), build)

    assert first == second == b"response"
    assert len(builds) == 1


def test_a_build_that_raises_keeps_nothing() -> None:
    cache = ResponseCache()

    def missing() -> bytes:
        raise LookupError("not found")

    with pytest.raises(LookupError):
        cache.get((SECRETS, "ns", "gone", True), missing)
    assert len(cache) == 0
    assert cache.get((SECRETS, "ns", "gone", True), lambda: b"now") == b"now"


def test_a_change_drops_both_views_of_its_object_and_nothing_else() -> None:
    cache = ResponseCache()
    for key in [
        (SECRETS, "ns", "a", True),
        (SECRETS, "ns", "a", False),
        (SECRETS, "ns", "b", True),
        (SECRETS, "other", "a", True),
        (WORKLOADS, "ns", "a", False),
    ]:
        cache.get(key, lambda: b"old")

    cache.forget([_change(SECRETS, "ns", "a")])

    assert len(cache) == 3
    assert cache.get((SECRETS, "ns", "a", True), lambda: b"new") == b"new"
    assert cache.get((SECRETS, "ns", "a", False), lambda: b"new") == b"new"
    assert cache.get((SECRETS, "ns", "b", True), lambda: b"new") == b"old"
    assert cache.get((SECRETS, "other", "a", True), lambda: b"new") == b"old"
    assert cache.get((WORKLOADS, "ns", "a", False), lambda: b"new") == b"old"


def test_stays_within_its_entry_bound() -> None:
    cache = ResponseCache(max_entries=3)
    for i in range(10):
        cache.get((SECRETS, "ns", f"s{i}", True), lambda: b"x")
        assert len(cache) <= 3


def test_stays_within_its_byte_bound_as_entries_come_and_go() -> None:
    cache = ResponseCache(max_bytes=100)
    for i in range(10):
        cache.get((SECRETS, "ns", f"s{i}", True), lambda: b"x" * 40)
        assert cache.size <= 100
    cache.forget([_change(SECRETS, "ns", "s9")])
    assert cache.size == 40  # s8 alone is left
