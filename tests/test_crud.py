"""Create, get, list, update and delete of service accounts, secrets and
workloads through the generated stubs, against the real mTLS server; every
error code and every error's one ErrorInfo."""

from __future__ import annotations

import asyncio
import base64
import uuid

import grpc
import pytest
from failures import failure
from google.protobuf import timestamp_pb2
from kinds import ALL, SECRETS, SERVICE_ACCOUNTS, WORKLOADS, Kind, hashed, names

from satchel.v1 import secret_pb2

Code = grpc.StatusCode
each_kind = pytest.mark.parametrize("kind", ALL, ids=lambda k: k.name)


# -- create and get ------------------------------------------------------------


@each_kind
async def test_create_sets_server_fields_and_get_returns_the_same(admin, kind: Kind) -> None:
    api = kind.api(admin)
    obj = kind.make("alpha", labels={"env": "prod", "example.com/team": "core"}, annotations={"note": "x y z"})
    # Output-only fields a caller sends are ignored.
    obj.metadata.uid = "forged-uid"
    obj.metadata.resource_version = 999_999
    obj.metadata.etag = "forged-etag"
    obj.metadata.create_time.FromSeconds(1)

    created = await api.create(obj)

    meta = created.metadata
    assert meta.namespace == "default"
    assert meta.name == "alpha"
    assert str(uuid.UUID(meta.uid)) == meta.uid
    assert 0 < meta.resource_version < 999_999
    assert meta.etag and meta.etag != "forged-etag"
    assert meta.create_time.seconds > 1
    assert meta.update_time == meta.create_time
    assert dict(meta.labels) == {"env": "prod", "example.com/team": "core"}
    assert dict(meta.annotations) == {"note": "x y z"}

    got = await api.get("alpha")
    assert got == created
    assert await api.get("alpha", namespace="default") == created


async def test_service_account_output_only_identity(admin) -> None:
    api = SERVICE_ACCOUNTS.api(admin)
    obj = SERVICE_ACCOUNTS.make("deployer", namespace="ci")
    obj.username, obj.spiffe_id, obj.email = "system:serviceaccount:kube-system:root", "spiffe://evil/x", "a@b"

    sa = await api.create(obj)

    assert sa.username == "system:serviceaccount:ci:deployer"
    assert sa.spiffe_id == "spiffe://satchel.local/ns/ci/sa/deployer"
    assert sa.email == "ci+deployer@serviceaccounts.satchel.local"
    # Updates cannot change them either, whatever the mask.
    sa.username, sa.spiffe_id, sa.email = "u", "spiffe://satchel.local/user/admin", "e"
    sa.description = "changed"
    updated = await api.update(sa, ["*"])
    assert updated.description == "changed"
    assert (updated.username, updated.spiffe_id, updated.email) == (
        "system:serviceaccount:ci:deployer",
        "spiffe://satchel.local/ns/ci/sa/deployer",
        "ci+deployer@serviceaccounts.satchel.local",
    )


async def test_secret_create_get_data_and_shape(admin) -> None:
    api = SECRETS.api(admin)
    data = {"password": b"s3cr3t-pw-1", "config.json": b'{"a": 1}', "empty": b""}
    obj = SECRETS.make("db", data=data)
    obj.version = 41
    obj.data_keys.add(name="forged", size=1)

    created = await api.create(obj)

    assert created.type == secret_pb2.SECRET_TYPE_OPAQUE  # unspecified means opaque
    assert created.version == 1
    expected = hashed(data)  # hashes only: a failing assert prints no value
    assert dict(created.data) == expected
    expected_keys = sorted((k, len(v)) for k, v in data.items())
    assert [(k.name, k.size) for k in created.data_keys] == expected_keys
    got = await api.get("db")
    assert dict(got.data) == expected
    assert [(k.name, k.size) for k in got.data_keys] == expected_keys
    listed = (await api.list()).secrets
    assert [(k.name, k.size) for k in listed[0].data_keys] == expected_keys
    assert dict(listed[0].data) == expected


