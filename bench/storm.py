"""A fleet storm: a real `satcheld serve --dev` restarted, then --nodes node
agents' WatchSecrets(send_initial) calls arriving at once, each from a node of
its own on a connection of its own. Prints the time from the start of the
burst to each stream's SYNCED (p50/p99/max), the streams refused, cancelled
or shown the wrong objects (all should be 0), the server's RSS before the
burst, at its peak (VmHWM, the kernel's high-water mark since the restart)
and once every stream is synced. Not a test.

Before the first round the admin creates, for each node node-i, a secret s-i
and a workload w-i on that node bound to it (and to the namespace's `default`
account, whose token secret the node sees too), and the bench signs a
certificate per node with the dev CA. Each round restarts satcheld on the same
port and data directory (the graph is rebuilt from the store, as after a real
restart) and then opens every channel and call in one go.

    .venv/bin/python bench/storm.py [--nodes 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import pathlib
import platform
import shutil
import statistics
import tempfile
import time

# This script's directory is on sys.path.
import _harness
import grpc
from _harness import DATA, Server, call_all, client_seconds, load, own_channel, percentile, process_seconds, rss_kib

from satchel.v1 import meta_pb2, secret_pb2, secret_pb2_grpc, workload_pb2, workload_pb2_grpc

NAMESPACE = "storm"
TOKEN_SECRET = "default-token"  # the `default` account's, which every workload here uses
SYNCED = meta_pb2.EVENT_TYPE_SYNCED
ADDED = meta_pb2.EVENT_TYPE_ADDED


def node_name(i: int) -> str:
    return f"node-{i:05d}"


def secret_data(i: int) -> dict[str, bytes]:
    """Each node's secret its own value, so that a view mixed up between nodes shows."""
    return {**DATA, "password": DATA["password"][:-6] + b"%06d" % i}


async def populate(channel: grpc.aio.Channel, nodes: int) -> None:
    """Secret s-i and workload w-i (on node-i, bound to s-i) for every node."""
    secrets = secret_pb2_grpc.SecretServiceStub(channel)
    workloads = workload_pb2_grpc.WorkloadServiceStub(channel)

    def secret(i: int):
        meta = meta_pb2.ObjectMeta(namespace=NAMESPACE, name=f"s-{i:05d}")
        request = secret_pb2.CreateSecretRequest(secret=secret_pb2.Secret(metadata=meta, data=secret_data(i)))
        return lambda: secrets.CreateSecret(request)

    def workload(i: int):
        w = workload_pb2.Workload(
            metadata=meta_pb2.ObjectMeta(namespace=NAMESPACE, name=f"w-{i:05d}"),
            node_name=node_name(i),
            secrets=[f"s-{i:05d}"],
        )
        return lambda: workloads.CreateWorkload(workload_pb2.CreateWorkloadRequest(workload=w))

    await call_all(secret(i) for i in range(nodes))
    await workload(0)()  # alone: it creates the `default` account the others then use
    await call_all(workload(i) for i in range(1, nodes))


@dataclasses.dataclass
class Stream:
    """One node's stream: what it got before SYNCED, and when."""

    node: int
    channel: grpc.aio.Channel
    call: grpc.aio.UnaryStreamCall | None = None
    synced_at: float = 0.0  # seconds since the burst began; 0 until SYNCED
    added: dict[str, dict[str, bytes]] = dataclasses.field(default_factory=dict)  # name -> data
    error: str = ""

    def wrong_view(self) -> bool:
        """Not exactly its own secret (with its data) and the account's token secret."""
        own = f"s-{self.node:05d}"
        return self.added.keys() != {own, TOKEN_SECRET} or self.added[own] != secret_data(self.node)


async def _read(stream: Stream, t0: float) -> None:
    assert stream.call is not None
    try:
        async for event in stream.call:
            if event.type == ADDED:
                stream.added[event.secret.metadata.name] = dict(event.secret.data)
            elif event.type == SYNCED:
                stream.synced_at = time.perf_counter() - t0
                return
        stream.error = "stream ended before SYNCED"
    except grpc.aio.AioRpcError as error:
        stream.error = f"{error.code().name}: {error.details()}"


