"""The encryption key ring as an operator rotates it: `satcheld add-encryption-key`
puts a new primary first, SIGHUP (or a restart) seals new writes under it,
`AdminService.ResealSecrets` (`satchelctl admin reseal`) seals everything
stored (objects and all of history) again under it while writers run, and the
old key line can then go. The key file is refused when others may read it, an
id repeats or is not printable ASCII; files the server writes are synced
(file and directory) before use."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets
import signal
import sqlite3
import stat
import subprocess
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from conftest import Pki, Stubs, make_config, secure_channel
from failures import digest, failure
from kinds import SECRETS, SERVICE_ACCOUNTS, WORKLOADS, hashed
from test_serve import _accounts, _channel, _stderr_says, satcheld
from tools import binary
from tools import satcheld as satcheld_binary
from watchkit import Watcher, running

from satchel.v1 import admin_pb2, admin_pb2_grpc, secret_pb2
from satcheld import _cli
from satcheld._config import ConfigError
from satcheld._server import Server
from satcheld.errors import DataLoss
from satcheld.store import KeyFileError, KeyRing, SqliteStore, add_key, key_id_of
from satcheld.store import _sqlite as store_sqlite

Code = grpc.StatusCode
WAIT = 30  # seconds: the bound for subprocess waits


async def _refused(config) -> str:
    """The one-line ConfigError that starting a server on `config` raises."""
    server = Server(config)
    try:
        await server.start()
    except ConfigError as e:
        return str(e)
    await server.stop()
    raise AssertionError("the server started")


def _key_line(kid: str) -> str:
    return f"{kid}:{base64.b64encode(secrets.token_bytes(32)).decode()}"


def _sealed_key_ids(db: Path) -> dict[str, list[str]]:
    """The key id every sealed blob names, per table (events: REFERENCED rows apart)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return {
            "objects": [key_id_of(r[0]) for r in conn.execute("SELECT sealed FROM objects WHERE sealed IS NOT NULL")],
            "events": [
                key_id_of(r[0])
                for r in conn.execute("SELECT sealed FROM events WHERE sealed IS NOT NULL AND type != -1")
            ],
            "referenced": [
                key_id_of(r[0])
                for r in conn.execute("SELECT sealed FROM events WHERE sealed IS NOT NULL AND type = -1")
            ],
        }


def _sealed_key_id(db: Path, name: str) -> str:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        (blob,) = conn.execute("SELECT sealed FROM objects WHERE kind='secrets' AND name=?", (name,)).fetchone()
    return key_id_of(blob)


def _admin(stubs: Stubs) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(stubs.channel)


class History:
    """What the test wrote: every version's data by (uid, version), and each
    name's last data (None once deleted)."""

    def __init__(self) -> None:
        self.versions: dict[tuple[str, int], dict[str, bytes]] = {}
        self.latest: dict[str, dict[str, bytes] | None] = {}

    def wrote(self, secret: secret_pb2.Secret, data: dict[str, bytes]) -> None:
        self.versions[(secret.metadata.uid, secret.version)] = data
        self.latest[secret.metadata.name] = data


async def _create(api, history: History, name: str, **fields) -> None:
    data = {"value": secrets.token_bytes(24), "name": name.encode()}
    history.wrote(await api.create(SECRETS.make(name, data=data, **fields)), data)


async def _update(api, history: History, name: str) -> None:
    data = {"value": secrets.token_bytes(24)}
    history.wrote(await api.update(SECRETS.make(name, data=data), ["data"]), data)


async def _delete(api, history: History, name: str) -> None:
    await api.delete(name)
    history.latest[name] = None


# -- reseal -----------------------------------------------------------------------------------


