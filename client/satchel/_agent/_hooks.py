"""`--on-change`: a command run after a change lands for a workload, beside the updates.

Each leaf (a workload's secret, or its serviceaccount/) has at most one run at a time; a change
that lands while its hook runs is queued, and only the newest queued one runs (a hook is told
"this is the current version", never a backlog of stale ones). One version never runs twice. A
hook that outlives its timeout is killed with its process group; its output is logged, its
failures logged and counted. Nothing here ever waits for a hook on the update path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger("satchel-agent")

_OUTPUT_LIMIT = 8192  # bytes of a run's output that reach the log
CONCURRENT_RUNS = 4


@dataclass(frozen=True)
class HookEvent:
    """What the hook is told, as SATCHEL_* environment variables."""

    namespace: str
    workload: str
    secret: str
    version: int
    event: str  # "written" or "removed"
    source: tuple[object, ...] = ()  # tells two landings of one leaf apart; never passed on

    def environment(self) -> dict[str, str]:
        return {
            "SATCHEL_NAMESPACE": self.namespace,
            "SATCHEL_WORKLOAD": self.workload,
            "SATCHEL_SECRET": self.secret,
            "SATCHEL_VERSION": str(self.version) if self.event == "written" else "",
            "SATCHEL_EVENT": self.event,
        }


class Hooks:
    def __init__(self, command: str | None, timeout: float, env: Mapping[str, str] | None = None) -> None:
        self._command = command
        self._timeout = timeout
        # The agent's own environment, but not a bearer token: a hook never acts as anyone by it.
        self._env = {k: v for k, v in (os.environ if env is None else env).items() if k != "SATCHEL_TOKEN"}
        self._slots = asyncio.Semaphore(CONCURRENT_RUNS)
        self._queued: dict[tuple[str, ...], HookEvent] = {}
        self._running: dict[tuple[str, ...], asyncio.Task[None]] = {}
        self._last: dict[tuple[str, ...], HookEvent] = {}
        self.runs = 0
        self.failures = 0

    def notify(self, leaf: tuple[str, ...], event: HookEvent) -> None:
        """A change landed in `leaf`: run the hook for it (soon, without waiting)."""
        if self._command is None or self._last.get(leaf) == event:
            return
        self._last[leaf] = event
        self._queued[leaf] = event
        if leaf not in self._running:
            self._running[leaf] = asyncio.create_task(self._drain(leaf), name=f"hook {'/'.join(leaf)}")

    async def idle(self) -> None:
        """Wait until no hook runs or waits (for `--once` and shutdown)."""
        while self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def _drain(self, leaf: tuple[str, ...]) -> None:
        try:
            while (event := self._queued.pop(leaf, None)) is not None:
                async with self._slots:
                    await self._run(event)
        finally:
            del self._running[leaf]

    async def _run(self, event: HookEvent) -> None:
        assert self._command is not None
        what = f"{event.namespace}/{event.workload} {event.secret} version={event.version} ({event.event})"
        self.runs += 1
        try:
            process = await asyncio.create_subprocess_shell(
                self._command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={**self._env, **event.environment()},
                start_new_session=True,  # its own process group, so a timeout kills all of it
            )
        except OSError as e:
            self.failures += 1
            log.warning("hook for %s could not start: %s", what, e.strerror or e)
            return
        try:
            async with asyncio.timeout(self._timeout):
                output, _ = await process.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            self.failures += 1
            log.warning("hook for %s killed after %.0fs", what, self._timeout)
            return
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            raise
        text = output[:_OUTPUT_LIMIT].decode(errors="replace").rstrip()
        for line in text.splitlines():
            log.info("hook for %s: %s", what, line)
        if process.returncode != 0:
            self.failures += 1
            log.warning("hook for %s failed with exit status %s", what, process.returncode)
