"""Open Watch streams follow a policy reload (docs/policy.md, "Reloading"): the policy
file is a real file, rewritten, and `Server.reload()` (what SIGHUP runs) puts it in
force. A stream whose caller lost `watch` ends with PERMISSION_DENIED; one whose
caller lost `read-data` goes on, its next events without data (and one that gained
it, with data); a stream across all namespaces goes on with the caller's new set of
namespaces; a node's stream follows its bindings, not the file. A file that does not
parse keeps the old policy: every stream goes on as before and calls still succeed.

Nothing sleeps: each wait is for an event of a stream, bounded (watchkit.WAIT)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
import pytest
from conftest import Pki, Stubs
from failures import failure
from kinds import SECRETS, WORKLOADS
from watchkit import MODIFIED, SYNCED, WAIT, Channels, Watcher, running

from satchel.v1 import secret_pb2
from satcheld._server import Server

Code = grpc.StatusCode

BEFORE = """\
admins: [admin]
groups:
  watchers: [wanda]
rules:
  # wanda (through her group) reads prod with data; she will lose `watch`.
  - subjects: ["group:watchers"]
    namespaces: [prod]
    resources: [secrets]
    verbs: [get, list, watch, read-data]
  # rhea reads prod and dev with data; she will lose `read-data`, and dev.
  - subjects: ["user:rhea"]
    namespaces: [prod, dev]
    resources: [secrets]
    verbs: [get, list, watch, read-data]
  # gaia watches prod without data; she will gain `read-data` there, and dev.
  - subjects: ["user:gaia"]
    namespaces: [prod]
    resources: [secrets]
    verbs: [get, watch]
"""

AFTER = """\
admins: [admin]
groups:
  watchers: [wanda]
rules:
  - subjects: ["group:watchers"]
    namespaces: [prod]
    resources: [secrets]
    verbs: [get, list, read-data]
  - subjects: ["user:rhea"]
    namespaces: [prod]
    resources: [secrets]
    verbs: [get, list, watch]
  - subjects: ["user:gaia"]
    namespaces: [prod]
    resources: [secrets]
    verbs: [get, watch, read-data]
  - subjects: ["user:gaia"]
    namespaces: [dev]
    resources: [secrets]
    verbs: [watch]
