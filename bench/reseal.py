"""Reseal throughput, and what it costs the writes that run meanwhile.

A SqliteStore in a fresh temporary directory (in process: no gRPC, no TLS), seeded with
`--secrets` secrets of about 100 bytes of data in three keys, each written `--versions` times
(so history holds secrets x versions sealed values beside the current ones). Then a new primary
key is added and set, and `store.reseal()` runs while `--writers` tasks each keep one write in
flight (a new version of a secret of their own). It prints the values re-sealed per second (and
sealed MiB per second), the longest single reseal job (how long the writer thread was held), and
the writes' p50/p99/max latency during the reseal against the same writes with no reseal.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from satchel.v1 import meta_pb2, secret_pb2
from satcheld.store import KeyRing, SqliteStore, add_key
from satcheld.store import _sqlite as store_sqlite

DATA = {
    "username": b"svc-bench",
    "password": b"k3Jd9sLq0vXz2mWn8rTy5uBc7hGf4eAp1oIs6lKj",
    "endpoint": b"postgres://db.internal.example:5432/app?sslmode=verify",
}


def _secret(name: str, n: int) -> secret_pb2.Secret:
    data = {**DATA, "password": DATA["password"] + str(n).encode()}
    return secret_pb2.Secret(metadata=meta_pb2.ObjectMeta(namespace="bench", name=name), data=data)


async def _seed(store: SqliteStore, secrets: int, versions: int, batch: int = 500) -> None:
    for version in range(versions):
        for start in range(0, secrets, batch):

            def write(txn, start=start, version=version):
                for i in range(start, min(start + batch, secrets)):
                    secret = _secret(f"s{i}", version)
                    secret.version = version + 1
                    txn.put(secret)

            await store.write(write)


async def _writes(store: SqliteStore, writers: int, stop: asyncio.Event, minimum: int) -> list[float]:
    latencies: list[float] = []

    async def writer(w: int) -> None:
        n = 0
        while not stop.is_set() or n < minimum:
            secret = _secret(f"writer-{w}", n)
            begun = time.perf_counter()
            await store.write(lambda txn, s=secret: txn.put(s))
            latencies.append(time.perf_counter() - begun)
            n += 1

    await asyncio.gather(*(writer(w) for w in range(writers)))
    return latencies


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.1f}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secrets", type=int, default=20_000)
    parser.add_argument("--versions", type=int, default=3)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--baseline", type=float, default=3.0, help="seconds of writes with no reseal")
    parser.add_argument("--rows", type=int, default=store_sqlite.RESEAL_ROWS, help="rows per reseal job")
    args = parser.parse_args()
    store_sqlite.RESEAL_ROWS = args.rows

    with tempfile.TemporaryDirectory(prefix="satchel-reseal-") as tmp:
        key_file = Path(tmp) / "encryption.key"
        KeyRing.create_file(key_file)
        store = SqliteStore(Path(tmp) / "satchel.db", KeyRing.load(key_file))
        try:
            began = time.perf_counter()
            await _seed(store, args.secrets, args.versions)
            print(f"seeded {args.secrets} secrets x {args.versions} versions in {time.perf_counter() - began:.1f} s")

            stop = asyncio.Event()
            task = asyncio.create_task(_writes(store, args.writers, stop, 0))
            await asyncio.sleep(args.baseline)
            stop.set()
            baseline = await task

            add_key(key_file)
            store.set_keyring(KeyRing.load(key_file))
            held: list[float] = []
            chunk = SqliteStore._reseal_chunk

            def timed(self, *a):
                begun = time.perf_counter()
                try:
                    return chunk(self, *a)
                finally:
                    held.append(time.perf_counter() - begun)

            SqliteStore._reseal_chunk = timed  # type: ignore[method-assign]
            stop = asyncio.Event()
            task = asyncio.create_task(_writes(store, args.writers, stop, 1))
            began = time.perf_counter()
            done = await store.reseal()
            seconds = time.perf_counter() - began
            stop.set()
            during = await task
        finally:
            await store.close()

    # Each sealed value: a header, a 12-byte nonce, the ~150-byte payload and a 16-byte tag.
    size = done.resealed * (1 + 2 + 12 + 150 + 16) / 2**20
    print(f"re-sealed {done.resealed} values under {done.key_id} in {seconds:.2f} s:")
    print(f"  {done.resealed / seconds:,.0f} values/s, about {size / seconds:.1f} MiB/s of sealed data")
    print(
        f"  {len(held)} reseal jobs of up to {store_sqlite.RESEAL_ROWS} rows; each held the writer"
        f" p50 {_ms(held, 0.5)} ms, p99 {_ms(held, 0.99)} ms, max {max(held) * 1000:.1f} ms"
    )
    print(f"writes ({args.writers} in flight)     count    p50 ms   p99 ms   max ms")
    for label, lat in (("no reseal", baseline), ("during the reseal", during)):
        print(
            f"  {label:<24} {len(lat):>7}  {_ms(lat, 0.5):>8} {_ms(lat, 0.99):>8} {max(lat) * 1000 if lat else 0:>8.1f}"
        )
    if during:
        print(f"  mean during / mean without: {statistics.mean(during) / statistics.mean(baseline):.2f}")


if __name__ == "__main__":
    asyncio.run(main())
