"""Unary throughput and latency of a real `satcheld serve --dev`, against a bare
grpc.aio echo server over the same mTLS, driven by the same client.

Prints QPS, p50 and p99 for GetSecret and CreateSecret next to an echo of a
payload of the same size, and the ratios Satchel / echo. Not a test.

    .venv/bin/python bench/unary.py [--duration 5] [--warmup 1] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import os
import pathlib
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

import grpc

from satchel.v1 import meta_pb2, secret_pb2, secret_pb2_grpc

ECHO_METHOD = "/satchel.bench.Echo/Echo"
NAMESPACE = "default"
# About 100 bytes in three keys, like a small database credential.
DATA = {
    "username": b"svc-bench",
    "password": b"k3Jd9sLq0vXz2mWn8rTy5uBc7hGf4eAp1oIs6lKj",
    "endpoint": b"postgres://db.internal.example:5432/app?sslmode=verify",
}
TARGETS = {"GetSecret": 0.8, "CreateSecret": 0.5}
STARTUP_TIMEOUT = 60.0


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
    credentials = grpc.ssl_server_credentials(
        [((certs / "server.key").read_bytes(), (certs / "server.crt").read_bytes())],
        root_certificates=(certs / "ca.crt").read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(grace=None)


# --- the server processes, seen from the client ---


@dataclasses.dataclass
class Server:
    """A server subprocess that printed `listening on HOST:PORT`."""

    name: str
    process: subprocess.Popen[str]
    log: pathlib.Path
    address: str = ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _start(name: str, argv: list[str], workdir: pathlib.Path, cpus: set[int] | None) -> Server:
    """Starts a server writing its output to a log file (not a pipe, so nothing
    in the client has to drain it) and waits for `listening on HOST:PORT`."""
    log = workdir / f"{name}.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    server = Server(name, process, log)
    if cpus:
        # The child has only just exec'd and has no threads yet; _pin_threads
        # covers any it started meanwhile.
        os.sched_setaffinity(process.pid, cpus)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not server.address:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("listening on "):
                server.address = line.removeprefix("listening on ").strip()
                break
        else:
            if process.poll() is not None:
                problem = f"exited with code {process.returncode} before serving"
            elif time.monotonic() > deadline:
                problem = f"did not print `listening on` within {STARTUP_TIMEOUT:.0f} s"
            else:
                time.sleep(0.05)
                continue
            server.stop()
            output = log.read_text(errors="replace")[-3000:]
            raise SystemExit(f"{name} {problem}; its output:\n{output}")
    return server


def _pin_threads(pid: int, cpus: set[int]) -> None:
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except (ProcessLookupError, OSError):
            pass


# --- the client ---


@dataclasses.dataclass
class Result:
    label: str
    qps: float
    p50_ms: float
    p99_ms: float
    calls: int
    client_cpu: float
    server_cpu: float


def _percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def _client_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _process_seconds(pid: int) -> float:
    # utime and stime, fields 14 and 15 of /proc/PID/stat (after the comm field).
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measure(
    label: str,
    call: Callable[[], Awaitable[object]],
    *,
    server_pid: int,
    concurrency: int,
    warmup: float,
    duration: float,
) -> Result:
    """Keeps `concurrency` calls in flight for warmup + duration seconds and
    counts the calls that complete inside the measured window, noting how busy
    the client and the server were in it (a core each at most, when pinned)."""
    start = time.perf_counter() + warmup
    end = start + duration
    latencies: list[float] = []
    cpu: list[tuple[float, float]] = []

    async def sample() -> None:
        for moment in (start, end):
            await asyncio.sleep(moment - time.perf_counter())
            cpu.append((_client_seconds(), _process_seconds(server_pid)))

    async def worker() -> None:
        while (t0 := time.perf_counter()) < end:
            await call()
            t1 = time.perf_counter()
            if start <= t1 <= end:
                latencies.append(t1 - t0)

    await asyncio.gather(sample(), *(worker() for _ in range(concurrency)))
    latencies.sort()
    (client0, server0), (client1, server1) = cpu
    return Result(
        label,
        len(latencies) / duration,
        _percentile(latencies, 0.50) * 1000,
        _percentile(latencies, 0.99) * 1000,
        len(latencies),
        (client1 - client0) / duration,
        (server1 - server0) / duration,
    )


def _channel(address: str, certs: pathlib.Path) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.crt").read_bytes(),
        private_key=(certs / "admin.key").read_bytes(),
        certificate_chain=(certs / "admin.crt").read_bytes(),
    )
    return grpc.aio.secure_channel(address, credentials)


def _secret(name: str) -> secret_pb2.Secret:
    return secret_pb2.Secret(
        metadata=meta_pb2.ObjectMeta(namespace=NAMESPACE, name=name),
        type=secret_pb2.SECRET_TYPE_OPAQUE,
        data=DATA,
    )


async def _run(
    args: argparse.Namespace, satchel: Server, echo: Server, certs: pathlib.Path
) -> list[Result]:
    """GetSecret, then CreateSecret, each followed by an echo of its size."""
    timing = {"concurrency": args.concurrency, "warmup": args.warmup, "duration": args.duration}

    async def on_satchel(label: str, call: Callable[[], Awaitable[object]]) -> Result:
        return await _measure(label, call, server_pid=satchel.process.pid, **timing)

    async def on_echo(size: int) -> Result:
        payload = os.urandom(size)
        return await _measure(
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
        get_size = (await stub.GetSecret(get)).ByteSize()

        names = (f"bench-create-{i:08d}" for i in itertools.count())
        create_size = secret_pb2.CreateSecretRequest(secret=_secret(next(names))).ByteSize()

        def create() -> Awaitable[object]:
            return stub.CreateSecret(secret_pb2.CreateSecretRequest(secret=_secret(next(names))))

        return [
            await on_satchel("GetSecret", lambda: stub.GetSecret(get)),
            await on_echo(get_size),
            await on_satchel("CreateSecret", create),
            await on_echo(create_size),
        ]


def _report(results: list[Result]) -> None:
    print(
        f"{'':<16}{'QPS':>8}{'p50 ms':>9}{'p99 ms':>9}{'calls':>8}"
        f"{'client CPU':>12}{'server CPU':>12}"
    )
    for r in results:
        print(
            f"{r.label:<16}{r.qps:>8.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.calls:>8}"
            f"{r.client_cpu:>12.0%}{r.server_cpu:>12.0%}"
        )
    print()
    for (satchel, echo), (rpc, target) in zip(
        (results[0:2], results[2:4]), TARGETS.items(), strict=True
    ):
        ratio = satchel.qps / echo.qps if echo.qps else float("nan")
        verdict = "ok" if ratio >= target else "BELOW TARGET"
        print(f"{rpc}/echo QPS ratio {ratio:.2f} (target >= {target}) {verdict}")


def _cpu_plan(pin: bool) -> tuple[set[int] | None, set[int] | None, str]:
    """Puts the client on the last CPU and the servers on the others."""
    if not pin or not hasattr(os, "sched_setaffinity"):
        return None, None, "not pinned"
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None, f"not pinned (only CPU {cpus} available)"
    client, servers = {cpus[-1]}, set(cpus[:-1])
    return servers, client, f"client on CPU {sorted(client)}, servers on CPU {sorted(servers)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight")
    parser.add_argument(
        "--no-pin", dest="pin", action="store_false", help="do not put the client on its own CPU"
    )
    parser.add_argument(
        "--satcheld",
        default=str(pathlib.Path(sys.executable).parent / "satcheld"),
        help="the satcheld executable (default: beside this Python)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directory and logs")
    parser.add_argument("--echo-server", metavar="CERTS", type=pathlib.Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.echo_server:
        asyncio.run(_serve_echo(args.echo_server))
        return 0

    if not os.access(args.satcheld, os.X_OK):
        raise SystemExit(f"no satcheld at {args.satcheld} (install the package or pass --satcheld)")
    server_cpus, client_cpus, placement = _cpu_plan(args.pin)
    if client_cpus:
        # Before any thread exists, so grpc's threads inherit it.
        os.sched_setaffinity(0, client_cpus)
    # SIGTERM unwinds like Ctrl-C, so the finally below stops the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="satchel-bench-"))
    servers: list[Server] = []
    try:
        serve = ["serve", "--dev", "--data-dir", str(workdir), "--listen", "127.0.0.1:0"]
        satcheld = _start("satcheld", [args.satcheld, *serve], workdir, server_cpus)
        servers.append(satcheld)
        certs = workdir / "certs"
        echo = _start(
            "echo",
            [sys.executable, str(pathlib.Path(__file__).resolve()), "--echo-server", str(certs)],
            workdir,
            server_cpus,
        )
        servers.append(echo)
        if server_cpus:
            for server in servers:
                _pin_threads(server.process.pid, server_cpus)

        print(
            f"satchel unary bench: grpcio {grpc.__version__}, Python {platform.python_version()}, "
            f"{os.cpu_count()} CPUs ({placement}); {args.concurrency} calls in flight from one "
            f"client process; {args.warmup:g} s warm-up + {args.duration:g} s per run"
        )
        print(
            f"satcheld --dev at {satcheld.address}, echo at {echo.address}; "
            f"secret data {sum(map(len, DATA.values()))} B in {len(DATA)} keys"
        )
        print()
        try:
            results = asyncio.run(_run(args, satcheld, echo, certs))
        except grpc.aio.AioRpcError as error:
            raise SystemExit(f"bench call failed: {error.code().name}: {error.details()}") from None
        _report(results)
        for server in servers:
            if server.process.poll() is not None:
                code = server.process.returncode
                print(f"warning: {server.name} exited with code {code} during the bench")
    finally:
        for server in servers:
            server.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
