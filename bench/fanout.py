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

`--as node` compares a node's streams with the admin's instead: first the RSS
per idle node stream with a node graph loaded (--graph-per-node workloads on
each of --rss-streams nodes); then N streams each presenting its own node
certificate (node-i, whose one workload binds the watched secret), N admin
streams and N echo streams, all open at once, and --rounds rounds in which
each of the three gets one run of writes in turn (each round starting with
the next arm).

    .venv/bin/python bench/fanout.py [--streams 100,1000] [--rss-streams 2000]
                                     [--duration 10] [--interval 0.05] [--quick]
    .venv/bin/python bench/fanout.py --as node [--streams 1000] [--rss-streams 1000]
                                     [--graph-per-node 10] [--rounds 5] [--duration 6]
                                     [--interval 0.2] [--quick]
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
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

# This script's directory is on sys.path.
import _harness
import grpc
from _harness import (
    DATA,
    Server,
    call_all,
    client_seconds,
    load,
    own_channel,
    percentile,
    process_seconds,
    raise_nofile,
    rss_kib,
)
from google.protobuf import field_mask_pb2

from satchel.v1 import (
    meta_pb2,
    secret_pb2,
    secret_pb2_grpc,
    service_account_pb2,
    service_account_pb2_grpc,
    workload_pb2,
    workload_pb2_grpc,
)

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
# --as node
NODE_NAMESPACE = "bench-nodes"  # the node arm's secret and its nodes' workloads
GRAPH_NAMESPACE = "bench-graph"  # the graph loaded for the memory figure
NODE_TARGET = 1.2  # node p99 and CPU per delivery / admin's ...
ADMIN_TARGET = 1.2  # ... and admin's / echo's (the Watch target), at an unsaturated rate
# Defaults per mode: (admin, node).
DEFAULTS = {
    "streams": ("100,1000", "1000"),
    "rss_streams": (RSS_STREAMS, 1000),
    "duration": (10.0, 6.0),
    "interval": (0.05, 0.2),
}


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


def _sockets(pid: int) -> int:
    """Open sockets of a process: one per client connection, plus a few."""
    count = 0
    for fd in pathlib.Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:
            pass
    return count


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


async def _open(address: str, method: str, namespace: str, credentials: list[grpc.ChannelCredentials]) -> Streams:
    """Opens a channel with one watch stream per credentials and waits for every SYNCED."""
    request = secret_pb2.WatchSecretsRequest(namespace=namespace, send_initial=True)
    n = len(credentials)
    established = asyncio.Event()
    counter = [0]
    t0 = time.perf_counter()
    streams = Streams([], [])
    for stream_credentials in credentials:
        w = Watcher(own_channel(address, stream_credentials))
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


@dataclasses.dataclass
class WatcherSpec:
    """What one watcher process opens: N streams to ADDRESS's METHOD of NAMESPACE,
    as the admin (`identities` None) or each stream as its own node: stream i
    presents certificate `first` + i of the `identities` file (see `_mint_nodes`)."""

    address: str
    method: str
    namespace: str
    certs: str
    n: int
    out: str
    identities: str | None = None
    first: int = 0

    def credentials(self) -> list[grpc.ChannelCredentials]:
        certs = pathlib.Path(self.certs)
        if self.identities is None:
            return [_harness.credentials(certs)] * self.n
        key_pem, chains = pickle.loads(pathlib.Path(self.identities).read_bytes())
        if self.first + self.n > len(chains):
            raise SystemExit(f"{self.identities} holds {len(chains)} node certificates, not {self.first + self.n}")
        return [_harness.node_credentials(certs, key_pem, chain) for chain in chains[self.first : self.first + self.n]]