# -- update --------------------------------------------------------------------


@each_kind
async def test_update_keeps_uid_and_advances_revision_and_etag(admin, kind: Kind) -> None:
    api = kind.api(admin)
    created = await api.create(kind.make("beta", labels={"v": "1"}))

    obj = kind.make("beta", labels={"v": "2"})
    first = await api.update(obj, ["metadata.labels"])
    obj.metadata.labels["v"] = "3"
    second = await api.update(obj, ["metadata.labels"])

    assert created.metadata.uid == first.metadata.uid == second.metadata.uid
    assert created.metadata.resource_version < first.metadata.resource_version < second.metadata.resource_version
    assert len({created.metadata.etag, first.metadata.etag, second.metadata.etag}) == 3
    assert created.metadata.create_time == first.metadata.create_time == second.metadata.create_time
    assert created.metadata.update_time.ToNanoseconds() < first.metadata.update_time.ToNanoseconds()
    assert first.metadata.update_time.ToNanoseconds() < second.metadata.update_time.ToNanoseconds()
    assert dict(second.metadata.labels) == {"v": "3"}
    assert await api.get("beta") == second


@each_kind
async def test_update_that_changes_nothing_keeps_revision_and_etag(admin, kind: Kind) -> None:
    api = kind.api(admin)
    created = await api.create(kind.make("same", labels={"a": "b"}))

    again = await api.update(kind.make("same", labels={"a": "b"}), ["metadata.labels"])

    assert again.metadata.resource_version == created.metadata.resource_version
    assert again.metadata.etag == created.metadata.etag


@each_kind
async def test_delete_and_recreate_gets_a_new_uid(admin, kind: Kind) -> None:
    api = kind.api(admin)
    first = await api.create(kind.make("gamma"))

    await api.delete("gamma")
    await failure(api.get("gamma"), Code.NOT_FOUND)
    second = await api.create(kind.make("gamma"))

    assert second.metadata.uid != first.metadata.uid
    assert second.metadata.resource_version > first.metadata.resource_version
    assert second.metadata.etag != first.metadata.etag


@each_kind
async def test_get_after_every_change_shows_that_change(admin, kind: Kind) -> None:
    """Gets are answered from cached responses: each commit must drop the ones it replaced."""
    api = kind.api(admin)
    created = await api.create(kind.make("cached", labels={"v": "1"}))
    assert await api.get("cached") == created

    relabeled = await api.update(kind.make("cached", labels={"v": "2"}), ["metadata.labels"])
    assert await api.get("cached") == relabeled

    await api.delete("cached")
    await failure(api.get("cached"), Code.NOT_FOUND)

    recreated = await api.create(kind.make("cached", labels={"v": "3"}))
    got = await api.get("cached")
    assert got == recreated
    assert got.metadata.uid != created.metadata.uid


async def test_get_after_a_data_change_shows_the_new_data(admin) -> None:
    api = SECRETS.api(admin)
    await api.create(SECRETS.make("rotating", data={"key": b"first-value"}))
    assert dict((await api.get("rotating")).data) == hashed({"key": b"first-value"})

    await api.update(SECRETS.make("rotating", data={"key": b"second-value"}), ["data"])

    again = await api.get("rotating")
    assert dict(again.data) == hashed({"key": b"second-value"})
    assert again.version == 2


async def test_revision_is_global_strictly_increasing_and_listed(admin) -> None:
    seen = []
    for i, kind in enumerate(ALL * 2):
        obj = await kind.api(admin).create(kind.make(f"r{i}"))
        seen.append(obj.metadata.resource_version)
    assert seen == sorted(set(seen)), "revisions must strictly increase across kinds"
    for kind in ALL:
        assert (await kind.api(admin).list()).revision == seen[-1]

    # A delete is a write too: it takes the next revision.
    await SECRETS.api(admin).delete("r1")
    deleted_at = (await WORKLOADS.api(admin).list()).revision
    assert deleted_at == seen[-1] + 1
    after = await SERVICE_ACCOUNTS.api(admin).create(SERVICE_ACCOUNTS.make("late"))
    assert after.metadata.resource_version == deleted_at + 1


