"""What the benches share: the server subprocesses (satcheld --dev and a bare
grpc.aio echo server on its certificates), CPU placement, CPU time, a run of
calls kept in flight (`measure`), the command-line scaffolding. Imported by
the scripts beside it, run as scripts, so this directory is on sys.path."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import os
import pathlib
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from datetime import timedelta
from typing import NoReturn

import grpc
from cryptography.hazmat.primitives import serialization

from satchel import pki

# About 100 bytes in three keys, like a small database credential.
DATA = {
    "username": b"svc-bench",
    "password": b"k3Jd9sLq0vXz2mWn8rTy5uBc7hGf4eAp1oIs6lKj",
    "endpoint": b"postgres://db.internal.example:5432/app?sslmode=verify",
}
STARTUP_TIMEOUT = 60.0


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


def start(name: str, argv: list[str], workdir: pathlib.Path, cpus: set[int] | None) -> Server:
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
        # The child has only just exec'd and has no threads yet; pin_threads
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


def pin_threads(pid: int, cpus: set[int]) -> None:
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except (ProcessLookupError, OSError):
            pass


def cpu_plan(pin: bool) -> tuple[set[int] | None, set[int] | None, str]:
    """Puts the client on the last CPU and the servers on the others."""
    if not pin or not hasattr(os, "sched_setaffinity"):
        return None, None, "not pinned"
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None, f"not pinned (only CPU {cpus} available)"
    client, servers = {cpus[-1]}, set(cpus[:-1])
    return servers, client, f"client on CPU {sorted(client)}, servers on CPU {sorted(servers)}"


@dataclasses.dataclass
class Servers:
    """satcheld --dev and the bench's echo server, both on the certificates in `certs`."""

    satcheld: Server
    echo: Server
    certs: pathlib.Path
    workdir: pathlib.Path
    placement: str  # where the client and the servers run, for the header

    def warn_exited(self) -> None:
        for server in (self.satcheld, self.echo):
            if server.process.poll() is not None:
                code = server.process.returncode
                print(f"warning: {server.name} exited with code {code} during the bench")


@contextlib.contextmanager
def placed_client(pin: bool) -> Iterator[tuple[set[int] | None, str]]:
    """Puts this process on the client CPU (`pin`) and makes SIGTERM unwind like
    Ctrl-C, so that servers started inside are stopped; yields the server CPUs
    and a line saying where each runs."""
    server_cpus, client_cpus, placement = cpu_plan(pin)
    if client_cpus:
        # Before any thread exists, so grpc's threads inherit it.
        os.sched_setaffinity(0, client_cpus)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    yield server_cpus, placement


@contextlib.contextmanager
def started(specs: list[tuple[str, list[str]]], workdir: pathlib.Path, cpus: set[int] | None) -> Iterator[list[Server]]:
    """Starts each (name, argv) in order on `cpus` and stops them all on the way out."""
    running: list[Server] = []
    try:
        for name, argv in specs:
            running.append(start(name, argv, workdir, cpus))
        if cpus:
            for server in running:
                pin_threads(server.process.pid, cpus)
        yield running
    finally:
        for server in running:
            server.stop()


# `python -c profiled(PROG, MODULE) DIR ARGS...` runs PROG ARGS (MODULE's main) with a cProfile
# of CPU time (time.thread_time) in its main thread, the event loop's, and one in every Python
# thread it starts (satcheld's store writer and readers, to_thread's workers), each written to
# DIR when it ends: main.prof, thread-NAME-ID.prof. grpc's own C threads are not seen, nor the
# C code run inside a profiled call, which counts in that call's time.
_PROFILED = """
import cProfile, os, sys, threading, time
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
run = threading.Thread.run
def profiled_run(self):
    profile = cProfile.Profile(time.thread_time)
    profile.enable()
    try:
        run(self)
    finally:
        profile.disable()
        profile.dump_stats(os.path.join(out, f"thread-{self.name}-{threading.get_ident()}.prof"))
threading.Thread.run = profiled_run
sys.argv = [PROG, *sys.argv[2:]]
from MODULE import main
profile = cProfile.Profile(time.thread_time)
profile.enable()
try:
    code = main()
finally:
    profile.disable()
    profile.dump_stats(os.path.join(out, "main.prof"))
sys.exit(code)
"""


def profiled(prog: str, module: str) -> str:
    return _PROFILED.replace("PROG", repr(prog)).replace("MODULE", module)


PROFILED = profiled("satcheld", "satcheld._cli")


def satcheld_argv(satcheld: str, args: list[str], profile: pathlib.Path | None) -> list[str]:
    """How to run `satcheld ARGS`; with `profile`, under cProfile (PROFILED), by
    the Python beside that satcheld."""
    if profile is None:
        return [satcheld, *args]
    python = pathlib.Path(satcheld).parent / "python"
    return [str(python), "-c", PROFILED, str(profile.resolve()), *args]


@contextlib.contextmanager
def servers(args: argparse.Namespace, script: str, serve_args: Sequence[str] = ()) -> Iterator[Servers]:
    """Places this process and the servers on CPUs (`args.pin`), starts
    `args.satcheld serve --dev [serve_args]` in a fresh data directory (under
    cProfile when the script has a `--profile DIR`) and `script --echo-server
    CERTS` beside it; stops both on the way out and removes the directory
    unless `args.keep`."""
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="satchel-bench-"))
    certs = workdir / "certs"
    serve = ["serve", "--dev", "--data-dir", str(workdir), "--listen", "127.0.0.1:0", *serve_args]
    specs = [
        ("satcheld", satcheld_argv(args.satcheld, serve, getattr(args, "profile", None))),
        ("echo", [sys.executable, str(pathlib.Path(script).resolve()), "--echo-server", str(certs)]),
    ]
    try:
        with placed_client(args.pin) as (server_cpus, placement), started(specs, workdir, server_cpus) as running:
            yield Servers(running[0], running[1], certs, workdir, placement)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