async def _serve_watchers(spec: WatcherSpec) -> None:
    """A watcher process (`fanout.py --watchers SPEC`): opens the streams, says
    `ready SECONDS`, then follows one line of JSON at a time from stdin:
    {"drain": revisions, "timeout": seconds} waits until every stream received
    those revisions (or the timeout) and says `drained`; {"dump": true} pickles
    what each stream received since the last dump to OUT, forgets it and says
    `dumped`. `close`, or the end of input, closes the streams, pickles what
    they received since the last dump to OUT and says `done`."""
    _die_with_parent()
    streams = await _open(spec.address, spec.method, spec.namespace, spec.credentials())
    print(f"ready {streams.setup_seconds:.3f}", flush=True)
    out = pathlib.Path(spec.out)
    loop = asyncio.get_running_loop()

    def dump() -> None:
        records = [(w.received, w.duplicates, w.error, w.size) for w in streams.watchers]
        out.write_bytes(pickle.dumps(records))
        for w in streams.watchers:
            w.received, w.duplicates = {}, 0

    while (line := await loop.run_in_executor(None, sys.stdin.readline)) and line.strip() != "close":
        order = json.loads(line)
        if "drain" in order:
            revisions = set(order["drain"])
            deadline = time.perf_counter() + order["timeout"]
            while time.perf_counter() < deadline and any(
                not w.error and not revisions <= w.received.keys() for w in streams.watchers
            ):
                await asyncio.sleep(0.05)
            print("drained", flush=True)
        elif order.get("dump"):
            dump()
            print("dumped", flush=True)
    await streams.close()
    dump()
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
    """A server, the method and namespace its watchers call, and as whom: the
    admin, or each stream as its own node (`identities`, from `_mint_nodes`)."""

    name: str
    server: Server
    method: str
    namespace: str = NAMESPACE
    identities: pathlib.Path | None = None


