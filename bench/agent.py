"""satchel-agent on a real `satcheld serve --dev`: how soon a rotation is on disk
on every node, what an idle agent costs, and how long `--once` takes.

1. --agents real `satchel-agent` processes (each its own node certificate,
   node `bench-node-i`, one workload bound to the shared secret and to account
   `bench-app`); the bench rotates the secret (RotateSecret with new data) every
   --interval s for --seconds s and times every (agent, rotation) pair from the
   start of the RotateSecret call to the moment the new content (or a newer
   one) was read from that agent's file. The files are watched with inotify
   (the `..data` swap is an IN_MOVED_TO in the leaf directory), with a re-read
   of every file each 100 ms as a fallback. Target: p99 <= 50 ms.
2. One agent's VmRSS and CPU (utime + stime) while idle for --idle-seconds.
   Targets: < 60 MiB, < 1 % of a core.
3. `satchel-agent --once` on a node holding --once-workloads workloads, each
   bound to --once-secrets secrets of its own: the time from starting the
   process to its exit 0, then every file checked. --once-runs runs, each into
   a fresh root.

    .venv/bin/python bench/agent.py [--agents 20] [--seconds 30] [--interval 0.2]
                                    [--idle-seconds 60] [--once-workloads 100]
                                    [--once-secrets 3] [--once-runs 3] [--no-pin] [--keep]

Prints figures; not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import dataclasses
import os
import pathlib
import platform
import re
import secrets
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import typing
from collections.abc import Callable, Iterator

# This script's directory is on sys.path.
import _harness
import grpc
from _harness import percentile, process_seconds, profiled

from satchel import AsyncClient, pki

NAMESPACE = "bench-agent"
SECRET = "shared"
KEY = "value"
ACCOUNT = "bench-app"
ONCE_NODE = "bench-once"
ONCE_NAMESPACE = "bench-once"
P99_TARGET_MS = 50.0
RSS_TARGET_MIB = 60.0
CPU_TARGET = 0.01  # of a core
STARTUP_TIMEOUT = 300.0  # for every agent's first files (20 agents start slowly on a loaded core)
DRAIN_TIMEOUT = 10.0  # after the last rotation, for every agent to catch up
FALLBACK_POLL = 0.1  # seconds: every file is read again this often, whatever inotify says
CREATE_CONCURRENCY = 32
# "wrote NS/W secret=S version=V revision=R latency_ms=L", the agent's line per change.
_WROTE = re.compile(r" wrote (\S+) secret=(\S+) version=(\d+) revision=\d+ latency_ms=([\d.]+)")


# --- inotify, through libc ---

_IN_CREATE, _IN_DELETE, _IN_MOVED_TO, _IN_IGNORED = 0x100, 0x200, 0x80, 0x8000
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


class Inotify:
    """The three calls this bench needs of inotify(7)."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")

    def watch(self, path: pathlib.Path) -> int:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), _IN_CREATE | _IN_DELETE | _IN_MOVED_TO)
        if wd < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch", str(path))
        return wd

    def read(self) -> list[tuple[int, int]]:
        """(wd, mask) of every event queued now."""
        events = []
        with contextlib.suppress(BlockingIOError):
            while buffer := os.read(self.fd, 65536):
                offset = 0
                while offset < len(buffer):
                    wd, mask, _, length = _EVENT.unpack_from(buffer, offset)
                    events.append((wd, mask))
                    offset += _EVENT.size + length
        return events

    def close(self) -> None:
        os.close(self.fd)


# --- the files, watched from a thread ---


@dataclasses.dataclass
class Seen:
    """What one agent's file showed, as (moment, rotation number) each time it changed."""

    path: pathlib.Path  # the user-visible file, DIR/<ns>/<w>/secrets/<secret>/<key>
    changes: list[tuple[float, int]] = dataclasses.field(default_factory=list)
    by_fallback: int = 0  # rotations (not the first content) first seen by the 100 ms re-read, not by inotify

    @property
    def current(self) -> int:
        return self.changes[-1][1] if self.changes else -1

    def first_at_least(self, number: int) -> float | None:
        for moment, seen in self.changes:
            if seen >= number:
                return moment
        return None