async def test_reseal_with_writers_running_then_the_old_key_removed_and_every_secret_still_readable(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_sqlite, "RESEAL_ROWS", 4)  # many chunks, for writers to get between
    chunks = 0
    reseal_chunk = SqliteStore._reseal_chunk

    def counted(self, *args):
        nonlocal chunks
        result = reseal_chunk(self, *args)
        chunks += 1
        return result

    monkeypatch.setattr(SqliteStore, "_reseal_chunk", counted)
    data = tmp_path / "data"
    key_file, db = data / "encryption.key", data / "satchel.db"
    history = History()

    async with running(pki, data) as server:
        channel = secure_channel(server.address, pki, pki.admin)
        stubs = Stubs.over(channel)
        api, workloads = SECRETS.api(stubs), WORKLOADS.api(stubs)
        # Under the first key: versions in history, REFERENCED rows (a workload
        # mounting secrets), a DELETED event with its last data. (Revision 1 is
        # an account's, so that a watch since revision 1 replays every secret's.)
        await SERVICE_ACCOUNTS.api(stubs).create(SERVICE_ACCOUNTS.make("first"))
        for i in range(40):
            await _create(api, history, f"s{i}")
        for i in range(20):
            await _update(api, history, f"s{i}")
            await _update(api, history, f"s{i}")
        await workloads.create(WORKLOADS.make("w1", node_name="n1", secrets=[f"s{i}" for i in range(5)]))
        await workloads.update(WORKLOADS.make("w1", node_name="n1", secrets=[f"s{i}" for i in range(6)]), ["secrets"])
        await _delete(api, history, "s39")

        old = KeyRing.load(key_file).primary_id
        new = add_key(key_file)
        server.reload()
        before = _sealed_key_ids(db)
        assert all(before[t] and set(before[t]) == {old} for t in before), before

        done = asyncio.Event()
        marks: list[int] = []  # how many reseal chunks had run when each concurrent write returned

        async def writer(w: int) -> None:
            j = 0
            while not done.is_set() or j < 5:
                name = f"new-{w}-{j}"
                await _create(api, history, name)
                marks.append(chunks)
                await _update(api, history, f"s{20 + 3 * w + j % 3}")  # sealed under the old key until resealed
                marks.append(chunks)
                if j < 3:  # a secret of the old key: its blob is copied into the DELETED event
                    await _delete(api, history, f"s{30 + 3 * w + j}")
                    marks.append(chunks)
                if j % 2 == 1:  # a workload: what it mounts is copied into REFERENCED rows
                    mounts = [f"s{(j + w) % 20}", name]
                    await workloads.create(WORKLOADS.make(f"w-{w}-{j}", node_name="n1", secrets=mounts))
                    marks.append(chunks)
                j += 1

        writers = [asyncio.create_task(writer(w)) for w in range(3)]
        await asyncio.sleep(0)  # the writers are under way
        response = await _admin(stubs).ResealSecrets(admin_pb2.ResealSecretsRequest())
        total = chunks
        done.set()
        await asyncio.gather(*writers)
        await channel.close()

        assert response.key_id == new
        # History rows stay (the objects' may be rewritten by the writers first).
        assert response.resealed >= len(before["events"]) + len(before["referenced"])
        between = [m for m in marks if 0 < m < total]
        assert total > 10 and len(set(between)) >= 3, f"writes did not get between reseal chunks: {total}, {marks}"
        after = _sealed_key_ids(db)
        assert {t: set(ids) for t, ids in after.items()} == {t: {new} for t in after}

    # The old key goes; nothing is lost.
    lines = key_file.read_text().splitlines()
    key_file.write_text("".join(f"{line}\n" for line in lines if not line.startswith(f"{old}:")))
    assert KeyRing.load(key_file).ids == (new,)

    async with running(pki, data, bookmark_interval=timedelta(milliseconds=200)) as server:
        channel = secure_channel(server.address, pki, pki.admin)
        stubs = Stubs.over(channel)
        api = SECRETS.api(stubs)
        for name, latest in history.latest.items():
            if latest is None:
                await failure(api.get(name), Code.NOT_FOUND)
            else:
                assert dict((await api.get(name)).data) == hashed(latest), name
        listed, _pages = await api.list_all(page_size=50)
        assert {s.metadata.name for s in listed} >= {n for n, d in history.latest.items() if d is not None}
        revision = (await api.list()).revision

        # All of history, replayed with data: every version, DELETED last states too.
        replay = Watcher.open(stubs, SECRETS, "replay", since_revision=1)
        node_channel = secure_channel(server.address, pki, pki.node)
        node = Watcher.open(Stubs.over(node_channel), SECRETS, "node", since_revision=1)
        try:
            await replay.settle(revision)
            await node.settle(revision)
            assert replay.error is None and node.error is None
            checked = _check_replay(replay, history)
            assert checked["DELETED"] >= 10 and checked["MODIFIED"] >= 40 and checked["ADDED"] >= 40, checked
            # The node's view is built from REFERENCED rows: the secrets its workloads mount.
            assert _check_replay(node, history)["ADDED"] >= 6
        finally:
            await replay.close()
            await node.close()
            await node_channel.close()
            await channel.close()


