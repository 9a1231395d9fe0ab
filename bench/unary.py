"""Unary throughput and latency of a real `satcheld serve --dev`, against a bare
grpc.aio echo server over the same mTLS, driven by the same client.

Prints QPS, p50 and p99 for GetSecret and CreateSecret next to an echo of a
payload of the same size, and the ratios Satchel / echo. Satchel and echo
alternate in short runs, round after round, and each ratio is the median of
the rounds' ratios: a shared machine's slow spells then weigh on both sides
alike. `--as node` makes the rounds GetSecret as a node (whose one workload
binds the secret), GetSecret as the admin and the echo instead. Not a test.

    .venv/bin/python bench/unary.py [--as node] [--rounds 9] [--duration 2] [--warmup 0.5] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import pathlib
import platform
import statistics
from collections.abc import Awaitable, Callable

# This script's directory is on sys.path.
import _harness
import grpc
from _harness import DATA, Result, Server, percentile

from satchel.v1 import meta_pb2, secret_pb2, secret_pb2_grpc, workload_pb2, workload_pb2_grpc

ECHO_METHOD = "/satchel.bench.Echo/Echo"
NAMESPACE = "default"
NODE = "bench-node"  # --as node: the node whose workload binds the secret read
# Per mode, the ratios judged: (label, run index of the numerator, of the denominator, target QPS ratio).
COMPARISONS = {
    "admin": [("GetSecret/echo", 0, 1, 0.8), ("CreateSecret/echo", 2, 3, 0.5)],
    "node": [("GetSecret node/admin", 0, 1, 0.9), ("GetSecret admin/echo", 1, 2, 0.8)],
}


# --- the echo server (runs in its own process: `unary.py --echo-server CERTS`) ---


async def _serve_echo(certs: pathlib.Path) -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    server = grpc.aio.server()
    # No (de)serializers: the handler sees and returns raw bytes.
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "satchel.bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
            )
        ]
    )
    await _harness.serve(server, certs)


# --- the client ---


def _channel(address: str, certs: pathlib.Path) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(address, _harness.credentials(certs))


def _secret(name: str) -> secret_pb2.Secret:
    return secret_pb2.Secret(
        metadata=meta_pb2.ObjectMeta(namespace=NAMESPACE, name=name),
        type=secret_pb2.SECRET_TYPE_OPAQUE,
        data=DATA,
    )


async def _run(args: argparse.Namespace, satchel: Server, echo: Server, certs: pathlib.Path) -> list[list[Result]]:
    """Per round: GetSecret, then CreateSecret, each followed by an echo of its
    size; `--as node`: GetSecret as the node, as the admin, then the echo."""
    timing = {"concurrency": args.concurrency, "warmup": args.warmup, "duration": args.duration}

    async def on_satchel(label: str, call: Callable[[], Awaitable[object]]) -> Result:
        return await _harness.measure(label, call, server_pid=satchel.process.pid, **timing)

    async def on_echo(size: int) -> Result:
        payload = os.urandom(size)
        return await _harness.measure(
            f"echo {size} B", lambda: echo_call(payload), server_pid=echo.process.pid, **timing
        )

    async with (
        _channel(satchel.address, certs) as channel,
        _channel(echo.address, certs) as echo_channel,
    ):
        stub = secret_pb2_grpc.SecretServiceStub(channel)
        echo_call = echo_channel.unary_unary(ECHO_METHOD)

        await stub.CreateSecret(secret_pb2.CreateSecretRequest(secret=_secret("bench-get")))
        get = secret_pb2.GetSecretRequest(namespace=NAMESPACE, name="bench-get")
        response = await stub.GetSecret(get)
        get_size = response.ByteSize()
        if args.mode == "node":
            return await _run_node(args, on_satchel, on_echo, satchel, certs, channel, get, response)

        names = (f"bench-create-{i:08d}" for i in itertools.count())
        create_size = secret_pb2.CreateSecretRequest(secret=_secret(next(names))).ByteSize()

        def create() -> Awaitable[object]:
            return stub.CreateSecret(secret_pb2.CreateSecretRequest(secret=_secret(next(names))))

        rounds = []
        for number in range(1, args.rounds + 1):
            rounds.append(
                [
                    await on_satchel("GetSecret", lambda: stub.GetSecret(get)),
                    await on_echo(get_size),
                    await on_satchel("CreateSecret", create),
                    await on_echo(create_size),
                ]
            )
            ratios = "   ".join(
                f"{satchel.label} {satchel.qps:.0f} / echo {echo.qps:.0f} = {satchel.qps / echo.qps:.2f}"
                for satchel, echo in (rounds[-1][0:2], rounds[-1][2:4])
            )
            print(f"round {number}: {ratios}", flush=True)
        return rounds


async def _run_node(
    args: argparse.Namespace,
    on_satchel: Callable[[str, Callable[[], Awaitable[object]]], Awaitable[Result]],
    on_echo: Callable[[int], Awaitable[Result]],
    satchel: Server,
    certs: pathlib.Path,
    admin_channel: grpc.aio.Channel,
    get: secret_pb2.GetSecretRequest,
    expected: secret_pb2.GetSecretResponse,
) -> list[list[Result]]:
    """A workload on node NODE bound to the secret, and a channel with NODE's
    certificate; per round GetSecret as the node, as the admin, then the echo."""
    workload = workload_pb2.Workload(
        metadata=meta_pb2.ObjectMeta(namespace=NAMESPACE, name="bench-workload"), node_name=NODE, secrets=[get.name]
    )
    await workload_pb2_grpc.WorkloadServiceStub(admin_channel).CreateWorkload(
        workload_pb2.CreateWorkloadRequest(workload=workload)
    )
    key_pem, (chain,) = _harness.node_identities(certs, [NODE])
    admin = secret_pb2_grpc.SecretServiceStub(admin_channel)
    async with grpc.aio.secure_channel(satchel.address, _harness.node_credentials(certs, key_pem, chain)) as channel:
        node = secret_pb2_grpc.SecretServiceStub(channel)
        if await node.GetSecret(get) != expected:  # the node sees the secret with its data, as the admin does
            raise SystemExit(f"node {NODE} does not read secret {get.name} as the admin does")
        rounds = []
        for number in range(1, args.rounds + 1):
            runs = [
                await on_satchel("GetSecret node", lambda: node.GetSecret(get)),
                await on_satchel("GetSecret admin", lambda: admin.GetSecret(get)),
                await on_echo(expected.ByteSize()),
            ]
            rounds.append(runs)
            node_run, admin_run, echo_run = runs
            print(
                f"round {number}: node {node_run.qps:.0f} / admin {admin_run.qps:.0f} = "
                f"{node_run.qps / admin_run.qps:.2f}   admin {admin_run.qps:.0f} / echo {echo_run.qps:.0f} = "
                f"{admin_run.qps / echo_run.qps:.2f}",
                flush=True,
            )
        return rounds


def _report(rounds: list[list[Result]], mode: str) -> None:
    """Per call: the median QPS of the rounds, p50 and p99 over every call of
    every round, the median CPU; then the median of the rounds' ratios."""
    print()
    print(f"{'':<16}{'QPS':>8}{'p50 ms':>9}{'p99 ms':>9}{'calls':>8}{'client CPU':>12}{'server CPU':>12}")
    for runs in zip(*rounds, strict=True):
        latencies = sorted(t for run in runs for t in run.latencies)
        print(
            f"{runs[0].label:<16}{statistics.median(r.qps for r in runs):>8.0f}"
            f"{percentile(latencies, 0.50) * 1000:>9.2f}{percentile(latencies, 0.99) * 1000:>9.2f}"
            f"{len(latencies):>8}{statistics.median(r.client_cpu for r in runs):>12.0%}"
            f"{statistics.median(r.server_cpu for r in runs):>12.0%}"
        )
    print()
    for label, a, b, target in COMPARISONS[mode]:
        ratios = [run[a].qps / run[b].qps for run in rounds]
        ratio = statistics.median(ratios)
        verdict = "ok" if ratio >= target else "BELOW TARGET"
        spread = f"rounds {min(ratios):.2f}-{max(ratios):.2f}"
        print(f"{label} QPS ratio {ratio:.2f}, median of {len(ratios)} ({spread}; target >= {target}) {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = _harness.argument_parser(__doc__)
    parser.add_argument(
        "--as",
        dest="mode",
        choices=tuple(COMPARISONS),
        default="admin",
        help="admin: GetSecret and CreateSecret against the echo; node: GetSecret as a node, as the admin, the echo",
    )
    parser.add_argument("--rounds", type=int, default=9, help="rounds of the four (--as node: three) runs")
    parser.add_argument("--duration", type=float, default=2.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each run")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight")
    _harness.add_server_arguments(parser)
    args = parser.parse_args(argv)

    if args.echo_server:
        asyncio.run(_serve_echo(args.echo_server))
        return 0

    _harness.require_satcheld(args.satcheld)
    with _harness.servers(args, __file__) as servers:
        satcheld, echo = servers.satcheld, servers.echo
        print(
            f"satchel unary bench: grpcio {grpc.__version__}, Python {platform.python_version()}, "
            f"{os.cpu_count()} CPUs ({servers.placement}); {args.concurrency} calls in flight "
            f"from one client process; {args.rounds} rounds, each run {args.warmup:g} s warm-up "
            f"+ {args.duration:g} s"
        )
        print(
            f"satcheld --dev at {satcheld.address}, echo at {echo.address}; "
            f"secret data {sum(map(len, DATA.values()))} B in {len(DATA)} keys"
        )
        if args.mode == "node":
            print(
                f"--as node: GetSecret as node {NODE} (its one workload binds the secret; its own channel and "
                "certificate), then as the admin, then the echo, in each round"
            )
        print()
        try:
            rounds = asyncio.run(_run(args, satcheld, echo, servers.certs))
        except grpc.aio.AioRpcError as error:
            raise SystemExit(f"bench call failed: {error.code().name}: {error.details()}") from None
        _report(rounds, args.mode)
        servers.warn_exited()
    return 0


if __name__ == "__main__":
    _harness.run(main)
