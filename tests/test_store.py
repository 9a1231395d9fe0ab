"""What the store keeps on disk: secret data only sealed (AES-256-GCM, bound to
uid and version), everything surviving a restart on the same files, and
numbered migrations recorded in the database."""

from __future__ import annotations

import asyncio
import base64
import secrets
import sqlite3
import stat
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from conftest import Pki, Stubs, db_bytes, make_config, migrations_applied, secure_channel
from cryptography.exceptions import InvalidTag
from failures import failure
from kinds import ALL, SECRETS, SERVICE_ACCOUNTS, WORKLOADS, hashed

from satchel.v1 import (
    meta_pb2,
    secret_pb2,
    secret_pb2_grpc,
    service_account_pb2_grpc,
    token_pb2_grpc,
    workload_pb2_grpc,
)
from satcheld._server import Server
from satcheld.errors import AlreadyExists, Unavailable
from satcheld.store import MIGRATIONS, KeyFileError, KeyRing
from satcheld.store import SqliteStore as Store
from satcheld.store._sqlite import _Batch

Code = grpc.StatusCode


def _hidden_forms(value: bytes) -> list[bytes]:
    """The value and the encodings it could be stored in by mistake."""
    return [value, base64.b64encode(value), base64.urlsafe_b64encode(value), value.hex().encode()]


@asynccontextmanager
async def running(pki: Pki, data: Path) -> AsyncIterator[Stubs]:
    """A server of its own on the files in `data`, and admin stubs for it."""
    srv = Server(make_config(pki, data))
    await srv.start()
    channel = secure_channel(srv.address, pki, pki.admin)
    try:
        yield Stubs(
            channel,
            service_account_pb2_grpc.ServiceAccountServiceStub(channel),
            secret_pb2_grpc.SecretServiceStub(channel),
            workload_pb2_grpc.WorkloadServiceStub(channel),
            token_pb2_grpc.TokenServiceStub(channel),
        )
    finally:
        await channel.close()
        await srv.stop()


async def test_secret_data_is_encrypted_at_rest(admin, server) -> None:
    first = b"s3cr3t-plain-" + secrets.token_hex(24).encode()
    second = b"s3cr3t-again-" + secrets.token_hex(24).encode()
    findable = "findable-" + secrets.token_hex(8)  # a label: stored in the clear, proves we search the right bytes
    api = SECRETS.api(admin)
    await api.create(SECRETS.make("at-rest", labels={"probe": findable}, data={"value": first, "long": first * 50}))
    await api.update(SECRETS.make("at-rest", data={"value": second}), ["data"])
    expected = hashed({"value": second})  # hashes only: a failing assert prints no value
    assert dict((await api.get("at-rest")).data) == expected

    stored = db_bytes(server.config.db)
    audit = server.config.audit_log.read_bytes()
    assert findable.encode() in stored
    for value in (first, second):
        for form in _hidden_forms(value):
            in_db, in_audit = form in stored, form in audit  # booleans: a failing assert prints no value
            assert not in_db, "secret data is readable in the database file"
            assert not in_audit, "secret data is in the audit log"


async def test_everything_survives_a_restart_on_the_same_files(pki, tmp_path) -> None:
    data = tmp_path / "data"
    value = b"s3cr3t-durable-" + secrets.token_hex(8).encode()
    async with running(pki, data) as stubs:
        await SERVICE_ACCOUNTS.api(stubs).create(SERVICE_ACCOUNTS.make("keeper", namespace="prod", labels={"a": "b"}))
        await SECRETS.api(stubs).create(SECRETS.make("creds", namespace="prod", data={"v": value}))
        await WORKLOADS.api(stubs).create(
            WORKLOADS.make("job", namespace="prod", service_account="keeper", secrets=["creds"])
        )
        for i in range(5):
            await SECRETS.api(stubs).create(SECRETS.make(f"page-{i}", namespace="paged"))
        deleted = await SECRETS.api(stubs).create(SECRETS.make("gone", namespace="prod"))
        await SECRETS.api(stubs).delete("gone", "prod")
        before = [await kind.api(stubs).list() for kind in ALL]
        token = (await SECRETS.api(stubs).list(namespace="paged", page_size=2)).next_page_token

    async with running(pki, data) as stubs:
        after = [await kind.api(stubs).list() for kind in ALL]
        assert after == before
        expected = hashed({"v": value})
        assert dict((await SECRETS.api(stubs).get("creds", "prod")).data) == expected
        # Page tokens outlive the process: their key comes from the key file.
        rest, _ = await SECRETS.api(stubs).list_all(namespace="paged", page_size=2, page_token=token)
        assert [s.metadata.name for s in rest] == ["page-2", "page-3", "page-4"]
        # Revisions carry on; uids are never reused.
        again = await SECRETS.api(stubs).create(SECRETS.make("gone", namespace="prod"))
        assert again.metadata.resource_version == before[0].revision + 1
        assert again.metadata.uid != deleted.metadata.uid