async def test_secret_version_changes_only_with_data(admin) -> None:
    api = SECRETS.api(admin)
    created = await api.create(SECRETS.make("api-key", data={"key": b"s3cr3t-v1"}))
    assert created.version == 1

    relabeled = await api.update(SECRETS.make("api-key", labels={"x": "y"}), ["metadata.labels"])
    assert relabeled.version == 1
    assert relabeled.metadata.resource_version > created.metadata.resource_version

    changed = await api.update(SECRETS.make("api-key", data={"key": b"s3cr3t-v2", "extra": b"12345"}), ["data"])
    assert changed.version == 2
    assert [(k.name, k.size) for k in changed.data_keys] == [("extra", 5), ("key", 9)]
    expected = hashed({"key": b"s3cr3t-v2", "extra": b"12345"})
    assert dict(changed.data) == expected

    unchanged = await api.update(SECRETS.make("api-key", data={"key": b"s3cr3t-v2", "extra": b"12345"}), ["data"])
    assert unchanged.version == 2
    assert unchanged.metadata.etag == changed.metadata.etag
    expected = hashed({"key": b"s3cr3t-v2", "extra": b"12345"})
    assert dict((await api.get("api-key")).data) == expected


async def test_update_mask_star_replaces_everything_mutable(admin) -> None:
    accounts = SERVICE_ACCOUNTS.api(admin)
    await accounts.create(
        SERVICE_ACCOUNTS.make(
            "svc", labels={"a": "1"}, annotations={"n": "v"}, description="old", secrets=[{"name": "s1"}]
        )
    )
    replaced = await accounts.update(SERVICE_ACCOUNTS.make("svc", labels={"b": "2"}, description=""), ["*"])
    assert dict(replaced.metadata.labels) == {"b": "2"}
    assert dict(replaced.metadata.annotations) == {}
    assert replaced.description == ""
    assert [ref.name for ref in replaced.secrets] == ["svc-token"]  # the account's token secret stays listed

    secrets = SECRETS.api(admin)
    await secrets.create(SECRETS.make("cfg", labels={"a": "1"}, data={"one": b"1", "two": b"2"}))
    replaced = await secrets.update(SECRETS.make("cfg", data={"three": b"3"}), ["*"])
    assert dict(replaced.metadata.labels) == {}
    assert sorted(replaced.data) == ["three"]
    assert [k.name for k in replaced.data_keys] == ["three"]
    assert replaced.version == 2
    assert replaced.type == secret_pb2.SECRET_TYPE_OPAQUE

    workloads = WORKLOADS.api(admin)
    await workloads.create(WORKLOADS.make("web", labels={"a": "1"}, secrets=["cfg"]))
    replaced = await workloads.update(WORKLOADS.make("web", node_name="n2"), ["*"])
    assert (replaced.node_name, list(replaced.secrets), dict(replaced.metadata.labels)) == ("n2", [], {})


@each_kind
async def test_update_mask_named_paths_change_only_those(admin, kind: Kind) -> None:
    api = kind.api(admin)
    created = await api.create(kind.make("delta", labels={"keep": "me"}, annotations={"old": "1"}))

    request = kind.make("delta", labels={"ignored": "yes"}, annotations={"new": "2"})
    specific = {
        "serviceaccounts": ("description", "ignored too"),
        "secrets": ("immutable", True),
        "workloads": ("node_name", "n9"),
    }
    path, value = specific[kind.name]
    setattr(request, path, value)
    updated = await api.update(request, ["metadata.annotations"])

    assert dict(updated.metadata.annotations) == {"new": "2"}
    assert dict(updated.metadata.labels) == {"keep": "me"}
    assert getattr(updated, path) == getattr(created, path)


