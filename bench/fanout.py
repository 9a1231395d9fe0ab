"""Watch fan-out of a real `satcheld serve --dev`: event latency to N watch
streams and server memory per idle stream, against a bare grpc.aio fan-out
server over the same mTLS, driven by the same client code.

First the RSS of each server with 0 and with --rss-streams idle streams. Then
for each N: N WatchSecrets streams, each on its own mTLS channel (as N node
agents), held by a watcher process (or --client-procs of them) and all
confirmed established (each got its SYNCED); the bench process updates one
secret every --interval seconds for --duration seconds, and every (event,
watcher) pair is timed from the moment the UpdateSecret call was made to the
moment that watcher received the event. Then the same with the echo server's
Publish (a unary call whose message it fans out to N subscribed streams).
A run whose latency keeps growing is marked SATURATED. Not a test.

    .venv/bin/python bench/fanout.py [--streams 100,1000] [--rss-streams 2000]
                                     [--duration 10] [--interval 0.05] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import pathlib
import pickle
import platform
import resource
import signal
import subprocess
import sys
import time

# This script's directory is on sys.path.
import _harness
import grpc
from _harness import DATA, Server, client_seconds, percentile, process_seconds
from google.protobuf import field_mask_pb2

from satchel.v1 import meta_pb2, secret_pb2, secret_pb2_grpc

NAMESPACE = "bench-fanout"
SECRET = "fanout"
WATCH_METHOD = "/satchel.v1.SecretService/WatchSecrets"
FANOUT_SERVICE = "satchel.bench.Fanout"
SUBSCRIBE_METHOD = f"/{FANOUT_SERVICE}/Subscribe"
PUBLISH_METHOD = f"/{FANOUT_SERVICE}/Publish"
MODIFIED = meta_pb2.EVENT_TYPE_MODIFIED
SYNCED = meta_pb2.EVENT_TYPE_SYNCED
P99_TARGET = 1.2  # Satchel p99 / echo p99 ...
TARGET_STREAMS = 1000  # ... at N=1000
RSS_TARGET_KIB = 100.0  # server RSS per idle stream ...
RSS_STREAMS = 2000  # ... at N=2000
SETUP_TIMEOUT = 120.0  # for all N streams to get their SYNCED
DRAIN_TIMEOUT = 10.0  # + --duration, after the last write, for every watcher to see it
SETTLE = 1.0  # seconds before reading RSS


# --- the echo fan-out server (its own process: `fanout.py --echo-server CERTS`) ---


def echo_server_options() -> list[tuple[str, int]]:
    """satcheld's own grpc settings, of which these matter here: a burst of
    thousands of calls must not be cancelled by grpc's default pending-request
    limits, and the same keepalive."""
    # Imported here: only the echo server's process needs satcheld.
    from satcheld._config import ServerConfig
    from satcheld._server import server_options

    # server_options reads only the config's extra_options; the paths a
    # ServerConfig requires are placeholders, never opened.
    required = [
        f.name
        for f in dataclasses.fields(ServerConfig)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    return server_options(ServerConfig(**dict.fromkeys(required, pathlib.Path("/nonexistent"))))


async def _serve_echo(certs: pathlib.Path) -> None:
    subscribers: set[asyncio.Queue[bytes]] = set()
    # What a subscriber gets first, so the client confirms it the same way.
    synced = secret_pb2.WatchSecretsResponse(type=SYNCED).SerializeToString()

    async def publish(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        for queue in subscribers:
            queue.put_nowait(request)
        return b""

    async def subscribe(request: bytes, context: grpc.aio.ServicerContext):
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        subscribers.add(queue)
        try:
            yield synced
            while True:
                yield await queue.get()
        finally:
            subscribers.discard(queue)

    server = grpc.aio.server(options=echo_server_options())
    # No (de)serializers: the handlers see and return raw bytes.
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                FANOUT_SERVICE,
                {
                    "Publish": grpc.unary_unary_rpc_method_handler(publish),
                    "Subscribe": grpc.unary_stream_rpc_method_handler(subscribe),
                },
            )
        ]
    )
    await _harness.serve(server, certs)


# --- process facts ---


def _rss_kib(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def _sockets(pid: int) -> int:
    """Open sockets of a process: one per client connection, plus a few."""
    count = 0
    for fd in pathlib.Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:
            pass
    return count


def _raise_nofile(needed: int) -> str:
    """Lifts RLIMIT_NOFILE towards the hard limit (children inherit it, so the
    servers can hold the connections too)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    if soft < needed:
        raise SystemExit(f"RLIMIT_NOFILE is {soft} (hard {hard}); {needed} descriptors are needed")
    return f"RLIMIT_NOFILE {soft}"