"""

BROKEN = BEFORE.replace("verbs: [get, watch]", "verbs: [get, watch")  # an unclosed flow list

ALPHA, GAMMA = ("prod", "alpha"), ("dev", "gamma")


async def rotate(admin: Stubs, key: tuple[str, str], n: int) -> int:
    ns, name = key
    response = await admin.secrets.UpdateSecret(
        secret_pb2.UpdateSecretRequest(
            secret=SECRETS.make(name, ns, data={"password": f"v{n}-{ns}-{name}".encode()}),
            update_mask={"paths": ["data"]},
        )
    )
    return response.secret.metadata.resource_version


def modified(watcher: Watcher, after: int) -> list[tuple[str, secret_pb2.Secret]]:
    """The MODIFIED events after revision `after`: (namespace/name, the secret)."""
    return [
        (e.key, o)
        for e, o in zip(watcher.object_events(), watcher.objects, strict=True)
        if e.type == MODIFIED and e.revision > after
    ]


async def next_modified(watcher: Watcher, key: tuple[str, str], revision: int) -> secret_pb2.Secret:
    """The MODIFIED event of `key` at `revision`, waiting for it."""
    name = "/".join(key)
    await watcher.wait_for(
        lambda: any(e.revision == revision and e.key == name for e in watcher.object_events()),
        f"MODIFIED {name} at {revision}",
    )
    ((_, secret),) = [(k, o) for k, o in modified(watcher, revision - 1) if k == name]
    return secret


async def synced(*watchers: Watcher) -> None:
    for w in watchers:
        await w.wait_for(lambda w=w: any(e.type == SYNCED for e in w.events), "SYNCED")


async def test_open_streams_follow_a_reload_and_a_broken_file_changes_nothing(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    policy = data / "policy-under-test.yaml"
    policy.write_text(BEFORE)
    channels = Channels(pki)
    server: Server
    async with running(pki, data, policy=policy) as server:
        try:
            admin = channels.stubs(server.address, pki.admin)
            who = {
                name: channels.stubs(server.address, pki.identity("user", name)) for name in ("wanda", "rhea", "gaia")
            }
            node = channels.stubs(server.address, pki.identity("node", "n1"))
            for ns, name in (ALPHA, GAMMA):
                await SECRETS.api(admin).create(SECRETS.make(name, ns, data={"password": b"v0"}))
            await WORKLOADS.api(admin).create(WORKLOADS.make("w", "prod", node_name="n1", secrets=["alpha"]))

            streams = {
                "wanda-prod": Watcher.open(who["wanda"], SECRETS, "wanda-prod", namespace="prod", send_initial=True),
                "wanda-all": Watcher.open(who["wanda"], SECRETS, "wanda-all", send_initial=True),
                "rhea-prod": Watcher.open(who["rhea"], SECRETS, "rhea-prod", namespace="prod", send_initial=True),
                "rhea-dev": Watcher.open(who["rhea"], SECRETS, "rhea-dev", namespace="dev", send_initial=True),
                "rhea-all": Watcher.open(who["rhea"], SECRETS, "rhea-all", send_initial=True),
                "gaia-prod": Watcher.open(who["gaia"], SECRETS, "gaia-prod", namespace="prod", send_initial=True),
                "gaia-all": Watcher.open(who["gaia"], SECRETS, "gaia-all", send_initial=True),
                "n1": Watcher.open(node, SECRETS, "n1", send_initial=True),
            }
            try:
                await synced(*streams.values())
                await _a_broken_file_keeps_everything(server, policy, admin, who, streams, caplog)
                await _a_new_file_moves_every_stream(server, policy, admin, who, streams, caplog)
            finally:
                for w in streams.values():
                    await w.close()
        finally:
            await channels.close()


async def _a_broken_file_keeps_everything(server, policy, admin, who, streams, caplog) -> None:
    policy.write_text(BROKEN)
    with caplog.at_level(logging.INFO, logger="satcheld"):
        server.reload()
    assert any("SIGHUP: kept the old policy" in m for m in caplog.messages), caplog.messages
    # Every stream is still open and sees the next change as before: with data where
    # its caller has read-data (wanda, rhea, the node), without it for gaia.
    revision = await rotate(admin, ALPHA, 1)
    for name in ("wanda-prod", "wanda-all", "rhea-prod", "rhea-all", "gaia-prod", "gaia-all", "n1"):
        secret = await next_modified(streams[name], ALPHA, revision)
        assert bool(secret.data) == (not name.startswith("gaia")), f"{name} after a broken file: data {secret.data}"
        assert secret.data_keys
    dev = await rotate(admin, GAMMA, 1)
    for name in ("rhea-dev", "rhea-all"):
        assert (await next_modified(streams[name], GAMMA, dev)).data, f"{name} lost data on a broken file"
    assert not any(w.done for w in streams.values()), [w.name for w in streams.values() if w.done]
    # Calls are authorized by the old policy still.
    got = await who["wanda"].secrets.GetSecret(secret_pb2.GetSecretRequest(namespace="prod", name="alpha"))
    assert got.secret.data
    again = Watcher.open(who["wanda"], SECRETS, "wanda-again", namespace="prod", send_initial=True)
    await synced(again)
    await again.close()
    got = await who["rhea"].secrets.GetSecret(secret_pb2.GetSecretRequest(namespace="dev", name="gamma"))
    assert got.secret.data


async def _a_new_file_moves_every_stream(server, policy, admin, who, streams, caplog) -> None:
    policy.write_text(AFTER)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="satcheld"):
        server.reload()
    assert f"SIGHUP: reloaded the policy file {policy}" in caplog.messages
    # Lost `watch`: the streams end at once, before any further change.
    for name in ("wanda-prod", "wanda-all", "rhea-dev"):
        f = await streams[name].failure(Code.PERMISSION_DENIED)
        assert f.info.reason == "PERMISSION_DENIED", name
        assert "not found" not in f.message
    await failure(_first_event(who["wanda"], "prod"), Code.PERMISSION_DENIED)

    reloaded = await WORKLOADS.api(admin).list()  # the revision of the reload
    dev = await rotate(admin, GAMMA, 2)
    prod = await rotate(admin, ALPHA, 2)
    # Lost `read-data`: the streams go on, their next events without data, their shape kept.
    for name in ("rhea-prod", "rhea-all"):
        secret = await next_modified(streams[name], ALPHA, prod)
        assert not secret.data, f"{name} still shows data after losing read-data"
        assert [(k.name, k.size) for k in secret.data_keys] == [("password", len(b"v2-prod-alpha"))]
        assert b"v2-prod-alpha" not in secret.SerializeToString()
    # rhea lost dev: her stream across all namespaces no longer shows it.
    assert [k for k, _ in modified(streams["rhea-all"], reloaded.revision)] == ["prod/alpha"]
    # Gained `read-data` in prod, and `watch` in dev (whose objects arrive with their next change).
    secret = await next_modified(streams["gaia-prod"], ALPHA, prod)
    assert secret.data["password"] == b"v2-prod-alpha"
    assert (await next_modified(streams["gaia-all"], ALPHA, prod)).data["password"] == b"v2-prod-alpha"
    gaia_dev = [(k, o) for k, o in modified(streams["gaia-all"], reloaded.revision) if k == "dev/gamma"]
    assert [k for k, _ in gaia_dev] == ["dev/gamma"] and not gaia_dev[0][1].data, "gaia sees dev, without data"
    # The node follows its bindings, not the file: its secret, with data, as before.
    assert (await next_modified(streams["n1"], ALPHA, prod)).data["password"] == b"v2-prod-alpha"
    assert dev < prod
    # New calls follow the new file too.
    got = await who["rhea"].secrets.GetSecret(secret_pb2.GetSecretRequest(namespace="prod", name="alpha"))
    assert not got.secret.data and got.secret.data_keys
    await failure(
        who["rhea"].secrets.GetSecret(secret_pb2.GetSecretRequest(namespace="dev", name="gamma")),
        Code.PERMISSION_DENIED,
    )


async def _first_event(stubs: Stubs, namespace: str) -> None:
    call = stubs.secrets.WatchSecrets(secret_pb2.WatchSecretsRequest(namespace=namespace, send_initial=True))
    try:
        await asyncio.wait_for(call.read(), WAIT)
    finally:
        call.cancel()
