"""A fleet storm: right after a restart, 2,000 node agents call WatchSecrets
with send_initial at once, each with its own certificate on its own
connection, at a real `satcheld serve` process. Every stream gets its own
view (its secret and its account's token secret) and SYNCED, none is refused
or cancelled, and the server's memory stays within a bound per stream.

Without the server's pending-request settings, grpc cancels the calls of such
a burst beyond its defaults (1,000 pending; 3,000 hard) before satcheld sees
them. bench/storm.py prints the times to SYNCED and the peak RSS.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import grpc
from conftest import Pki, make_config
from cryptography.hazmat.primitives import serialization
from leaks import LogRecorder, assert_no_leak
from test_serve import _channel, satcheld
from watchkit import free_port

from satchel import pki as satchel_pki
from satchel.v1 import meta_pb2, secret_pb2, secret_pb2_grpc, workload_pb2, workload_pb2_grpc

NODES = 2000
NAMESPACE = "storm"
TOKEN_SECRET = "default-token"  # the `default` account's, which every workload here uses
IN_FLIGHT = 64  # creates at a time while populating (the store commits them in groups)
STORM_BOUND = 90.0  # seconds for every stream's SYNCED; about 7 s on a loaded 2-core machine
# Server growth from just before the burst to its peak, per stream. An idle
# established node stream costs about 100 KiB here (bench/fanout.py, and
# bench/storm.py's peak is the same figure: the burst adds no transient of its
# own); 2.5 times that leaves room for a noisy allocator, while a server that
# held each stream's snapshot or queued the burst unbounded would exceed it.
PEAK_KIB_PER_STREAM = 256


def _secret_name(i: int) -> str:
    return f"s-{i:05d}"


def _data(i: int) -> dict[str, bytes]:
    """Each node's secret its own value, so a view mixed up between nodes shows."""
    return {"username": b"storm", "password": b"storm-password-%06d" % i}


def _digest(data: dict[str, bytes]) -> dict[str, str]:
    # Compared as hashes, so that a failing assert prints no value.
    return {k: hashlib.sha256(v).hexdigest() for k, v in data.items()}


async def _populate(channel: grpc.aio.Channel) -> None:
    """Secret s-i and, on node-i, workload w-i bound to it, for every node."""
    secrets = secret_pb2_grpc.SecretServiceStub(channel)
    workloads = workload_pb2_grpc.WorkloadServiceStub(channel)

    async def create(i: int) -> None:
        meta = meta_pb2.ObjectMeta(namespace=NAMESPACE, name=_secret_name(i))
        await secrets.CreateSecret(
            secret_pb2.CreateSecretRequest(secret=secret_pb2.Secret(metadata=meta, data=_data(i)))
        )
        workload = workload_pb2.Workload(
            metadata=meta_pb2.ObjectMeta(namespace=NAMESPACE, name=f"w-{i:05d}"),
            node_name=f"node-{i:05d}",
            secrets=[_secret_name(i)],
        )
        await workloads.CreateWorkload(workload_pb2.CreateWorkloadRequest(workload=workload))

    await create(0)  # alone: its workload creates the `default` account the others then use
    pending = iter(range(1, NODES))

    async def worker() -> None:
        for i in pending:
            await create(i)

    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))


def _node_credentials(certs: Path) -> list[grpc.ChannelCredentials]:
    """node-i's certificate for every node, signed by the dev CA; one key for
    them all, since 2,000 key generations would cost more than the signatures."""
    ca_cert, ca_key = satchel_pki.load_ca(certs)
    key = satchel_pki.generate_key()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    root = (certs / "ca.crt").read_bytes()
    prefix = f"spiffe://{satchel_pki.trust_domain_of(ca_cert)}/node/"
    credentials = []
    for i in range(NODES):
        cert = satchel_pki.sign(
            ca_cert, ca_key, key.public_key(), spiffe_id=f"{prefix}node-{i:05d}", ttl=timedelta(hours=1)
        )
        chain = cert.public_bytes(serialization.Encoding.PEM)
        credentials.append(grpc.ssl_channel_credentials(root, private_key=key_pem, certificate_chain=chain))
    return credentials