async def test_update_with_empty_mask_changes_the_fields_set(admin) -> None:
    api = WORKLOADS.api(admin)
    await api.create(WORKLOADS.make("epsilon", labels={"keep": "me"}, secrets=["a"]))

    updated = await api.update(WORKLOADS.make("epsilon", node_name="n7"))

    assert updated.node_name == "n7"
    assert dict(updated.metadata.labels) == {"keep": "me"}
    assert list(updated.secrets) == ["a"]


@each_kind
@pytest.mark.parametrize(
    "paths",
    [["bogus"], ["metadata.name"], ["metadata.uid"], ["metadata.labels.env"], ["*", "metadata.labels"], [""]],
    ids=lambda p: ",".join(p) or "empty-path",
)
async def test_update_mask_with_a_path_that_cannot_change(admin, kind: Kind, paths: list[str]) -> None:
    api = kind.api(admin)
    created = await api.create(kind.make("zeta", labels={"a": "1"}))

    f = await failure(api.update(kind.make("zeta", labels={"a": "2"}), paths), Code.INVALID_ARGUMENT)

    assert f.fields and set(f.fields) == {"update_mask"}
    assert await api.get("zeta") == created


async def test_output_only_rotation_times_ignored_on_update(admin) -> None:
    api = SECRETS.api(admin)
    await SERVICE_ACCOUNTS.api(admin).create(SERVICE_ACCOUNTS.make("rot"))  # its token secret has a period
    request = SECRETS.make("rot-token", data={})
    request.rotation.period.FromSeconds(3600)
    request.rotation.last_rotate_time.FromSeconds(1_000)
    request.rotation.next_rotate_time.FromSeconds(2_000)

    updated = await api.update(request, ["rotation"])

    assert updated.rotation.period.seconds == 3600
    assert updated.rotation.last_rotate_time != timestamp_pb2.Timestamp(seconds=1_000)
    assert updated.rotation.next_rotate_time != timestamp_pb2.Timestamp(seconds=2_000)


# -- preconditions: etags, duplicates, missing objects ---------------------------


@each_kind
async def test_update_with_a_stale_etag_is_aborted(admin, kind: Kind) -> None:
    api = kind.api(admin)
    created = await api.create(kind.make("eta"))
    current = await api.update(kind.make("eta", labels={"v": "1"}), ["metadata.labels"])

    stale = kind.make("eta", labels={"v": "2"})
    stale.metadata.etag = created.metadata.etag
    f = await failure(api.update(stale, ["metadata.labels"]), Code.ABORTED)
    assert f.info.reason == "ETAG_MISMATCH"
    assert await api.get("eta") == current

    fresh = kind.make("eta", labels={"v": "3"})
    fresh.metadata.etag = current.metadata.etag
    assert dict((await api.update(fresh, ["metadata.labels"])).metadata.labels) == {"v": "3"}


@each_kind
async def test_delete_with_a_stale_etag_is_aborted(admin, kind: Kind) -> None:
    api = kind.api(admin)
    created = await api.create(kind.make("theta"))
    current = await api.update(kind.make("theta", labels={"v": "1"}), ["metadata.labels"])

    f = await failure(api.delete("theta", etag=created.metadata.etag), Code.ABORTED)
    assert f.info.reason == "ETAG_MISMATCH"
    assert (await api.get("theta")).metadata.uid == created.metadata.uid

    await api.delete("theta", etag=current.metadata.etag)
    await failure(api.get("theta"), Code.NOT_FOUND)


