"""Rotation of token secrets: RotateSecret signs a new token and the previous
one is accepted until the grace window ends and not after; the server rotates
token secrets on schedule, once per due time, across a restart and a kill -9."""

from __future__ import annotations

import asyncio
import datetime
import os
import re
import shlex
import signal
import time

import grpc
import pytest
from conftest import Stubs
from failures import failure
from google.protobuf import duration_pb2
from kinds import SECRETS as SECRETS_KIND
from test_serve import EXPORTS, _channel, _clean_env, _readline, _satcheld
from test_tokens import create_account, get_itself, review, token_secret
from watchkit import MODIFIED, WAIT, Channels, Watcher, running

from satchel.v1 import secret_pb2

Code = grpc.StatusCode


def rotate(stubs, name: str, grace: float | None = None, data: dict[str, bytes] | None = None):
    request = secret_pb2.RotateSecretRequest(name=name, data=data or {})
    if grace is not None:
        request.grace_period.CopyFrom(duration_pb2.Duration(seconds=int(grace), nanos=int(grace % 1 * 1e9)))
    return stubs.secrets.RotateSecret(request)


async def test_a_rotated_token_secret_holds_a_new_token_and_the_old_one_lasts_the_grace(admin) -> None:
    await create_account(admin, "app")
    before = await token_secret(admin, "app")
    old = before.data["token"].decode()
    watcher = Watcher.open(admin, SECRETS_KIND, "app-token", since_revision=before.metadata.resource_version)

    rotated = (await rotate(admin, "app-token", grace=2)).secret

    assert rotated.version == before.version + 1
    new = rotated.data["token"].decode()
    assert new != old and set(rotated.data) == {"token", "ca.crt", "namespace"}
    assert (await review(admin, new)).authenticated
    await get_itself(admin, new)
    # The previous token is valid until previous_version_expire_time, and not a second after.
    expires = rotated.previous_version_expire_time.ToDatetime(tzinfo=datetime.UTC)
    assert (await review(admin, old)).authenticated
    await get_itself(admin, old)
    deadline = time.monotonic() + WAIT
    while datetime.datetime.now(datetime.UTC) <= expires:  # waiting for the clock, not for the server
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    answer = await review(admin, old)
    assert not answer.authenticated and "version" in answer.reason
    f = await failure(get_itself(admin, old), Code.UNAUTHENTICATED)
    assert f.info.reason == "TOKEN_REVOKED"
    await get_itself(admin, new)

    await watcher.wait_for(lambda: bool(watcher.object_events()), "the rotation")
    assert [(e.type, e.revision) for e in watcher.object_events()] == [(MODIFIED, rotated.metadata.resource_version)]
    await watcher.close()


async def test_a_token_secret_takes_no_data_and_needs_its_account(server, admin) -> None:
    await create_account(admin, "app")
    f = await failure(rotate(admin, "app-token", data={"token": b"mine-not-the-servers"}), Code.INVALID_ARGUMENT)
    assert f.fields == ["data"]

    def orphan(txn):  # a token secret whose account is gone (never left so by the API)
        secret = txn.get("secrets", "default", "app-token")
        secret.metadata.name = "orphan-token"
        secret.metadata.uid = ""
        secret.service_account = "gone"
        return txn.put(secret)

    await server._store.write(orphan)
    f = await failure(rotate(admin, "orphan-token"), Code.FAILED_PRECONDITION)
    assert f.info.reason == "SERVICE_ACCOUNT_NOT_FOUND"


async def test_a_token_secret_is_due_by_half_its_tokens_lifetime(admin) -> None:
    await create_account(admin, "app")
    secret = await token_secret(admin, "app")
    due = secret.rotation.next_rotate_time.ToDatetime(tzinfo=datetime.UTC) - secret.metadata.create_time.ToDatetime(
        tzinfo=datetime.UTC
    )
    assert datetime.timedelta(hours=12) <= due <= datetime.timedelta(hours=12, minutes=1, seconds=1)


async def test_the_server_rotates_token_secrets_on_schedule_once_per_due_time(pki, tmp_path) -> None:
    channels = Channels(pki)
    async with running(pki, tmp_path / "data", token_lifetime=datetime.timedelta(seconds=3)) as server:
        try:
            admin = channels.stubs(server.address, pki.admin)
            await create_account(admin, "app")
            first = await token_secret(admin, "app")
            watcher = Watcher.open(admin, SECRETS_KIND, "app-token", since_revision=first.metadata.resource_version)
            await watcher.wait_for(lambda: len(watcher.object_events()) >= 2, "two scheduled rotations")
            rotations = [o for o, e in zip(watcher.objects, watcher.object_events(), strict=True) if e.type == MODIFIED]
            assert [o.version for o in rotations[:2]] == [first.version + 1, first.version + 2]
            # Each was made at or after its due time, and scheduled the next.
            due = first.rotation.next_rotate_time
            for o in rotations[:2]:
                assert o.rotation.last_rotate_time.ToNanoseconds() >= due.ToNanoseconds()
                assert o.rotation.next_rotate_time.ToNanoseconds() > o.rotation.last_rotate_time.ToNanoseconds()
                due = o.rotation.next_rotate_time
            token = rotations[1].data["token"].decode()
            await get_itself(admin, token)
            await watcher.close()
        finally:
            await channels.close()