def rotation_of(content: bytes) -> int:
    """The rotation number a value carries (`<n>:<random>`); -1 for anything else."""
    head, _, _ = content.partition(b":")
    return int(head) if head.isdigit() else -1


class FileWatcher:
    """One thread: reads an agent's file whenever inotify says its leaf changed (and every
    file every FALLBACK_POLL s) and notes each new rotation number with time.monotonic()
    taken after the read that saw it."""

    def __init__(self, files: list[pathlib.Path]) -> None:
        self.seen = [Seen(path) for path in files]
        self._inotify = Inotify()
        self._by_wd: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="file-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._inotify.close()

    def _read(self, index: int, fallback: bool) -> None:
        seen = self.seen[index]
        try:
            content = seen.path.read_bytes()
        except OSError:
            return  # not there yet, or between two links: the next event or poll reads it
        number = rotation_of(content)
        if number != seen.current:
            seen.changes.append((time.monotonic(), number))
            seen.by_fallback += fallback and number > 0

    def _rewatch(self) -> None:
        """Watch each leaf directory that exists and is not watched yet."""
        watched = set(self._by_wd.values())
        for index, seen in enumerate(self.seen):
            if index not in watched and seen.path.parent.is_dir():
                with contextlib.suppress(FileNotFoundError):
                    self._by_wd[self._inotify.watch(seen.path.parent)] = index
                    self._read(index, fallback=True)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._inotify.fd, select.POLLIN)
        next_poll = 0.0
        while not self._stop.is_set():
            if poller.poll(max(0.0, next_poll - time.monotonic()) * 1000):
                for wd, mask in self._inotify.read():
                    index = self._by_wd.get(wd)
                    if index is None:
                        continue
                    if mask & _IN_IGNORED:  # the leaf directory went away
                        del self._by_wd[wd]
                    else:
                        self._read(index, fallback=False)
            if time.monotonic() >= next_poll:
                self._rewatch()
                for index in range(len(self.seen)):
                    self._read(index, fallback=True)
                next_poll = time.monotonic() + FALLBACK_POLL


# --- the agents ---


