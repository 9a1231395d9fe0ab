"""The cache of serialized Get responses: what it keeps, what a commit drops,
that a response read before a commit is never kept after it, and its bounds.
(Through the real server: tests/test_crud.py, `get_after_*`.)"""

from __future__ import annotations

from satchel.v1 import meta_pb2, secret_pb2
from satcheld.api._get_cache import GetCache
from satcheld.model import SECRETS, WORKLOADS
from satcheld.store import Change


def _change(kind: str, namespace: str, name: str) -> Change:
    obj = secret_pb2.Secret(metadata=meta_pb2.ObjectMeta(namespace=namespace, name=name))
    return Change(7, kind, meta_pb2.EVENT_TYPE_MODIFIED, obj, None)


def _fill(cache: GetCache, key: tuple[str, str, str, bool], value: bytes) -> None:
    cache.put(key, value, cache.generation)


def test_keeps_what_it_is_given_and_serves_the_same_bytes() -> None:
    cache = GetCache()
    key = (SECRETS, "ns", "a", True)
    assert cache.get(key) is None
    _fill(cache, key, b"response")
    assert cache.get(key) == b"response"
    assert len(cache) == 1


def test_a_response_read_before_a_published_commit_is_not_kept() -> None:
    cache = GetCache()
    key = (SECRETS, "ns", "a", True)
    generation = cache.generation  # a read begins...
    cache.forget([_change(SECRETS, "ns", "other")])  # ...a commit is published meanwhile...
    cache.put(key, b"maybe stale", generation)  # ...and the read's answer arrives
    assert cache.get(key) is None
    cache.put(key, b"fresh", cache.generation)
    assert cache.get(key) == b"fresh"


def test_a_change_drops_both_views_of_its_object_and_nothing_else() -> None:
    cache = GetCache()
    keys = [
        (SECRETS, "ns", "a", True),
        (SECRETS, "ns", "a", False),
        (SECRETS, "ns", "b", True),
        (SECRETS, "other", "a", True),
        (WORKLOADS, "ns", "a", False),
    ]
    for key in keys:
        _fill(cache, key, b"old")

    cache.forget([_change(SECRETS, "ns", "a")])

    assert len(cache) == 3
    assert cache.get((SECRETS, "ns", "a", True)) is None
    assert cache.get((SECRETS, "ns", "a", False)) is None
    for key in keys[2:]:
        assert cache.get(key) == b"old"


def test_replacing_an_entry_counts_its_bytes_once() -> None:
    cache = GetCache()
    key = (SECRETS, "ns", "a", True)
    _fill(cache, key, b"x" * 40)
    _fill(cache, key, b"y" * 10)
    assert cache.size == 10


def test_stays_within_its_entry_bound() -> None:
    cache = GetCache(max_entries=3)
    for i in range(10):
        _fill(cache, (SECRETS, "ns", f"s{i}", True), b"x")
        assert len(cache) <= 3


def test_stays_within_its_byte_bound_as_entries_come_and_go() -> None:
    cache = GetCache(max_bytes=100)
    for i in range(10):
        _fill(cache, (SECRETS, "ns", f"s{i}", True), b"x" * 40)
        assert cache.size <= 100
    cache.forget([_change(SECRETS, "ns", "s9")])
    assert cache.size == 40  # s8 alone is left
