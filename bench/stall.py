"""How long other calls wait while satcheld serves a List that scans a large
table and matches nothing.

Run `.venv/bin/python bench/stall.py` (`--secrets 100000`, `--lists 5`,
`--no-pin`, `--keep`). It fills a fresh `--dev` data directory with
`--secrets` small secrets in one namespace straight through the store (fast:
no RPCs), starts `satcheld serve --dev` on it, and then, `--lists` times, runs
`ListSecrets` with a label selector that matches none of them while a loop of
`GetSecret` calls runs one after another beside it: one of a secret the Get
cache holds, one of a name that does not exist (a store read every time). It
prints how long each List took and the Get latencies while it ran (p50, p99,
max) beside the same Gets with no List running. A Get that waits for the
List's scan shows as a max near the List's duration; one that shares the
server fairly waits a few milliseconds at most.
"""

from __future__ import annotations

import asyncio
import pathlib
import shutil
import sys
import tempfile
import time

import grpc
from _harness import (
    add_server_arguments,
    argument_parser,
    credentials,
    percentile,
    pin_threads,
    placed_client,
    require_satcheld,
    run,
    start,
)

from satchel import pki
from satchel.v1 import meta_pb2, secret_pb2, secret_pb2_grpc
from satcheld.store import KeyRing, SqliteStore

NAMESPACE = "bulk"
BATCH = 2000


def fill(data: pathlib.Path, count: int) -> None:
    """`count` secrets of about 100 bytes, written in batches straight into the store."""
    data.mkdir(parents=True, exist_ok=True)
    key_file = data / "encryption.key"
    KeyRing.create_file(key_file)

    async def write() -> None:
        store = SqliteStore(data / "satchel.db", KeyRing.load(key_file))
        for first in range(0, count, BATCH):

            def put(txn, first=first):
                for i in range(first, min(count, first + BATCH)):
                    meta = meta_pb2.ObjectMeta(namespace=NAMESPACE, name=f"s-{i:07d}", labels={"app": "bulk"})
                    txn.put(secret_pb2.Secret(metadata=meta, data={"value": b"x" * 100}))

            await store.write(put)
        await store.close()

    asyncio.run(write())


async def gets_while(stub, until: asyncio.Future | None, seconds: float) -> tuple[list[float], list[float]]:
    """Get latencies (cached, uncached) one after another until `until` is done (or for `seconds`)."""
    cached: list[float] = []
    uncached: list[float] = []
    deadline = time.perf_counter() + seconds
    while (until is not None and not until.done()) or (until is None and time.perf_counter() < deadline):
        t = time.perf_counter()
        await stub.GetSecret(secret_pb2.GetSecretRequest(namespace=NAMESPACE, name="s-0000001"))
        cached.append(time.perf_counter() - t)
        t = time.perf_counter()
        try:
            await stub.GetSecret(secret_pb2.GetSecretRequest(namespace=NAMESPACE, name="absent"))
        except grpc.aio.AioRpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, e
        uncached.append(time.perf_counter() - t)
    return cached, uncached


def line(label: str, values: list[float]) -> str:
    ordered = sorted(values)
    ms = [1000 * percentile(ordered, p) for p in (0.5, 0.99)]
    worst = 1000 * ordered[-1]
    return f"  {label:<28} n={len(ordered):<5} p50 {ms[0]:6.2f} ms  p99 {ms[1]:6.2f} ms  max {worst:6.2f} ms"


async def measure(address: str, certs: pathlib.Path, lists: int) -> None:
    async with grpc.aio.secure_channel(address, credentials(certs)) as channel:
        stub = secret_pb2_grpc.SecretServiceStub(channel)
        await gets_while(stub, None, 1.0)  # warm up
        cached, uncached = await gets_while(stub, None, 2.0)
        print("no List running:")
        print(line("Get (cached)", cached))
        print(line("Get (not found: a read)", uncached))
        for i in range(lists):
            t = time.perf_counter()
            listing = asyncio.ensure_future(
                stub.ListSecrets(secret_pb2.ListSecretsRequest(namespace=NAMESPACE, label_selector="app=none"))
            )
            cached, uncached = await gets_while(stub, listing, 0)
            response = await listing
            took = time.perf_counter() - t
            assert not response.secrets
            print(f"List {i + 1} matching nothing: {1000 * took:.0f} ms; meanwhile:")
            print(line("Get (cached)", cached))
            print(line("Get (not found: a read)", uncached))


def main() -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--secrets", type=int, default=100_000, help="secrets in the table (default 100000)")
    parser.add_argument("--lists", type=int, default=5, help="Lists to time (default 5)")
    add_server_arguments(parser)
    args = parser.parse_args()
    require_satcheld(args.satcheld)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="satchel-stall-"))
    try:
        pki.init(workdir / "certs", trust_domain="satchel.local")
        t = time.perf_counter()
        fill(workdir, args.secrets)
        print(f"filled {args.secrets} secrets in {time.perf_counter() - t:.1f} s")
        with placed_client(args.pin) as (server_cpus, placement):
            serve = ["serve", "--dev", "--data-dir", str(workdir), "--listen", "127.0.0.1:0"]
            server = start("satcheld", [args.satcheld, *serve], workdir, server_cpus)
            try:
                if server_cpus:
                    pin_threads(server.process.pid, server_cpus)
                print(placement)
                asyncio.run(measure(server.address, workdir / "certs", args.lists))
            finally:
                server.stop()
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    run(main)