@each_kind
async def test_create_twice_is_already_exists(admin, kind: Kind) -> None:
    api = kind.api(admin)
    first = await api.create(kind.make("iota", namespace="team-a"))

    f = await failure(api.create(kind.make("iota", namespace="team-a", labels={"x": "y"})), Code.ALREADY_EXISTS)

    assert "team-a/iota" in f.message
    assert await api.get("iota", "team-a") == first
    # The same name in another namespace is another object.
    assert (await api.create(kind.make("iota", namespace="team-b"))).metadata.uid != first.metadata.uid


@each_kind
async def test_missing_object_is_not_found(admin, kind: Kind) -> None:
    api = kind.api(admin)
    await api.create(kind.make("kappa", namespace="other"))

    for call in (
        api.get("kappa"),
        api.get("nothing", "other"),
        api.update(kind.make("kappa", labels={"a": "b"}), ["metadata.labels"]),
        api.delete("kappa"),
        api.delete("kappa", namespace="nowhere", etag="abc"),
    ):
        f = await failure(call, Code.NOT_FOUND)
        assert f.info.reason == "NOT_FOUND"


# -- list ----------------------------------------------------------------------


@each_kind
async def test_list_filters_by_namespace(admin, kind: Kind) -> None:
    api = kind.api(admin)
    for ns, name in [("ns-a", "one"), ("ns-a", "two"), ("ns-b", "one"), ("ns-c", "three")]:
        await api.create(kind.make(name, namespace=ns))

    def mine(objects):  # workloads bring their `default` accounts; those are not listed here
        return [n for n in names(objects) if not n.endswith("/default")]

    assert mine(getattr(await api.list(namespace="ns-a"), kind.items)) == ["ns-a/one", "ns-a/two"]
    assert mine(getattr(await api.list(namespace="ns-b"), kind.items)) == ["ns-b/one"]
    assert mine(getattr(await api.list(namespace="empty"), kind.items)) == []
    assert mine(getattr(await api.list(), kind.items)) == ["ns-a/one", "ns-a/two", "ns-b/one", "ns-c/three"]


SELECTED = {
    "lone": {},
    "prod-web": {"env": "prod", "tier": "web"},
    "prod-db": {"env": "prod", "tier": "db"},
    "dev-web": {"env": "dev", "tier": "web"},
    "prod-bare": {"env": "prod"},
    "flagged": {"example.com/canary": ""},
}


@each_kind
@pytest.mark.parametrize(
    "selector, expected",
    [
        ("", set(SELECTED)),
        ("env=prod", {"prod-web", "prod-db", "prod-bare"}),
        ("env==prod", {"prod-web", "prod-db", "prod-bare"}),
        ("env!=prod", {"lone", "dev-web", "flagged"}),
        ("tier", {"prod-web", "prod-db", "dev-web"}),
        ("!tier", {"lone", "prod-bare", "flagged"}),
        ("env=prod,tier", {"prod-web", "prod-db"}),
        ("env=prod,tier!=web", {"prod-db", "prod-bare"}),
        (" env = prod , tier = web ", {"prod-web"}),
        ("example.com/canary", {"flagged"}),
        ("example.com/canary=", {"flagged"}),
        ("env=staging", set()),
    ],
)
async def test_list_label_selectors(admin, kind: Kind, selector: str, expected: set[str]) -> None:
    api = kind.api(admin)
    for name, labels in SELECTED.items():
        await api.create(kind.make(name, namespace="sel", labels=labels))

    found, _ = await api.list_all(namespace="sel", label_selector=selector, page_size=2)

    assert {o.metadata.name for o in found} - {"default"} == expected


async def test_page_size_defaults_to_100_and_is_capped_at_1000(admin) -> None:
    api = SERVICE_ACCOUNTS.api(admin)
    await asyncio.gather(*(api.create(SERVICE_ACCOUNTS.make(f"sa-{i:04d}", namespace="many")) for i in range(1001)))

    default = await api.list(namespace="many")
    assert len(default.service_accounts) == 100 and default.next_page_token

    capped = await api.list(namespace="many", page_size=2**31 - 1)
    assert len(capped.service_accounts) == 1000 and capped.next_page_token
    rest = await api.list(namespace="many", page_size=2**31 - 1, page_token=capped.next_page_token)
    assert names(rest.service_accounts) == ["many/sa-1000"] and rest.next_page_token == ""

    exact = await api.list(namespace="many", page_size=1000)
    assert names(exact.service_accounts) == names(capped.service_accounts)


