"""Reseal throughput, and what it costs the writes that run meanwhile.

A SqliteStore in a fresh temporary directory (in process: no gRPC, no TLS), seeded with
`--secrets` secrets (about 100 bytes of data in three keys, or `--size` bytes), each written
`--versions` times (so history holds secrets x versions sealed values beside the current ones).
Then writes with no reseal for `--baseline` s, then a new primary key is added and set, and
`store.reseal()` runs while the same writes go on; `--repeat` times, each in a fresh store. The
writes are either `--writers` tasks each keeping one write in flight (a new version of a secret of
their own), or with `--rate` a paced writer that starts one write every 1/rate s whatever the
earlier ones are doing (latency counted from when it was due). It prints the secrets and values
re-sealed per second (and sealed MiB per second), how long each reseal job held the writer thread,
and the writes' p50/p99/max latency during the reseals against the same writes with no reseal.

    .venv/bin/python bench/reseal.py                       # 20,000 x 3 versions, 4 writers
    .venv/bin/python bench/reseal.py --secrets 10000 --versions 1 --size 1024 --rate 100 --repeat 5
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
# A sealed value beyond its payload: a header (1 + the key id), a 12-byte nonce, a 16-byte tag.
SEAL_OVERHEAD = 1 + 11 + 12 + 16


def _data(n: int, size: int) -> dict[str, bytes]:
    """DATA with `n` in the password; with `size`, a `blob` key pads the values to `size` bytes."""
    data = {**DATA, "password": DATA["password"] + str(n).encode()}
    pad = size - sum(map(len, data.values()))
    if pad > 0:
        data["blob"] = b"x" * pad
    return data


def _secret(name: str, n: int, size: int) -> secret_pb2.Secret:
    return secret_pb2.Secret(metadata=meta_pb2.ObjectMeta(namespace="bench", name=name), data=_data(n, size))


async def _seed(store: SqliteStore, secrets: int, versions: int, size: int, batch: int = 500) -> None:
    for version in range(versions):
        for start in range(0, secrets, batch):

            def write(txn, start=start, version=version):
                for i in range(start, min(start + batch, secrets)):
                    secret = _secret(f"s{i}", version, size)
                    secret.version = version + 1
                    txn.put(secret)

            await store.write(write)


async def _writes(store: SqliteStore, writers: int, stop: asyncio.Event, minimum: int, size: int) -> list[float]:
    """`writers` tasks, each keeping one write in flight until `stop` (and `minimum` writes)."""
    latencies: list[float] = []

    async def writer(w: int) -> None:
        n = 0
        while not stop.is_set() or n < minimum:
            secret = _secret(f"writer-{w}", n, size)
            begun = time.perf_counter()
            await store.write(lambda txn, s=secret: txn.put(s))
            latencies.append(time.perf_counter() - begun)
            n += 1

    await asyncio.gather(*(writer(w) for w in range(writers)))
    return latencies


async def _paced(store: SqliteStore, rate: float, stop: asyncio.Event, size: int, own: int = 100) -> list[float]:
    """One write due every 1/rate s until `stop` (each of one of `own` secrets of its own), each
    started at its due time as its own task, not after the one before it: a slow write delays no
    other. A latency is counted from the due time, so that a stalled event loop counts too."""
    latencies: list[float] = []
    running: set[asyncio.Task[None]] = set()

    async def write(secret: secret_pb2.Secret, due: float) -> None:
        await store.write(lambda txn: txn.put(secret))
        latencies.append(time.perf_counter() - due)

    begun = time.perf_counter()
    n = 0
    while not stop.is_set():
        due = begun + n / rate
        if (wait := due - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        task = asyncio.create_task(write(_secret(f"paced-{n % own}", n, size), due))
        running.add(task)
        task.add_done_callback(running.discard)
        n += 1
    await asyncio.gather(*running)
    return latencies


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.1f}"


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--secrets", type=int, default=20_000)
    parser.add_argument("--versions", type=int, default=3)
    parser.add_argument(
        "--size", type=int, default=0, help="bytes of data per secret (default: the three keys, about 100)"
    )
    parser.add_argument("--writers", type=int, default=4, help="writes kept in flight (without --rate)")
    parser.add_argument("--rate", type=float, default=0, help="paced writes per second instead of --writers")
    parser.add_argument(
        "--repeat", type=int, default=1, help="reseals, each in a fresh store after --baseline s of writes"
    )
    parser.add_argument("--baseline", type=float, default=3.0, help="seconds of writes with no reseal, each time")
    parser.add_argument("--rows", type=int, default=store_sqlite.RESEAL_ROWS, help="rows per reseal job")
    args = parser.parse_args()
    store_sqlite.RESEAL_ROWS = args.rows
    payload = len(secret_pb2.Secret(data=_data(args.secrets, args.size)).SerializeToString())
    load = f"{args.rate:g} writes/s paced" if args.rate else f"{args.writers} in flight"
    print(
        f"reseal bench: {args.secrets} secrets x {args.versions} versions, {payload} B sealed payload each;"
        f" writes {load}, of the same size; {args.repeat} reseal(s), each in a fresh store after"
        f" {args.baseline:g} s of writes with no reseal; jobs of up to {args.rows} rows"
    )

    def writes(stop: asyncio.Event, minimum: int) -> asyncio.Task[list[float]]:
        if args.rate:
            return asyncio.create_task(_paced(store, args.rate, stop, args.size))
        return asyncio.create_task(_writes(store, args.writers, stop, minimum, args.size))

    baseline: list[float] = []
    during: list[float] = []
    p99s: tuple[list[float], list[float]] = ([], [])  # each reseal's, without and during
    reseals: list[tuple[int, float]] = []  # values, seconds
    held: list[float] = []
    chunk = SqliteStore._reseal_chunk

    def timed(self, *a):
        begun = time.perf_counter()
        try:
            return chunk(self, *a)
        finally:
            held.append(time.perf_counter() - begun)

    SqliteStore._reseal_chunk = timed  # type: ignore[method-assign]
    for number in range(1, args.repeat + 1):
        # A fresh store each time, so that every reseal has the same values to do.
        with tempfile.TemporaryDirectory(prefix="satchel-reseal-") as tmp:
            key_file = Path(tmp) / "encryption.key"
            KeyRing.create_file(key_file)
            store = SqliteStore(Path(tmp) / "satchel.db", KeyRing.load(key_file))
            try:
                began = time.perf_counter()
                await _seed(store, args.secrets, args.versions, args.size)
                seeded = time.perf_counter() - began

                stop = asyncio.Event()
                task = writes(stop, 0)
                await asyncio.sleep(args.baseline)
                stop.set()
                before = await task
                baseline += before

                add_key(key_file)
                store.set_keyring(KeyRing.load(key_file))
                stop = asyncio.Event()
                task = writes(stop, 1)
                began = time.perf_counter()
                done = await store.reseal()
                seconds = time.perf_counter() - began
                stop.set()
                these = await task
                during += these
                for p99, latencies in zip(p99s, (before, these), strict=True):
                    p99.append(float(_ms(latencies, 0.99)))
                reseals.append((done.resealed, seconds))
            finally:
                await store.close()
        print(
            f"reseal {number}: seeded in {seeded:.1f} s; {len(before)} writes with no reseal,"
            f" p99 {_ms(before, 0.99)} ms;"
            f" re-sealed {done.resealed} values in {seconds:.2f} s ({args.secrets / seconds:,.0f} secrets/s,"
            f" {done.resealed / seconds:,.0f} values/s), {len(these)} writes meanwhile, p99 {_ms(these, 0.99)} ms",
            flush=True,
        )
    SqliteStore._reseal_chunk = chunk  # type: ignore[method-assign]

    values, seconds = statistics.median(v for v, _ in reseals), statistics.median(s for _, s in reseals)
    rate = statistics.median(v / s for v, s in reseals)
    mib = statistics.median(v * (payload + SEAL_OVERHEAD) / s for v, s in reseals) / 2**20
    print()
    print(
        f"re-sealed {args.secrets} secrets ({values:.0f} sealed values: current and history) in {seconds:.2f} s,"
        f" median of {len(reseals)}:"
    )
    print(f"  {args.secrets / seconds:,.0f} secrets/s, {rate:,.0f} values/s, about {mib:.1f} MiB/s of sealed data")
    print(
        f"  {len(held)} reseal jobs of up to {store_sqlite.RESEAL_ROWS} rows; each held the writer"
        f" p50 {_ms(held, 0.5)} ms, p99 {_ms(held, 0.99)} ms, max {max(held) * 1000:.1f} ms"
    )
    print(f"writes ({load})   count    p50 ms   p99 ms   max ms   median of the runs' p99 ms")
    for label, lat, p99 in (("no reseal", baseline, p99s[0]), ("during the reseals", during, p99s[1])):
        print(
            f"  {label:<24} {len(lat):>7}  {_ms(lat, 0.5):>8} {_ms(lat, 0.99):>8} {max(lat) * 1000 if lat else 0:>8.1f}"
            f" {statistics.median(p99):>10.1f}"
        )
    if during:
        print(f"  mean during / mean without: {statistics.mean(during) / statistics.mean(baseline):.2f}")


if __name__ == "__main__":
    asyncio.run(main())