def _check_replay(watcher: Watcher, history: History) -> dict[str, int]:
    """Every object event's data is the data written for that uid and version."""
    checked = {"ADDED": 0, "MODIFIED": 0, "DELETED": 0}
    for event, obj in zip(watcher.object_events(), watcher.objects, strict=True):
        written = history.versions.get((obj.metadata.uid, obj.version))
        if written is None:
            continue  # a secret the server made (an account's token)
        assert digest(obj.data) == digest(written), f"{watcher.name}: {event}"
        checked[event.type] += 1
    return checked


async def test_reseal_seals_again_when_the_primary_changes_meanwhile(tmp_path, monkeypatch) -> None:
    key_file = tmp_path / "k"
    KeyRing.create_file(key_file)
    store = SqliteStore(tmp_path / "s.db", KeyRing.load(key_file))
    try:
        for i in range(6):
            secret = SECRETS.make(f"s{i}", "default", data={"v": f"s3cr3t-{i}".encode()})
            await store.write(lambda txn, s=secret: txn.put(s))
        add_key(key_file)
        store.set_keyring(KeyRing.load(key_file))
        third = add_key(key_file)
        reseal_chunk = SqliteStore._reseal_chunk
        calls = 0

        def switching(self, *args):
            nonlocal calls
            calls += 1
            if calls == 2:  # a SIGHUP in the middle of the reseal
                self.set_keyring(KeyRing.load(key_file))
            return reseal_chunk(self, *args)

        monkeypatch.setattr(SqliteStore, "_reseal_chunk", switching)
        done = await store.reseal(max_rows=2)
        assert done.key_id == third
        ids = _sealed_key_ids(tmp_path / "s.db")
        assert set(ids["objects"]) == set(ids["events"]) == {third}
        for i in range(6):
            got = await store.get("secrets", "default", f"s{i}")
            assert got is not None and got.data["v"] == f"s3cr3t-{i}".encode()
    finally:
        await store.close()


async def test_reseal_reseals_the_rest_and_names_what_no_key_opens(tmp_path) -> None:
    key_file = tmp_path / "k"
    KeyRing.create_file(key_file)
    store = SqliteStore(tmp_path / "s.db", KeyRing.load(key_file))
    try:
        for name in ("fine", "lost"):
            secret = SECRETS.make(name, "default", data={"v": b"s3cr3t"})
            await store.write(lambda txn, s=secret: txn.put(s))
        with sqlite3.connect(tmp_path / "s.db") as conn:  # a blob of another row: it opens with no key here
            conn.execute("UPDATE objects SET sealed=(SELECT sealed FROM objects WHERE name='fine') WHERE name='lost'")
        new = add_key(key_file)
        store.set_keyring(KeyRing.load(key_file))
        with pytest.raises(DataLoss) as raised:
            await store.reseal()
        assert "default/lost" in str(raised.value) and "s3cr3t" not in str(raised.value)
        assert _sealed_key_id(tmp_path / "s.db", "fine") == new
        assert _sealed_key_ids(tmp_path / "s.db")["events"] == [new, new]
    finally:
        await store.close()


