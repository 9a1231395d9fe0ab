"""A Watch's initial part (a snapshot, or a replay of history) goes through the
stream's bounded buffer and is read from the store in chunks: streams that
stop reading in the middle of a large view hold a chunk each, not the view,
and a bounded number of them read at once, a stalled one cut off so that the
others get their turn.

The memory tests run satcheld as a real process and read its VmRSS from
/proc, so that nothing of the test's own (the client's buffers) is counted."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
import test_watch_history as history
from conftest import Identity, Pki, Stubs
from failures import digest, parse
from kinds import SECRETS
from test_serve import satcheld
from watchkit import ADDED, SYNCED, WAIT, Channels, Watcher, running, until

from satchel.v1 import meta_pb2, secret_pb2
from satcheld.store._reading import SqliteReading
from satcheld.watch import _bindings, _hub

MIB = 1024 * 1024
BIG = 1000 * 1024  # under the 1 MiB limit of a whole secret
SECRETS_IN_VIEW = 12  # 12 MiB of data in the view
STALLED = 4
# What four stalled streams may add to the server: a chunk of the initial part
# each (about 1 MiB, a secret here), the message grpc is sending and the one
# it has queued, with room for the allocator's slack. Before the initial part
# was read in chunks, each such stream held the whole view, decrypted and
# decoded (the 12 MiB twice over, briefly), and four of them grew the server
# by about 90 MiB here (since: 8-10 MiB, replays 10-24 MiB).
GROWTH_BOUND = 32 * MIB
SAMPLES = 15  # RSS read this many times while the streams stall
# The client's transport would otherwise grow its window (BDP probing) and take
# in most of a 12 MiB view unread; without it the server's writes wait.
NO_BDP = [("grpc.http2.bdp_probe", 0)]


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def big_secret(i: int) -> secret_pb2.Secret:
    # Each secret's bytes differ, so no layer can share or compress them away.
    blob = bytes((i * 7 + j) % 251 for j in range(251)) * (BIG // 251)
    return secret_pb2.Secret(metadata=meta_pb2.ObjectMeta(namespace="large", name=f"big-{i:02}"), data={"blob": blob})


async def _stalled_streams_hold_a_bounded_share(tmp_path: Path, request: dict) -> None:
    data = tmp_path / "data"
    async with satcheld(tmp_path, "--dev", "--data-dir", str(data), "--listen", "127.0.0.1:0") as srv:
        certs = data / "certs"
        admin_identity = Identity(certs / "admin.crt", certs / "admin.key")
        channels = Channels(Pki(certs, certs / "ca.crt", *[admin_identity] * 6))
        try:
            admin = channels.stubs(srv.address, admin_identity)
            marker = await SECRETS.api(admin).create(SECRETS.make("marker", namespace="other"))
            expected = {}
            for i in range(SECRETS_IN_VIEW):
                secret = big_secret(i)
                expected[secret.metadata.name] = digest(secret.data)
                await admin.secrets.CreateSecret(secret_pb2.CreateSecretRequest(secret=secret))
            if request.get("since_revision"):
                request = {"since_revision": marker.metadata.resource_version}

            # A whole reading first, so that what any read allocates once is in the baseline.
            warm = Stalled(admin, namespace="large", **request)
            assert await warm.rest() == expected
            baseline = rss(srv.proc.pid)

            stalled = [
                Stalled(channels.stubs(srv.address, admin_identity, options=NO_BDP), namespace="large", **request)
                for _ in range(STALLED)
            ]
            for stream in stalled:
                await stream.first()  # then the client reads no more
            peak = baseline
            for _ in range(SAMPLES):
                peak = max(peak, rss(srv.proc.pid))
                await asyncio.sleep(0.2)  # a sampling period, not a wait for anything
            growth = peak - baseline
            print(f"\nserver RSS {baseline / MIB:.1f} MiB, +{growth / MIB:.1f} MiB with {STALLED} stalled streams")
            assert growth <= GROWTH_BOUND, (
                f"{STALLED} streams stalled in a {SECRETS_IN_VIEW * BIG // MIB} MiB initial part grew the server"
                f" by {growth / MIB:.1f} MiB (bound {GROWTH_BOUND / MIB:.0f} MiB)"
            )
            # They were stalled in the middle, not done: each still gets the whole view, intact.
            for stream in stalled:
                assert await stream.rest() == expected
        finally:
            await channels.close()


class Stalled:
    """A raw WatchSecrets call whose reader takes one response, then none until `rest`."""

    def __init__(self, stubs: Stubs, **request) -> None:
        self.call = stubs.secrets.WatchSecrets(secret_pb2.WatchSecretsRequest(**request))
        self.replay = not request.get("send_initial")
        self.seen: dict[str, dict[str, str]] = {}  # name -> data hashes
        self.synced = False

    async def first(self) -> None:
        await self._read()

    async def _read(self) -> None:
        response = await asyncio.wait_for(self.call.read(), WAIT)
        assert response is not grpc.aio.EOF, "the stream ended"
        if response.type == meta_pb2.EVENT_TYPE_SYNCED:
            self.synced = True
        elif response.type != meta_pb2.EVENT_TYPE_BOOKMARK:
            self.seen[response.secret.metadata.name] = digest(response.secret.data)

    async def rest(self) -> dict[str, dict[str, str]]:
        """The data of every object of the view: a snapshot's up to SYNCED, a replay's twelve."""
        while not (len(self.seen) == SECRETS_IN_VIEW if self.replay else self.synced):
            await self._read()
        self.call.cancel()
        return self.seen


async def test_stalled_send_initial_streams_over_large_secrets_keep_the_server_bounded(tmp_path) -> None:
    await _stalled_streams_hold_a_bounded_share(tmp_path, {"send_initial": True})


async def test_stalled_replays_of_large_secrets_keep_the_server_bounded(tmp_path) -> None:
    await _stalled_streams_hold_a_bounded_share(tmp_path, {"since_revision": 1})


# -- in-process: every chunk as small as it gets, the cap, the cut-off of a stalled stream ------------


@pytest.fixture
def one_object_chunks(monkeypatch) -> None:
    """Every chunk of an initial part holds one object (snapshots, node
    snapshots) or one revision (replays), so that chunk boundaries fall
    everywhere the randomized checkers look."""
    monkeypatch.setattr(_hub, "CHUNK_BYTES", 1)
    monkeypatch.setattr(_hub, "CHUNK_ROWS", 3)  # a chunk ends at its bytes, or at its rows looked at
    monkeypatch.setattr(_bindings, "CHUNK_KEYS", 1)
    reads: list[int] = []  # objects per chunk read, snapshots and node snapshots
    objects, keys = SqliteReading.objects, SqliteReading.keys

    async def counted_objects(self, *args, **kwargs):
        found, after = await objects(self, *args, **kwargs)
        reads.append(len(found))
        return found, after

    async def counted_keys(self, *args, **kwargs):
        found, read = await keys(self, *args, **kwargs)
        reads.append(len(found))
        return found, read

    monkeypatch.setattr(SqliteReading, "objects", counted_objects)
    monkeypatch.setattr(SqliteReading, "keys", counted_keys)
    yield
    assert reads.count(1) >= 5 and max(reads) == 1, f"the snapshots were not read an object at a time: {reads[:20]}"


async def test_the_history_checker_holds_with_one_object_chunks(pki, tmp_path, one_object_chunks) -> None:
    await history.test_every_watcher_sees_the_committed_history_filtered_to_its_view(pki, tmp_path, history.SEEDS[0])


async def test_the_node_view_checker_holds_with_one_object_chunks(pki, tmp_path, one_object_chunks) -> None:
    await history.test_every_node_stream_sees_the_changes_of_its_view_in_the_committed_history(
        pki, tmp_path, history.SEEDS[1]
    )


STALL = 1.5  # seconds


async def test_streams_wait_their_turn_and_a_stalled_one_is_cut_off(pki, tmp_path) -> None:
    """With one initial part read at a time, a second send_initial waits (it is
    not refused) while a first one is stalled, and is served once the first,
    having taken nothing for STALL seconds, is cut off with
    WATCH_BUFFER_OVERFLOW. The first learns it when it reads again."""
    async with running(
        pki, tmp_path / "data", max_initial_snapshots=1, initial_snapshot_stall=timedelta(seconds=STALL)
    ) as server:
        channels = Channels(pki)
        try:
            admin = channels.stubs(server.address, pki.admin)
            for i in range(4):  # more than grpc takes in unread through a 64 KiB window
                await admin.secrets.CreateSecret(secret_pb2.CreateSecretRequest(secret=big_secret(i)))
            stalled = Stalled(channels.stubs(server.address, pki.admin, options=NO_BDP), send_initial=True)
            await stalled.first()
            assert server.hub is not None and server.hub.initials.reading == 1

            opened = time.monotonic()
            second = Watcher.open(channels.stubs(server.address, pki.admin), SECRETS, "second", send_initial=True)
            await second.wait_for(lambda: any(e.type == SYNCED for e in second.events), "SYNCED", STALL + WAIT)
            waited = time.monotonic() - opened
            assert [e.type for e in second.events].count(ADDED) == 4
            assert waited >= STALL * 0.9, f"the second stream was served after {waited:.2f} s, not after its turn"
            await second.close()

            with pytest.raises(grpc.aio.AioRpcError) as cut:
                await stalled.rest()
            failure = parse(cut.value)
            assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert failure.info.reason == "WATCH_BUFFER_OVERFLOW"
            assert "initial events" in failure.message
            assert server.hub.initials.reading == 0
        finally:
            await channels.close()


async def test_a_cancelled_initial_part_frees_its_turn(pki, tmp_path) -> None:
    """A stream cancelled in the middle of its snapshot gives its turn (and its
    read transaction) back at once, so the next one does not wait for a cut-off."""
    async with running(
        pki, tmp_path / "data", max_initial_snapshots=1, initial_snapshot_stall=timedelta(hours=1)
    ) as server:
        channels = Channels(pki)
        try:
            admin = channels.stubs(server.address, pki.admin)
            for i in range(4):
                await admin.secrets.CreateSecret(secret_pb2.CreateSecretRequest(secret=big_secret(i)))
            for round in range(3):
                stalled = Stalled(channels.stubs(server.address, pki.admin, options=NO_BDP), send_initial=True)
                await stalled.first()
                stalled.call.cancel()
                after = Watcher.open(admin, SECRETS, f"after-{round}", send_initial=True)
                await after.wait_for(lambda w=after: any(e.type == SYNCED for e in w.events), "SYNCED")
                await after.close()
        finally:
            await channels.close()


async def test_a_principal_waits_for_its_own_share_of_the_turns(pki, tmp_path) -> None:
    """With turns to spare but a share of one per principal, alice's second
    send_initial waits (it is not refused) while her first is stalled, and bob's
    is served at once: one principal's stalled streams cannot hold every turn.
    Hers is served once her first gives its turn back. Admins are exempt."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "policy.yaml").write_text(
        "admins: [admin]\n"
        "rules:\n"
        '  - {subjects: ["user:alice", "user:bob"], namespaces: [large], resources: [secrets],'
        " verbs: [watch, read-data]}\n"
    )
    async with running(
        pki, data, max_initial_snapshots=16, max_initial_snapshots_per_principal=1,
        initial_snapshot_stall=timedelta(hours=1),
    ) as server:  # fmt: skip
        channels = Channels(pki)
        try:
            admin = channels.stubs(server.address, pki.admin)
            for i in range(4):  # more than grpc takes in unread through a 64 KiB window
                await admin.secrets.CreateSecret(secret_pb2.CreateSecretRequest(secret=big_secret(i)))
            alice = channels.stubs(server.address, pki.alice, options=NO_BDP)
            stalled = Stalled(alice, namespace="large", send_initial=True)
            await stalled.first()
            assert server.hub is not None and server.hub.initials.reading == 1

            second = Watcher.open(alice, SECRETS, "alice-second", namespace="large", send_initial=True)
            await until(lambda: server.hub.initials.waiting == 1, "alice's second stream waiting for her turn")
            bob = channels.stubs(server.address, pki.identity("user", "bob"))
            other = Watcher.open(bob, SECRETS, "bob", namespace="large", send_initial=True)
            await other.wait_for(lambda: any(e.type == SYNCED for e in other.events), "SYNCED")
            assert [e.type for e in other.events].count(ADDED) == 4
            await other.close()
            assert not second.events and server.hub.initials.waiting == 1
            # Admins have no share, as they have no quota: a stalled one does not hold up the next.
            admin_stalled = Stalled(channels.stubs(server.address, pki.admin, options=NO_BDP), send_initial=True)
            await admin_stalled.first()
            next_ = Watcher.open(admin, SECRETS, "admin-next", namespace="large", send_initial=True)
            await next_.wait_for(lambda: any(e.type == SYNCED for e in next_.events), "SYNCED")
            await next_.close()
            admin_stalled.call.cancel()

            stalled.call.cancel()
            await second.wait_for(lambda: any(e.type == SYNCED for e in second.events), "SYNCED")
            assert [e.type for e in second.events].count(ADDED) == 4
            await second.close()
            await until(lambda: server.hub.initials.reading == 0, "every turn given back")
        finally:
            await channels.close()


