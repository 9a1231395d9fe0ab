"""A soak of a real `satcheld serve --dev`: --streams WatchSecrets(send_initial)
streams, each a node agent of its own on its own connection, a tenth of them
never read, while a paced writer updates secrets at --rate writes/s for
--minutes. Prints per minute the writes' p50/p99/max latency and the server's
CPU and RSS; the server's RSS slope after --warmup (least squares over samples
every 10 s: flat means no leak); whether every reading stream received every
acknowledged write it should have, in order; and whether every stalled stream
was cut off with RESOURCE_EXHAUSTED / WATCH_BUFFER_OVERFLOW. Not a test.

The fleet: --secrets secrets in namespace `soak`; reading node i has one
workload bound to secret i mod --secrets (so a reading stream sees
rate/secrets events a second, 2 by default, and the server sends 1,800 a
second to the 900); each stalled node has a workload bound to every secret, so
that its buffer (10,000 events) fills within a minute of writes, where a
reading node's 2 events a second would take over an hour. The stalled streams'
channels turn off grpc's BDP probing, which would otherwise let each take
megabytes in flight before the server's buffer sees any of it. The writer
updates the secrets in turn, each write due 1/rate s after the last whatever
the earlier ones are doing; a write's latency runs from when it was due.
The default warm-up, 90 s, covers the first minute, in which the stalled
streams' buffers fill and are freed as each is cut off.

    .venv/bin/python bench/soak.py [--minutes 10] [--streams 1000] [--rate 200]
"""

from __future__ import annotations

import argparse
import array
import asyncio
import dataclasses
import itertools
import json
import os
import pathlib
import pickle
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

# This script's directory is on sys.path.
import _harness
import grpc
from _harness import DATA, Server, call_all, load, own_channel, percentile, process_seconds, rss_kib
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2, status_pb2

from satchel.v1 import meta_pb2, secret_pb2, secret_pb2_grpc, workload_pb2, workload_pb2_grpc

NAMESPACE = "soak"
MODIFIED = meta_pb2.EVENT_TYPE_MODIFIED
SYNCED = meta_pb2.EVENT_TYPE_SYNCED
OVERFLOW = "WATCH_BUFFER_OVERFLOW"
RSS_EVERY = 10.0  # seconds between samples of the server's RSS
SETUP_TIMEOUT = 180.0  # for every stream's SYNCED
DRAIN_TIMEOUT = 60.0  # after the last write, for the reading streams to receive it
STALLED_TIMEOUT = 120.0  # to read each stalled stream to its end


def secret_name(k: int) -> str:
    return f"s-{k:03d}"


def node_name(i: int) -> str:
    return f"node-{i:05d}"


def stalled(i: int, streams: int) -> bool:
    """The last tenth of the nodes never read their streams."""
    return i >= streams - streams // 10


# --- the watcher process (`soak.py --watchers SPEC`) ---


@dataclasses.dataclass
class WatcherSpec:
    address: str
    certs: str
    identities: str  # the pickled (key PEM, certificate PEMs) of every node
    streams: int
    secrets: int
    out: str


@dataclasses.dataclass
class Watch:
    node: int
    channel: grpc.aio.Channel
    call: grpc.aio.UnaryStreamCall
    synced_revision: int = -1
    revisions: array.array = dataclasses.field(default_factory=lambda: array.array("q"))  # MODIFIED, as received
    error: str = ""  # the status it ended with
    reason: str = ""  # and its ErrorInfo's reason
    last_revision: str = ""  # ErrorInfo metadata: the last revision the server says it sent


def _ended(w: Watch, error: grpc.aio.AioRpcError) -> None:
    w.error = error.code().name
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    w.reason, w.last_revision = info.reason, info.metadata.get("last_revision", "")


async def _read(w: Watch, synced: asyncio.Event, counter: list[int]) -> None:
    """Reads a stream to its end, noting its SYNCED and every MODIFIED revision."""
    try:
        async for event in w.call:
            if event.type == MODIFIED:
                w.revisions.append(event.revision)
            elif event.type == SYNCED and w.synced_revision < 0:
                w.synced_revision = event.revision
                counter[0] += 1
                synced.set()
        w.error = "ended without a status"
    except grpc.aio.AioRpcError as error:
        _ended(w, error)
    except asyncio.CancelledError:
        pass
    synced.set()


