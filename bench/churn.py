"""Watch streams opened and cancelled by the thousand against a real `satcheld
serve --dev`: the server's RSS after each round, and its slope after the
first (warm-up) round, in KiB per 1,000 streams. Flat means cancelled streams
free everything (grpc issue 43360: a handler that swallows CancelledError
leaks native memory per call).

    .venv/bin/python bench/churn.py [--rounds 10] [--streams 1000] [--batch 250]
"""

from __future__ import annotations

import asyncio
import pathlib
import shutil
import tempfile
import time

import _harness as h

from satchel.v1 import workload_pb2, workload_pb2_grpc


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0


async def churn(stubs: list[workload_pb2_grpc.WorkloadServiceStub], n: int, batch: int) -> None:
    async def one(i: int) -> None:
        call = stubs[i % len(stubs)].WatchWorkloads(workload_pb2.WatchWorkloadsRequest())
        try:
            await call.read()  # BOOKMARK: the server's handler runs
        finally:
            call.cancel()

    for start in range(0, n, batch):
        await asyncio.gather(*(one(i) for i in range(start, min(n, start + batch))))


async def bench(address: str, certs: pathlib.Path, pid: int, rounds: int, streams: int, batch: int) -> None:
    key, (chain,) = h.node_identities(certs, ["bench-node"])
    channels = [h.own_channel(address, h.node_credentials(certs, key, chain)) for _ in range(4)]
    try:
        stubs = [workload_pb2_grpc.WorkloadServiceStub(ch) for ch in channels]
        print(f"RSS at start: {h.rss_kib(pid)} KiB")
        points = []
        for r in range(1, rounds + 1):
            began = time.monotonic()
            await churn(stubs, streams, batch)
            rss = h.rss_kib(pid)
            print(f"round {r:2}: {r * streams:6} streams, {time.monotonic() - began:5.1f} s, RSS {rss} KiB")
            if r > 1:
                points.append((r * streams / 1000, rss))
        if len(points) > 1:
            print(f"slope after warm-up: {slope(points):+.1f} KiB per 1,000 streams")
    finally:
        for ch in channels:
            await ch.close()


def main() -> int:
    parser = h.argument_parser(__doc__)
    h.add_server_arguments(parser)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--streams", type=int, default=1000, help="streams opened and cancelled per round")
    parser.add_argument("--batch", type=int, default=250, help="streams open at once")
    args = parser.parse_args()
    h.require_satcheld(args.satcheld)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="satchel-bench-"))
    serve = ["serve", "--dev", "--data-dir", str(workdir), "--listen", "127.0.0.1:0"]
    # Room for the cancels the server has yet to see when the next batch arrives.
    room = str(4 * args.batch)
    limits = ["--max-streams-per-connection", room, "--max-watch-streams-per-principal", room]
    server = h.start("satcheld", [args.satcheld, *serve, *limits], workdir, None)
    try:
        asyncio.run(bench(server.address, workdir / "certs", server.process.pid, args.rounds, args.streams, args.batch))
    finally:
        server.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    h.run(main)