@each_kind
async def test_paging_walks_every_object_exactly_once(admin, kind: Kind) -> None:
    api = kind.api(admin)
    expected = []
    for ns in ("p-a", "p-b", "p-c"):
        for i in range(7):
            labels = {"parity": "even" if i % 2 == 0 else "odd"}
            await api.create(kind.make(f"obj-{i}", namespace=ns, labels=labels))
            expected.append((ns, f"obj-{i}", labels["parity"]))

    def walk_names(objects):
        return [n for n in names(objects) if not n.endswith("/default")]

    for page_size in (1, 2, 3, 5, 100):
        everything, pages = await api.list_all(page_size=page_size)
        assert walk_names(everything) == [f"{ns}/{n}" for ns, n, _ in expected], page_size
        assert pages >= len(everything) // page_size

        one_ns, _ = await api.list_all(page_size=page_size, namespace="p-b")
        assert walk_names(one_ns) == [f"p-b/{n}" for ns, n, _ in expected if ns == "p-b"]

        odd, _ = await api.list_all(page_size=page_size, label_selector="parity=odd")
        assert walk_names(odd) == [f"{ns}/{n}" for ns, n, p in expected if p == "odd"]

    # A page boundary that falls on a deleted object does not lose the rest.
    first = await api.list(page_size=4, namespace="p-a")
    await api.delete(getattr(first, kind.items)[-1].metadata.name, namespace="p-a")
    rest, _ = await api.list_all(page_size=4, namespace="p-a", page_token=first.next_page_token)
    seen = walk_names(getattr(first, kind.items)) + walk_names(rest)
    assert seen == [f"p-a/obj-{i}" for i in range(7)]


