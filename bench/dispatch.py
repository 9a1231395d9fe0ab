"""What a grpc.aio server's method registration costs each call: why satcheld
registers no method with grpc and serves them all from one generic method table.

Three echo servers on the same mTLS certificates, driven by one client in
alternating short runs: one with only the echo method, one with `--methods`
more beside it in satcheld's method table (one generic handler), one with
them as grpc "registered methods" (the generated code's way). Prints QPS and server CPU per call for
each, and their ratios to the first. Not a test.

    .venv/bin/python bench/dispatch.py [--methods 30] [--rounds 7] [--duration 2]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile

# This script's directory is on sys.path.
import _harness
import grpc
from _harness import Result

from satcheld.api import MethodTable

ECHO_SERVICE, ECHO = "satchel.bench.Echo", "/satchel.bench.Echo/Echo"
WAYS = ("none", "table", "registered")
PAYLOAD = 302  # bytes, as large as unary.py's GetSecretResponse


async def _serve(certs: pathlib.Path, way: str, methods: int) -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    handler = grpc.unary_unary_rpc_method_handler(echo)
    others = {f"Method{i}": handler for i in range(methods)}
    server = grpc.aio.server()
    if way == "table":  # the echo among the others, found as satcheld finds its methods
        table = MethodTable()
        table.registrar().add_registered_method_handlers(ECHO_SERVICE, {"Echo": handler, **others})
        server.add_generic_rpc_handlers([table])
    else:
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(ECHO_SERVICE, {"Echo": handler})])
    if way == "registered":
        server.add_registered_method_handlers("satchel.bench.Other", others)
    await _harness.serve(server, certs)


async def _run(
    args: argparse.Namespace, servers: dict[str, _harness.Server], certs: pathlib.Path
) -> dict[str, list[Result]]:
    timing = {"concurrency": args.concurrency, "warmup": args.warmup, "duration": args.duration}
    payload = os.urandom(PAYLOAD)
    results: dict[str, list[Result]] = {way: [] for way in servers}
    channels = {way: grpc.aio.secure_channel(s.address, _harness.credentials(certs)) for way, s in servers.items()}
    calls = {way: channel.unary_unary(ECHO) for way, channel in channels.items()}
    try:
        for number in range(1, args.rounds + 1):
            for way, server in servers.items():
                run = functools.partial(calls[way], payload)
                results[way].append(await _harness.measure(way, run, server_pid=server.process.pid, **timing))
            print(
                f"round {number}: "
                + "   ".join(
                    f"{way} {runs[-1].qps:.0f} QPS {_cpu_per_call(runs[-1]):.0f} µs" for way, runs in results.items()
                ),
                flush=True,
            )
    finally:
        for channel in channels.values():
            await channel.close()
    return results


def _cpu_per_call(result: Result) -> float:
    return result.server_cpu / result.qps * 1e6 if result.qps else float("nan")


def _report(results: dict[str, list[Result]], methods: int) -> None:
    base = results["none"]
    print()
    print(f"{'':<28}{'QPS':>8}{'server µs/call':>16}{'QPS ratio':>11}")
    for way, runs in results.items():
        label = {
            "none": "echo only",
            "table": f"+ {methods} in a method table",
            "registered": f"+ {methods} registered",
        }[way]
        ratio = statistics.median(r.qps / b.qps for r, b in zip(runs, base, strict=True))
        print(
            f"{label:<28}{statistics.median(r.qps for r in runs):>8.0f}"
            f"{statistics.median(map(_cpu_per_call, runs)):>16.0f}{ratio:>11.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = _harness.argument_parser(__doc__)
    parser.add_argument("--methods", type=int, default=30, help="methods besides the echo")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--duration", type=float, default=2.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each run")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not put the client on its own CPU")
    parser.add_argument("--serve", nargs=2, metavar=("CERTS", "WAY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.serve:
        asyncio.run(_serve(pathlib.Path(args.serve[0]), args.serve[1], args.methods))
        return 0

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="satchel-dispatch-"))
    certs = workdir / "certs"
    specs = [
        (way, [sys.executable, __file__, "--serve", str(certs), way, "--methods", str(args.methods)]) for way in WAYS
    ]
    try:
        ctl = pathlib.Path(sys.executable).parent / "satchelctl"
        subprocess.run([str(ctl), "certs", "init", "--dir", str(certs)], check=True, capture_output=True)
        with (
            _harness.placed_client(args.pin) as (server_cpus, placement),
            _harness.started(specs, workdir, server_cpus) as running,
        ):
            print(
                f"dispatch bench: grpcio {grpc.__version__}, {os.cpu_count()} CPUs ({placement}); "
                f"echo of {PAYLOAD} B, {args.concurrency} calls in flight, {args.rounds} rounds of "
                f"{args.warmup:g} s warm-up + {args.duration:g} s"
            )
            print()
            servers = {server.name: server for server in running}
            _report(asyncio.run(_run(args, servers, certs)), args.methods)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    _harness.run(main)
