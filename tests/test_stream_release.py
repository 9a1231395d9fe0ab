"""Streams that go away are freed: a real `satcheld` process whose Watch streams
are opened and cancelled by the thousand comes back near its memory after a
warm-up (a streaming handler that swallowed CancelledError would leak native
memory per call, grpc issue 43360; a subscription or quota slot kept would
grow the hub), and a connection replaced at its maximum age loses no watch event.

No sleeps: every wait is on an event or polls a condition under a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import json
import logging
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from conftest import secure_channel
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kinds import SECRETS
from test_serve import satcheld
from watchkit import MODIFIED, Watcher, check_stream, running, until

import satchel.pki
from satchel import AsyncClient
from satchel.v1 import secret_pb2, secret_pb2_grpc, workload_pb2, workload_pb2_grpc
from satcheld.auth import NODE, USER, Principal

WAIT = 30.0  # seconds: the bound for what should happen at once, on a loaded machine
CHANNELS = 4
ALICE = Principal(USER, "alice")
BATCH = 250  # streams open at once


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


def _node_channel(address: str, certs: Path) -> grpc.aio.Channel:
    crt, key = satchel.pki.issue(certs, "node", "n1")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.crt").read_bytes(),
        private_key=Path(key).read_bytes(),
        certificate_chain=Path(crt).read_bytes(),
    )
    return grpc.aio.secure_channel(address, credentials)


def _completed_watches(audit_log: Path) -> int:
    """Watch calls whose final record is written: the server has let them go."""
    count = 0
    with audit_log.open() as f:
        for line in f:
            record = json.loads(line)
            count += record["method"].endswith("/WatchWorkloads") and record["stage"] == "completed"
    return count


async def _open_and_cancel(stubs: list[workload_pb2_grpc.WorkloadServiceStub], n: int) -> None:
    """Opens `n` WatchWorkloads streams, BATCH at a time spread over the channels; each
    is cancelled once its first event (BOOKMARK) shows that the server's handler runs."""

    async def one(i: int) -> None:
        call = stubs[i % len(stubs)].WatchWorkloads(workload_pb2.WatchWorkloadsRequest())
        try:
            first = await asyncio.wait_for(call.read(), WAIT)
            assert first is not grpc.aio.EOF, f"stream {i} ended before its first event: {await call.code()}"
        finally:
            call.cancel()

    for start in range(0, n, BATCH):
        await asyncio.gather(*(one(i) for i in range(start, min(n, start + BATCH))))


async def test_five_thousand_cancelled_watches_leave_the_server_near_its_baseline(tmp_path) -> None:
    data = tmp_path / "data"
    async with satcheld(
        tmp_path,
        "--dev",
        "--data-dir",
        str(data),
        "--listen",
        "127.0.0.1:0",
        "--max-streams-per-connection",
        "1000",
        # Far below the 6,000 streams opened, far above the 250 open at once (a cancel reaches the
        # server a moment after the client's call returns): a slot not given back refuses the rest.
        "--max-watch-streams-per-principal",
        "1000",
    ) as server:
        channels = [_node_channel(server.address, data / "certs") for _ in range(CHANNELS)]
        try:
            stubs = [workload_pb2_grpc.WorkloadServiceStub(ch) for ch in channels]
            audit_log = data / "audit.log"
            started = time.monotonic()

            await _open_and_cancel(stubs, 1000)  # warm-up: allocator pools, grpc's caches, code paths
            await until(lambda: _completed_watches(audit_log) >= 1000, "1,000 warm-up watches let go")
            baseline = _rss_kib(server.proc.pid)

            await _open_and_cancel(stubs, 5000)
            await until(lambda: _completed_watches(audit_log) >= 6000, "6,000 watches let go")
            after = _rss_kib(server.proc.pid)
            elapsed = time.monotonic() - started
        finally:
            for ch in channels:
                await ch.close()

    growth = after - baseline
    print(f"RSS {baseline} KiB after warm-up, {after} KiB after 5,000 more ({growth:+} KiB) in {elapsed:.1f} s")
    # A subscription kept (with its generators) is some 1.5 KiB, 7-8 MiB for 5,000; what grows
    # with no leak, on this shared 2-core machine, was 0.5-1.6 MiB. A swallowed CancelledError
    # leaks less (some 0.4 KiB per call): the test below catches that one directly.
    assert growth < 5 * 1024, f"RSS grew {growth} KiB over 5,000 cancelled watches"


