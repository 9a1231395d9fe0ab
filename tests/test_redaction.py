"""Secret data is shown only with `read-data`: a caller who may read secrets but
not their data sees metadata and `data_keys` (names and sizes) and never a byte of
a value, in Get, List and every part of a Watch (the `send_initial` snapshot, live
MODIFIED events, a `since_revision` replay); with read-data in one namespace and
not another, a List or Watch across both shows data only in the granted one; a node
sees the data of the secrets bound to it, and of no other secret it may get. The
token secrets of the service accounts are secrets like the others: redacted, shown
and bound (to the nodes whose workloads use the account) by the same rules.

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
from kinds import SECRETS, SERVICE_ACCOUNTS, WORKLOADS
from watchkit import ADDED, MODIFIED, SYNCED, Channels, Watcher, running

from satchel.v1 import secret_pb2, service_account_pb2

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
# The service accounts: the `default` ones n1's workloads make, and one in ops (which no
# rule names) made first. Each account `a` of `ns` has its token secret `ns/a-token`.
N1_ACCOUNTS = {("prod", "default"), ("dev", "default")}
MARKER = ("ops", "marker")
ACCOUNTS = N1_ACCOUNTS | {MARKER}
TOKEN_DATA_KEYS = ["ca.crt", "namespace", "token"]


def token_secret(account: tuple[str, str]) -> tuple[str, str]:
    return account[0], f"{account[1]}-token"


TOKEN_SECRETS = {token_secret(a) for a in ACCOUNTS}
ALL_SECRETS = set(SECRET_KEYS) | TOKEN_SECRETS
# What gina and rita may read (their rules name prod and dev), and what n1's view holds:
# what its workloads mount, and their accounts' token secrets.
READABLE = sorted(k for k in ALL_SECRETS if k[0] in ("prod", "dev"))
N1_VIEW = BOUND_TO_N1 | {token_secret(a) for a in N1_ACCOUNTS}


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

    def record_token_secret(self, key: tuple[str, str], data: dict[str, bytes]) -> None:
        """A token secret's data, made by the server: its token and CA certificate
        may leak nowhere (its `namespace` value is the object's namespace anyway)."""
        self.current[key] = data
        self.ever.extend((data["token"], data["ca.crt"]))

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
    """The account ops/marker first (its token secret is in no caller's view), so that
    there is a revision before any secret a caller sees to replay from; then n1's
    workloads (they mount secrets that do not exist yet, and make the `default`
    accounts of prod and dev, with their token secrets); then the four secrets.
    Records the token secrets' data as the admin reads it. Returns that revision."""
    await admin.accounts.CreateServiceAccount(
        service_account_pb2.CreateServiceAccountRequest(service_account=SERVICE_ACCOUNTS.make(MARKER[1], MARKER[0]))
    )
    before = (await SECRETS.api(admin).list()).revision
    workloads = WORKLOADS.api(admin)
    await workloads.create(WORKLOADS.make("w", "prod", node_name="n1", secrets=["alpha"]))
    await workloads.create(WORKLOADS.make("w", "dev", node_name="n1", secrets=["gamma"]))
    for ns, name in SECRET_KEYS:
        await admin.secrets.CreateSecret(
            secret_pb2.CreateSecretRequest(secret=SECRETS.make(name, ns, data=stored.new_data((ns, name))))
        )
    # What is stored: the accounts, each listing its token secret, and the secrets.
    accounts = (
        await admin.accounts.ListServiceAccounts(service_account_pb2.ListServiceAccountsRequest())
    ).service_accounts
    assert {(a.metadata.namespace, a.metadata.name) for a in accounts} == ACCOUNTS
    for account in accounts:
        key = (account.metadata.namespace, account.metadata.name)
        assert [r.name for r in account.secrets] == [token_secret(key)[1]], f"{key} lists {account.secrets}"
    listed = (await list_in(admin, "")).secrets
    assert {(s.metadata.namespace, s.metadata.name) for s in listed} == ALL_SECRETS
    for account in sorted(ACCOUNTS):
        key = token_secret(account)
        secret = (await get(admin, key)).secret
        assert secret.type == secret_pb2.SECRET_TYPE_SERVICE_ACCOUNT_TOKEN, f"{key}: type {secret.type}"
        assert (key[0], secret.service_account) == account, f"{key}: for {secret.service_account}"
        assert sorted(secret.data) == TOKEN_DATA_KEYS, f"{key}: data {sorted(secret.data)}"
        stored.record_token_secret(key, dict(secret.data))
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
    return {"gina": False, "rita": key[0] == "prod", "n1": key in N1_VIEW}[who]


@pytest.mark.parametrize("who", ["gina", "rita"])
async def test_get_and_list_show_data_only_where_read_data_is_granted(world, who: str) -> None:
    stubs, stored, _ = world
    caller = stubs[who]
    for key in READABLE:
        response = await get(caller, key)
        stored.assert_shown(f"{who} Get", response.secret, shows_data(who, key))
        if not shows_data(who, key):
            stored.assert_no_value_in(f"{who} Get response", response)
    for namespace in ("", "prod", "dev"):
        response = await list_in(caller, namespace)
        shown = sorted((s.metadata.namespace, s.metadata.name) for s in response.secrets)
        assert shown == [k for k in READABLE if not namespace or k[0] == namespace], (who, namespace)
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
    in_view = [k for k in READABLE if not namespace or k[0] == namespace]
    rotated = [k for k in in_view if k in SECRET_KEYS]  # the token secrets keep their data
    snapshot = Watcher.open(caller, SECRETS, f"{who}-snapshot", namespace=namespace, send_initial=True)
    replay = Watcher.open(caller, SECRETS, f"{who}-replay", namespace=namespace, since_revision=since)
    try:
        await snapshot.wait_for(lambda: any(e.type == SYNCED for e in snapshot.events), "SYNCED")
        await replay.wait_for(lambda: len(replay.object_events()) >= len(in_view), "the replayed creations")
        # Both are live now: every secret but the token secrets gets new data, seen as
        # MODIFIED by both.
        written = await rotate_all(admin, stored)
        for watcher in (snapshot, replay):
            await watcher.reach(max(written[k] for k in rotated))

        added = objects_of(snapshot, [ADDED])
        assert sorted((s.metadata.namespace, s.metadata.name) for s in added) == sorted(in_view)
        replayed = objects_of(replay, [ADDED])
        assert sorted((s.metadata.namespace, s.metadata.name) for s in replayed) == sorted(in_view)
        for watcher in (snapshot, replay):
            modified = objects_of(watcher, [MODIFIED])
            keys = [(s.metadata.namespace, s.metadata.name) for s in modified]
            assert sorted(keys) == sorted(rotated), f"{watcher.name}: MODIFIED for {keys}"
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
    # Get: bound secrets (its accounts' token secrets too) with data; dev/delta (which a
    # rule lets it get) without; prod/beta and ops/marker-token not at all.
    for key in (*sorted(N1_VIEW), ("dev", "delta")):
        stored.assert_shown("n1 Get", (await get(node, key)).secret, shows_data("n1", key))
    for key in (("prod", "beta"), token_secret(MARKER)):
        await failure(get(node, key), Code.PERMISSION_DENIED)

    snapshot = Watcher.open(node, SECRETS, "n1-snapshot", send_initial=True)
    replay = Watcher.open(node, SECRETS, "n1-replay", since_revision=since)
    try:
        await snapshot.wait_for(lambda: any(e.type == SYNCED for e in snapshot.events), "SYNCED")
        await replay.wait_for(lambda: len(replay.object_events()) >= len(N1_VIEW), "the bound creations")
        written = await rotate_all(admin, stored)
        for watcher in (snapshot, replay):
            await watcher.reach(max(written[k] for k in BOUND_TO_N1))
            seen = {(o.metadata.namespace, o.metadata.name) for o in watcher.objects}
            assert seen == N1_VIEW, f"{watcher.name} saw {sorted(seen)}"
            added = sorted((o.metadata.namespace, o.metadata.name) for o in objects_of(watcher, [ADDED]))
            assert added == sorted(N1_VIEW), f"{watcher.name} ADDED {added}"
            modified = sorted((o.metadata.namespace, o.metadata.name) for o in objects_of(watcher, [MODIFIED]))
            assert modified == sorted(BOUND_TO_N1), f"{watcher.name} MODIFIED {modified}"
            for secret in objects_of(watcher, [MODIFIED]):
                stored.assert_whole(f"{watcher.name} MODIFIED", secret)
            for secret in objects_of(watcher, [ADDED]):
                assert secret.data, f"{watcher.name} ADDED without data"
        # The unbound secret dev/delta, which n1 may get, reads without data still.
        stored.assert_shown("n1 Get", (await get(node, ("dev", "delta"))).secret, False)
    finally:
        await snapshot.close()
        await replay.close()