# --- a watcher process: N channels, one stream each, the same code for both servers ---


@dataclasses.dataclass
class Watcher:
    channel: grpc.aio.Channel
    call: grpc.aio.UnaryStreamCall | None = None
    synced: bool = False
    received: dict[int, float] = dataclasses.field(default_factory=dict)  # revision -> receipt
    duplicates: int = 0
    error: str = ""
    size: int = 0  # of the first MODIFIED event received


@dataclasses.dataclass
class Streams:
    """Open watch streams and the time it took to confirm them all."""

    watchers: list[Watcher]
    tasks: list[asyncio.Task[None]]
    setup_seconds: float = 0.0

    async def close(self) -> None:
        for w in self.watchers:
            if w.call is not None:
                w.call.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.gather(*(w.channel.close() for w in self.watchers), return_exceptions=True)


def _own_channel(address: str, credentials: grpc.ChannelCredentials) -> grpc.aio.Channel:
    # grpc shares one connection among channels with equal arguments through
    # its global subchannel pool; a local pool gives each channel its own.
    return grpc.aio.secure_channel(address, credentials, options=[("grpc.use_local_subchannel_pool", 1)])


async def _consume(w: Watcher, established: asyncio.Event, counter: list[int]) -> None:
    assert w.call is not None
    try:
        async for event in w.call:
            now = time.time()  # the writer is in another process: one system-wide clock
            if event.type == MODIFIED:
                if not w.size:
                    w.size = event.ByteSize()
                if event.revision in w.received:
                    w.duplicates += 1
                else:
                    w.received[event.revision] = now
            elif event.type == SYNCED and not w.synced:
                w.synced = True
                counter[0] += 1
                established.set()
        w.error = "stream ended"
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.CANCELLED:
            w.error = f"{error.code().name}: {error.details()}"
    except asyncio.CancelledError:
        pass
    established.set()  # wake the waiter, which looks for errors


async def _open(address: str, method: str, n: int, credentials: grpc.ChannelCredentials) -> Streams:
    """Opens N channels with one watch stream each and waits for every SYNCED."""
    request = secret_pb2.WatchSecretsRequest(namespace=NAMESPACE, send_initial=True)
    established = asyncio.Event()
    counter = [0]
    t0 = time.perf_counter()
    streams = Streams([], [])
    for _ in range(n):
        w = Watcher(_own_channel(address, credentials))
        w.call = w.channel.unary_stream(
            method,
            request_serializer=secret_pb2.WatchSecretsRequest.SerializeToString,
            response_deserializer=secret_pb2.WatchSecretsResponse.FromString,
        )(request)
        streams.watchers.append(w)
        streams.tasks.append(asyncio.create_task(_consume(w, established, counter)))
    deadline = t0 + SETUP_TIMEOUT
    while counter[0] < n:
        failed = [w.error for w in streams.watchers if w.error]
        if failed or time.perf_counter() > deadline:
            await streams.close()
            if failed:
                raise SystemExit(f"{len(failed)} of {n} streams failed, e.g. {failed[0]}")
            raise SystemExit(f"only {counter[0]} of {n} streams got SYNCED in {SETUP_TIMEOUT:.0f} s")
        established.clear()
        try:
            await asyncio.wait_for(established.wait(), timeout=1.0)
        except TimeoutError:
            pass
    streams.setup_seconds = time.perf_counter() - t0
    return streams