# A client that opens two watches, says so, and waits to be killed.
_CLIENT = """
import asyncio, sys
from pathlib import Path
import grpc
from satchel.v1 import workload_pb2, workload_pb2_grpc

async def main(address, ca, crt, key):
    credentials = grpc.ssl_channel_credentials(
        Path(ca).read_bytes(), Path(key).read_bytes(), Path(crt).read_bytes()
    )
    channel = grpc.aio.secure_channel(address, credentials)
    stub = workload_pb2_grpc.WorkloadServiceStub(channel)
    calls = [stub.WatchWorkloads(workload_pb2.WatchWorkloadsRequest()) for _ in range(2)]
    for call in calls:
        await call.read()
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main(*sys.argv[1:]))
"""


async def test_streams_of_a_client_that_dies_are_let_go(tmp_path) -> None:
    """Not cancelled: the client process is killed, and its connection breaks."""
    data = tmp_path / "data"
    async with satcheld(
        tmp_path, "--dev", "--data-dir", str(data), "--listen", "127.0.0.1:0", "--max-watch-streams-per-principal", "2"
    ) as server:
        certs = data / "certs"
        crt, key = satchel.pki.issue(certs, "node", "n1")
        for attempt in range(1, 4):  # a slot not given back would refuse the next client
            client = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _CLIENT,
                server.address,
                str(certs / "ca.crt"),
                crt,
                key,
                stdout=asyncio.subprocess.PIPE,
            )
            try:
                line = await asyncio.wait_for(client.stdout.readline(), WAIT)
                assert line == b"ready\n", f"the client said {line!r} (exit code {client.returncode})"
            finally:
                client.kill()
                await client.wait()
            await until(lambda n=2 * attempt: _completed_watches(data / "audit.log") >= n, "broken streams let go")
        records = [json.loads(line) for line in (data / "audit.log").read_text().splitlines()]
        ends = {r["code"] for r in records if r["method"].endswith("WatchWorkloads") and r["stage"] == "completed"}
        assert ends == {"CANCELLED"}, ends


# -- every streaming handler lets cancellation through ------------------------------------------