async def test_reseal_is_for_admins_only(server: Server, pki: Pki) -> None:
    channel = secure_channel(server.address, pki, pki.alice)
    try:
        await failure(
            _admin(Stubs.over(channel)).ResealSecrets(admin_pb2.ResealSecretsRequest()), Code.PERMISSION_DENIED
        )
    finally:
        await channel.close()


# -- SIGHUP -----------------------------------------------------------------------------------


async def test_a_reload_seals_new_writes_under_the_new_primary_and_a_bad_file_keeps_the_old_ring(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    key_file, db = data / "encryption.key", data / "satchel.db"
    async with running(pki, data) as server:
        channel = secure_channel(server.address, pki, pki.admin)
        api = SECRETS.api(Stubs.over(channel))
        try:
            old = KeyRing.load(key_file).primary_id
            for name in ("before", "page-a", "page-b"):
                await api.create(SECRETS.make(name, data={"v": b"s3cr3t-" + name.encode()}))
            page = await api.list(page_size=1)
            assert page.next_page_token

            new = add_key(key_file)
            assert _sealed_key_id(db, "before") == old  # nothing changes before the reload
            server.reload()
            await api.create(SECRETS.make("after", data={"v": b"s3cr3t-after"}))
            assert (_sealed_key_id(db, "before"), _sealed_key_id(db, "after")) == (old, new)
            assert dict((await api.get("before")).data) == hashed({"v": b"s3cr3t-before"})
            # Keys derived from the ring (page tokens, audit HMACs) stay those of the start.
            rest, _pages = await api.list_all(page_size=1, page_token=page.next_page_token)
            assert [s.metadata.name for s in rest] == ["page-a", "page-b"]

            # A key file the server would refuse keeps the ring in use, and the log says why.
            add_key(key_file)
            key_file.chmod(0o644)
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="satcheld"):
                server.reload()
            kept = [r.getMessage() for r in caplog.records if "encryption key" in r.getMessage()]
            assert len(kept) == 1 and "kept the old encryption key ring" in kept[0] and "0644" in kept[0], kept
            assert "\n" not in kept[0]
            await api.create(SECRETS.make("still", data={"v": b"s3cr3t-still"}))
            assert _sealed_key_id(db, "still") == new
        finally:
            key_file.chmod(0o600)
            await channel.close()


# -- the key file -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o601, 0o610])
async def test_a_key_file_others_may_access_is_refused_at_start(pki: Pki, tmp_path: Path, mode: int) -> None:
    data = tmp_path / "data"
    config = make_config(pki, data)
    config.encryption_key_file.chmod(mode)
    message = await _refused(config)
    assert str(config.encryption_key_file) in message and f"{mode:04o}" in message and "\n" not in message


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_a_key_file_only_its_owner_may_access_is_accepted(tmp_path: Path, mode: int) -> None:
    KeyRing.create_file(tmp_path / "k")
    (tmp_path / "k").chmod(mode)
    assert KeyRing.load(tmp_path / "k").ids == ("k1",)


@pytest.mark.parametrize(
    ("ids", "says"),
    [
        (["k1", "k2", "k1"], "key id k1 is also on line 2"),
        (["k2", "k2"], "key id k2 is also on line 2"),
        (["k1", "k\x01"], "printable ASCII"),
        (["ké", "k1"], "printable ASCII"),
        (["k 2", "k1"], "printable ASCII"),
        (["k\t2", "k1"], "printable ASCII"),
        (["k\x7f"], "printable ASCII"),
        (["k" * 256], "printable ASCII"),
    ],
)
async def test_a_key_file_with_a_repeated_or_unprintable_id_is_refused_at_start(
    pki: Pki, tmp_path: Path, ids: list[str], says: str
) -> None:
    data = tmp_path / "data"
    config = make_config(pki, data)
    config.encryption_key_file.write_text("# keys\n" + "".join(f"{_key_line(kid)}\n" for kid in ids))
    message = await _refused(config)
    assert str(config.encryption_key_file) in message and says in message and "\n" not in message
    assert not config.db.exists(), "nothing may be opened with a refused key file"