async def _serve_watchers(address: str, method: str, certs: pathlib.Path, n: int, out: pathlib.Path) -> None:
    """A watcher process (`fanout.py --watchers ...`): opens N streams, says
    `ready SECONDS`, then reads one line of JSON from stdin, the revisions it
    should receive and for how long to wait for them; waits, says `drained`;
    at the next line closes the streams, pickles what each stream received to
    OUT and says `done`. End of input closes the streams and exits."""
    _die_with_parent()
    streams = await _open(address, method, n, _harness.credentials(certs))
    print(f"ready {streams.setup_seconds:.3f}", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if line:
        order = json.loads(line)
        revisions = set(order["revisions"])
        deadline = time.perf_counter() + order["timeout"]
        while time.perf_counter() < deadline and any(
            not w.error and not revisions <= w.received.keys() for w in streams.watchers
        ):
            await asyncio.sleep(0.05)
        print("drained", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await streams.close()
    records = [(w.received, w.duplicates, w.error, w.size) for w in streams.watchers]
    out.write_bytes(pickle.dumps(records))
    print("done", flush=True)


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when the bench process goes away."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# --- the bench process's side of the watcher processes ---


@dataclasses.dataclass
class Target:
    """A server and the method its watchers call."""

    name: str
    server: Server
    method: str


WORKER_PIDS: set[int] = set()  # for the last-resort cleanup in main


class Clients:
    """K watcher processes holding N streams between them."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.outs: list[pathlib.Path] = []
        self.logs: list[pathlib.Path] = []
        self.setup_seconds = 0.0

    @classmethod
    async def start(cls, target: Target, n: int, k: int, certs: pathlib.Path, workdir: pathlib.Path) -> Clients:
        clients = cls()
        sizes = [n // k + (i < n % k) for i in range(k)]
        try:
            for i, size in enumerate(s for s in sizes if s):
                out = workdir / f"watchers-{target.name}-{n}-{i}.pickle"
                log = workdir / f"watchers-{target.name}-{n}-{i}.log"
                with log.open("w") as errors:
                    proc = subprocess.Popen(
                        [
                            sys.executable, str(pathlib.Path(__file__).resolve()), "--watchers",
                            target.server.address, target.method, str(certs), str(size), str(out),
                        ],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors,
                    )  # fmt: skip
                WORKER_PIDS.add(proc.pid)
                clients.procs.append(proc)
                clients.outs.append(out)
                clients.logs.append(log)
            for proc, log in zip(clients.procs, clients.logs, strict=True):
                line = await clients._line(proc, log, "ready", SETUP_TIMEOUT + 30)
                clients.setup_seconds = max(clients.setup_seconds, float(line.split()[1]))
        except BaseException:
            clients.kill()
            raise
        return clients

    async def _line(self, proc: subprocess.Popen[bytes], log: pathlib.Path, word: str, timeout: float) -> str:
        """The next line the process says, which must start with `word`."""
        assert proc.stdout is not None
        read = asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
        try:
            line = (await asyncio.wait_for(read, timeout)).decode()
        except TimeoutError:
            line = ""
        if not line.startswith(word):
            self.kill()  # also ends a read still waiting
            raise SystemExit(
                f"a watcher process did not say {word!r}; its output:\n" + log.read_text(errors="replace")[-2000:]
            )
        return line

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _say(self, message: bytes) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(message)
            proc.stdin.flush()

    async def drain(self, revisions: set[int], timeout: float) -> None:
        """Returns once every stream received `revisions`, or after `timeout` seconds."""
        order = {"revisions": sorted(revisions), "timeout": timeout}
        self._say(json.dumps(order).encode() + b"\n")
        for proc, log in zip(self.procs, self.logs, strict=True):
            await self._line(proc, log, "drained", timeout + 60)

    async def finish(self) -> list[tuple[dict[int, float], int, str, int]]:
        """Closes the streams (after `drain`) and returns (received revision ->
        receipt time, duplicates, error, event size) per stream."""
        try:
            self._say(b"close\n")
            records = []
            for proc, log, out in zip(self.procs, self.logs, self.outs, strict=True):
                await self._line(proc, log, "done", 60)
                records.extend(pickle.loads(out.read_bytes()))
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass  # kill() below
            return records
        finally:
            self.kill()

    def kill(self) -> None:
        """Ends the processes still running (one that said `done` is exiting by itself)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            WORKER_PIDS.discard(proc.pid)


# --- the writers: the same schedule and timing for both ---


class SatchelWriter:
    """Updates one secret with new data; an event's key is its revision."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = secret_pb2_grpc.SecretServiceStub(channel)

    def _request(self, seq: int) -> secret_pb2.UpdateSecretRequest:
        data = {**DATA, "password": DATA["password"][:-8] + b"%08d" % (seq % 10**8)}
        return secret_pb2.UpdateSecretRequest(
            secret=secret_pb2.Secret(metadata=meta_pb2.ObjectMeta(namespace=NAMESPACE, name=SECRET), data=data),
            update_mask=field_mask_pb2.FieldMask(paths=["data"]),
        )

    async def prepare(self) -> secret_pb2.Secret:
        """Creates the watched secret; returns it after one update."""
        secret = secret_pb2.Secret(
            metadata=meta_pb2.ObjectMeta(namespace=NAMESPACE, name=SECRET),
            type=secret_pb2.SECRET_TYPE_OPAQUE,
            data=DATA,
        )
        await self._stub.CreateSecret(secret_pb2.CreateSecretRequest(secret=secret))
        return (await self._stub.UpdateSecret(self._request(0))).secret

    async def write(self, seq: int) -> tuple[float, int, float]:
        """(moment the call was made, revision it produced, call latency)."""
        request = self._request(seq)
        t0 = time.time()
        response = await self._stub.UpdateSecret(request)
        return t0, response.secret.metadata.resource_version, time.time() - t0


class EchoWriter:
    """Publishes a WatchSecretsResponse like Satchel's event; its key is its revision."""

    def __init__(self, channel: grpc.aio.Channel, template: secret_pb2.Secret) -> None:
        self._publish = channel.unary_unary(PUBLISH_METHOD)
        self._template = template
        self._next = template.metadata.resource_version  # as long a varint as Satchel's

    def payload(self, revision: int) -> bytes:
        return secret_pb2.WatchSecretsResponse(
            type=MODIFIED, revision=revision, secret=self._template
        ).SerializeToString()

    async def write(self, seq: int) -> tuple[float, int, float]:
        self._next += 1
        revision = self._next
        payload = self.payload(revision)
        t0 = time.time()
        await self._publish(payload)
        return t0, revision, time.time() - t0


@dataclasses.dataclass
class Result:
    target: str
    streams: int
    setup_seconds: float
    writes: int
    pairs: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    missed: int
    watchers_missing: int
    max_missed: int
    duplicates: int
    write_p50_ms: float
    event_size: int
    drain_seconds: float
    offered: float  # deliveries per second: streams / interval
    first_ms: float  # mean latency of the events written in the first second
    last_ms: float  # and in the last second
    server_us: float  # server CPU time per (event, watcher) pair delivered
    client_cpu: float
    server_cpu: float
    errors: list[str]

    @property
    def saturated(self) -> bool:
        return self.last_ms > 2 * self.first_ms + 50


def _check_alive(server: Server) -> None:
    if server.process.poll() is not None:
        output = server.log.read_text(errors="replace")[-3000:]
        code = server.process.returncode
        raise SystemExit(f"{server.name} exited with code {code}; its output:\n{output}")


async def _measure(
    target: Target,
    writer: SatchelWriter | EchoWriter,
    n: int,
    *,
    args: argparse.Namespace,
    certs: pathlib.Path,
    workdir: pathlib.Path,
) -> Result:
    _check_alive(target.server)
    clients = await Clients.start(target, n, args.client_procs, certs, workdir)
    try:
        count = max(1, round(args.duration / args.interval))
        server = target.server.process.pid

        def cpu() -> tuple[float, float, float]:
            client = client_seconds() + sum(map(process_seconds, clients.pids))
            return client, process_seconds(server), time.perf_counter()

        cpu0 = cpu()
        start = time.perf_counter() + args.interval
        calls = []
        for seq in range(1, count + 1):
            # On a fixed schedule, not after the previous write returns.
            await asyncio.sleep(max(0.0, start + (seq - 1) * args.interval - time.perf_counter()))
            calls.append(asyncio.create_task(writer.write(seq)))
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        writes = [o for o in outcomes if not isinstance(o, BaseException)]
        errors = [f"write failed: {_describe(o)}" for o in outcomes if isinstance(o, BaseException)]
        drain = DRAIN_TIMEOUT + args.duration  # room for the backlog of a saturated run
        await clients.drain({revision for _, revision, _ in writes}, drain)
        cpu1 = cpu()  # from the first write until every event was received
        records = await clients.finish()
    finally:
        clients.kill()

    latencies: list[float] = []
    per_write: list[list[float]] = [[] for _ in writes]
    missed_by: list[int] = []
    for received, _, error, _ in records:
        missed = 0
        for i, (t_sent, revision, _) in enumerate(writes):
            t_received = received.get(revision)
            if t_received is None:
                missed += 1
            else:
                latencies.append(t_received - t_sent)
                per_write[i].append(t_received - t_sent)
        missed_by.append(missed)
        if error:
            errors.append(f"stream error: {error}")
    latencies.sort()
    # The mean latency of the first and of the last second of writes: a
    # backlog that grows through the run means the rate is beyond capacity.
    second = max(1, round(1 / args.interval))
    first_ms, last_ms = (
        1000 * sum(map(sum, part)) / max(1, sum(map(len, part))) for part in (per_write[:second], per_write[-second:])
    )
    write_latencies = sorted(latency for _, _, latency in writes)
    elapsed = cpu1[2] - cpu0[2]
    return Result(
        target=target.name,
        streams=n,
        setup_seconds=clients.setup_seconds,
        writes=len(writes),
        pairs=len(latencies),
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        max_ms=(latencies[-1] if latencies else float("nan")) * 1000,
        missed=sum(missed_by),
        watchers_missing=sum(1 for m in missed_by if m),
        max_missed=max(missed_by, default=0),
        duplicates=sum(r[1] for r in records),
        event_size=max((r[3] for r in records), default=0),
        drain_seconds=drain,
        write_p50_ms=percentile(write_latencies, 0.50) * 1000,
        offered=n / args.interval,
        first_ms=first_ms,
        last_ms=last_ms,
        server_us=(cpu1[1] - cpu0[1]) / max(1, len(latencies)) * 1e6,
        client_cpu=(cpu1[0] - cpu0[0]) / elapsed,
        server_cpu=(cpu1[1] - cpu0[1]) / elapsed,
        errors=errors,
    )


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return repr(error)[:200]


@dataclasses.dataclass
class Memory:
    target: str
    streams: int
    rss0_kib: int
    rss_kib: int
    sockets0: int
    sockets: int

    @property
    def per_stream_kib(self) -> float:
        return (self.rss_kib - self.rss0_kib) / self.streams


async def _memory(
    target: Target, n: int, *, args: argparse.Namespace, certs: pathlib.Path, workdir: pathlib.Path
) -> Memory:
    """RSS with 0, then with N idle established streams (after a small warm-up,
    so that one-off allocations are not charged to the streams)."""
    _check_alive(target.server)
    pid = target.server.process.pid
    warm = await Clients.start(target, min(10, n), 1, certs, workdir)
    await warm.drain(set(), 0)
    await warm.finish()
    await asyncio.sleep(SETTLE)
    rss0, sockets0 = _rss_kib(pid), _sockets(pid)
    clients = await Clients.start(target, n, args.client_procs, certs, workdir)
    try:
        await asyncio.sleep(SETTLE)
        rss, sockets = _rss_kib(pid), _sockets(pid)
        await clients.drain(set(), 0)
        await clients.finish()
    finally:
        clients.kill()
    return Memory(target.name, n, rss0, rss, sockets0, sockets)


async def _run(
    args: argparse.Namespace,
    satchel: Server,
    echo: Server,
    certs: pathlib.Path,
    workdir: pathlib.Path,
) -> tuple[list[Result], list[Memory]]:
    credentials = _harness.credentials(certs)
    satchel_target = Target("satchel", satchel, WATCH_METHOD)
    echo_target = Target("echo", echo, SUBSCRIBE_METHOD)
    where = {"args": args, "certs": certs, "workdir": workdir}
    async with (
        _own_channel(satchel.address, credentials) as satchel_channel,
        _own_channel(echo.address, credentials) as echo_channel,
    ):
        satchel_writer = SatchelWriter(satchel_channel)
        template = await satchel_writer.prepare()
        echo_writer = EchoWriter(echo_channel, template)

        # Memory first, on servers that have served no streams yet.
        memory = []
        if args.rss_streams:
            memory = [
                await _memory(satchel_target, args.rss_streams, **where),
                await _memory(echo_target, args.rss_streams, **where),
            ]
            print_memory(memory)
            print()

        results = []
        for n in args.streams:
            for target, writer in ((satchel_target, satchel_writer), (echo_target, echo_writer)):
                result = await _measure(target, writer, n, **where)
                results.append(result)
                print_result(result, header=len(results) == 1)
        return results, memory


# --- the report ---


def print_memory(memory: list[Memory]) -> None:
    print(f"{'idle streams':<14}{'server':<9}{'RSS 0 MiB':>10}{'RSS N MiB':>10}{'sockets 0/N':>13}{'KiB/stream':>12}")
    for m in memory:
        print(
            f"{m.streams:<14}{m.target:<9}{m.rss0_kib / 1024:>10.1f}{m.rss_kib / 1024:>10.1f}"
            f"{f'{m.sockets0}/{m.sockets}':>13}{m.per_stream_kib:>12.1f}"
        )


def print_result(r: Result, header: bool) -> None:
    if header:
        print(
            f"{'streams':<9}{'server':<9}{'setup s':>8}{'writes':>7}{'pairs':>8}"
            f"{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'missed':>7}{'write p50':>10}"
            f"{'client CPU':>11}{'server CPU':>11}{'server us/pair':>15}"
        )
    print(
        f"{r.streams:<9}{r.target:<9}{r.setup_seconds:>8.1f}{r.writes:>7}{r.pairs:>8}"
        f"{r.p50_ms:>8.1f}{r.p99_ms:>8.1f}{r.max_ms:>8.1f}{r.missed:>7}{r.write_p50_ms:>10.2f}"
        f"{r.client_cpu:>11.0%}{r.server_cpu:>11.0%}{r.server_us:>15.0f}",
        flush=True,
    )
    if r.saturated:
        print(
            f"  SATURATED: mean latency grew from {r.first_ms:.0f} ms (first second of writes) "
            f"to {r.last_ms:.0f} ms (last second): {r.offered:.0f} "
            "deliveries/s are more than server and client keep up with on this machine, so "
            "these figures measure a growing backlog"
        )
    if r.missed:
        print(
            f"  {r.watchers_missing} watchers missed events (at most {r.max_missed} each; "
            f"waited {r.drain_seconds:.0f} s after the last write)"
        )
    if r.duplicates:
        print(f"  {r.duplicates} duplicate events")
    for error in sorted(set(r.errors))[:5]:
        print(f"  {r.errors.count(error)} x {error}")


def print_verdicts(results: list[Result], memory: list[Memory]) -> None:
    by = {(r.target, r.streams): r for r in results}
    for n in sorted({r.streams for r in results}):
        satchel, echo = by[("satchel", n)], by[("echo", n)]
        ratio = satchel.p99_ms / echo.p99_ms if echo.p99_ms else float("nan")
        line = f"N={n}: p99 satchel/echo {ratio:.2f}"
        cost = satchel.server_us / echo.server_us if echo.server_us else float("nan")
        saturated = [r.target for r in (satchel, echo) if r.saturated]
        if n == TARGET_STREAMS:
            if saturated:
                verdict = f"not judged: {' and '.join(saturated)} SATURATED, it compares backlogs"
            else:
                verdict = "ok" if ratio <= P99_TARGET else "ABOVE TARGET"
            line += f" (target <= {P99_TARGET}; {verdict})"
        elif saturated:
            line += f" ({' and '.join(saturated)} SATURATED)"
        line += f"; server CPU per delivery satchel/echo {cost:.2f}"
        line += f"; missed events {satchel.missed} satchel, {echo.missed} echo (should be 0)"
        print(line)
    if TARGET_STREAMS not in {r.streams for r in results}:
        print(f"(the p99 target, <= {P99_TARGET}, is for N={TARGET_STREAMS})")
    if not memory:
        return
    satchel, echo = (next(m for m in memory if m.target == t) for t in ("satchel", "echo"))
    verdict = "ok" if satchel.per_stream_kib <= RSS_TARGET_KIB else "ABOVE TARGET"
    at = "" if satchel.streams == RSS_STREAMS else f" at N={RSS_STREAMS}"
    print(
        f"RSS per idle stream at N={satchel.streams}: satchel {satchel.per_stream_kib:.1f} KiB "
        f"(target <= {RSS_TARGET_KIB:.0f}{at}) {verdict}; echo {echo.per_stream_kib:.1f} KiB"
    )


def _clients(k: int) -> str:
    where = (
        "one watcher process holds all N streams" if k == 1 else f"the N streams are split over {k} watcher processes"
    )
    return (
        f"clients: {where}, each stream on its own grpc.aio mTLS channel and connection "
        "(admin certificate, local subchannel pool), the same code for both servers; the writer "
        "runs in the bench process on one more channel; latency = a watcher's receipt - the moment "
        "the write call was made, both time.time() (one system clock)"
    )


def _load() -> str:
    return "load average " + " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3])


def main(argv: list[str] | None = None) -> int:
    parser = _harness.argument_parser(__doc__)
    parser.add_argument("--streams", default="100,1000", help="comma-separated stream counts for the latency runs")
    parser.add_argument("--rss-streams", type=int, default=RSS_STREAMS, help="idle streams for RSS (0: skip)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of writes per run")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between writes")
    parser.add_argument("--quick", action="store_true", help="smoke run: 50 streams, 3 s, RSS at 200 streams")
    _harness.add_server_arguments(parser)
    parser.add_argument(
        "--client-procs",
        type=int,
        default=1,
        help="watcher processes to split the streams over (the writer stays in this one)",
    )
    parser.add_argument("--watchers", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.echo_server:
        asyncio.run(_serve_echo(args.echo_server))
        return 0
    if args.watchers:
        address, method, certs, n, out = args.watchers
        asyncio.run(_serve_watchers(address, method, pathlib.Path(certs), int(n), pathlib.Path(out)))
        return 0

    if args.quick:
        args.streams, args.duration, args.rss_streams = "50", 3.0, 200
    try:
        args.streams = [int(s) for s in args.streams.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--streams: not a list of numbers: {args.streams!r}")
    if not args.streams or min(args.streams) < 1 or args.rss_streams < 0:
        parser.error("stream counts must be positive")
    if args.client_procs < 1:
        parser.error("--client-procs must be at least 1")
    if args.interval <= 0 or args.duration <= 0:
        parser.error("--duration and --interval must be positive")
    _harness.require_satcheld(args.satcheld)

    # A socket per stream here and in the server, plus grpc's own.
    nofile = _raise_nofile(max(*args.streams, args.rss_streams) + 256)
    started = time.perf_counter()
    with _harness.servers(args, __file__) as servers:
        satcheld, echo = servers.satcheld, servers.echo
        try:
            print(
                f"satchel fan-out bench: grpcio {grpc.__version__}, "
                f"Python {platform.python_version()}, "
                f"{os.cpu_count()} CPUs ({servers.placement}); {nofile}; {_load()}"
            )
            print(_clients(args.client_procs))
            print(
                f"satcheld --dev at {satcheld.address}: WatchSecrets(namespace={NAMESPACE!r}, "
                f"send_initial), UpdateSecret of one secret every {args.interval * 1000:g} ms for "
                f"{args.duration:g} s; echo at {echo.address}: Subscribe streams fed by unary "
                "Publish calls on the same schedule"
            )
            print()
            try:
                results, memory = asyncio.run(_run(args, satcheld, echo, servers.certs, servers.workdir))
            except grpc.aio.AioRpcError as error:
                raise SystemExit(f"bench call failed: {_describe(error)}") from None
            sizes = []
            for name in ("satchel", "echo"):
                seen = sorted({r.event_size for r in results if r.target == name and r.event_size})
                sizes.append(f"{name} {seen[0]}-{seen[-1]} B" if seen else f"{name} none")
            print(f"(events as received: {', '.join(sizes)}; pairs = events x watchers)")
            print()
            print_verdicts(results, memory)
            servers.warn_exited()
            print(f"total {time.perf_counter() - started:.0f} s; {_load()}")
        finally:
            for pid in WORKER_PIDS:  # only if the run was cut short
                try:
                    if b"--watchers" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes():
                        os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
    return 0


if __name__ == "__main__":
    _harness.run(main)
