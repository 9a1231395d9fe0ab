"""Secret data is shown only with `read-data`: a caller who may read secrets but
not their data sees metadata and `data_keys` (names and sizes) and never a byte of
a value, in Get, List and every part of a Watch (the `send_initial` snapshot, live
MODIFIED events, a `since_revision` replay); with read-data in one namespace and
not another, a List or Watch across both shows data only in the granted one; a node
sees the data of the secrets bound to it, and of no other secret it may get.

Every value is random and long, so "no byte of it" is checked on the serialized
messages themselves, not only on the `data` field."""

from __future__ import annotations

import secrets as random
from collections.abc import Iterable
from pathlib import Path

import grpc
import pytest
from conftest import Pki, Stubs
from failures import failure
from google.protobuf.message import Message
from kinds import SECRETS, WORKLOADS
from watchkit import ADDED, MODIFIED, SYNCED, Channels, Watcher, running

from satchel.v1 import secret_pb2

Code = grpc.StatusCode

POLICY = """\
admins: [admin]
rules:
  # gina reads the secrets of prod and dev, never their data.
  - subjects: ["user:gina"]
    namespaces: [prod, dev]
    resources: [secrets]
    verbs: [get, list, watch]
  # rita reads both too, and the data of prod only.
  - subjects: ["user:rita"]
    namespaces: [prod, dev]
    resources: [secrets]
    verbs: [get, list, watch]
  - subjects: ["user:rita"]
    namespaces: [prod]
    resources: [secrets]
    verbs: [read-data]
  # n1 may get every secret of dev: with data only those bound to it.
  - subjects: ["node:n1"]
    namespaces: [dev]
    resources: [secrets]
    verbs: [get]
"""

# (namespace, name): n1's workloads mount prod/alpha and dev/gamma; beta and delta are unbound.
SECRET_KEYS = (("prod", "alpha"), ("prod", "beta"), ("dev", "gamma"), ("dev", "delta"))
BOUND_TO_N1 = {("prod", "alpha"), ("dev", "gamma")}


def value() -> bytes:
    return b"VALUE-" + random.token_hex(24).encode()


class Secrets:
    """The values stored now, and every value ever stored (none may leak)."""

    def __init__(self) -> None:
        self.current: dict[tuple[str, str], dict[str, bytes]] = {}
        self.ever: list[bytes] = []

    def new_data(self, key: tuple[str, str], extra: int = 0) -> dict[str, bytes]:
        data = {"password": value(), "cert.pem": value() + b"x" * extra}
        self.current[key] = data
        self.ever.extend(data.values())
        return data

    def shape(self, key: tuple[str, str]) -> list[tuple[str, int]]:
        return sorted((k, len(v)) for k, v in self.current[key].items())

    def assert_no_value_in(self, what: str, message: Message) -> None:
        raw = message.SerializeToString()
        leaked = [v for v in self.ever if v in raw]
        assert not leaked, f"{what}: {len(leaked)} secret value(s) in the serialized message"

    def assert_redacted(self, what: str, secret: secret_pb2.Secret) -> None:
        key = (secret.metadata.namespace, secret.metadata.name)
        assert not secret.data, f"{what}: {key} carries data"
        assert sorted((k.name, k.size) for k in secret.data_keys) == self.shape(key), f"{what}: {key} data_keys"
        self.assert_no_value_in(f"{what} {key}", secret)

    def assert_whole(self, what: str, secret: secret_pb2.Secret) -> None:
        key = (secret.metadata.namespace, secret.metadata.name)
        assert dict(secret.data) == self.current[key], f"{what}: {key} without its current data"
        assert sorted((k.name, k.size) for k in secret.data_keys) == self.shape(key), f"{what}: {key} data_keys"

    def assert_shown(self, what: str, secret: secret_pb2.Secret, with_data: bool) -> None:
        (self.assert_whole if with_data else self.assert_redacted)(what, secret)