@dataclasses.dataclass
class Round:
    nodes: int
    synced: list[float]  # seconds from the burst's start to each stream's SYNCED, sorted
    errors: list[str]
    wrong_views: int
    ended_after_synced: int  # streams that did not stay open once synced
    rss_before_kib: int
    rss_peak_kib: int  # VmHWM
    rss_synced_kib: int
    server_cpu: float  # seconds, burst start to the last SYNCED
    client_cpu: float
    window: float  # seconds, burst start to the last SYNCED (or the timeout)
    issued: float  # seconds, burst start to the last call made


async def storm(server: Server, certs: pathlib.Path, key_pem: bytes, chains: list[bytes], timeout: float) -> Round:
    """Opens a channel and a WatchSecrets(send_initial) call per node, all at
    once, and waits for every SYNCED (or error, or `timeout`)."""
    pid = server.process.pid
    request = secret_pb2.WatchSecretsRequest(namespace=NAMESPACE, send_initial=True)
    credentials = [_harness.node_credentials(certs, key_pem, chain) for chain in chains]
    rss_before = rss_kib(pid)
    cpu0 = client_seconds(), process_seconds(pid)
    t0 = time.perf_counter()
    streams = [Stream(i, own_channel(server.address, c)) for i, c in enumerate(credentials)]
    for s in streams:
        s.call = secret_pb2_grpc.SecretServiceStub(s.channel).WatchSecrets(request)
    issued = time.perf_counter() - t0
    readers = [asyncio.create_task(_read(s, t0)) for s in streams]
    try:
        await asyncio.wait(readers, timeout=timeout)
        window = time.perf_counter() - t0
        cpu1 = client_seconds(), process_seconds(pid)
        rss_synced, rss_peak = rss_kib(pid), rss_kib(pid, "VmHWM")
        for s, reader in zip(streams, readers, strict=True):
            if not reader.done():
                s.error = f"no SYNCED within {timeout:.0f} s"
        # Each synced stream must still be open: nothing cancelled it once it was served.
        ended = sum(1 for s in streams if s.synced_at and s.call is not None and s.call.done())
    finally:
        for s, reader in zip(streams, readers, strict=True):
            reader.cancel()
            if s.call is not None:
                s.call.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await asyncio.gather(*(s.channel.close() for s in streams), return_exceptions=True)
    return Round(
        nodes=len(streams),
        synced=sorted(s.synced_at for s in streams if s.synced_at),
        errors=[s.error for s in streams if s.error],
        wrong_views=sum(1 for s in streams if s.synced_at and s.wrong_view()),
        ended_after_synced=ended,
        rss_before_kib=rss_before,
        rss_peak_kib=rss_peak,
        rss_synced_kib=rss_synced,
        server_cpu=cpu1[1] - cpu0[1],
        client_cpu=cpu1[0] - cpu0[0],
        window=window,
        issued=issued,
    )


def print_round(number: int, r: Round) -> None:
    if number == 1:
        print(
            f"{'round':<6}{'nodes':>6}{'synced':>7}{'refused':>8}{'wrong':>6}{'ended':>6}"
            f"{'p50 s':>7}{'p99 s':>7}{'max s':>7}{'RSS before':>11}{'peak':>7}{'synced':>7}"
            f"{'KiB/stream':>11}{'server CPU':>11}{'client CPU':>11}{'calls made s':>13}"
        )
    mib = 1024
    per_stream = (r.rss_synced_kib - r.rss_before_kib) / r.nodes
    print(
        f"{number:<6}{r.nodes:>6}{len(r.synced):>7}{len(r.errors):>8}{r.wrong_views:>6}{r.ended_after_synced:>6}"
        f"{percentile(r.synced, 0.5):>7.2f}{percentile(r.synced, 0.99):>7.2f}"
        f"{(r.synced[-1] if r.synced else float('nan')):>7.2f}"
        f"{r.rss_before_kib / mib:>11.0f}{r.rss_peak_kib / mib:>7.0f}{r.rss_synced_kib / mib:>7.0f}"
        f"{per_stream:>11.1f}{r.server_cpu / r.window:>11.0%}{r.client_cpu / r.window:>11.0%}{r.issued:>13.2f}",
        flush=True,
    )
    for error in sorted(set(r.errors))[:5]:
        print(f"  {r.errors.count(error)} x {error}")