async def _watchers(spec: WatcherSpec) -> None:
    """Opens every stream and waits for the SYNCED of the reading ones (a
    stalled one gets its first read only at the end); says `ready SECONDS`.
    Then one line from stdin, the path of the pickled acknowledged writes
    [(secret, revision)]: it waits until every reading stream has its writes
    (or DRAIN_TIMEOUT), reads each stalled stream to its end, writes the
    findings to OUT as JSON and says `done`."""
    _die_with_parent()
    certs = pathlib.Path(spec.certs)
    key_pem, chains = pickle.loads(pathlib.Path(spec.identities).read_bytes())
    request = secret_pb2.WatchSecretsRequest(namespace=NAMESPACE, send_initial=True)
    synced, counter = asyncio.Event(), [0]
    watches, tasks = [], []
    t0 = time.perf_counter()
    for i in range(spec.streams):
        credentials = _harness.node_credentials(certs, key_pem, chains[i])
        if stalled(i, spec.streams):
            channel = grpc.aio.secure_channel(
                spec.address,
                credentials,
                options=[("grpc.use_local_subchannel_pool", 1), ("grpc.http2.bdp_probe", 0)],
            )
        else:
            channel = own_channel(spec.address, credentials)
        w = Watch(i, channel, secret_pb2_grpc.SecretServiceStub(channel).WatchSecrets(request))
        watches.append(w)
        if not stalled(i, spec.streams):
            tasks.append(asyncio.create_task(_read(w, synced, counter)))
    readers = [w for w in watches if not stalled(w.node, spec.streams)]
    stalls = [w for w in watches if stalled(w.node, spec.streams)]
    while counter[0] < len(readers):
        failed = [w.error for w in readers if w.error]
        if failed or time.perf_counter() - t0 > SETUP_TIMEOUT:
            raise SystemExit(f"{counter[0]} of {len(readers)} reading streams synced; errors: {failed[:3]}")
        synced.clear()
        try:
            await asyncio.wait_for(synced.wait(), 1.0)
        except TimeoutError:
            pass
    # A stalled stream is established once its call has the server's headers.
    await asyncio.wait_for(asyncio.gather(*(w.call.initial_metadata() for w in stalls)), SETUP_TIMEOUT)
    print(f"ready {time.perf_counter() - t0:.3f}", flush=True)

    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    acked: list[tuple[int, int]] = pickle.loads(pathlib.Path(line.strip()).read_bytes())
    expected: dict[int, list[int]] = {k: [] for k in range(spec.secrets)}
    for k, revision in sorted(acked, key=lambda a: a[1]):
        expected[k].append(revision)
    last_write = max((r for _, r in acked), default=0)

    def has_all(w: Watch) -> bool:
        want = expected[w.node % spec.secrets]
        return bool(w.error) or not want or (len(w.revisions) > 0 and w.revisions[-1] >= want[-1])

    deadline = time.perf_counter() + DRAIN_TIMEOUT
    while time.perf_counter() < deadline and not all(has_all(w) for w in readers):
        await asyncio.sleep(0.1)

    # Now the stalled streams are read: what they were sent before they were
    # cut off, then their status.
    stall_tasks = [asyncio.create_task(_read(w, synced, counter)) for w in stalls]
    await asyncio.wait(stall_tasks, timeout=STALLED_TIMEOUT)
    for w, task in zip(stalls, stall_tasks, strict=True):
        if not task.done():
            w.error = w.error or f"still open after {STALLED_TIMEOUT:.0f} s of reading"
    for w in watches:
        w.call.cancel()
    await asyncio.gather(*tasks, *stall_tasks, return_exceptions=True)
    await asyncio.gather(*(w.channel.close() for w in watches), return_exceptions=True)

    findings = {"readers": len(readers), "missing": 0, "readers_missing": 0, "out_of_order": 0, "unacknowledged": 0}
    findings["reader_errors"] = [w.error for w in readers if w.error and w.error != "CANCELLED"]
    for w in readers:
        want = [r for r in expected[w.node % spec.secrets] if r > w.synced_revision]
        got = list(w.revisions)
        findings["out_of_order"] += sum(1 for a, b in itertools.pairwise(got) if b <= a)
        missing = len(set(want) - set(got))
        findings["missing"] += missing
        findings["readers_missing"] += bool(missing)
        findings["unacknowledged"] += len(set(got) - set(want))  # a write that failed at the client but committed
    stall_results = []
    for w in stalls:
        got = list(w.revisions)
        ordered = all(b > a for a, b in itertools.pairwise(got))
        says_last = w.last_revision == str(got[-1] if got else w.synced_revision)
        stall_results.append((w.error, w.reason, len(got), ordered, says_last))
    findings["stalled"] = stall_results
    findings["writes"] = len(acked)
    findings["last_write"] = last_write
    pathlib.Path(spec.out).write_text(json.dumps(findings))
    print("done", flush=True)


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when the bench process goes away."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# --- the bench process ---