@dataclass
class Stream:
    node: int
    channel: grpc.aio.Channel
    call: grpc.aio.UnaryStreamCall
    added: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> data digests
    synced_after: float = -1.0  # seconds from the burst's start
    error: str = ""

    def right_view(self) -> bool:
        own = _secret_name(self.node)
        return self.added.keys() == {own, TOKEN_SECRET} and self.added[own] == _digest(_data(self.node))


async def _until_synced(stream: Stream, t0: float) -> None:
    try:
        async for event in stream.call:
            if event.type == meta_pb2.EVENT_TYPE_ADDED:
                stream.added[event.secret.metadata.name] = _digest(event.secret.data)
            elif event.type == meta_pb2.EVENT_TYPE_SYNCED:
                stream.synced_after = time.perf_counter() - t0
                return
        stream.error = "ended before SYNCED"
    except grpc.aio.AioRpcError as error:
        stream.error = f"{error.code().name}: {error.details()}"


def _status_kib(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {name} in /proc/{pid}/status")


async def test_two_thousand_nodes_watching_at_once_after_a_restart_are_all_served(tmp_path: Path, pki: Pki) -> None:
    data = tmp_path / "data"
    args = ("--dev", "--data-dir", str(data), "--listen", f"127.0.0.1:{free_port()}")
    async with satcheld(tmp_path, *args) as first:
        async with _channel(first.exports) as admin:
            await _populate(admin)
    credentials = _node_credentials(data / "certs")

    # The restart: the graph is rebuilt from the store, no connection survives.
    async with satcheld(tmp_path, *args) as server:
        pid = server.proc.pid
        rss_before = _status_kib(pid, "VmRSS")
        request = secret_pb2.WatchSecretsRequest(namespace=NAMESPACE, send_initial=True)
        t0 = time.perf_counter()
        streams = []
        for i, c in enumerate(credentials):
            # A connection per agent: a local subchannel pool keeps grpc from sharing one.
            channel = grpc.aio.secure_channel(server.address, c, options=[("grpc.use_local_subchannel_pool", 1)])
            streams.append(Stream(i, channel, secret_pb2_grpc.SecretServiceStub(channel).WatchSecrets(request)))
        try:
            readers = [asyncio.create_task(_until_synced(s, t0)) for s in streams]
            _, late = await asyncio.wait(readers, timeout=STORM_BOUND)
            peak = _status_kib(pid, "VmHWM")  # the high-water mark since the restart
            for task in late:
                task.cancel()
            failed = [s.error for s in streams if s.error]
            assert not failed, f"{len(failed)} of {NODES} streams failed, e.g. {sorted(set(failed))[:3]}"
            assert not late, f"{len(late)} of {NODES} streams had no SYNCED within {STORM_BOUND:.0f} s"
            wrong = [s.node for s in streams if not s.right_view()]
            assert not wrong, f"{len(wrong)} nodes saw other objects than their own, e.g. node {wrong[0]}"
            ended = [s.node for s in streams if s.call.done()]
            assert not ended, f"{len(ended)} streams were ended once synced, e.g. node {ended[0]}"
            growth = peak - rss_before
            assert growth < NODES * PEAK_KIB_PER_STREAM, f"satcheld grew {growth} KiB for {NODES} streams"
            times = sorted(s.synced_after for s in streams)
            print(
                f"{NODES} streams synced: p50 {times[NODES // 2]:.2f} s, p99 {times[NODES * 99 // 100]:.2f} s, "
                f"max {times[-1]:.2f} s; satcheld {rss_before // 1024} MiB before, peak {peak // 1024} MiB"
            )
        finally:
            for s in streams:
                s.call.cancel()
            await asyncio.gather(*(s.channel.close() for s in streams), return_exceptions=True)

    # No secret value in the audit log or in what either process logged. The
    # check reads the database, key ring and audit log of a config, which for
    # the --dev layout make_config names alike (the rest of it is not used).
    logs = LogRecorder()
    logs.lines = [p.read_text(errors="replace") for p in tmp_path.glob("satcheld-*.stderr")]
    assert_no_leak(make_config(pki, data), logs)
