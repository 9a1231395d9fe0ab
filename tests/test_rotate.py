"""RotateSecret for secrets whose new data the caller brings: one new version,
the previous one valid for the grace period, refused for immutable secrets and
for data Create would refuse, seen by watchers as one MODIFIED."""

from __future__ import annotations

import datetime

import grpc
import pytest
from failures import failure
from google.protobuf import duration_pb2
from kinds import SECRETS
from watchkit import MODIFIED, Watcher

from satchel.v1 import secret_pb2

Code = grpc.StatusCode


def rotate(stubs, name: str, data: dict[str, bytes] | None = None, grace: int | None = None, namespace: str = ""):
    request = secret_pb2.RotateSecretRequest(namespace=namespace, name=name, data=data or {})
    if grace is not None:
        request.grace_period.CopyFrom(duration_pb2.Duration(seconds=grace))
    return stubs.secrets.RotateSecret(request)


def _near(ts, expected: datetime.datetime) -> bool:
    return abs(ts.ToDatetime(tzinfo=datetime.UTC) - expected) < datetime.timedelta(seconds=30)


async def test_a_rotation_makes_one_new_version_and_keeps_the_previous_valid_for_the_grace(admin) -> None:
    await SECRETS.api(admin).create(SECRETS.make("db", data={"password": b"first-value"}))
    watcher = Watcher.open(admin, SECRETS, "db", since_revision=(await SECRETS.api(admin).list()).revision)
    before = datetime.datetime.now(datetime.UTC)

    rotated = (await rotate(admin, "db", {"password": b"second-value"}, grace=3600)).secret

    assert rotated.version == 2
    assert rotated.data["password"] == b"second-value"
    assert [k.name for k in rotated.data_keys] == ["password"]
    assert _near(rotated.rotation.last_rotate_time, before)
    assert _near(rotated.previous_version_expire_time, before + datetime.timedelta(hours=1))
    await watcher.wait_for(lambda: len(watcher.object_events()) >= 1, "the rotation")
    (event,) = watcher.object_events()
    assert (event.type, event.revision) == (MODIFIED, rotated.metadata.resource_version)
    assert watcher.objects[0].version == 2
    await watcher.close()


async def test_the_grace_is_the_requests_else_the_secrets_else_ten_minutes(admin) -> None:
    own = SECRETS.make("own")
    own.rotation.grace_period.FromSeconds(120)
    await SECRETS.api(admin).create(own)
    await SECRETS.api(admin).create(SECRETS.make("plain"))
    now = datetime.datetime.now(datetime.UTC)
    assert _near(
        (await rotate(admin, "own", {"k": b"v"})).secret.previous_version_expire_time,
        now + datetime.timedelta(minutes=2),
    )
    assert _near(
        (await rotate(admin, "plain", {"k": b"v"})).secret.previous_version_expire_time,
        now + datetime.timedelta(minutes=10),
    )
    assert _near((await rotate(admin, "own", {"k": b"w"}, grace=0)).secret.previous_version_expire_time, now)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({}, "data"),
        ({"..bad": b"v"}, 'secret.data["..bad"]'),
    ],
    ids=["no data", "a key Create refuses"],
)
async def test_data_create_would_refuse_is_invalid_and_changes_nothing(admin, data, field: str) -> None:
    created = await SECRETS.api(admin).create(SECRETS.make("db"))
    f = await failure(rotate(admin, "db", data), Code.INVALID_ARGUMENT)
    assert field in f.fields
    assert await SECRETS.api(admin).get("db") == created


async def test_a_tls_secret_rotates_only_to_a_matching_pair(admin, pki) -> None:
    pair = {"tls.crt": (pki.dir / "server.crt").read_bytes(), "tls.key": (pki.dir / "server.key").read_bytes()}
    await SECRETS.api(admin).create(SECRETS.make("tls", type=secret_pb2.SECRET_TYPE_TLS, data=pair))
    mismatched = {"tls.crt": pair["tls.crt"], "tls.key": (pki.dir / "admin.key").read_bytes()}
    f = await failure(rotate(admin, "tls", mismatched), Code.INVALID_ARGUMENT)
    assert "does not match" in f.message
    assert (await rotate(admin, "tls", pair)).secret.version == 2


async def test_an_immutable_secret_refuses_rotation(admin) -> None:
    created = await SECRETS.api(admin).create(SECRETS.make("fixed", immutable=True))
    f = await failure(rotate(admin, "fixed", {"k": b"new-value"}), Code.FAILED_PRECONDITION)
    assert f.info.reason == "SECRET_IMMUTABLE"
    assert await SECRETS.api(admin).get("fixed") == created


async def test_a_negative_grace_is_invalid(admin) -> None:
    await SECRETS.api(admin).create(SECRETS.make("db"))
    f = await failure(rotate(admin, "db", {"k": b"v"}, grace=-1), Code.INVALID_ARGUMENT)
    assert "grace_period" in f.fields


async def test_permission_comes_before_existence(connect, pki, admin) -> None:
    await SECRETS.api(admin).create(SECRETS.make("there"))
    alice = connect(pki.alice)
    for name in ("there", "missing"):
        f = await failure(rotate(alice, name, {"k": b"v"}), Code.PERMISSION_DENIED)
        assert f.message == 'user:alice may not rotate secrets in namespace "default"'
    f = await failure(rotate(admin, "missing", {"k": b"v"}), Code.NOT_FOUND)
    assert "missing" in f.message