def _flip(token: str, at: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[at % len(raw)] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")


@pytest.mark.parametrize("at", [0, 5, 20, -1])
async def test_tampered_page_token_is_invalid(admin, at: int) -> None:
    api = SECRETS.api(admin)
    for i in range(3):
        await api.create(SECRETS.make(f"s{i}", namespace="tok"))
    token = (await api.list(namespace="tok", page_size=1)).next_page_token
    assert token

    f = await failure(api.list(namespace="tok", page_size=1, page_token=_flip(token, at)), Code.INVALID_ARGUMENT)

    assert f.fields == ["page_token"]


@pytest.mark.parametrize("token", ["x", "!!!!", "é", "A" * 4096, base64.urlsafe_b64encode(b"\0" * 40).decode()])
async def test_garbage_page_token_is_invalid(admin, token: str) -> None:
    f = await failure(SECRETS.api(admin).list(page_token=token), Code.INVALID_ARGUMENT)
    assert f.fields == ["page_token"]


async def test_page_token_is_bound_to_its_query(admin) -> None:
    secrets, accounts = SECRETS.api(admin), SERVICE_ACCOUNTS.api(admin)
    for ns in ("bound-a", "bound-b"):
        for i in range(3):
            await secrets.create(SECRETS.make(f"s{i}", namespace=ns, labels={"app": "x"}))
            await accounts.create(SERVICE_ACCOUNTS.make(f"s{i}", namespace=ns, labels={"app": "x"}))
    token = (await secrets.list(namespace="bound-a", label_selector="app=x", page_size=1)).next_page_token
    assert token

    for other in (
        secrets.list(namespace="bound-b", label_selector="app=x", page_token=token),
        secrets.list(namespace="", label_selector="app=x", page_token=token),
        secrets.list(namespace="bound-a", label_selector="app", page_token=token),
        secrets.list(namespace="bound-a", page_token=token),
        accounts.list(namespace="bound-a", label_selector="app=x", page_token=token),
    ):
        f = await failure(other, Code.INVALID_ARGUMENT)
        assert f.fields == ["page_token"]

    # The same query may carry on, with any page size.
    rest, _ = await secrets.list_all(namespace="bound-a", label_selector="app=x", page_size=5, page_token=token)
    assert names(rest) == ["bound-a/s1", "bound-a/s2"]


# -- immutable secrets ---------------------------------------------------------------


async def test_immutable_secret_refuses_data_change_and_becoming_mutable(admin) -> None:
    api = SECRETS.api(admin)
    created = await api.create(SECRETS.make("frozen", immutable=True, data={"k": b"s3cr3t-frozen"}))
    assert created.immutable

    f = await failure(
        api.update(SECRETS.make("frozen", data={"k": b"s3cr3t-other"}), ["data"]), Code.FAILED_PRECONDITION
    )
    assert f.info.reason == "SECRET_IMMUTABLE"
    f = await failure(api.update(SECRETS.make("frozen", immutable=True, data={}), ["*"]), Code.FAILED_PRECONDITION)
    assert f.info.reason == "SECRET_IMMUTABLE"
    f = await failure(api.update(SECRETS.make("frozen", immutable=False), ["immutable"]), Code.FAILED_PRECONDITION)
    assert f.info.reason == "SECRET_IMMUTABLE"

    got = await api.get("frozen")
    assert got == created
    expected = hashed({"k": b"s3cr3t-frozen"})
    assert dict(got.data) == expected
    # Its metadata may still change, and it may be deleted.
    relabeled = await api.update(SECRETS.make("frozen", labels={"a": "b"}), ["metadata.labels"])
    assert relabeled.immutable and relabeled.version == 1
    await api.delete("frozen")


async def test_mutable_secret_may_become_immutable(admin) -> None:
    api = SECRETS.api(admin)
    await api.create(SECRETS.make("thaw"))
    frozen = await api.update(SECRETS.make("thaw", immutable=True), ["immutable"])
    assert frozen.immutable
    await failure(api.update(SECRETS.make("thaw", data={"x": b"1"}), ["data"]), Code.FAILED_PRECONDITION)


# -- workloads and their service accounts ------------------------------------------------


async def test_workload_without_service_account_gets_default_which_is_created(admin) -> None:
    accounts = SERVICE_ACCOUNTS.api(admin)
    await failure(accounts.get("default", "apps"), Code.NOT_FOUND)

    workload = await WORKLOADS.api(admin).create(WORKLOADS.make("web", namespace="apps", service_account=""))

    assert workload.service_account == "default"
    default = await accounts.get("default", "apps")
    assert default.spiffe_id == "spiffe://satchel.local/ns/apps/sa/default"
    # Created once: a second workload reuses it.
    await WORKLOADS.api(admin).create(WORKLOADS.make("api", namespace="apps"))
    assert (await accounts.get("default", "apps")).metadata.uid == default.metadata.uid


async def test_workload_naming_a_missing_account_fails_precondition(admin) -> None:
    workloads = WORKLOADS.api(admin)
    before = await workloads.list()

    f = await failure(workloads.create(WORKLOADS.make("job", service_account="ghost")), Code.FAILED_PRECONDITION)
    assert "ghost" in f.message
    await failure(workloads.get("job"), Code.NOT_FOUND)
    assert (await workloads.list()).revision == before.revision

    await SERVICE_ACCOUNTS.api(admin).create(SERVICE_ACCOUNTS.make("runner"))
    job = await workloads.create(WORKLOADS.make("job", service_account="runner"))
    assert job.service_account == "runner"
    f = await failure(
        workloads.update(WORKLOADS.make("job", service_account="ghost"), ["service_account"]), Code.FAILED_PRECONDITION
    )
    assert (await workloads.get("job")).service_account == "runner"