async def populate(channel: grpc.aio.Channel, streams: int, secrets: int) -> None:
    """The secrets, and one workload per node: bound to its one secret, or to all of them for a stalled node."""
    secret_stub = secret_pb2_grpc.SecretServiceStub(channel)
    workload_stub = workload_pb2_grpc.WorkloadServiceStub(channel)

    def secret(k: int):
        meta = meta_pb2.ObjectMeta(namespace=NAMESPACE, name=secret_name(k))
        request = secret_pb2.CreateSecretRequest(secret=secret_pb2.Secret(metadata=meta, data=DATA))
        return lambda: secret_stub.CreateSecret(request)

    def workload(i: int):
        bound = [secret_name(k) for k in range(secrets)] if stalled(i, streams) else [secret_name(i % secrets)]
        w = workload_pb2.Workload(
            metadata=meta_pb2.ObjectMeta(namespace=NAMESPACE, name=f"w-{i:05d}"), node_name=node_name(i), secrets=bound
        )
        return lambda: workload_stub.CreateWorkload(workload_pb2.CreateWorkloadRequest(workload=w))

    await call_all(secret(k) for k in range(secrets))
    await workload(0)()  # alone: it creates the `default` account the others then use
    await call_all(workload(i) for i in range(1, streams))


@dataclasses.dataclass
class Minute:
    writes: list[float] = dataclasses.field(default_factory=list)  # latencies, seconds
    errors: int = 0
    cpu0: float = 0.0
    cpu1: float = 0.0


