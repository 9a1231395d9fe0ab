"""Two builds of satcheld side by side: GetSecret and CreateSecret QPS of each,
both servers pinned to one shared CPU and driven at once.

The scheduler halves the shared core between two saturated processes, so the
QPS ratio of the two is the inverse ratio of their CPU per call, and a slow
spell of the machine slows both alike. Use it to tell whether a change made
satcheld cheaper or dearer per call: `--baseline` names the other build's
satcheld (e.g. a venv made from an older checkout). Not a test.

    .venv/bin/python bench/versus.py --baseline /path/to/old/.venv/bin/satcheld [--rounds 9]
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

from satchel.v1 import meta_pb2, secret_pb2, secret_pb2_grpc

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
            results = asyncio.run(_run(args, baseline, this, workdir))
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
        for server in (baseline, this):
            if server.process.poll() is not None:
                print(f"warning: {server.name} exited with code {server.process.returncode} during the bench")
    return 0


if __name__ == "__main__":
    _harness.run(main)