def test_a_refused_key_file_is_one_line_and_exit_2_from_satcheld(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir(mode=0o700)
    KeyRing.create_file(data / "encryption.key")
    (data / "encryption.key").chmod(0o644)
    proc = subprocess.run(
        [satcheld_binary(), "serve", "--dev", "--data-dir", str(data), "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        env=_clean_env(),
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert str(data / "encryption.key") in lines[0] and "0644" in lines[0]
    assert "listening on" not in proc.stdout


def _fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, bool, int]]:
    """Records each fsync: (device, inode, whether a directory, size) of what it synced."""
    synced: list[tuple[int, int, bool, int]] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        real(fd)
        st = os.fstat(fd)
        synced.append((st.st_dev, st.st_ino, stat.S_ISDIR(st.st_mode), st.st_size))

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def _identity(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def test_a_key_file_the_server_creates_is_synced_file_and_directory(tmp_path, monkeypatch) -> None:
    synced = _fsyncs(monkeypatch)
    path = tmp_path / "keys" / "encryption.key"
    path.parent.mkdir()
    KeyRing.create_file(path)
    size = path.stat().st_size
    assert (*_identity(path), False, size) in synced  # the whole file, synced
    assert (*_identity(path.parent), True) in [s[:3] for s in synced]
    assert synced[-1][:3] == (*_identity(path.parent), True)  # its directory entry after it


def test_dev_syncs_the_key_file_it_creates(tmp_path, monkeypatch) -> None:
    synced = _fsyncs(monkeypatch)
    data = tmp_path / "d"
    args = _cli.build_parser().parse_args(["serve", "--dev", "--data-dir", str(data)])
    _cli._dev_config(args)
    key_file = data / "encryption.key"
    assert (*_identity(key_file), False, key_file.stat().st_size) in synced
    assert (*_identity(data), True) in [s[:3] for s in synced]


def test_adding_a_key_replaces_the_file_atomically_and_synced(tmp_path, monkeypatch) -> None:
    path = tmp_path / "encryption.key"
    KeyRing.create_file(path)
    original = path.read_text()
    synced = _fsyncs(monkeypatch)
    kid = add_key(path)

    text = path.read_text()
    assert (*_identity(path), False, path.stat().st_size) in synced  # the new file, whole, before the rename
    assert synced[-1][:3] == (*_identity(tmp_path), True)  # the directory after the rename
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encryption.key"]  # no temporary file left
    old_lines = original.splitlines()
    assert text.splitlines() == [old_lines[0], text.splitlines()[1], *old_lines[1:]]  # comment, new key, old key
    assert KeyRing.load(path).ids == (kid, "k1")


# -- satcheld add-encryption-key ----------------------------------------------------------------


def test_add_encryption_key_puts_a_fresh_primary_first(tmp_path, capsys) -> None:
    path = tmp_path / "encryption.key"
    assert _cli.main(["add-encryption-key", "--encryption-key-file", str(path)]) == 0  # a missing file: made
    assert KeyRing.load(path).ids == ("k1",)
    ids = []
    for _ in range(3):
        capsys.readouterr()
        assert _cli.main(["add-encryption-key", "--encryption-key-file", str(path)]) == 0
        ring = KeyRing.load(path)
        assert ring.ids[1:] == (*ids[::-1], "k1")
        ids.append(ring.primary_id)
        assert f"added key {ring.primary_id}" in capsys.readouterr().out
    assert len(set(ids)) == 3 and all(kid.isascii() and kid.isprintable() and ":" not in kid for kid in ids)
    assert [kid.split("-")[0] for kid in ids] == ["k2", "k3", "k4"]


@pytest.mark.parametrize("problem", ["mode", "duplicate"])
def test_add_encryption_key_refuses_a_file_the_server_would_refuse_and_leaves_it(tmp_path, capsys, problem) -> None:
    path = tmp_path / "encryption.key"
    KeyRing.create_file(path)
    if problem == "mode":
        path.chmod(0o640)
    else:
        path.write_text(path.read_text() + path.read_text().splitlines()[1] + "\n")
    content = path.read_bytes()
    assert _cli.main(["add-encryption-key", "--encryption-key-file", str(path)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and str(path) in err[0], err
    assert path.read_bytes() == content
    with pytest.raises(KeyFileError):
        KeyRing.load(path)


# -- end to end: the commands and the signal ---------------------------------------------------------


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SATCHEL_")}


async def test_add_key_sighup_reseal_then_remove_the_old_key_with_the_real_commands(tmp_path) -> None:
    data = tmp_path / "data"
    key_file, db = data / "encryption.key", data / "satchel.db"
    dev = ("--dev", "--data-dir", str(data), "--listen", "127.0.0.1:0")
    async with satcheld(tmp_path, *dev) as srv:
        async with _channel(srv.exports) as channel:
            api = SECRETS.api(Stubs.over(channel))
            await _accounts(channel).create(SERVICE_ACCOUNTS.make("first"))  # revision 1: not a secret's
            await api.create(SECRETS.make("before", data={"v": b"s3cr3t-before"}))

            added = subprocess.run(
                [satcheld_binary(), "add-encryption-key", "--encryption-key-file", str(key_file)],
                capture_output=True,
                text=True,
                timeout=WAIT,
                env=_clean_env(),
            )
            assert added.returncode == 0, added.stderr
            new = KeyRing.load(key_file).primary_id
            assert new != "k1" and f"added key {new}" in added.stdout
            assert KeyRing.load(key_file).ids == (new, "k1")

            srv.proc.send_signal(signal.SIGHUP)
            await _stderr_says(tmp_path, f"new writes are sealed under key {new}")
            await api.create(SECRETS.make("after", data={"v": b"s3cr3t-after"}))
            assert (_sealed_key_id(db, "before"), _sealed_key_id(db, "after")) == ("k1", new)

            ctl = binary("satchelctl", "`pip install -e .` installs the satchelctl console script")
            env = {**_clean_env(), **srv.exports}
            resealed = subprocess.run([ctl, "admin", "reseal"], capture_output=True, text=True, timeout=WAIT, env=env)
            assert resealed.returncode == 0, resealed.stderr
            said = resealed.stdout.split()
            assert said[:1] == ["re-sealed"] and int(said[1]) >= 2 and said[-1] == new, resealed.stdout
            assert {kid for ids in _sealed_key_ids(db).values() for kid in ids} == {new}
            again = subprocess.run(
                [ctl, "admin", "reseal", "-o", "json"], capture_output=True, text=True, timeout=WAIT, env=env
            )
            assert again.returncode == 0, again.stderr
            assert json.loads(again.stdout) == {"key_id": new}  # nothing left to do: `resealed` 0 is omitted

    key_file.write_text(
        "".join(f"{line}\n" for line in key_file.read_text().splitlines() if not line.startswith("k1:"))
    )
    async with satcheld(tmp_path, *dev) as srv:
        async with _channel(srv.exports) as channel:
            api = SECRETS.api(Stubs.over(channel))
            for name in ("before", "after"):
                assert dict((await api.get(name)).data) == hashed({"v": b"s3cr3t-" + name.encode()})
            replay = Watcher.open(Stubs.over(channel), SECRETS, "replay", since_revision=1)
            try:
                await replay.wait_for(lambda: len(replay.object_events()) >= 2, "both secrets replayed")
                assert [digest(o.data) for o in replay.objects[:2]] == [
                    digest({"v": b"s3cr3t-before"}),
                    digest({"v": b"s3cr3t-after"}),
                ]
            finally:
                await replay.close()