async def setup(admin: Stubs, stored: Secrets) -> int:
    """n1's workloads first (they mount secrets that do not exist yet), so that there
    is a revision before any secret to replay from; then the four secrets. Returns
    that revision."""
    workloads = WORKLOADS.api(admin)
    await workloads.create(WORKLOADS.make("w", "prod", node_name="n1", secrets=["alpha"]))
    await workloads.create(WORKLOADS.make("w", "dev", node_name="n1", secrets=["gamma"]))
    before = (await SECRETS.api(admin).list()).revision
    for ns, name in SECRET_KEYS:
        await admin.secrets.CreateSecret(
            secret_pb2.CreateSecretRequest(secret=SECRETS.make(name, ns, data=stored.new_data((ns, name))))
        )
    return before


async def rotate(admin: Stubs, stored: Secrets, key: tuple[str, str]) -> int:
    """New data (of a new size) for one secret; returns the revision of the write."""
    ns, name = key
    response = await admin.secrets.UpdateSecret(
        secret_pb2.UpdateSecretRequest(
            secret=SECRETS.make(name, ns, data=stored.new_data(key, extra=7)),
            update_mask={"paths": ["data"]},
        )
    )
    return response.secret.metadata.resource_version


async def rotate_all(admin: Stubs, stored: Secrets) -> dict[tuple[str, str], int]:
    """New data for every secret, unbound ones first: once a stream has the event of
    the last write in its view, it has been sent everything before it."""
    order = sorted(SECRET_KEYS, key=lambda k: k in BOUND_TO_N1)
    return {key: await rotate(admin, stored, key) for key in order}


def objects_of(watcher: Watcher, types: Iterable[str]) -> list[secret_pb2.Secret]:
    wanted = set(types)
    return [o for e, o in zip(watcher.object_events(), watcher.objects, strict=True) if e.type in wanted]