async def test_migrations_are_recorded_once(pki, tmp_path) -> None:
    data = tmp_path / "data"
    numbers = [number for number, *_ in MIGRATIONS]
    assert numbers == list(range(1, len(numbers) + 1)), "migrations are numbered 1, 2, 3, ..."

    async with running(pki, data):
        pass
    db = data / "satchel.db"
    assert migrations_applied(db) == numbers
    with sqlite3.connect(db) as conn:
        first = conn.execute("SELECT id, name, applied_at FROM migrations ORDER BY id").fetchall()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    async with running(pki, data):
        pass
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT id, name, applied_at FROM migrations ORDER BY id").fetchall() == first


async def test_a_sealed_blob_does_not_open_on_another_row_or_version(pki, tmp_path) -> None:
    data = tmp_path / "data"
    async with running(pki, data) as stubs:
        api = SECRETS.api(stubs)
        await api.create(SECRETS.make("alpha", data={"k": b"s3cr3t-alpha"}))
        await api.create(SECRETS.make("beta", data={"k": b"s3cr3t-beta"}))
        await api.create(SECRETS.make("gamma", data={"k": b"s3cr3t-gamma-v1"}))
        await api.update(SECRETS.make("gamma", data={"k": b"s3cr3t-gamma-v2"}), ["data"])

    db = data / "satchel.db"
    with sqlite3.connect(db) as conn:

        def sealed(name: str) -> bytes:
            return conn.execute("SELECT sealed FROM objects WHERE kind='secrets' AND name=?", (name,)).fetchone()[0]

        gamma_v1 = next(
            row[0]
            for row in conn.execute("SELECT sealed FROM events WHERE kind='secrets' ORDER BY revision")
            if row[0] not in (sealed("alpha"), sealed("beta"), sealed("gamma"))
        )
        conn.execute("UPDATE objects SET sealed=? WHERE kind='secrets' AND name='beta'", (sealed("alpha"),))
        conn.execute("UPDATE objects SET sealed=? WHERE kind='secrets' AND name='gamma'", (gamma_v1,))

    async with running(pki, data) as stubs:
        api = SECRETS.api(stubs)
        expected = hashed({"k": b"s3cr3t-alpha"})
        assert dict((await api.get("alpha")).data) == expected
        for name in ("beta", "gamma"):  # alpha's blob on beta's row; gamma's version 1 blob on version 2
            try:
                got = await api.get(name)
            except grpc.aio.AioRpcError as e:
                assert e.code() == Code.DATA_LOSS, e.code()
                assert "s3cr3t" not in (e.details() or "")
            else:
                raise AssertionError(f"{name}: a moved sealed blob opened (data {dict(got.data)})")


# -- the key ring itself --------------------------------------------------------------------


@pytest.fixture
def ring(tmp_path) -> KeyRing:
    KeyRing.create_file(tmp_path / "k")
    return KeyRing.load(tmp_path / "k")


def test_keyring_round_trip_binds_uid_and_version(ring) -> None:
    blob = ring.seal(b"s3cr3t-payload", uid="u-1", version=3)
    in_clear = b"s3cr3t-payload" in blob
    opened = ring.open(blob, uid="u-1", version=3) == b"s3cr3t-payload"
    fresh_nonce = ring.seal(b"s3cr3t-payload", uid="u-1", version=3) != blob
    assert not in_clear and opened and fresh_nonce
    for uid, version in (("u-2", 3), ("u-1", 2), ("u-1", 4), ("", 3)):
        with pytest.raises(InvalidTag):
            ring.open(blob, uid=uid, version=version)


def test_keyring_detects_tampering_and_other_keys(ring, tmp_path) -> None:
    blob = bytearray(ring.seal(b"s3cr3t-payload", uid="u", version=1))
    for at in (len(blob) - 1, len(blob) - 20):
        tampered = bytearray(blob)
        tampered[at] ^= 0x01
        with pytest.raises(InvalidTag):
            ring.open(bytes(tampered), uid="u", version=1)
    KeyRing.create_file(tmp_path / "other")
    with pytest.raises(InvalidTag):  # same key id, another key
        KeyRing.load(tmp_path / "other").open(bytes(blob), uid="u", version=1)


def test_keyring_rotation_opens_old_blobs_and_seals_with_the_new_key(tmp_path) -> None:
    path = tmp_path / "k"
    KeyRing.create_file(path)
    old = KeyRing.load(path)
    blob = old.seal(b"s3cr3t-old", uid="u", version=1)
    old_line = next(line for line in path.read_text().splitlines() if line.startswith("k1:"))
    new_key = base64.b64encode(secrets.token_bytes(32)).decode()
    path.write_text(f"k2:{new_key}\n{old_line}\n")

    rotated = KeyRing.load(path)
    opened = rotated.open(blob, uid="u", version=1) == b"s3cr3t-old"
    assert opened
    fresh = rotated.seal(b"s3cr3t-new", uid="u", version=2)
    with pytest.raises(KeyError):  # the old ring does not know k2
        old.open(fresh, uid="u", version=2)