def restart(server: Server, argv: list[str], workdir: pathlib.Path, cpus: set[int] | None, n: int) -> Server:
    """Stops satcheld and starts it again on the same data directory and port."""
    server.stop()
    restarted = _harness.start(f"satcheld-{n}", argv, workdir, cpus)
    if cpus:
        _harness.pin_threads(restarted.process.pid, cpus)
    return restarted


async def _run(args: argparse.Namespace, server: Server, argv: list[str], workdir: pathlib.Path, cpus) -> list[Round]:
    certs = workdir / "certs"
    t = time.perf_counter()
    async with own_channel(server.address, _harness.credentials(certs)) as channel:
        await populate(channel, args.nodes)
    key_pem, chains = _harness.node_identities(certs, [node_name(i) for i in range(args.nodes)])
    print(
        f"{args.nodes} nodes, each with a workload in {NAMESPACE!r} bound to its own secret, and a "
        f"certificate each: {time.perf_counter() - t:.0f} s",
        flush=True,
    )
    rounds = []
    try:
        for number in range(1, args.rounds + 1):
            server = restart(server, argv, workdir, cpus, number)
            rounds.append(await storm(server, certs, key_pem, chains, args.timeout))
            if server.process.poll() is not None:
                raise SystemExit(f"satcheld exited with code {server.process.returncode} during the storm")
            print_round(number, rounds[-1])
    finally:
        server.stop()
    return rounds


def main(argv: list[str] | None = None) -> int:
    parser = _harness.argument_parser(__doc__)
    parser.add_argument("--nodes", type=int, default=2000, help="node agents, one stream each (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="restarts, each followed by a storm (default 3)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for every SYNCED (default 120)")
    _harness.add_server_arguments(parser)
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.rounds < 1 or args.timeout <= 0:
        parser.error("--nodes, --rounds and --timeout must be positive")
    _harness.require_satcheld(args.satcheld)
    nofile = _harness.raise_nofile(args.nodes + 256)  # a socket per node here and in the server
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="satchel-storm-"))
    started = time.perf_counter()
    try:
        with _harness.placed_client(args.pin) as (cpus, placement):
            serve = ["serve", "--dev", "--data-dir", str(workdir), "--listen"]
            with _harness.started([("satcheld", [args.satcheld, *serve, "127.0.0.1:0"])], workdir, cpus) as running:
                server = running[0]
                print(
                    f"satchel storm bench: grpcio {grpc.__version__}, Python {platform.python_version()}, "
                    f"{os.cpu_count()} CPUs ({placement}); {nofile}; {load()}"
                )
                print(
                    f"satcheld --dev at {server.address}; each round restarts it, then {args.nodes} node "
                    f"agents (each its own certificate and connection) call WatchSecrets(namespace="
                    f"{NAMESPACE!r}, send_initial) at once; times are from the burst's start (before the first "
                    "channel is made, so they include each connection's TLS handshake) to each stream's SYNCED"
                )
                print()
                try:
                    rounds = asyncio.run(_run(args, server, [args.satcheld, *serve, server.address], workdir, cpus))
                except grpc.aio.AioRpcError as error:
                    raise SystemExit(f"bench call failed: {error.code().name}: {error.details()}") from None
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    synced = sorted(t for r in rounds for t in r.synced)
    refused = sum(len(r.errors) + r.wrong_views + r.ended_after_synced for r in rounds)
    print(
        f"over {len(rounds)} rounds: time to SYNCED p50 {percentile(synced, 0.5):.2f} s, "
        f"p99 {percentile(synced, 0.99):.2f} s (median of the rounds' p99 "
        f"{statistics.median(percentile(r.synced, 0.99) for r in rounds):.2f} s), max "
        f"{(synced[-1] if synced else float('nan')):.2f} s; "
        f"server peak RSS {max(r.rss_peak_kib for r in rounds) / 1024:.0f} MiB; "
        f"streams refused, cancelled or wrong: {refused} (should be 0)"
    )
    print(f"total {time.perf_counter() - started:.0f} s; {load()}")
    return 0


if __name__ == "__main__":
    _harness.run(main)
