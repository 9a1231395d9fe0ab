"""satcheld and satchel-agent as real processes, for the agent's tests.

`dev_server` runs `satcheld serve --dev` (restartable on the same port and data directory);
`agent` runs `satchel-agent` for a node and collects its log lines, which the tests wait on
(with a bound) instead of sleeping: the agent logs one line per change it lands.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tools import binary
from tools import satcheld as satcheld_binary

import satchel
import satchel.pki

STARTUP = 30.0  # seconds for a process to start serving or syncing
LANDS = 30.0  # seconds for a change to reach the disk (it takes milliseconds; this is a bound)
EXPORTS = ("SATCHEL_SERVER", "SATCHEL_CA", "SATCHEL_CERT", "SATCHEL_KEY")


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SATCHEL_")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DevServer:
    data: Path
    address: str
    exports: dict[str, str]
    proc: asyncio.subprocess.Process

    @property
    def certs(self) -> Path:
        return self.data / "certs"

    def client(self) -> satchel.AsyncClient:
        """The admin's client."""
        e = self.exports
        return satchel.AsyncClient(
            server=self.address, ca=e["SATCHEL_CA"], cert=e["SATCHEL_CERT"], key=e["SATCHEL_KEY"]
        )

    def node_identity(self, name: str) -> tuple[Path, Path]:
        crt, key = satchel.pki.issue(self.certs, "node", name)
        return Path(crt), Path(key)

    def kill(self) -> None:
        self.proc.kill()


@asynccontextmanager
async def dev_server(data: Path, *args: str, port: int = 0) -> AsyncIterator[DevServer]:
    """`satcheld serve --dev` on `data`; SIGTERM at the end (a killed one is only reaped)."""
    log = open(data.parent / f"{data.name}-satcheld.log", "ab")
    proc = await asyncio.create_subprocess_exec(
        satcheld_binary(),
        "serve",
        "--dev",
        "--data-dir",
        str(data),
        "--listen",
        f"127.0.0.1:{port}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
        env=clean_env(),
    )
    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), STARTUP)).decode()
        match = re.fullmatch(r"listening on (127\.0\.0\.1:\d+)\n", first)
        assert match, f"satcheld said {first!r} (see {log.name})"
        exports: dict[str, str] = {}
        while not set(EXPORTS) <= exports.keys():
            line = (await asyncio.wait_for(proc.stdout.readline(), STARTUP)).decode()
            assert line, "satcheld closed stdout"
            if m := re.fullmatch(r"\s*export (SATCHEL_[A-Z]+)=(.*)\n", line):
                exports[m.group(1)] = shlex.split(m.group(2))[0]
        yield DevServer(data, match.group(1), exports, proc)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STARTUP)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        else:
            await proc.wait()
        log.close()


def agent_binary() -> str:
    return binary("satchel-agent", "`pip install -e .` installs the satchel-agent console script")


class AgentProcess:
    """A running satchel-agent and the log lines it has written so far."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._grew = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            async with self._grew:
                self.lines.append(line.decode(errors="replace").rstrip("\n"))
                self._grew.notify_all()
        async with self._grew:
            self._grew.notify_all()

    def mark(self) -> int:
        """The number of lines so far: `wait_for(..., after=mark)` looks only at later ones."""
        return len(self.lines)

    async def wait_for(self, pattern: str, *, after: int = 0, timeout: float = LANDS) -> re.Match[str]:
        """The first log line from `after` on that matches `pattern` (re.search)."""
        regex = re.compile(pattern)
        seen = after
        async with asyncio.timeout(timeout), self._grew:
            while True:
                for line in self.lines[seen:]:
                    if m := regex.search(line):
                        return m
                seen = len(self.lines)
                if self._reader.done():
                    raise AssertionError(f"the agent exited ({self.proc.returncode}) before logging {pattern!r}")
                await self._grew.wait()

    def log(self) -> str:
        return "\n".join(self.lines)

    async def exited(self, timeout: float = STARTUP) -> int:
        """The exit status, once the agent exits by itself (`--once`, a startup error)."""
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await self._reader
        return code

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), STARTUP)
        await self._reader
        return code


def agent_args(server: DevServer, node: tuple[Path, Path], root: Path, *more: str) -> list[str]:
    cert, key = node
    ca = server.exports["SATCHEL_CA"]
    return ["--server", server.address, "--ca", ca, "--cert", str(cert), "--key", str(key), "--root", str(root), *more]


async def start_agent(args: list[str], env: Mapping[str, str] | None = None) -> AgentProcess:
    proc = await asyncio.create_subprocess_exec(
        agent_binary(),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**clean_env(), **(env or {})},
    )
    return AgentProcess(proc)


@asynccontextmanager
async def agent(
    server: DevServer, node: tuple[Path, Path], root: Path, *more: str, env: Mapping[str, str] | None = None
) -> AsyncIterator[AgentProcess]:
    """A running agent; at the end it must still be running, and SIGTERM must stop it with 0."""
    running = await start_agent(agent_args(server, node, root, *more), env)
    try:
        yield running
        assert running.proc.returncode is None, f"the agent exited on its own:\n{running.log()}"
        assert await running.stop() == 0, running.log()
    finally:
        if running.proc.returncode is None:
            running.proc.kill()
            await running.proc.wait()


@dataclass
class Snapshot:
    """Every entry below a root: (kind, mode, inode, mtime_ns, link target or content)."""

    entries: dict[str, tuple[str, int, int, int, str | bytes]] = field(default_factory=dict)


def snapshot(root: Path) -> Snapshot:
    snap = Snapshot()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if rel.startswith(".satchel-agent"):
                continue
            st = path.lstat()
            if path.is_symlink():
                snap.entries[rel] = ("link", st.st_mode, st.st_ino, st.st_mtime_ns, os.readlink(path))
            elif path.is_dir():
                snap.entries[rel] = ("dir", st.st_mode, st.st_ino, st.st_mtime_ns, "")
            else:
                snap.entries[rel] = ("file", st.st_mode, st.st_ino, st.st_mtime_ns, path.read_bytes())
    return snap


def read_leaf(leaf: Path) -> dict[str, bytes]:
    """The files of a leaf directory as a workload reads them (through the per-key links)."""
    return {p.name: p.read_bytes() for p in leaf.iterdir() if not p.name.startswith("..")}