# --- an echo server's process (`SCRIPT --echo-server CERTS`) ---


async def serve(server: grpc.aio.Server, certs: pathlib.Path) -> None:
    """Serves on 127.0.0.1 with satcheld's certificates, client certificates
    required, and satcheld's garbage-collector thresholds (a like-for-like
    process); says `listening on HOST:PORT`; stops at SIGTERM or SIGINT."""
    # Imported here: only the echo servers' processes need satcheld.
    from satcheld._server import tune_gc

    tune_gc()
    credentials = grpc.ssl_server_credentials(
        [((certs / "server.key").read_bytes(), (certs / "server.crt").read_bytes())],
        root_certificates=(certs / "ca.crt").read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    gc.collect()  # and what starting made is never walked again, as satcheld's CLI does
    gc.freeze()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(grace=None)


# --- the client ---


def credentials(certs: pathlib.Path) -> grpc.ChannelCredentials:
    """The admin certificate, for both servers."""
    return grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.crt").read_bytes(),
        private_key=(certs / "admin.key").read_bytes(),
        certificate_chain=(certs / "admin.crt").read_bytes(),
    )


def node_identities(certs: pathlib.Path, names: Sequence[str]) -> tuple[bytes, list[bytes]]:
    """A client certificate per node name (URI SAN spiffe://TD/node/NAME), signed by
    the dev CA in `certs` as `satchelctl certs issue node NAME` would sign it, but
    all for one EC key: a thousand certificates take a signature each, not a key
    generation and two files each. Returns (key PEM, certificate PEMs in order)."""
    ca_cert, ca_key = pki.load_ca(certs)
    prefix = f"spiffe://{pki.trust_domain_of(ca_cert)}/node/"
    key = pki.generate_key()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_key = key.public_key()
    chains = [
        pki.sign(ca_cert, ca_key, public_key, spiffe_id=prefix + name, ttl=timedelta(hours=24)).public_bytes(
            serialization.Encoding.PEM
        )
        for name in names
    ]
    return key_pem, chains


def node_credentials(certs: pathlib.Path, key_pem: bytes, chain: bytes) -> grpc.ChannelCredentials:
    """A node's certificate (from `node_identities`), for satcheld."""
    return grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.crt").read_bytes(), private_key=key_pem, certificate_chain=chain
    )


@dataclasses.dataclass
class Result:
    """One run of one call."""

    label: str
    qps: float
    latencies: list[float]  # seconds, sorted
    client_cpu: float
    server_cpu: float
    server_main_cpu: float = 0.0  # of it, the server's main thread (satcheld's event loop)


async def measure(
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
    cpu: list[tuple[float, float, float]] = []

    async def sample() -> None:
        for moment in (start, end):
            await asyncio.sleep(moment - time.perf_counter())
            cpu.append((client_seconds(), process_seconds(server_pid), process_seconds(server_pid, server_pid)))

    async def worker() -> None:
        while (t0 := time.perf_counter()) < end:
            await call()
            t1 = time.perf_counter()
            if start <= t1 <= end:
                latencies.append(t1 - t0)

    await asyncio.gather(sample(), *(worker() for _ in range(concurrency)))
    latencies.sort()
    (client0, server0, main0), (client1, server1, main1) = cpu
    return Result(
        label,
        len(latencies) / duration,
        latencies,
        (client1 - client0) / duration,
        (server1 - server0) / duration,
        (main1 - main0) / duration,
    )


def own_channel(address: str, credentials: grpc.ChannelCredentials) -> grpc.aio.Channel:
    """A channel with a connection of its own, as a separate agent would have."""
    # grpc shares one connection among channels with equal arguments through
    # its global subchannel pool; a local pool gives each channel its own.
    return grpc.aio.secure_channel(address, credentials, options=[("grpc.use_local_subchannel_pool", 1)])


async def call_all(calls: Iterable[Callable[[], Awaitable[object]]], concurrency: int = 64) -> None:
    """Makes the calls, `concurrency` at a time (the store commits them in groups)."""
    pending = iter(calls)

    async def worker() -> None:
        for call in pending:
            await call()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def client_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_seconds(pid: int, thread: int | None = None) -> float:
    """CPU seconds of process `pid` so far, or of its thread `thread` (its main thread: `pid`)."""
    # utime and stime, fields 14 and 15 of /proc/PID/stat (after the comm field).
    stat = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    fields = pathlib.Path(stat).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory now (VmRSS) or at its peak so far (VmHWM), in KiB."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


def raise_nofile(needed: int) -> str:
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


def load() -> str:
    return "load average " + " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3])


# --- main() ---


def argument_parser(doc: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """--no-pin, --satcheld, --keep, and the hidden --echo-server CERTS."""
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not put the client on its own CPU")
    parser.add_argument(
        "--satcheld",
        default=str(pathlib.Path(sys.executable).parent / "satcheld"),
        help="the satcheld executable (default: beside this Python)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directory and logs")
    parser.add_argument("--echo-server", metavar="CERTS", type=pathlib.Path, help=argparse.SUPPRESS)


def require_satcheld(path: str) -> None:
    if not os.access(path, os.X_OK):
        raise SystemExit(f"no satcheld at {path} (install the package or pass --satcheld)")


def run(main: Callable[[], int]) -> NoReturn:
    """The script's entry point: its exit code; 130 after Ctrl-C."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