def test_keyring_file_is_private_and_never_overwritten(tmp_path) -> None:
    path = tmp_path / "k"
    KeyRing.create_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    content = path.read_bytes()
    with pytest.raises(FileExistsError):
        KeyRing.create_file(path)
    assert path.read_bytes() == content


@pytest.mark.parametrize(
    "text",
    [
        "",
        "# only a comment\n",
        "k1\n",
        "k1:not-base64!\n",
        "k1:" + base64.b64encode(b"short").decode() + "\n",
        ":" + base64.b64encode(bytes(32)).decode(),
    ],
)
def test_keyring_rejects_malformed_files(tmp_path, text: str) -> None:
    (tmp_path / "k").write_text(text)
    (tmp_path / "k").chmod(0o600)  # private: what is refused is the content
    with pytest.raises(KeyFileError):
        KeyRing.load(tmp_path / "k")
    with pytest.raises(KeyFileError):
        KeyRing.load(tmp_path / "missing")


async def test_secret_reads_fail_without_the_right_key(pki, tmp_path) -> None:
    """A database taken without its key file reveals no data."""
    data = tmp_path / "data"
    async with running(pki, data) as stubs:
        await SECRETS.api(stubs).create(SECRETS.make("locked", data={"k": b"s3cr3t-locked"}))
    (data / "encryption.key").unlink()
    KeyRing.create_file(data / "encryption.key")

    async with running(pki, data) as stubs:
        try:
            got = await SECRETS.api(stubs).get("locked")
        except grpc.aio.AioRpcError as e:
            assert e.code() == Code.DATA_LOSS, e.code()
        else:
            raise AssertionError(f"read with another key returned data {dict(got.data)}")
        await failure(SECRETS.api(stubs).get("absent"), Code.NOT_FOUND)


async def test_a_secret_no_key_opens_is_still_deletable_and_harms_no_other_view(pki, tmp_path) -> None:
    data = tmp_path / "data"
    async with running(pki, data) as stubs:
        await SECRETS.api(stubs).create(SECRETS.make("locked", data={"k": b"s3cr3t-locked"}))
        await stubs.secrets.CreateSecret(
            secret_pb2.CreateSecretRequest(
                secret=secret_pb2.Secret(metadata=meta_pb2.ObjectMeta(namespace="other", name="fine"), data={"k": b"v"})
            )
        )
    with sqlite3.connect(data / "satchel.db") as conn:  # a blob that cannot open on this row
        conn.execute("UPDATE objects SET sealed=(SELECT sealed FROM objects WHERE name='fine') WHERE name='locked'")

    async with running(pki, data) as stubs:
        await failure(SECRETS.api(stubs).get("locked"), Code.DATA_LOSS)
        listed = await stubs.secrets.ListSecrets(secret_pb2.ListSecretsRequest(namespace="other"))
        assert [s.metadata.name for s in listed.secrets] == ["fine"]
        watch = stubs.secrets.WatchSecrets(secret_pb2.WatchSecretsRequest(namespace="other", send_initial=True))
        first = await asyncio.wait_for(watch.read(), 10)
        assert (first.type, first.secret.metadata.name) == (meta_pb2.EVENT_TYPE_ADDED, "fine")
        watch.cancel()
        await stubs.secrets.DeleteSecret(secret_pb2.DeleteSecretRequest(name="locked"))
        await failure(SECRETS.api(stubs).get("locked"), Code.NOT_FOUND)


# -- the writer ------------------------------------------------------------------------------


@pytest.fixture
async def store(tmp_path) -> AsyncIterator[Store]:
    KeyRing.create_file(tmp_path / "k")
    opened = Store(tmp_path / "s.db", KeyRing.load(tmp_path / "k"))
    yield opened
    await opened.close()


async def test_a_database_error_in_a_write_is_unavailable_and_the_writer_goes_on(store) -> None:
    def broken(txn):
        txn.put(SECRETS.make("never", namespace="default"))
        txn.db.execute("INSERT INTO no_such_table VALUES (1)")

    with pytest.raises(Unavailable):
        await store.write(broken)
    assert await store.get("secrets", "default", "never") is None, "the failed write left nothing behind"
    stored = await store.write(lambda txn: txn.put(SECRETS.make("after")))
    assert stored.metadata.resource_version == 1, "the failed write took no revision"