async def test_a_due_time_missed_while_down_is_rotated_once_after_the_restart(pki, tmp_path) -> None:
    data = tmp_path / "data"
    channels = Channels(pki)
    async with running(pki, data, token_lifetime=datetime.timedelta(seconds=2)) as server:
        admin = channels.stubs(server.address, pki.admin)
        await create_account(admin, "app")
        first = await token_secret(admin, "app")
        server.rotator._due.clear()  # this server does not get to rotate it: it is "down" from here
        await channels.close()
    due = first.rotation.next_rotate_time.ToDatetime(tzinfo=datetime.UTC)
    while datetime.datetime.now(datetime.UTC) <= due:  # waiting for the clock
        await asyncio.sleep(0.05)

    channels = Channels(pki)
    async with running(pki, data, token_lifetime=datetime.timedelta(hours=1)) as server:
        try:
            admin = channels.stubs(server.address, pki.admin)
            watcher = Watcher.open(admin, SECRETS_KIND, "app-token", since_revision=first.metadata.resource_version)
            await watcher.wait_for(lambda: bool(watcher.object_events()), "the rotation after the restart")
            assert await server.rotator.rotate_due() == 0  # nothing is due any more
            secret = await token_secret(admin, "app")
            assert secret.version == first.version + 1
            assert [e.type for e in watcher.object_events()] == [MODIFIED]
            await get_itself(admin, secret.data["token"].decode())
            await watcher.close()
        finally:
            await channels.close()


def _due_later(secret: secret_pb2.Secret) -> bool:
    """Whether the next rotation is far off (a 1 h lifetime), not one due from a 2 s lifetime."""
    due = secret.rotation.next_rotate_time.ToDatetime(tzinfo=datetime.UTC)
    return due > datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=1)


async def _dev_server(data, *args: str):
    """`satcheld serve --dev` on `data` as a real process, and stubs for its admin."""
    proc = await asyncio.create_subprocess_exec(
        _satcheld(),
        "serve",
        "--dev",
        "--data-dir",
        str(data),
        "--listen",
        "127.0.0.1:0",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=_clean_env(),
    )
    exports: dict[str, str] = {}
    while not set(EXPORTS) <= exports.keys():
        if m := re.fullmatch(r"\s*export (SATCHEL_[A-Z]+)=(.*)", await _readline(proc)):
            exports[m.group(1)] = shlex.split(m.group(2))[0]
    channel = _channel(exports)
    return proc, channel, Stubs.over(channel)


@pytest.mark.timeout(120)
async def test_a_kill_9_around_a_scheduled_rotation_never_rotates_a_due_time_twice(tmp_path) -> None:
    data = tmp_path / "data"
    proc, channel, admin = await _dev_server(data, "--token-lifetime", "2s")
    try:
        await create_account(admin, "app")
        first = await token_secret(admin, "app")
        watcher = Watcher.open(admin, SECRETS_KIND, "app-token", since_revision=first.metadata.resource_version)
        await watcher.wait_for(lambda: bool(watcher.object_events()), "the first scheduled rotation")
        os.kill(proc.pid, signal.SIGKILL)  # while the next rotation may be under way
        await proc.wait()
        await watcher.close()
    finally:
        await channel.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    proc, channel, admin = await _dev_server(data, "--token-lifetime", "1h")
    try:
        history = Watcher.open(admin, SECRETS_KIND, "history", since_revision=first.metadata.resource_version)
        final = await token_secret(admin, "app")
        if not _due_later(final):  # due from before the kill: this server rotates it, once
            await history.wait_for(lambda: any(_due_later(o) for o in history.objects), "the rotation that was due")
            final = await token_secret(admin, "app")
        await history.wait_for(
            lambda: len(history.object_events()) >= final.version - first.version, "the recorded rotations"
        )
        rotations = [o for o in history.objects if o.metadata.name == "app-token"]
        assert [o.version for o in rotations] == list(range(first.version + 1, final.version + 1))
        times = [o.rotation.last_rotate_time.ToNanoseconds() for o in rotations]
        assert len(set(times)) == len(times), "a due time was rotated twice"
        await get_itself(admin, final.data["token"].decode())
        await history.close()
    finally:
        await channel.close()
        proc.kill()
        await proc.wait()