@dataclasses.dataclass
class AgentProcess:
    node: str
    root: pathlib.Path
    log: pathlib.Path
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def writes(self, secret: str) -> list[tuple[int, float]]:
        """(version, the agent's own event-to-disk milliseconds) of each write of `secret` it logged."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            match = _WROTE.search(line)
            if match and match[2] == secret:
                out.append((int(match[3]), float(match[4])))
        return out


# `python -c PROFILED DIR ARGS...` runs satchel-agent ARGS under cProfile (see _harness.profiled):
# its event loop and the to_thread workers that reconcile and save.
PROFILED = profiled("satchel-agent", "satchel._agent._cli")


def agent_argv(
    certs: pathlib.Path, address: str, node: str, root: pathlib.Path, profile: pathlib.Path | None = None
) -> list[str]:
    """How to run the agent for `node`; with `profile`, under cProfile (PROFILED) into that directory."""
    if profile is None:
        command = [str(pathlib.Path(sys.executable).parent / "satchel-agent")]
    else:
        command = [sys.executable, "-c", PROFILED, str(profile.resolve())]
    return [
        *command,
        "--server",
        address,
        "--ca",
        str(certs / "ca.crt"),
        "--cert",
        str(certs / f"node-{node}.crt"),
        "--key",
        str(certs / f"node-{node}.key"),
        "--root",
        str(root),
        "--metrics-file",
        str(root.parent / f"{root.name}.prom"),
    ]


# The CPUs the agents run on (main() sets them when it pins): not the bench's, so that the bench's
# file-watching thread is not queued behind 20 busy agents and its timestamps are not late.
AGENT_CPUS: set[int] | None = None


def spawn(argv: list[str], output: typing.IO[bytes]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
    if AGENT_CPUS:
        # The child has only just exec'd: its threads, started later, inherit this.
        os.sched_setaffinity(process.pid, AGENT_CPUS)
    return process


def start_agent(argv: list[str], node: str, root: pathlib.Path, workdir: pathlib.Path) -> AgentProcess:
    log = workdir / f"agent-{node}.log"
    with log.open("wb") as output:
        process = spawn(argv, output)
    return AgentProcess(node, root, log, process)


@contextlib.contextmanager
def agents_running(
    specs: list[tuple[list[str], str, pathlib.Path]], workdir: pathlib.Path
) -> Iterator[list[AgentProcess]]:
    running: list[AgentProcess] = []
    try:
        for argv, node, root in specs:
            running.append(start_agent(argv, node, root, workdir))
        yield running
    finally:
        for agent in running:
            agent.stop()


# --- process facts ---


def rss_kib(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def load() -> str:
    return "load average " + " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3])


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{platform.node()}, {os.cpu_count()} CPUs ({model or platform.machine()}), Linux {platform.release()}"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


# --- 1. rotations ---


async def setup_fleet(client: AsyncClient, certs: pathlib.Path, count: int) -> list[str]:
    """The shared secret, the account, and per node its certificate and its workload."""
    await client.create_service_account(ACCOUNT, namespace=NAMESPACE)
    await client.create_secret(SECRET, namespace=NAMESPACE, data={KEY: f"0:{secrets.token_hex(16)}"})
    nodes = [f"bench-node-{i}" for i in range(count)]
    for node in nodes:
        pki.issue(certs, "node", node)
    await asyncio.gather(
        *(
            client.create_workload(
                f"w-{i}", namespace=NAMESPACE, node_name=node, service_account=ACCOUNT, secrets=[SECRET]
            )
            for i, node in enumerate(nodes)
        )
    )
    return nodes


@dataclasses.dataclass
class Rotation:
    number: int
    version: int
    start: float  # time.monotonic() when the call was made
    end: float  # when it returned


async def rotate(client: AsyncClient, seconds: float, interval: float) -> list[Rotation]:
    """RotateSecret with new data every `interval` s for `seconds` s, each call started when it
    is due whatever the earlier ones are doing (a paced writer: a slow call delays no other)."""
    rotations: list[Rotation] = []
    count = int(seconds / interval)
    first = time.monotonic() + 0.1

    async def one(number: int) -> None:
        await asyncio.sleep(max(0.0, first + number * interval - time.monotonic()))
        start = time.monotonic()
        secret = await client.rotate_secret(
            SECRET, namespace=NAMESPACE, data={KEY: f"{number}:{secrets.token_hex(16)}"}
        )
        rotations.append(Rotation(number, secret.version, start, time.monotonic()))

    await asyncio.gather(*(one(number) for number in range(1, count + 1)))
    rotations.sort(key=lambda r: r.number)
    return rotations


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def report_rotations(
    rotations: list[Rotation], watcher: FileWatcher, agents: list[AgentProcess], interval: float
) -> float:
    """Prints the latency figures; returns the p99 in seconds."""
    from_start: list[float] = []
    from_return: list[float] = []
    missed = 0
    for rotation in rotations:
        for seen in watcher.seen:
            moment = seen.first_at_least(rotation.number)
            if moment is None:
                missed += 1
                continue
            from_start.append(moment - rotation.start)
            from_return.append(moment - rotation.end)
    from_start.sort()
    from_return.sort()
    pairs = len(rotations) * len(watcher.seen)
    calls = sorted(r.end - r.start for r in rotations)
    print(
        f"rotations: {len(rotations)} RotateSecret calls every {interval * 1000:.0f} ms x {len(agents)} agents "
        f"= {pairs} (agent, rotation) pairs; the call itself p50 {ms(percentile(calls, 0.5))} ms, "
        f"p99 {ms(percentile(calls, 0.99))} ms, max {ms(calls[-1])} ms"
    )
    p99 = percentile(from_start, 0.99)
    verdict = "ok" if p99 * 1000 <= P99_TARGET_MS else "MISSED"
    print(
        f"  call start -> new content readable: p50 {ms(percentile(from_start, 0.5))} ms, p99 {ms(p99)} ms, "
        f"max {ms(from_start[-1])} ms (target p99 <= {P99_TARGET_MS:.0f} ms: {verdict}); missed {missed} of {pairs}"
    )
    print(
        f"  call return -> new content readable: p50 {ms(percentile(from_return, 0.5))} ms, "
        f"p99 {ms(percentile(from_return, 0.99))} ms, max {ms(from_return[-1])} ms "
        "(negative: on disk before the response reached the bench)"
    )
    # What the agents say of themselves: their event-to-disk time, and versions they never wrote
    # because a newer one had arrived first (coalesced into one pass).
    versions = {r.version for r in rotations}
    own = sorted(latency for agent in agents for version, latency in agent.writes(SECRET) if version in versions)
    coalesced = sum(len(versions - {v for v, _ in agent.writes(SECRET)}) for agent in agents)
    fallback = sum(seen.by_fallback for seen in watcher.seen)
    print(
        f"  the agents' own log (stream event -> on disk): p50 {percentile(own, 0.5):.1f} ms, "
        f"p99 {percentile(own, 0.99):.1f} ms, max {own[-1] if own else float('nan'):.1f} ms over {len(own)} writes; "
        f"versions never written (superseded before a pass): {coalesced}; "
        f"changes first seen by the 100 ms fallback read: {fallback}"
    )
    return p99


# --- 3. --once ---


async def setup_once(
    client: AsyncClient, certs: pathlib.Path, workloads: int, per: int
) -> dict[tuple[str, str], bytes]:
    """Node ONCE_NODE with `workloads` workloads, each bound to `per` secrets of its own and to one
    account; returns the expected content of every secret file, by (workload, secret)."""
    pki.issue(certs, "node", ONCE_NODE)
    await client.create_service_account("once-app", namespace=ONCE_NAMESPACE)
    limit = asyncio.Semaphore(CREATE_CONCURRENCY)
    expected: dict[tuple[str, str], bytes] = {}

    async def one(i: int) -> None:
        names = [f"s-{i}-{j}" for j in range(per)]
        async with limit:
            for name in names:
                value = f"{name}:{secrets.token_hex(16)}".encode()
                expected[(f"w-{i}", name)] = value
                await client.create_secret(name, namespace=ONCE_NAMESPACE, data={KEY: value})
            await client.create_workload(
                f"w-{i}", namespace=ONCE_NAMESPACE, node_name=ONCE_NODE, service_account="once-app", secrets=names
            )

    await asyncio.gather(*(one(i) for i in range(workloads)))
    return expected


def verify_once(root: pathlib.Path, expected: dict[tuple[str, str], bytes], token: bytes) -> list[str]:
    """Every secret file with its value, every serviceaccount/ with the account's token and a key."""
    problems = []
    for (workload, secret), value in expected.items():
        path = root / ONCE_NAMESPACE / workload / "secrets" / secret / KEY
        try:
            if path.read_bytes() != value:
                problems.append(f"{path}: wrong content")
        except OSError as e:
            problems.append(f"{path}: {e.strerror}")
    for workload in {w for w, _ in expected}:
        account = root / ONCE_NAMESPACE / workload / "serviceaccount"
        try:
            if (account / "token").read_bytes() != token:
                problems.append(f"{account}/token: wrong content")
            if b"PRIVATE KEY" not in (account / "tls.key").read_bytes():
                problems.append(f"{account}/tls.key: no key")
            if b"CERTIFICATE" not in (account / "tls.crt").read_bytes():
                problems.append(f"{account}/tls.crt: no certificate")
        except OSError as e:
            problems.append(f"{account}: {e.strerror}")
    return problems