WORKER_PIDS: set[int] = set()  # for the last-resort cleanup in main
Record = tuple[dict[int, float], int, str, int]  # per stream: revision -> receipt, duplicates, error, event size


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
                spec = WatcherSpec(
                    target.server.address,
                    target.method,
                    target.namespace,
                    str(certs),
                    size,
                    str(out),
                    None if target.identities is None else str(target.identities),
                    sum(sizes[:i]),
                )
                with log.open("w") as errors:
                    proc = subprocess.Popen(
                        [
                            sys.executable, str(pathlib.Path(__file__).resolve()), "--watchers",
                            json.dumps(dataclasses.asdict(spec)),
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
        order = {"drain": sorted(revisions), "timeout": timeout}
        self._say(json.dumps(order).encode() + b"\n")
        for proc, log in zip(self.procs, self.logs, strict=True):
            await self._line(proc, log, "drained", timeout + 60)

    async def collect(self) -> list[Record]:
        """(received revision -> receipt time, duplicates, error, event size) per
        stream since the last `collect`; the streams stay open."""
        self._say(b'{"dump": true}\n')
        records = []
        for proc, log, out in zip(self.procs, self.logs, self.outs, strict=True):
            await self._line(proc, log, "dumped", 60)
            records.extend(pickle.loads(out.read_bytes()))
        return records

    async def finish(self) -> list[Record]:
        """Closes the streams (after `drain`) and returns what `collect` would."""
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

    def __init__(self, channel: grpc.aio.Channel, namespace: str = NAMESPACE) -> None:
        self._stub = secret_pb2_grpc.SecretServiceStub(channel)
        self._namespace = namespace

    def _request(self, seq: int) -> secret_pb2.UpdateSecretRequest:
        data = {**DATA, "password": DATA["password"][:-8] + b"%08d" % (seq % 10**8)}
        meta = meta_pb2.ObjectMeta(namespace=self._namespace, name=SECRET)
        return secret_pb2.UpdateSecretRequest(
            secret=secret_pb2.Secret(metadata=meta, data=data),
            update_mask=field_mask_pb2.FieldMask(paths=["data"]),
        )

    async def prepare(self) -> secret_pb2.Secret:
        """Creates the watched secret; returns it after one update."""
        secret = secret_pb2.Secret(
            metadata=meta_pb2.ObjectMeta(namespace=self._namespace, name=SECRET),
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
    latencies: list[float] = dataclasses.field(default_factory=list, repr=False)  # seconds, sorted

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
        return await _writes(target, writer, clients, n, args=args, keep_open=False)
    finally:
        clients.kill()


async def _writes(
    target: Target,
    writer: SatchelWriter | EchoWriter,
    clients: Clients,
    n: int,
    *,
    args: argparse.Namespace,
    keep_open: bool,
    seq0: int = 0,
) -> Result:
    """One run of writes to the N streams `clients` hold: every --interval for
    --duration seconds, then until every stream received them; the streams are
    then closed, or kept open for another run (`keep_open`)."""
    _check_alive(target.server)
    count = _write_count(args)
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
        calls.append(asyncio.create_task(writer.write(seq0 + seq)))
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    writes = [o for o in outcomes if not isinstance(o, BaseException)]
    errors = [f"write failed: {_describe(o)}" for o in outcomes if isinstance(o, BaseException)]
    drain = DRAIN_TIMEOUT + args.duration  # room for the backlog of a saturated run
    await clients.drain({revision for _, revision, _ in writes}, drain)
    cpu1 = cpu()  # from the first write until every event was received
    records = await (clients.collect() if keep_open else clients.finish())

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
        latencies=latencies,
    )


def _write_count(args: argparse.Namespace) -> int:
    return max(1, round(args.duration / args.interval))


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
    rss0, sockets0 = rss_kib(pid), _sockets(pid)
    clients = await Clients.start(target, n, args.client_procs, certs, workdir)
    try:
        await asyncio.sleep(SETTLE)
        rss, sockets = rss_kib(pid), _sockets(pid)
        await clients.drain(set(), 0)
        await clients.finish()
    finally:
        clients.kill()
    return Memory(target.name, n, rss0, rss, sockets0, sockets)


# --- `--as node`: each stream a node of its own, seeing only what its workloads bind ---


def _node_names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(n)]


def _mint_nodes(certs: pathlib.Path, names: list[str], path: pathlib.Path) -> pathlib.Path:
    """A certificate per node, all in one file that the watcher processes read."""
    path.write_bytes(pickle.dumps(_harness.node_identities(certs, names)))
    return path


def _workload(namespace: str, name: str, node: str, secrets: list[str], account: str = "") -> workload_pb2.Workload:
    return workload_pb2.Workload(
        metadata=meta_pb2.ObjectMeta(namespace=namespace, name=name),
        node_name=node,
        service_account=account,
        secrets=secrets,
    )


async def _bind_nodes(channel: grpc.aio.Channel, nodes: list[str]) -> None:
    """One workload per node in NODE_NAMESPACE, bound to the shared secret (and,
    with no account named, to the namespace's `default` account)."""
    stub = workload_pb2_grpc.WorkloadServiceStub(channel)

    def create(i: int) -> Callable[[], Awaitable[object]]:
        workload = _workload(NODE_NAMESPACE, f"w-{i:05d}", nodes[i], [SECRET])
        return lambda: stub.CreateWorkload(workload_pb2.CreateWorkloadRequest(workload=workload))

    await create(0)()  # alone: it creates the `default` account the others then use
    await call_all(create(i) for i in range(1, len(nodes)))


async def _load_graph(channel: grpc.aio.Channel, nodes: list[str], per_node: int) -> tuple[int, int, int]:
    """The node graph for the memory figure, in GRAPH_NAMESPACE: as many secrets
    and accounts as nodes (account j lists secret j), and `per_node` workloads on
    each node, workload k binding account k mod A and secrets k and 7k+3 mod S.
    Returns (secrets, accounts, workloads)."""
    secrets = secret_pb2_grpc.SecretServiceStub(channel)
    accounts = service_account_pb2_grpc.ServiceAccountServiceStub(channel)
    workloads = workload_pb2_grpc.WorkloadServiceStub(channel)
    count = len(nodes)
    secret_names, account_names = _node_names("s", count), _node_names("sa", count)

    def secret(name: str) -> Callable[[], Awaitable[object]]:
        request = secret_pb2.CreateSecretRequest(
            secret=secret_pb2.Secret(metadata=meta_pb2.ObjectMeta(namespace=GRAPH_NAMESPACE, name=name), data=DATA)
        )
        return lambda: secrets.CreateSecret(request)

    def account(j: int) -> Callable[[], Awaitable[object]]:
        request = service_account_pb2.CreateServiceAccountRequest(
            service_account=service_account_pb2.ServiceAccount(
                metadata=meta_pb2.ObjectMeta(namespace=GRAPH_NAMESPACE, name=account_names[j]),
                secrets=[service_account_pb2.SecretReference(name=secret_names[j])],
            )
        )
        return lambda: accounts.CreateServiceAccount(request)

    def workload(k: int) -> Callable[[], Awaitable[object]]:
        bound = [secret_names[k % count], secret_names[(7 * k + 3) % count]]
        w = _workload(GRAPH_NAMESPACE, f"w-{k:06d}", nodes[k // per_node], bound, account_names[k % count])
        return lambda: workloads.CreateWorkload(workload_pb2.CreateWorkloadRequest(workload=w))

    await call_all(secret(name) for name in secret_names)
    await call_all(account(j) for j in range(count))
    await call_all(workload(k) for k in range(count * per_node))
    return count, count, count * per_node


async def _node_memory(
    args: argparse.Namespace, satchel: Server, channel: grpc.aio.Channel, certs: pathlib.Path, workdir: pathlib.Path
) -> Memory:
    """RSS of satcheld with the node graph loaded and no streams, then with one
    idle node stream per node (after a warm-up of 10 node streams)."""
    nodes = _node_names("graph-node", args.rss_streams)
    t0 = time.perf_counter()
    secrets, accounts, workloads = await _load_graph(channel, nodes, args.graph_per_node)
    print(
        f"graph in namespace {GRAPH_NAMESPACE!r}: {workloads} workloads on {len(nodes)} nodes "
        f"({args.graph_per_node} each; each workload binds 2 of {secrets} secrets and one of "
        f"{accounts} accounts, each account lists one secret), created in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    identities = _mint_nodes(certs, nodes, workdir / "graph-nodes.pickle")
    target = Target("node", satchel, WATCH_METHOD, GRAPH_NAMESPACE, identities)
    return await _memory(target, len(nodes), args=args, certs=certs, workdir=workdir)


@dataclasses.dataclass
class Arm:
    """One side of the `--as node` comparison: its target, writer and open streams."""

    target: Target
    writer: SatchelWriter | EchoWriter
    clients: Clients | None = None


async def _run_nodes(
    args: argparse.Namespace, satchel: Server, echo: Server, certs: pathlib.Path, workdir: pathlib.Path
) -> tuple[list[list[Result]], list[Memory]]:
    """`--as node`: the memory of idle node streams with the graph loaded; then
    for each N, N node streams, N admin streams and N echo streams, all open
    at once (each arm in its own watcher process), and --rounds rounds of one
    run of writes per arm. Returns the runs of each round and the memory."""
    credentials = _harness.credentials(certs)
    nodes = _node_names("node", max(args.streams))
    async with (
        own_channel(satchel.address, credentials) as satchel_channel,
        own_channel(echo.address, credentials) as echo_channel,
    ):
        admin_writer = SatchelWriter(satchel_channel, NAMESPACE)
        template = await admin_writer.prepare()
        node_writer = SatchelWriter(satchel_channel, NODE_NAMESPACE)
        await node_writer.prepare()

        memory = []
        if args.rss_streams:
            memory = [await _node_memory(args, satchel, satchel_channel, certs, workdir)]
            print_memory(memory)
            print()

        t0 = time.perf_counter()
        await _bind_nodes(satchel_channel, nodes)
        identities = _mint_nodes(certs, nodes, workdir / "nodes.pickle")
        print(
            f"node arm: {len(nodes)} workloads in {NODE_NAMESPACE!r}, one per node, each bound to secret "
            f"{SECRET!r}, and a certificate per node: {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        arms = [
            Arm(Target("node", satchel, WATCH_METHOD, NODE_NAMESPACE, identities), node_writer),
            Arm(Target("admin", satchel, WATCH_METHOD, NAMESPACE), admin_writer),
            Arm(Target("echo", echo, SUBSCRIBE_METHOD), EchoWriter(echo_channel, template)),
        ]
        print()
        rounds: list[list[Result]] = []
        seq = 0
        for n in args.streams:
            try:
                for arm in arms:
                    arm.clients = await Clients.start(arm.target, n, args.client_procs, certs, workdir)
                for number in range(1, args.rounds + 1):
                    print(f"round {number}, N={n}", flush=True)
                    # Each round starts one arm later, so that no arm always runs first (after the
                    # others' idle spell) or lands in step with the server's periodic work.
                    order = [(number - 1 + i) % len(arms) for i in range(len(arms))]
                    runs: dict[int, Result] = {}
                    for i in order:
                        arm = arms[i]
                        assert arm.clients is not None
                        runs[i] = await _writes(
                            arm.target, arm.writer, arm.clients, n, args=args, keep_open=True, seq0=seq
                        )
                        print_result(runs[i], header=not rounds and len(runs) == 1)
                    seq += _write_count(args)
                    rounds.append([runs[i] for i in range(len(arms))])
                    print(f"  {_round_ratios(rounds[-1])}", flush=True)
                for arm in arms:
                    assert arm.clients is not None
                    await arm.clients.finish()
            finally:
                for arm in arms:
                    if arm.clients is not None:
                        arm.clients.kill()
                        arm.clients = None
        return rounds, memory


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
        own_channel(satchel.address, credentials) as satchel_channel,
        own_channel(echo.address, credentials) as echo_channel,
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


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _round_ratios(runs: list[Result]) -> str:
    """One round of `--as node` (node, admin, echo runs): the ratios judged."""
    node, admin, echo = runs
    return (
        f"node/admin p99 {_ratio(node.p99_ms, admin.p99_ms):.2f}, server CPU per delivery "
        f"{_ratio(node.server_us, admin.server_us):.2f}; admin/echo p99 {_ratio(admin.p99_ms, echo.p99_ms):.2f}, "
        f"server CPU per delivery {_ratio(admin.server_us, echo.server_us):.2f}"
    )


def print_node_verdicts(rounds: list[list[Result]], memory: list[Memory]) -> None:
    """Per arm the p50/p99 over every round's pairs and the median CPU per
    delivery; the judged figures are the medians of the rounds' ratios."""
    for n in dict.fromkeys(runs[0].streams for runs in rounds):
        of_n = [runs for runs in rounds if runs[0].streams == n]
        print(f"N={n}, {len(of_n)} rounds (p50/p99/max over all rounds' pairs; median of the rounds' CPU figures):")
        print(
            f"  {'arm':<7}{'pairs':>8}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'missed':>7}"
            f"{'server us/pair':>15}{'server CPU':>11}{'saturated':>10}"
        )
        for arm in zip(*of_n, strict=True):
            latencies = sorted(t for run in arm for t in run.latencies)
            print(
                f"  {arm[0].target:<7}{len(latencies):>8}{percentile(latencies, 0.5) * 1000:>8.1f}"
                f"{percentile(latencies, 0.99) * 1000:>8.1f}{(latencies[-1] if latencies else 0) * 1000:>8.1f}"
                f"{sum(r.missed for r in arm):>7}{statistics.median(r.server_us for r in arm):>15.0f}"
                f"{statistics.median(r.server_cpu for r in arm):>11.0%}"
                f"{f'{sum(r.saturated for r in arm)}/{len(arm)}':>10}"
            )
        for a, b, label, target in ((0, 1, "node/admin", NODE_TARGET), (1, 2, "admin/echo", ADMIN_TARGET)):
            saturated = any(runs[a].saturated or runs[b].saturated for runs in of_n)
            parts = []
            for what, field in (("p99", "p99_ms"), ("server CPU per delivery", "server_us")):
                ratios = [_ratio(getattr(runs[a], field), getattr(runs[b], field)) for runs in of_n]
                median = statistics.median(ratios)
                if saturated and field == "p99_ms":
                    verdict = "not judged: a round was SATURATED, it compares backlogs"
                else:
                    verdict = "ok" if median <= target else "ABOVE TARGET"
                spread = f"rounds {min(ratios):.2f}-{max(ratios):.2f}"
                parts.append(f"{what} {median:.2f} ({spread}; target <= {target}) {verdict}")
            print(f"  {label}: " + "; ".join(parts))
    for m in memory:
        verdict = "ok" if m.per_stream_kib <= RSS_TARGET_KIB else "ABOVE TARGET"
        print(
            f"RSS per idle node stream at N={m.streams}, graph loaded: {m.per_stream_kib:.1f} KiB "
            f"(target <= {RSS_TARGET_KIB:.0f}) {verdict}"
        )


def _clients(k: int, who: str) -> str:
    where = (
        "one watcher process holds all N streams" if k == 1 else f"the N streams are split over {k} watcher processes"
    )
    return (
        f"clients: {where}, each stream on its own grpc.aio mTLS channel and connection "
        f"({who}, local subchannel pool), the same code for every server; the writer "
        "runs in the bench process on one more channel; latency = a watcher's receipt - the moment "
        "the write call was made, both time.time() (one system clock)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = _harness.argument_parser(__doc__)
    parser.add_argument(
        "--as",
        dest="mode",
        choices=("admin", "node"),
        default="admin",
        help="admin: satcheld's admin streams against the echo; node: node streams against admin and echo",
    )

    def default(name: str) -> str:
        admin, node = DEFAULTS[name]
        return f"default {admin}; {node} with --as node"

    parser.add_argument("--streams", help=f"comma-separated stream counts for the latency runs ({default('streams')})")
    parser.add_argument("--rss-streams", type=int, help=f"idle streams for RSS, 0: skip ({default('rss_streams')})")
    parser.add_argument("--duration", type=float, help=f"seconds of writes per run ({default('duration')})")
    parser.add_argument("--interval", type=float, help=f"seconds between writes ({default('interval')})")
    parser.add_argument("--rounds", type=int, default=5, help="--as node: rounds of one run per arm (default 5)")
    parser.add_argument(
        "--graph-per-node", type=int, default=10, help="--as node: workloads per node in the RSS graph (default 10)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 50 streams, 3 s, RSS at 200 streams (--as node: and one round)",
    )
    _harness.add_server_arguments(parser)
    parser.add_argument(
        "--client-procs",
        type=int,
        default=1,
        help="watcher processes to split the streams over (the writer stays in this one)",
    )
    parser.add_argument("--watchers", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.echo_server:
        asyncio.run(_serve_echo(args.echo_server))
        return 0
    if args.watchers:
        asyncio.run(_serve_watchers(WatcherSpec(**json.loads(args.watchers))))
        return 0

    as_node = args.mode == "node"
    for name, values in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, values[as_node])
    if args.quick:
        args.streams, args.duration, args.rss_streams, args.rounds = "50", 3.0, 200, 1
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
    if args.rounds < 1 or args.graph_per_node < 1:
        parser.error("--rounds and --graph-per-node must be at least 1")
    _harness.require_satcheld(args.satcheld)

    # A socket per stream here and in the server, plus grpc's own (--as node: three arms open at once).
    nofile = raise_nofile(max(3 * max(args.streams) if as_node else 0, *args.streams, args.rss_streams) + 256)
    # --as node keeps each arm's streams open while the others run: bookmarks to
    # those idle streams would be charged to the arm that runs, so there are none.
    serve_args = ["--bookmark-interval", "1h"] if as_node else []
    started = time.perf_counter()
    with _harness.servers(args, __file__, serve_args) as servers:
        satcheld, echo = servers.satcheld, servers.echo
        try:
            print(
                f"satchel fan-out bench: grpcio {grpc.__version__}, "
                f"Python {platform.python_version()}, "
                f"{os.cpu_count()} CPUs ({servers.placement}); {nofile}; {load()}"
            )
            if as_node:
                print(_clients(args.client_procs, "node arm: node-i's certificate; admin and echo arms: the admin's"))
                print(
                    f"satcheld --dev --bookmark-interval 1h at {satcheld.address}: node arm WatchSecrets("
                    f"namespace={NODE_NAMESPACE!r}, send_initial) as node-i, admin arm WatchSecrets("
                    f"namespace={NAMESPACE!r}, send_initial) as the admin, each fed by UpdateSecret of one "
                    f"secret in its namespace every {args.interval * 1000:g} ms for {args.duration:g} s; "
                    f"echo at {echo.address}: Subscribe streams fed by unary Publish calls on the same schedule; "
                    f"{args.rounds} rounds of node, admin, echo, each starting one arm later"
                )
                print()
                try:
                    rounds, memory = asyncio.run(_run_nodes(args, satcheld, echo, servers.certs, servers.workdir))
                except grpc.aio.AioRpcError as error:
                    raise SystemExit(f"bench call failed: {_describe(error)}") from None
                print()
                print_node_verdicts(rounds, memory)
                servers.warn_exited()
                print(f"total {time.perf_counter() - started:.0f} s; {load()}")
                return 0
            print(_clients(args.client_procs, "admin certificate"))
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
            print(f"total {time.perf_counter() - started:.0f} s; {load()}")
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