async def test_the_initial_snapshot_flags_reach_the_server(tmp_path, monkeypatch) -> None:
    """`--max-initial-snapshots`, `--max-initial-snapshots-per-principal` and
    `--initial-snapshot-stall` (and their SATCHEL_ variables) configure the
    running server."""
    from satcheld._cli import _dev_config, build_parser

    args = build_parser().parse_args(
        ["serve", "--dev", "--data-dir", str(tmp_path / "d"), "--max-initial-snapshots", "3",
         "--max-initial-snapshots-per-principal", "2", "--initial-snapshot-stall", "5s"]
    )  # fmt: skip
    config = _dev_config(args)
    assert (config.max_initial_snapshots, config.initial_snapshot_stall) == (3, timedelta(seconds=5))
    assert config.max_initial_snapshots_per_principal == 2
    defaults = _dev_config(build_parser().parse_args(["serve", "--dev", "--data-dir", str(tmp_path / "d")]))
    assert (defaults.max_initial_snapshots, defaults.initial_snapshot_stall) == (16, timedelta(seconds=30))
    assert defaults.max_initial_snapshots_per_principal == 4
    monkeypatch.setenv("SATCHEL_MAX_INITIAL_SNAPSHOTS", "7")
    monkeypatch.setenv("SATCHEL_MAX_INITIAL_SNAPSHOTS_PER_PRINCIPAL", "5")
    monkeypatch.setenv("SATCHEL_INITIAL_SNAPSHOT_STALL", "1m")
    from_env = _dev_config(build_parser().parse_args(["serve", "--dev", "--data-dir", str(tmp_path / "d")]))
    assert (from_env.max_initial_snapshots, from_env.initial_snapshot_stall) == (7, timedelta(minutes=1))
    assert from_env.max_initial_snapshots_per_principal == 5
