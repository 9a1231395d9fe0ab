"""The watch hub's view rules as pure functions: what a view sees of one change,
and what a view without read-data permission gets of a secret."""

from __future__ import annotations

from kinds import hashed

from satchel.v1 import meta_pb2, secret_pb2
from satcheld.model import LabelSelector, visible
from satcheld.store import Change
from satcheld.watch import View, encode


def _secret(labels: dict[str, str], value: bytes = b"v") -> secret_pb2.Secret:
    s = secret_pb2.Secret(metadata=meta_pb2.ObjectMeta(namespace="ns", name="s", labels=labels), data={"k": value})
    s.data_keys.add(name="k", size=len(value))
    return s


def test_an_event_without_read_data_gets_the_shape_but_no_values() -> None:
    secret = _secret({}, b"s3cr3t")
    blind = secret_pb2.WatchSecretsResponse.FromString(
        encode("secrets", meta_pb2.EVENT_TYPE_ADDED, 7, secret, with_data=False)
    )
    seeing = secret_pb2.WatchSecretsResponse.FromString(
        encode("secrets", meta_pb2.EVENT_TYPE_ADDED, 7, secret, with_data=True)
    )
    assert not blind.secret.data and [k.name for k in blind.secret.data_keys] == ["k"]
    assert seeing.secret.data["k"] == secret.data["k"]
    assert secret.data, "encoding for one view never changes the object the others share"


def test_labels_moving_an_object_across_a_selector_are_added_and_deleted_for_that_view() -> None:
    view = View("secrets", "ns", LabelSelector.parse("tier=web"))
    web, db = _secret({"tier": "web"}), _secret({"tier": "db"})
    modified = meta_pb2.EVENT_TYPE_MODIFIED
    assert view.event_for(Change(2, "secrets", modified, web, prev=db)) == meta_pb2.EVENT_TYPE_ADDED
    assert view.event_for(Change(3, "secrets", modified, db, prev=web)) == meta_pb2.EVENT_TYPE_DELETED
    assert view.event_for(Change(4, "secrets", modified, web, prev=web)) == meta_pb2.EVENT_TYPE_MODIFIED
    assert view.event_for(Change(5, "secrets", modified, db, prev=db)) is None
    assert View("secrets", "other").event_for(Change(6, "secrets", modified, web, prev=web)) is None
    assert View("workloads").event_for(Change(7, "secrets", modified, web, prev=web)) is None


def test_what_a_caller_without_read_data_sees_is_a_copy_and_the_original_keeps_its_data() -> None:
    secret = _secret({}, b"s3cr3t")
    shown = visible(secret, with_data=False)
    assert shown is not secret and not shown.data and [k.name for k in shown.data_keys] == ["k"]
    assert hashed(secret.data) == hashed({"k": b"s3cr3t"}), "hiding data changed the object others share"
    assert visible(secret, with_data=True) is secret