class _Cancellations(logging.Handler):
    """grpc.aio logs "RPC cancelled for servicer method [M]" (at DEBUG) when a
    handler's task ends with the CancelledError it was sent; a handler that
    swallowed it returns normally instead, and grpc then sends a status on the
    cancelled call, leaking that batch's native memory (grpc issue 43360)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.methods: list[str] = []
        self.changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("RPC cancelled for servicer method"):
            self.methods.append(message.rpartition("[")[2].rstrip("]"))
            self.changed.set()

    async def wait_for(self, method: str) -> None:
        async with asyncio.timeout(WAIT):
            while method not in self.methods:
                self.changed.clear()
                await self.changed.wait()


@contextlib.contextmanager
def _cancellations() -> Iterator[_Cancellations]:
    handler = _Cancellations()
    logger = logging.getLogger("grpc._cython.cygrpc")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# Server-streaming handlers only. A bidirectional one (reflection) is told of a cancel as the end
# of its requests (grpc.aio's read() returns EOF), so it returns normally whatever the guard does:
# grpc's own leak of issue 43360, beyond the handler's reach (reflection streams are few and short).
@pytest.mark.parametrize("method", ["/satchel.v1.SecretService/WatchSecrets", "/grpc.health.v1.Health/Watch"])
async def test_a_cancelled_stream_ends_its_handler_with_the_cancellation(server, pki, method: str) -> None:
    channel = secure_channel(server.address, pki, pki.node)
    try:
        with _cancellations() as cancellations:
            if "Health" in method:
                call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            else:
                call = secret_pb2_grpc.SecretServiceStub(channel).WatchSecrets(secret_pb2.WatchSecretsRequest())
            assert await asyncio.wait_for(call.read(), WAIT) is not grpc.aio.EOF  # the handler runs, then waits
            call.cancel()
            await cancellations.wait_for(method)
    finally:
        await channel.close()
    assert server.hub.streams() == 0
    assert server.quota.open(Principal(NODE, "n1")) == 0


# -- connections replaced at their maximum age ---------------------------------------------------


def _watch_starts(audit_log: Path, method: str) -> int:
    with audit_log.open() as f:
        return sum(1 for line in f if (r := json.loads(line))["method"] == method and r["stage"] == "started")


async def test_a_watch_survives_its_connection_being_replaced_without_losing_or_repeating_events(pki, tmp_path) -> None:
    """At the maximum age grpc sends GOAWAY; after the grace it closes the connection, and
    the streams still open end UNAVAILABLE: the client's watch resumes from its last
    revision on a new connection. Writes go on throughout, until the watch has been
    cut over at least twice."""
    async with running(
        pki,
        tmp_path / "data",
        max_connection_age=timedelta(seconds=1),
        max_connection_age_grace=timedelta(milliseconds=500),
    ) as server:
        writer, reader = (
            AsyncClient(server=server.address, ca=pki.ca, cert=pki.admin.cert, key=pki.admin.key) for _ in range(2)
        )
        try:
            created = await writer.create_secret("s", data={"n": b"0"})
            consumer = Watcher.consume(reader.watch_secrets(since_revision=created.metadata.resource_version), SECRETS)
            written = []
            method = "/satchel.v1.SecretService/WatchSecrets"
            deadline = time.monotonic() + WAIT
            while _watch_starts(server.config.audit_log, method) < 3:  # the first stream and two resumes
                assert time.monotonic() < deadline, "the watch was not cut over twice"
                updated = await writer.update_secret("s", data={"n": str(len(written) + 1).encode()})
                written.append(updated.metadata.resource_version)
                await consumer.reach(updated.metadata.resource_version)
            await consumer.close()
        finally:
            await writer.close()
            await reader.close()

    events = consumer.object_events()
    assert [e.revision for e in events] == written, "each write seen once, in order"
    assert all(e.type == MODIFIED for e in events)
    check_stream(consumer.events, "cut over")
    # The server saw each cut as a cancel (its connection went away); the client, as UNAVAILABLE,
    # the one error after which it resumes rather than gives up.
    assert _watch_starts(server.config.audit_log, method) >= 3


# -- a stream cancelled while its response waits to be sent ---------------------------------------


def _handlers_waiting_to_send() -> int:
    """Streams whose guard (api/_guard.py) is suspended at a `yield`, not at an await:
    grpc holds its response and waits for the reader's flow-control window."""
    return sum(
        1
        for o in gc.get_objects()
        if inspect.isasyncgen(o) and o.__name__ == "guarded" and o.ag_frame is not None and o.ag_await is None
    )


async def test_a_stream_cancelled_while_its_reader_stalls_is_let_go_at_once(pki, tmp_path) -> None:
    """grpc drops, without closing it, a handler whose call is cancelled while it waits
    to send: unless the guard lets it go when the call ends, it holds its subscription,
    buffer and quota slot until a garbage collection happens to find it."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "policy.yaml").write_text(
        "admins: [admin]\n"
        "rules:\n"
        '  - {subjects: ["user:alice"], namespaces: [big], resources: [secrets], verbs: [watch, read-data]}\n'
    )
    async with running(pki, data) as server:
        admin, alice = (secure_channel(server.address, pki, who) for who in (pki.admin, pki.alice))
        try:
            secrets = secret_pb2_grpc.SecretServiceStub(admin)
            for i in range(16):  # 14 MiB: more than grpc's windows let through unread
                secret = SECRETS.make(f"s{i}", namespace="big", data={"k": bytes([i + 1]) * 900_000})
                await secrets.CreateSecret(secret_pb2.CreateSecretRequest(secret=secret))
            call = secret_pb2_grpc.SecretServiceStub(alice).WatchSecrets(
                secret_pb2.WatchSecretsRequest(namespace="big", send_initial=True)
            )
            assert await asyncio.wait_for(call.read(), WAIT) is not grpc.aio.EOF  # then it reads no more
            await until(lambda: _handlers_waiting_to_send() == 1, "the stream waiting to send")
            assert server.quota.open(ALICE) == 1

            call.cancel()
            await until(lambda: server.quota.open(ALICE) == 0 and server.hub.streams() == 0, "the stream let go")
            await until(lambda: _completed(server.config.audit_log) == ["CANCELLED"], "its end recorded")
        finally:
            await admin.close()
            await alice.close()
    assert _completed(server.config.audit_log) == ["CANCELLED"], "recorded once"


def _completed(audit_log: Path) -> list[str]:
    records = map(json.loads, audit_log.read_text().splitlines())
    return [r["code"] for r in records if r["method"].endswith("/WatchSecrets") and r["stage"] == "completed"]