async def write_for(
    channel: grpc.aio.Channel, args: argparse.Namespace, pid: int, rss: list[tuple[float, int]]
) -> tuple[list[Minute], list[tuple[int, int]], list[str]]:
    """Updates secret (n mod --secrets) with new data, one write every 1/rate s,
    for --minutes; samples the server's RSS every RSS_EVERY s meanwhile.
    Returns the minutes, the acknowledged (secret, revision) and the errors."""
    stub = secret_pb2_grpc.SecretServiceStub(channel)
    mask = field_mask_pb2.FieldMask(paths=["data"])
    minutes = [Minute() for _ in range(args.minutes)]
    acked: list[tuple[int, int]] = []
    errors: list[str] = []
    calls: set[asyncio.Task[None]] = set()
    start = time.perf_counter()
    end = start + args.minutes * 60

    async def write(n: int, due: float) -> None:
        k = n % args.secrets
        data = {**DATA, "password": DATA["password"][:-10] + b"%010d" % n}
        request = secret_pb2.UpdateSecretRequest(
            secret=secret_pb2.Secret(metadata=meta_pb2.ObjectMeta(namespace=NAMESPACE, name=secret_name(k)), data=data),
            update_mask=mask,
        )
        minute = minutes[min(args.minutes - 1, int((due - start) // 60))]
        try:
            response = await stub.UpdateSecret(request)
        except grpc.aio.AioRpcError as error:
            minute.errors += 1
            errors.append(f"{error.code().name}: {error.details()}")
            return
        minute.writes.append(time.perf_counter() - due)
        acked.append((k, response.secret.metadata.resource_version))

    async def sample() -> None:
        while True:
            rss.append((time.perf_counter() - start, rss_kib(pid)))
            await asyncio.sleep(RSS_EVERY)

    sampler = asyncio.create_task(sample())
    minute_marks = [start + 60 * m for m in range(args.minutes + 1)]
    minutes[0].cpu0 = process_seconds(pid)
    n = 0
    try:
        while (due := start + n / args.rate) < end:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            m = int((due - start) // 60)
            if m and not minutes[m].cpu0:
                minutes[m - 1].cpu1 = minutes[m].cpu0 = process_seconds(pid)
                print_minute(m, minutes[m - 1], rss, first=m == 1)
            task = asyncio.create_task(write(n, due))
            calls.add(task)
            task.add_done_callback(calls.discard)
            n += 1
        await asyncio.sleep(max(0.0, minute_marks[-1] - time.perf_counter()))
        minutes[-1].cpu1 = process_seconds(pid)
        await asyncio.gather(*calls)
        rss.append((time.perf_counter() - start, rss_kib(pid)))
        print_minute(args.minutes, minutes[-1], rss, first=args.minutes == 1)
    finally:
        sampler.cancel()
    return minutes, acked, errors


def print_minute(number: int, m: Minute, rss: list[tuple[float, int]], first: bool) -> None:
    if first:
        print(
            f"{'minute':<7}{'writes':>7}{'errors':>7}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}"
            f"{'server CPU':>11}{'RSS MiB':>8}"
        )
    w = sorted(m.writes)
    print(
        f"{number:<7}{len(w):>7}{m.errors:>7}{percentile(w, 0.5) * 1000:>8.1f}{percentile(w, 0.99) * 1000:>8.1f}"
        f"{(w[-1] if w else float('nan')) * 1000:>8.1f}{(m.cpu1 - m.cpu0) / 60:>11.0%}{rss[-1][1] / 1024:>8.1f}",
        flush=True,
    )


def slope_kib_per_minute(samples: list[tuple[float, int]]) -> float:
    """Least squares over (seconds, KiB), in KiB per minute."""
    n = len(samples)
    if n < 2:
        return float("nan")
    mean_t = sum(t for t, _ in samples) / n
    mean_r = sum(r for _, r in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    return 60 * sum((t - mean_t) * (r - mean_r) for t, r in samples) / var if var else float("nan")


async def _run(args: argparse.Namespace, server: Server, workdir: pathlib.Path) -> int:
    certs = workdir / "certs"
    pid = server.process.pid
    t = time.perf_counter()
    async with own_channel(server.address, _harness.credentials(certs)) as channel:
        await populate(channel, args.streams, args.secrets)
        identities = workdir / "nodes.pickle"
        names = [node_name(i) for i in range(args.streams)]
        identities.write_bytes(pickle.dumps(_harness.node_identities(certs, names)))
        print(f"{args.secrets} secrets and {args.streams} nodes with their workloads: {time.perf_counter() - t:.0f} s")
        out = workdir / "findings.json"
        spec = WatcherSpec(server.address, str(certs), str(identities), args.streams, args.secrets, str(out))
        log = workdir / "watchers.log"
        argv = [
            sys.executable,
            str(pathlib.Path(__file__).resolve()),
            "--watchers",
            json.dumps(dataclasses.asdict(spec)),
        ]
        with log.open("w") as errors:
            watchers = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True)
        try:
            assert watchers.stdin is not None and watchers.stdout is not None
            line = await asyncio.get_running_loop().run_in_executor(None, watchers.stdout.readline)
            if not line.startswith("ready"):
                raise SystemExit("the watcher process failed:\n" + log.read_text(errors="replace")[-3000:])
            rss0 = rss_kib(pid)
            print(f"{args.streams} streams open in {float(line.split()[1]):.1f} s; satcheld RSS {rss0 / 1024:.1f} MiB")
            print()
            rss: list[tuple[float, int]] = []
            minutes, acked, write_errors = await write_for(channel, args, pid, rss)
            acked_path = workdir / "acked.pickle"
            acked_path.write_bytes(pickle.dumps(acked))
            watchers.stdin.write(f"{acked_path}\n")
            watchers.stdin.flush()
            line = await asyncio.get_running_loop().run_in_executor(None, watchers.stdout.readline)
            if not line.startswith("done"):
                raise SystemExit("the watcher process failed:\n" + log.read_text(errors="replace")[-3000:])
            findings = json.loads(out.read_text())
        finally:
            if watchers.poll() is None:
                watchers.kill()
            watchers.wait()
    print()
    report(args, minutes, rss, findings, write_errors)
    return 0


def report(
    args: argparse.Namespace,
    minutes: list[Minute],
    rss: list[tuple[float, int]],
    findings: dict,
    write_errors: list[str],
) -> None:
    every = sorted(t for m in minutes for t in m.writes)
    print(
        f"writes: {len(every)} acknowledged, {len(write_errors)} failed; "
        f"latency p50 {percentile(every, 0.5) * 1000:.1f} ms, p99 {percentile(every, 0.99) * 1000:.1f} ms, "
        f"max {(every[-1] if every else float('nan')) * 1000:.1f} ms "
        f"(from when each was due; offered {args.rate:g}/s)"
    )
    for error in sorted(set(write_errors))[:5]:
        print(f"  {write_errors.count(error)} x {error}")
    after = [(t, r) for t, r in rss if t >= args.warmup]
    first, last = (after[0][1], after[-1][1]) if after else (0, 0)
    print(
        f"server RSS: {rss[0][1] / 1024:.1f} MiB at the first write, {first / 1024:.1f} MiB at {args.warmup:g} s, "
        f"{last / 1024:.1f} MiB at the end; slope after {args.warmup:g} s of warm-up "
        f"{slope_kib_per_minute(after):+.0f} KiB/min (least squares over {len(after)} samples, every {RSS_EVERY:g} s)"
    )
    print(
        f"reading streams: {findings['readers']}; acknowledged writes missing {findings['missing']} "
        f"(in {findings['readers_missing']} streams), out of order {findings['out_of_order']}, "
        f"unacknowledged writes received {findings['unacknowledged']} (all should be 0)"
    )
    for error in sorted(set(findings["reader_errors"]))[:5]:
        print(f"  {findings['reader_errors'].count(error)} x ended with {error}")
    stalls = findings["stalled"]
    cut = [s for s in stalls if s[0] == "RESOURCE_EXHAUSTED" and s[1] == OVERFLOW]
    sent = sorted(s[2] for s in stalls)
    print(
        f"stalled streams: {len(stalls)}; cut off with RESOURCE_EXHAUSTED/{OVERFLOW}: {len(cut)} "
        f"(should be all); events each received before its status {sent[0] if sent else 0}-{sent[-1] if sent else 0} "
        f"(of {findings['writes']} written), in order {sum(s[3] for s in stalls)}, ErrorInfo last_revision "
        f"= the last received {sum(s[4] for s in stalls)}"
    )
    others = [f"{s[0]} {s[1]}".strip() for s in stalls if s not in cut]
    for error in sorted(set(others))[:5]:
        print(f"  {others.count(error)} x {error}")
    curve = " ".join(f"{r / 1024:.0f}" for _, r in rss)
    print(f"server RSS every {RSS_EVERY:g} s (MiB): {curve}")
    p99s = ", ".join(f"{percentile(sorted(m.writes), 0.99) * 1000:.0f}" for m in minutes)
    print(f"write p99 per minute (ms): {p99s}")


def main(argv: list[str] | None = None) -> int:
    parser = _harness.argument_parser(__doc__)
    parser.add_argument("--minutes", type=int, default=10, help="minutes of writes (default 10)")
    parser.add_argument("--streams", type=int, default=1000, help="node streams, a tenth never read (default 1000)")
    parser.add_argument("--rate", type=float, default=200.0, help="writes per second (default 200)")
    parser.add_argument("--secrets", type=int, default=100, help="secrets the writes go to in turn (default 100)")
    parser.add_argument(
        "--warmup", type=float, default=90.0, help="seconds of writes before the RSS slope counts (default 90)"
    )
    _harness.add_server_arguments(parser)
    parser.add_argument("--watchers", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.watchers:
        asyncio.run(_watchers(WatcherSpec(**json.loads(args.watchers))))
        return 0
    if args.minutes < 1 or args.streams < 10 or args.rate <= 0 or args.secrets < 1 or args.warmup < 0:
        parser.error("--minutes and --secrets at least 1, --streams at least 10, --rate positive")
    _harness.require_satcheld(args.satcheld)
    nofile = _harness.raise_nofile(args.streams + 256)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="satchel-soak-"))
    started = time.perf_counter()
    try:
        with _harness.placed_client(args.pin) as (cpus, placement):
            serve = [args.satcheld, "serve", "--dev", "--data-dir", str(workdir), "--listen", "127.0.0.1:0"]
            with _harness.started([("satcheld", serve)], workdir, cpus) as (server,):
                print(
                    f"satchel soak bench: grpcio {grpc.__version__}, Python {platform.python_version()}, "
                    f"{os.cpu_count()} CPUs ({placement}); {nofile}; {load()}"
                )
                stalls = args.streams // 10
                print(
                    f"satcheld --dev at {server.address}; {args.streams} node streams WatchSecrets("
                    f"namespace={NAMESPACE!r}, send_initial), each its own certificate and connection, in one "
                    f"watcher process: {args.streams - stalls} read (each sees 1 of {args.secrets} secrets), "
                    f"{stalls} never read (each sees them all); UpdateSecret at {args.rate:g}/s for "
                    f"{args.minutes} min from the bench process"
                )
                try:
                    code = asyncio.run(_run(args, server, workdir))
                except grpc.aio.AioRpcError as error:
                    raise SystemExit(f"bench call failed: {error.code().name}: {error.details()}") from None
                if server.process.poll() is not None:
                    print(f"warning: satcheld exited with code {server.process.returncode} during the bench")
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"total {time.perf_counter() - started:.0f} s; {load()}")
    return code


if __name__ == "__main__":
    _harness.run(main)