@pytest.fixture
async def world(pki: Pki, tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    policy = data / "redaction-policy.yaml"
    policy.write_text(POLICY)
    channels = Channels(pki)
    async with running(pki, data, policy=policy) as server:
        try:
            stubs = {
                "admin": channels.stubs(server.address, pki.admin),
                "gina": channels.stubs(server.address, pki.identity("user", "gina")),
                "rita": channels.stubs(server.address, pki.identity("user", "rita")),
                "n1": channels.stubs(server.address, pki.identity("node", "n1")),
            }
            stored = Secrets()
            since = await setup(stubs["admin"], stored)
            yield stubs, stored, since
        finally:
            await channels.close()


async def get(stubs: Stubs, key: tuple[str, str]) -> secret_pb2.GetSecretResponse:
    return await stubs.secrets.GetSecret(secret_pb2.GetSecretRequest(namespace=key[0], name=key[1]))


async def list_in(stubs: Stubs, namespace: str) -> secret_pb2.ListSecretsResponse:
    return await stubs.secrets.ListSecrets(secret_pb2.ListSecretsRequest(namespace=namespace))


def shows_data(who: str, key: tuple[str, str]) -> bool:
    """The expectation, from POLICY: gina never; rita in prod; n1 for its bound secrets."""
    return {"gina": False, "rita": key[0] == "prod", "n1": key in BOUND_TO_N1}[who]


@pytest.mark.parametrize("who", ["gina", "rita"])
async def test_get_and_list_show_data_only_where_read_data_is_granted(world, who: str) -> None:
    stubs, stored, _ = world
    caller = stubs[who]
    for key in SECRET_KEYS:
        response = await get(caller, key)
        stored.assert_shown(f"{who} Get", response.secret, shows_data(who, key))
        if not shows_data(who, key):
            stored.assert_no_value_in(f"{who} Get response", response)
    for namespace in ("", "prod", "dev"):
        response = await list_in(caller, namespace)
        shown = sorted((s.metadata.namespace, s.metadata.name) for s in response.secrets)
        assert shown == sorted(k for k in SECRET_KEYS if not namespace or k[0] == namespace), (who, namespace)
        for secret in response.secrets:
            key = (secret.metadata.namespace, secret.metadata.name)
            stored.assert_shown(f"{who} List {namespace or 'all'}", secret, shows_data(who, key))
        if who == "gina":
            stored.assert_no_value_in(f"gina List {namespace or 'all'} response", response)


@pytest.mark.parametrize("who", ["gina", "rita"])
@pytest.mark.parametrize("namespace", ["", "prod", "dev"])
async def test_every_part_of_a_watch_shows_data_only_where_read_data_is_granted(
    world, who: str, namespace: str
) -> None:
    stubs, stored, since = world
    admin, caller = stubs["admin"], stubs[who]
    in_view = [k for k in SECRET_KEYS if not namespace or k[0] == namespace]
    snapshot = Watcher.open(caller, SECRETS, f"{who}-snapshot", namespace=namespace, send_initial=True)
    replay = Watcher.open(caller, SECRETS, f"{who}-replay", namespace=namespace, since_revision=since)
    try:
        await snapshot.wait_for(lambda: any(e.type == SYNCED for e in snapshot.events), "SYNCED")
        await replay.wait_for(lambda: len(replay.object_events()) >= len(in_view), "the replayed creations")
        # Both are live now: every secret gets new data, seen as MODIFIED by both.
        written = await rotate_all(admin, stored)
        for watcher in (snapshot, replay):
            await watcher.reach(max(written[k] for k in in_view))

        added = objects_of(snapshot, [ADDED])
        assert sorted((s.metadata.namespace, s.metadata.name) for s in added) == sorted(in_view)
        replayed = objects_of(replay, [ADDED])
        assert sorted((s.metadata.namespace, s.metadata.name) for s in replayed) == sorted(in_view)
        for watcher in (snapshot, replay):
            modified = objects_of(watcher, [MODIFIED])
            keys = [(s.metadata.namespace, s.metadata.name) for s in modified]
            assert sorted(keys) == sorted(in_view), f"{watcher.name}: MODIFIED for {keys}"
            for secret in modified:
                key = (secret.metadata.namespace, secret.metadata.name)
                stored.assert_shown(f"{watcher.name} MODIFIED", secret, shows_data(who, key))
            for secret in objects_of(watcher, [ADDED]):
                key = (secret.metadata.namespace, secret.metadata.name)
                if shows_data(who, key):
                    assert secret.data, f"{watcher.name} ADDED {key} without data"
                    assert set(secret.data) == set(stored.current[key])
                else:
                    assert not secret.data, f"{watcher.name} ADDED {key} with data"
                    stored.assert_no_value_in(f"{watcher.name} ADDED {key}", secret)
        if who == "gina" or namespace == "dev":
            for watcher in (snapshot, replay):
                for secret in watcher.objects:
                    stored.assert_no_value_in(f"{watcher.name} event", secret)
    finally:
        await snapshot.close()
        await replay.close()


async def test_a_node_sees_the_data_of_its_bound_secrets_only(world) -> None:
    stubs, stored, since = world
    admin, node = stubs["admin"], stubs["n1"]
    # Get: bound secrets with data; dev/delta (which a rule lets it get) without;
    # prod/beta not at all.
    for key in (("prod", "alpha"), ("dev", "gamma"), ("dev", "delta")):
        stored.assert_shown("n1 Get", (await get(node, key)).secret, shows_data("n1", key))
    await failure(get(node, ("prod", "beta")), Code.PERMISSION_DENIED)

    snapshot = Watcher.open(node, SECRETS, "n1-snapshot", send_initial=True)
    replay = Watcher.open(node, SECRETS, "n1-replay", since_revision=since)
    try:
        await snapshot.wait_for(lambda: any(e.type == SYNCED for e in snapshot.events), "SYNCED")
        await replay.wait_for(lambda: len(replay.object_events()) >= len(BOUND_TO_N1), "the bound creations")
        written = await rotate_all(admin, stored)
        for watcher in (snapshot, replay):
            await watcher.reach(max(written[k] for k in BOUND_TO_N1))
            seen = {(o.metadata.namespace, o.metadata.name) for o in watcher.objects}
            assert seen == BOUND_TO_N1, f"{watcher.name} saw {sorted(seen)}"
            for secret in objects_of(watcher, [MODIFIED]):
                stored.assert_whole(f"{watcher.name} MODIFIED", secret)
            for secret in objects_of(watcher, [ADDED]):
                assert secret.data, f"{watcher.name} ADDED without data"
        # The unbound secret dev/delta, which n1 may get, reads without data still.
        stored.assert_shown("n1 Get", (await get(node, ("dev", "delta"))).secret, False)
    finally:
        await snapshot.close()
        await replay.close()