async def test_writes_in_one_batch_see_the_writes_before_them_and_never_a_failed_ones(store) -> None:
    batches: list[list[tuple[int, str]]] = []
    store.add_listener(lambda changes: batches.append([(c.type, c.obj.metadata.name) for c in changes]))
    started, release = threading.Event(), threading.Event()

    def hold(txn):
        started.set()
        release.wait(30)

    def fail_after_writing(txn):
        txn.put(SECRETS.make("ghost", namespace="default"))
        raise AlreadyExists("refused after writing")

    def relabel(txn):
        current = txn.get("secrets", "default", "first")
        current.metadata.labels["seen"] = "yes"
        return txn.put(current)

    held = asyncio.ensure_future(store.write(hold))
    await asyncio.to_thread(started.wait, 30)  # the writer is busy: what follows queues up
    writes = [
        asyncio.ensure_future(store.write(fn))
        for fn in (
            lambda txn: txn.put(SECRETS.make("first", namespace="default")),
            fail_after_writing,
            relabel,
            lambda txn: txn.delete("secrets", "default", "first"),
            lambda txn: txn.get("secrets", "default", "ghost"),
        )
    ]
    await asyncio.sleep(0)  # one loop turn: each write task runs up to its queued job
    assert store._queue.qsize() == len(writes)
    release.set()
    await held
    created, failed, relabeled, deleted, ghost = await asyncio.gather(*writes, return_exceptions=True)

    assert isinstance(failed, AlreadyExists)
    assert relabeled.metadata.labels["seen"] == "yes"
    assert relabeled.metadata.uid == created.metadata.uid
    assert deleted.metadata.uid == created.metadata.uid
    assert ghost is None, "a failed job's writes are seen by no one"
    Type = meta_pb2.EventType
    assert batches == [
        [(Type.EVENT_TYPE_ADDED, "first"), (Type.EVENT_TYPE_MODIFIED, "first"), (Type.EVENT_TYPE_DELETED, "first")]
    ], "one batch, in order, without the failed write"
    assert [
        created.metadata.resource_version,
        relabeled.metadata.resource_version,
        deleted.metadata.resource_version,
    ] == [1, 2, 3]
    assert await store.get("secrets", "default", "first") is None
    assert await store.get("secrets", "default", "ghost") is None


async def test_a_bug_while_committing_fails_that_batch_and_the_writer_goes_on(store, monkeypatch) -> None:
    apply = _Batch.apply

    def broken_apply(batch) -> None:
        monkeypatch.setattr(_Batch, "apply", apply)  # once
        raise RuntimeError("a bug in the writer")

    monkeypatch.setattr(_Batch, "apply", broken_apply)
    with pytest.raises(Unavailable):
        await store.write(lambda txn: txn.put(SECRETS.make("lost", namespace="default")))
    assert await store.get("secrets", "default", "lost") is None

    stored = await store.write(lambda txn: txn.put(SECRETS.make("after", namespace="default")))
    assert stored.metadata.resource_version == 1, "the failed batch took no revision"
    assert await store.get("secrets", "default", "after") is not None


async def test_a_listener_that_raises_keeps_the_commit_from_no_other_listener_nor_writer(store) -> None:
    seen: list[int] = []

    def broken(changes) -> None:
        raise RuntimeError("a bug in a listener")

    store.add_listener(broken)
    store.add_listener(lambda changes: seen.extend(c.revision for c in changes))
    stored = await store.write(lambda txn: txn.put(SECRETS.make("heard", namespace="default")))
    assert seen == [stored.metadata.resource_version]
    assert store.revision == stored.metadata.resource_version


async def test_writes_and_reads_after_close_are_refused(store) -> None:
    await store.write(lambda txn: txn.put(SECRETS.make("kept", namespace="default")))
    await store.close()
    with pytest.raises(Unavailable):
        await store.write(lambda txn: txn.put(SECRETS.make("late")))
    with pytest.raises(Unavailable):
        await store.get("secrets", "default", "kept")
    with pytest.raises(Unavailable):
        await store.list("secrets", limit=10, max_bytes=1 << 20)


async def test_compaction_keeps_the_configured_age_and_count(store) -> None:
    for i in range(10):
        await store.write(lambda txn, i=i: txn.put(SECRETS.make(f"s{i}", namespace="default")))
    # Recent events stay, however few are asked for: both limits must be passed to forget.
    assert await store.compact(keep_seconds=3600, keep_events=1) == 0
    assert len((await store.history("secrets", 0, 10, lambda c: True, False))[1]) == 10
    # Old enough, but within the count: they stay too.
    assert await store.compact(keep_seconds=0, keep_events=10) == 0
    # Old and beyond the newest 4: forgotten, and the compact revision says so.
    assert await store.compact(keep_seconds=0, keep_events=4) == 6
    compact, kept = await store.history("secrets", 0, 10, lambda c: True, False)
    assert compact == 6 and [c.revision for c in kept] == [7, 8, 9, 10]