def run_once(argv: list[str], log: pathlib.Path) -> tuple[float, int]:
    """`argv --once`: seconds from starting the process to its exit, and its exit status."""
    with log.open("wb") as output:
        start = time.monotonic()
        code = spawn([*argv, "--once"], output).wait()
        return time.monotonic() - start, code


# --- main() ---


async def bench(a: argparse.Namespace, server: _harness.Server, workdir: pathlib.Path, roots: pathlib.Path) -> int:
    """The three parts in turn; the agents' logs in `workdir`, their roots in `roots`."""
    certs = workdir / "certs"
    failed = 0
    async with AsyncClient(
        server=server.address, ca=certs / "ca.crt", cert=certs / "admin.crt", key=certs / "admin.key"
    ) as client:
        nodes = await setup_fleet(client, certs, a.agents)
        profile = a.profile / "agent-0" if a.profile else None
        specs = [
            (
                agent_argv(certs, server.address, node, roots / "roots" / node, profile if i == 0 else None),
                node,
                roots / "roots" / node,
            )
            for i, node in enumerate(nodes)
        ]
        files = [root / NAMESPACE / f"w-{i}" / "secrets" / SECRET / KEY for i, (_, _, root) in enumerate(specs)]
        watcher = FileWatcher(files)
        watcher.start()
        try:
            with agents_running(specs, workdir) as agents:
                started = time.monotonic()
                await asyncio.to_thread(
                    wait_for, lambda: all(s.current == 0 for s in watcher.seen), STARTUP_TIMEOUT, "the first files"
                )
                print(f"{len(agents)} agents up, first files on disk after {time.monotonic() - started:.1f} s")
                await asyncio.sleep(1.0)  # past the agents' startup passes
                server_cpu0 = process_seconds(server.process.pid)
                agents_cpu0 = [process_seconds(agent.process.pid) for agent in agents]
                t0 = time.monotonic()
                rotations = await rotate(client, a.seconds, a.interval)
                last = rotations[-1].number
                with contextlib.suppress(SystemExit):
                    await asyncio.to_thread(
                        wait_for,
                        lambda: all(s.current >= last for s in watcher.seen),
                        DRAIN_TIMEOUT,
                        "the last rotation",
                    )
                window = time.monotonic() - t0
                server_cpu = (process_seconds(server.process.pid) - server_cpu0) / window
                agents_cpu = [
                    (process_seconds(agent.process.pid) - c0) / window
                    for agent, c0 in zip(agents, agents_cpu0, strict=True)
                ]
                await asyncio.sleep(0.5)  # the agents' last log lines
                p99 = report_rotations(rotations, watcher, agents, a.interval)
                print(
                    f"  CPU over the {window:.1f} s of rotations (100% = one core): satcheld {server_cpu:.0%}, "
                    f"agents {sum(agents_cpu):.0%} in all ({statistics.mean(agents_cpu):.1%} each on average, "
                    f"max {max(agents_cpu):.1%})"
                )
                failed += p99 * 1000 > P99_TARGET_MS

                # 2. idle
                idle = agents[0]
                await asyncio.sleep(1.0)
                cpu0, t_idle = process_seconds(idle.process.pid), time.monotonic()
                all0 = [process_seconds(agent.process.pid) for agent in agents]
                await asyncio.sleep(a.idle_seconds)
                span = time.monotonic() - t_idle
                cpu = (process_seconds(idle.process.pid) - cpu0) / span
                all_cpu = [(process_seconds(ag.process.pid) - c0) / span for ag, c0 in zip(agents, all0, strict=True)]
                rss = rss_kib(idle.process.pid) / 1024
                all_rss = [rss_kib(agent.process.pid) / 1024 for agent in agents]
                ok = rss < RSS_TARGET_MIB and cpu < CPU_TARGET
                failed += not ok
                print(
                    f"idle {span:.0f} s, agent {idle.node} (pid {idle.process.pid}): VmRSS {rss:.1f} MiB "
                    f"(target < {RSS_TARGET_MIB:.0f}), CPU {cpu:.2%} of a core (target < {CPU_TARGET:.0%}): "
                    f"{'ok' if ok else 'MISSED'}; all {len(agents)}: VmRSS {min(all_rss):.1f}-{max(all_rss):.1f} MiB, "
                    f"CPU {min(all_cpu):.2%}-{max(all_cpu):.2%}"
                )
        finally:
            watcher.stop()

        # 3. --once
        workloads, per = a.once_workloads, a.once_secrets
        expected = await setup_once(client, certs, workloads, per)
        token = (await client.get_secret("once-app-token", namespace=ONCE_NAMESPACE)).data["token"]
        times = []
        for run in range(a.once_runs):
            root = roots / "once" / f"run-{run}"
            profile = a.profile / f"once-{run}" if a.profile and run == 0 else None
            argv = agent_argv(certs, server.address, ONCE_NODE, root, profile)
            seconds, code = await asyncio.to_thread(run_once, argv, workdir / f"once-{run}.log")
            problems = verify_once(root, expected, token) if code == 0 else []
            times.append(seconds)
            verdict = "files ok" if code == 0 and not problems else f"exit {code}, {len(problems)} problem(s)"
            print(
                f"--once, run {run + 1}: {workloads} workloads x {per} secrets "
                f"({workloads * per} secret files + {workloads} serviceaccount/ of 5 files) in {seconds:.2f} s "
                f"from start to exit; {verdict}"
            )
            for problem in problems[:5]:
                print(f"    {problem}")
            failed += code != 0 or bool(problems)
        print(f"--once: median {statistics.median(times):.2f} s of {len(times)} runs")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    global AGENT_CPUS
    parser = _harness.argument_parser(__doc__)
    parser.add_argument("--agents", type=int, default=20, help="agent processes, one node each (20)")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds of rotations (30)")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between rotations (0.2)")
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="seconds of the idle measurement (60)")
    parser.add_argument("--once-workloads", type=int, default=100, help="workloads on the --once node (100)")
    parser.add_argument("--once-secrets", type=int, default=3, help="secrets per --once workload (3)")
    parser.add_argument("--once-runs", type=int, default=3, help="runs of --once, each into a fresh root (3)")
    parser.add_argument(
        "--files-in",
        metavar="DIR",
        help="put the agents' roots in a directory made in DIR (default: the temporary directory; "
        "/dev/shm, a tmpfs, shows what fsync costs)",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        type=pathlib.Path,
        help="run agent 0 and the first --once under cProfile (CPU time per thread), profiles into DIR",
    )
    _harness.add_server_arguments(parser)
    args = parser.parse_args(argv)
    if min(args.agents, args.once_workloads, args.once_secrets, args.once_runs) < 1:
        parser.error("counts must be at least 1")
    if args.seconds <= 0 or args.interval <= 0 or args.idle_seconds <= 0:
        parser.error("--seconds, --interval and --idle-seconds must be positive")
    _harness.require_satcheld(args.satcheld)

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="satchel-bench-agent-"))
    files = pathlib.Path(tempfile.mkdtemp(prefix="satchel-bench-agent-roots-", dir=args.files_in))
    serve = ["serve", "--dev", "--data-dir", str(workdir), "--listen", "127.0.0.1:0"]
    try:
        # The agents are this process's children: they run where it runs (the last CPU), apart from satcheld.
        with (
            _harness.placed_client(args.pin) as (server_cpus, placement),
            _harness.started([("satcheld", [args.satcheld, *serve])], workdir, server_cpus) as (server,),
        ):
            if server_cpus:
                # placed_client put this process on the last CPU: the agents go there, this bench
                # (the rotations and the file watcher) beside satcheld, which needs little here.
                AGENT_CPUS = os.sched_getaffinity(0)
                os.sched_setaffinity(0, server_cpus)
                placement = f"satcheld and this bench on CPU {sorted(server_cpus)}, agents on CPU {sorted(AGENT_CPUS)}"
            print(
                f"satchel agent bench: {machine()}; {load()}; grpcio {grpc.__version__}, "
                f"Python {platform.python_version()}; {placement}; agents' roots in {files} ({_fs(files)})"
            )
            print(
                f"settings: --agents {args.agents} --seconds {args.seconds:g} --interval {args.interval:g} "
                f"--idle-seconds {args.idle_seconds:g} --once-workloads {args.once_workloads} "
                f"--once-secrets {args.once_secrets} --once-runs {args.once_runs}; file changes seen by inotify "
                f"(the ..data swap), timed with time.monotonic() after the read, every file re-read each "
                f"{FALLBACK_POLL * 1000:.0f} ms as a fallback"
            )
            code = asyncio.run(bench(args, server, workdir, files))
            if args.profile:
                print(f"profiles (agent 0, the first --once) in {args.profile}: {sorted(args.profile.rglob('*.prof'))}")
            if server.process.poll() is not None:
                print(f"warning: satcheld exited with code {server.process.returncode} during the bench")
            print(f"end: {load()}")
            return code
    finally:
        if args.keep:
            print(f"kept {workdir} and {files}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            shutil.rmtree(files, ignore_errors=True)


def _fs(path: pathlib.Path) -> str:
    """The file system type the agents write on (fsync costs differ: ext4, tmpfs...)."""
    best, kind = "", "?"
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 2 and str(path).startswith(fields[1]) and len(fields[1]) > len(best):
                best, kind = fields[1], fields[2]
    return kind


if __name__ == "__main__":
    _harness.run(main)
