"""Two builds of satcheld side by side: GetSecret and CreateSecret QPS of each,
then the server CPU of one WatchSecrets fan-out, both servers pinned to one
shared CPU and driven at once.

The scheduler halves the shared core between two saturated processes, so the
QPS ratio of the two is the inverse ratio of their CPU per call, and a slow
spell of the machine slows both alike. Use it to tell whether a change made
satcheld cheaper or dearer per call: `--baseline` names the other build's
satcheld (e.g. a venv made from an older checkout). `--watch-as node` makes
each fan-out stream a node of its own (the path a node's view takes through
the hub) instead of the admin. Not a test.

    .venv/bin/python bench/versus.py --baseline /path/to/old/.venv/bin/satcheld [--rounds 9]
                                     [--watch-as node]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import pathlib
import platform
import shutil
import statistics
import tempfile
from collections.abc import Awaitable, Callable, Iterator

# This script's directory is on sys.path.
import _harness
import grpc
from _harness import DATA, Result, Server

from satchel.v1 import meta_pb2, secret_pb2, secret_pb2_grpc, workload_pb2, workload_pb2_grpc

NAMESPACE = "default"


@contextlib.contextmanager
def _two_servers(args: argparse.Namespace) -> Iterator[tuple[Server, Server, pathlib.Path, str]]:
    """The baseline and this build's satcheld, each on its own data directory,
    both on one shared server CPU; this process on the client CPU."""
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="satchel-versus-"))
    specs = [
        (name, [executable, "serve", "--dev", "--data-dir", str(workdir / name), "--listen", "127.0.0.1:0"])
        for name, executable in (("baseline", args.baseline), ("this", args.satcheld))
    ]
    try:
        with _harness.placed_client(args.pin) as (server_cpus, placement):
            shared = {min(server_cpus)} if server_cpus else None
            if shared:
                placement = placement.replace(
                    f"servers on CPU {sorted(server_cpus)}", f"both servers on CPU {sorted(shared)}"
                )
            with _harness.started(specs, workdir, shared) as (baseline, this):
                yield baseline, this, workdir, placement
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _secret(name: str) -> secret_pb2.Secret:
    return secret_pb2.Secret(metadata=meta_pb2.ObjectMeta(namespace=NAMESPACE, name=name), data=DATA)


async def _arm(
    server: Server, certs: pathlib.Path, stack: contextlib.AsyncExitStack
) -> dict[str, Callable[[], Awaitable[object]]]:
    channel = await stack.enter_async_context(grpc.aio.secure_channel(server.address, _harness.credentials(certs)))
    stub = secret_pb2_grpc.SecretServiceStub(channel)
    await stub.CreateSecret(secret_pb2.CreateSecretRequest(secret=_secret("bench-get")))
    get = secret_pb2.GetSecretRequest(namespace=NAMESPACE, name="bench-get")
    names = (f"bench-create-{i:08d}" for i in itertools.count())
    return {
        "GetSecret": lambda: stub.GetSecret(get),
        "CreateSecret": lambda: stub.CreateSecret(secret_pb2.CreateSecretRequest(secret=_secret(next(names)))),
    }


class _FanOut:
    """`watchers` WatchSecrets streams on one server, each on its own channel, and
    the writes that they all receive: the server CPU each delivery costs. As
    nodes (`as_node`), each stream is node fanout-i, whose one workload binds
    the secret written."""

    def __init__(self, server: Server, certs: pathlib.Path, watchers: int, as_node: bool = False) -> None:
        self.server = server
        self._certs = certs
        self._credentials = _harness.credentials(certs)
        self._watchers = watchers
        self._as_node = as_node
        self._channels: list[grpc.aio.Channel] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.received = 0
        self._enough = asyncio.Event()
        self._target = 0

    async def open(self) -> None:
        credentials = [self._credentials] * self._watchers
        if self._as_node:
            nodes = [f"fanout-{i:05d}" for i in range(self._watchers)]
            async with grpc.aio.secure_channel(self.server.address, self._credentials) as admin:
                stub = workload_pb2_grpc.WorkloadServiceStub(admin)
                for i, node in enumerate(nodes):
                    workload = workload_pb2.Workload(
                        metadata=meta_pb2.ObjectMeta(namespace="fanout", name=f"w-{i:05d}"),
                        node_name=node,
                        secrets=["rotated"],
                    )
                    await stub.CreateWorkload(workload_pb2.CreateWorkloadRequest(workload=workload))
            key_pem, chains = _harness.node_identities(self._certs, nodes)
            credentials = [_harness.node_credentials(self._certs, key_pem, chain) for chain in chains]
        synced = []
        for stream_credentials in credentials:
            channel = grpc.aio.secure_channel(self.server.address, stream_credentials)
            self._channels.append(channel)
            call = secret_pb2_grpc.SecretServiceStub(channel).WatchSecrets(
                secret_pb2.WatchSecretsRequest(namespace="fanout", send_initial=True)
            )
            ready = asyncio.Event()
            synced.append(ready)
            self._tasks.append(asyncio.create_task(self._read(call, ready)))
        await asyncio.wait_for(asyncio.gather(*(ready.wait() for ready in synced)), 60)
        if self._as_node:  # the writer is the admin, on a channel of its own
            self._channels.append(grpc.aio.secure_channel(self.server.address, self._credentials))
            self._writer = secret_pb2_grpc.SecretServiceStub(self._channels[-1])
        else:
            self._writer = secret_pb2_grpc.SecretServiceStub(self._channels[0])
        await self._writer.CreateSecret(secret_pb2.CreateSecretRequest(secret=_fanout_secret(0)))

    async def _read(self, call: grpc.aio.UnaryStreamCall, ready: asyncio.Event) -> None:
        while True:
            event = await call.read()
            if event is grpc.aio.EOF:
                return
            if event.type == meta_pb2.EVENT_TYPE_SYNCED:
                ready.set()
            elif event.type == meta_pb2.EVENT_TYPE_MODIFIED:
                self.received += 1
                if self.received >= self._target:
                    self._enough.set()

    async def measure(self, writes: int, interval: float) -> float:
        """Server CPU µs per delivered (event, watcher) pair over `writes` updates."""
        await asyncio.sleep(0.2)  # let the last round's stragglers drain before sampling
        self.received, self._target = 0, writes * self._watchers
        self._enough.clear()
        cpu0 = _harness.process_seconds(self.server.process.pid)
        for n in range(1, writes + 1):
            update = secret_pb2.UpdateSecretRequest(secret=_fanout_secret(n))
            await self._writer.UpdateSecret(update)
            await asyncio.sleep(interval)
        await asyncio.wait_for(self._enough.wait(), 60)
        return (_harness.process_seconds(self.server.process.pid) - cpu0) / self.received * 1e6

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for channel in self._channels:
            await channel.close()


def _fanout_secret(version: int) -> secret_pb2.Secret:
    return secret_pb2.Secret(
        metadata=meta_pb2.ObjectMeta(namespace="fanout", name="rotated"), data={"v": str(version).encode()}
    )


async def _run_fanout(
    args: argparse.Namespace, baseline: Server, this: Server, workdir: pathlib.Path
) -> list[tuple[float, float]]:
    arms = [_FanOut(s, workdir / s.name / "certs", args.watchers, args.watch_as == "node") for s in (baseline, this)]
    rounds = []
    try:
        for arm in arms:
            await arm.open()
        writes = max(1, int(args.fanout_duration / args.interval))
        for number in range(1, args.rounds + 1):
            old, new = await asyncio.gather(*(arm.measure(writes, args.interval) for arm in arms))
            rounds.append((old, new))
            line = f"WatchSecrets as {args.watch_as} x{args.watchers} {old:.0f} vs {new:.0f} µs per delivery"
            line += f" (x{old / new:.2f})"
            print(f"round {number}: {line}", flush=True)
    finally:
        for arm in arms:
            await arm.close()
    return rounds


async def _run(
    args: argparse.Namespace, baseline: Server, this: Server, workdir: pathlib.Path
) -> dict[str, list[tuple[Result, Result]]]:
    timing = {"concurrency": args.concurrency, "warmup": args.warmup, "duration": args.duration}
    results: dict[str, list[tuple[Result, Result]]] = {"GetSecret": [], "CreateSecret": []}
    async with contextlib.AsyncExitStack() as stack:
        calls = [await _arm(s, workdir / s.name / "certs", stack) for s in (baseline, this)]
        for number in range(1, args.rounds + 1):
            line = []
            for rpc, runs in results.items():
                old, new = await asyncio.gather(
                    *(
                        _harness.measure(s.name, arm[rpc], server_pid=s.process.pid, **timing)
                        for s, arm in zip((baseline, this), calls, strict=True)
                    )
                )
                runs.append((old, new))
                line.append(f"{rpc} {old.qps:.0f} vs {new.qps:.0f} (x{new.qps / old.qps:.2f})")
            print(f"round {number}: " + "   ".join(line), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = _harness.argument_parser(__doc__)
    parser.add_argument("--baseline", required=True, help="the other build's satcheld executable")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--duration", type=float, default=2.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each run")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight per server")
    parser.add_argument("--watchers", type=int, default=100, help="WatchSecrets streams per server (0: no fan-out)")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between fan-out writes")
    parser.add_argument("--fanout-duration", type=float, default=5.0, help="seconds of fan-out writes per round")
    parser.add_argument(
        "--watch-as", choices=("admin", "node"), default="admin", help="the fan-out streams' identity (default admin)"
    )
    parser.add_argument("--no-unary", dest="unary", action="store_false", help="only the fan-out")
    _harness.add_server_arguments(parser)
    args = parser.parse_args(argv)
    for executable in (args.baseline, args.satcheld):
        _harness.require_satcheld(executable)

    with _two_servers(args) as (baseline, this, workdir, placement):
        print(
            f"satcheld versus: grpcio {grpc.__version__}, Python {platform.python_version()}, "
            f"{os.cpu_count()} CPUs ({placement}); {args.concurrency} calls in flight per server, both at once; "
            f"{args.rounds} rounds of {args.warmup:g} s warm-up + {args.duration:g} s"
        )
        print(f"baseline {args.baseline} at {baseline.address}; this {args.satcheld} at {this.address}")
        print("per round: baseline QPS vs this build's QPS (x this/baseline; above 1: this one is cheaper per call)\n")
        try:
            results = asyncio.run(_run(args, baseline, this, workdir)) if args.unary else {}
        except grpc.aio.AioRpcError as error:
            raise SystemExit(f"bench call failed: {error.code().name}: {error.details()}") from None
        print()
        for rpc, runs in results.items():
            ratios = [new.qps / old.qps for old, new in runs]
            cpu = [
                (old.server_cpu / old.qps * 1e6, new.server_cpu / new.qps * 1e6)
                for old, new in runs
                if old.qps and new.qps
            ]
            old_us, new_us = (statistics.median(c[i] for c in cpu) for i in (0, 1))
            print(
                f"{rpc}: this/baseline QPS ratio {statistics.median(ratios):.3f}, median of {len(ratios)} "
                f"(rounds {min(ratios):.3f}-{max(ratios):.3f}); server CPU per call "
                f"{old_us:.0f} µs baseline, {new_us:.0f} µs this"
            )
        if args.watchers:
            print()
            fanout = asyncio.run(_run_fanout(args, baseline, this, workdir))
            ratios = [old / new for old, new in fanout]
            print(
                f"\nWatchSecrets fan-out to {args.watchers} {args.watch_as} streams: "
                "baseline/this server CPU per delivery "
                f"{statistics.median(ratios):.3f}, median of {len(ratios)} "
                f"(rounds {min(ratios):.3f}-{max(ratios):.3f}; "
                f"above 1: this build is cheaper); {statistics.median(o for o, _ in fanout):.0f} µs baseline, "
                f"{statistics.median(n for _, n in fanout):.0f} µs this"
            )
        for server in (baseline, this):
            if server.process.poll() is not None:
                print(f"warning: {server.name} exited with code {server.process.returncode} during the bench")
    return 0


if __name__ == "__main__":
    _harness.run(main)
