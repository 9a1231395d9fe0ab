"""Where reads run and how fresh what they leave behind is: every store read
decodes (and decrypts) in a reader thread, never on the event loop, and a Get
whose read races a commit never leaves the older state in the Get cache."""

from __future__ import annotations

import asyncio
import threading

from kinds import SECRETS
from watchkit import Watcher

from satchel.v1 import secret_pb2
from satcheld.store import _sqlite
from satcheld.store._codec import Codec

WAIT = 10.0


async def test_get_list_and_watch_reads_decode_off_the_event_loop(admin, monkeypatch) -> None:
    api = SECRETS.api(admin)
    created = await api.create(SECRETS.make("off-loop"))
    loop_thread = threading.get_ident()
    threads: list[int] = []
    decode = Codec.decode

    def recording(self, *args, **kwargs):
        threads.append(threading.get_ident())
        return decode(self, *args, **kwargs)

    monkeypatch.setattr(Codec, "decode", recording)
    await api.get("off-loop")  # answered from the store: the create response is not a Get
    await api.list()
    initial = Watcher.open(admin, SECRETS, "initial", send_initial=True)
    await initial.next_after(0)
    await initial.close()
    replay = Watcher.open(admin, SECRETS, "replay", since_revision=created.metadata.resource_version - 1)
    await replay.next_after(0)
    await replay.close()

    assert len(threads) >= 4, "each read decoded at least one object"
    assert loop_thread not in threads, "a store read decoded on the event loop"


async def test_a_get_read_before_a_commit_does_not_keep_the_old_state_in_the_cache(admin, monkeypatch) -> None:
    api = SECRETS.api(admin)
    await api.create(SECRETS.make("racing", data={"v": b"old"}))
    reading, release = threading.Event(), threading.Event()
    read_row = _sqlite.SqliteStore._get

    def held_read(self, *args):
        row = read_row(self, *args)  # the state before the update
        reading.set()
        assert release.wait(WAIT)
        return row

    monkeypatch.setattr(_sqlite.SqliteStore, "_get", held_read)
    first = asyncio.ensure_future(admin.secrets.GetSecret(secret_pb2.GetSecretRequest(name="racing")))
    assert await asyncio.to_thread(reading.wait, WAIT)
    monkeypatch.setattr(_sqlite.SqliteStore, "_get", read_row)  # later reads are not held
    await admin.secrets.UpdateSecret(
        secret_pb2.UpdateSecretRequest(secret=SECRETS.make("racing", data={"v": b"new"}))
    )  # committed and published while the first read is held
    release.set()
    assert (await first).secret.version == 1, "the held read answered with the state it read"

    after = await admin.secrets.GetSecret(secret_pb2.GetSecretRequest(name="racing"))
    assert after.secret.version == 2, "the Get cache kept a response older than a published commit"
