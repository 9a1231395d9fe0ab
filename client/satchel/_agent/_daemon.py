"""The agent: three watch streams in, one reconciler out.

The streams (`WatchWorkloads`, `WatchServiceAccounts`, `WatchSecrets`, as the node: the server
shows it exactly its view) keep `Feed`s of objects; every change marks the tree dirty and one
pass at a time computes the desired tree from the feeds and the certificates and reconciles the
disk to it (in a thread, so that fsyncs never stall the streams). A listing (the first sync, or
a relisting after REVISION_COMPACTED) is collected apart and swapped in at its SYNCED, and no
pass runs while one is open: the disk never loses a file just because a listing is half-read.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from satchel._agent import _metrics, _state
from satchel._agent._credentials import Credentials
from satchel._agent._files import Root
from satchel._agent._hooks import HookEvent, Hooks
from satchel._agent._layout import SECRETS_DIR, SERVICE_ACCOUNT_DIR, Key, Rejected, Tree, accounts_needed, desired
from satchel._agent._metrics import Status
from satchel._agent._reconcile import Outcome, Reconciler
from satchel._client import AsyncClient
from satchel._errors import SatchelError
from satchel._watch import AsyncWatchStream
from satchel.v1.meta_pb2 import EventType

log = logging.getLogger("satchel-agent")
T = TypeVar("T")

RECONNECT_CAP = 30.0  # seconds: the longest wait between reconnections
RESYNC_INTERVAL = 60.0  # seconds between passes that look for drift when nothing changes
RETRY_BASE = 0.5  # seconds before a pass that failed to write is tried again (doubling, capped)
WRITE_INTERVAL = 1.0  # seconds: state.json and the metrics file are written at most this often
_WATCHES = {"workloads": "watch_workloads", "serviceaccounts": "watch_service_accounts", "secrets": "watch_secrets"}


@dataclass(frozen=True)
class AgentConfig:
    node: str
    root: Path
    file_mode: int = 0o400
    on_change: str | None = None
    hook_timeout: float = 30.0
    metrics_file: Path | None = None
    cert_ttl: float | None = None  # seconds; None: the server's default
    once: bool = False
    sync_timeout: float = 30.0  # how long --once may take


class Throttled(Generic[T]):
    """Writes the latest of a series of values in a thread, at most once per `interval`: a value
    that comes after a quiet spell is written before `put` returns; one that comes sooner waits
    for the end of the interval, replacing any value still waiting (only the newest is worth
    writing). The state file and the metrics file need no more, whatever the rate of changes."""

    def __init__(self, write: Callable[[T], None], interval: float, what: str) -> None:
        self._write = write
        self._interval = interval
        self._what = what
        self._waiting: T | None = None
        self._last = -interval
        self._trailing: asyncio.Task[None] | None = None
        self._busy = asyncio.Lock()

    async def put(self, value: T) -> None:
        self._waiting = value
        if self._trailing is None and time.monotonic() - self._last >= self._interval:
            await self._flush()
        elif self._trailing is None:
            self._trailing = asyncio.create_task(self._later(), name=f"write {self._what}")

    async def _later(self) -> None:
        try:
            await asyncio.sleep(self._last + self._interval - time.monotonic())
        finally:
            self._trailing = None
        await self._flush()

    async def _flush(self) -> None:
        async with self._busy:  # one write at a time, so an older value never lands last
            value, self._waiting = self._waiting, None
            if value is None:
                return
            self._last = time.monotonic()
            try:
                await asyncio.to_thread(self._write, value)
            except OSError as e:
                log.error("cannot write %s: %s", self._what, e.strerror or e)

    async def close(self) -> None:
        """Write what is still waiting, now."""
        if self._trailing is not None:
            self._trailing.cancel()
            self._trailing = None
        await self._flush()


class Feed:
    """One stream's objects as of its revision."""

    def __init__(self, name: str, field: str, objects: dict[Key, Any] | None = None, revision: int = 0) -> None:
        self.name = name
        self.field = field
        self.objects: dict[Key, Any] = objects if objects is not None else {}
        self.revision = revision
        self.listing: dict[Key, Any] | None = None if objects is not None else {}

    @property
    def ready(self) -> bool:
        return self.listing is None

    def relist(self) -> None:
        """A listing starts (the client relists after REVISION_COMPACTED): collect it apart."""
        log.info("relisting %s (the server no longer has the history after revision %d)", self.name, self.revision)
        self.listing = {}

    def apply(self, event: Any) -> bool:
        """Take one event; True when what the tree is made of changed."""
        if event.revision:
            self.revision = max(self.revision, event.revision)
        if event.type == EventType.EVENT_TYPE_SYNCED:
            if self.listing is not None:
                self.objects, self.listing = self.listing, None
            return True
        if event.type == EventType.EVENT_TYPE_BOOKMARK:
            return False
        obj = getattr(event, self.field)
        key = (obj.metadata.namespace, obj.metadata.name)
        into = self.listing if self.listing is not None else self.objects
        if event.type == EventType.EVENT_TYPE_DELETED:
            into.pop(key, None)
        else:
            into[key] = obj
        return self.listing is None


class Agent:
    def __init__(self, config: AgentConfig, client: AsyncClient) -> None:
        self.config = config
        self.client = client
        self.root = Root(config.root, config.file_mode)
        self.reconciler = Reconciler(self.root)
        self.hooks = Hooks(config.on_change, config.hook_timeout)
        self.credentials = Credentials(client, config.cert_ttl, self._changed)
        self.status = Status()
        root = config.root
        self._state_file = Throttled[_state.State](lambda state: _state.save(root, state), WRITE_INTERVAL, "state.json")
        metrics_file = config.metrics_file
        self._metrics_file = Throttled[Status](
            lambda status: _metrics.write(metrics_file, status) if metrics_file else None,
            WRITE_INTERVAL,
            "the metrics file",
        )
        self.feeds = {
            "workloads": Feed("workloads", "workload"),
            "serviceaccounts": Feed("serviceaccounts", "service_account"),
            "secrets": Feed("secrets", "secret"),
        }
        self._streams: dict[str, AsyncWatchStream[Any]] = {}
        self._dirty = asyncio.Event()
        self._stop = asyncio.Event()
        self._since: float | None = None  # when the oldest change not yet on disk arrived
        self._complete = asyncio.Event()  # --once: a pass left everything written
        self._failure = ""  # --once: why it cannot complete
        self._warned: set[str] = set()
        self._retries = 0
        self._announced = False  # "in sync" logged since the start or the last relisting
        self._saved: tuple[dict[str, int], dict[Key, tuple[float, int]]] | None = None  # in state.json

    # --- running -------------------------------------------------------------------------

    async def run(self) -> int:
        """Sync and keep syncing until SIGTERM or SIGINT (`--once`: until synced); the exit status."""
        self._resume()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._resync)  # `systemctl reload`: a pass now
        tasks = [asyncio.create_task(self._follow(feed), name=f"watch {feed.name}") for feed in self.feeds.values()]
        passes = asyncio.create_task(self._passes(), name="reconcile")
        tasks.append(asyncio.create_task(self._heartbeat(), name="heartbeat"))
        await self._write_metrics()  # there from the start, saying "not connected" until it is
        if any(feed.ready for feed in self.feeds.values()):
            self._changed()  # resumed: the disk is checked against the saved state at once
        try:
            if self.config.once:
                return await self._until_synced()
            await self._stop.wait()
            log.info("stopping")
            return 0
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._stop.set()
            self._dirty.set()
            await asyncio.gather(passes, return_exceptions=True)
            await self.credentials.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.hook_timeout + 1):
                    await self.hooks.idle()
            self.status.connected = False
            await self._write_metrics()
            await self._metrics_file.close()
            await self._state_file.close()
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            self.root.close()

    async def _until_synced(self) -> int:
        waiters = [asyncio.create_task(self._complete.wait()), asyncio.create_task(self._stop.wait())]
        try:
            async with asyncio.timeout(self.config.sync_timeout):
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            reason = self._failure or self._why_not_synced()
            log.error("not synced within %.0fs: %s", self.config.sync_timeout, reason)
            return 1
        finally:
            for waiter in waiters:
                waiter.cancel()
        if not self._complete.is_set():
            log.error("not synced: %s", self._failure or "stopped")
            return 1
        log.info("synced at revision %d", self.status.revision)
        return 0

    def _why_not_synced(self) -> str:
        waiting = [feed.name for feed in self.feeds.values() if not feed.ready]
        if waiting:
            return f"no listing of {', '.join(waiting)} from the server (is it reachable?)"
        failures = [f"{ns}/{name}: {why}" for (ns, name), why in self.credentials.failures.items()]
        if failures:
            return f"certificate not issued for {'; '.join(failures)}"
        if self.credentials.pending():
            return "certificates not issued yet"
        return "files could not be written"

    def _resume(self) -> None:
        """Start from the saved state when it and the disk agree, else from a listing."""
        state, why = _state.load(self.config.root, self.config.node)
        if state is not None:
            why = _state.restore(state, self.root)
            self.credentials.adopt(state.credentials)  # each checked against its account and key
        if state is None or why:
            log.info("starting with a listing: %s", why)
            return
        if self.config.once:
            log.info("listing (--once); %d certificate(s) reused from disk", len(state.credentials))
            return
        self.feeds["workloads"] = Feed("workloads", "workload", state.workloads, state.revisions.get("workloads", 0))
        self.feeds["serviceaccounts"] = Feed(
            "serviceaccounts", "service_account", state.accounts, state.revisions.get("serviceaccounts", 0)
        )
        self.feeds["secrets"] = Feed("secrets", "secret", state.secrets, state.revisions.get("secrets", 0))
        log.info("resuming from revision %d", max(state.revisions.values(), default=0))

    async def _follow(self, feed: Feed) -> None:
        """Read one stream for ever; the client library resumes and relists, this loop only
        outlasts the errors it gives up on (a node may be authorized again later)."""
        attempt = 0
        while True:
            stream = self._open(feed)
            self._streams[feed.name] = stream
            try:
                async for event in stream:
                    attempt = 0
                    if feed.apply(event):
                        self._changed(time.monotonic())
            except (SatchelError, ValueError, OSError) as e:  # final errors, or a response it cannot take
                if self.config.once:
                    self._failure = f"watching {feed.name}: {type(e).__name__}: {e}"
                    self._stop.set()
                    return
                delay = random.uniform(0, min(RECONNECT_CAP, 0.5 * 2**attempt))
                attempt += 1
                log.error("watching %s: %s: %s; again in %.1fs", feed.name, type(e).__name__, e, delay)
                await asyncio.sleep(delay)
            finally:
                await stream.aclose()

    def _open(self, feed: Feed) -> AsyncWatchStream[Any]:
        watch: Callable[..., AsyncWatchStream[Any]] = getattr(self.client, _WATCHES[feed.name])
        if feed.ready:
            return watch(since_revision=feed.revision, on_relist=feed.relist, max_backoff=RECONNECT_CAP)
        feed.listing = {}  # a listing cut short by an error starts over from nothing
        return watch(send_initial=True, on_relist=feed.relist, max_backoff=RECONNECT_CAP)

    def _resync(self) -> None:
        log.info("SIGHUP: checking the whole root now")
        self._changed()

    def _changed(self, received: float | None = None) -> None:
        if received is not None and self._since is None:
            self._since = received
        self._dirty.set()

    async def _heartbeat(self) -> None:
        """Connection state in the metrics file, and a pass now and then for drift."""
        last_pass = time.monotonic()
        was_connected = False
        while True:
            await asyncio.sleep(1.0)
            connected = self._connected()
            if connected != was_connected:
                was_connected = connected
                log.info("connected" if connected else "disconnected; the files on disk stay as they are")
            if connected != self.status.connected:
                self.status.connected = connected
                await self._write_metrics()
            if time.monotonic() - last_pass >= RESYNC_INTERVAL:
                last_pass = time.monotonic()
                self._changed()

    def _connected(self) -> bool:
        return len(self._streams) == len(self.feeds) and all(s.connected for s in self._streams.values())

    # --- passes --------------------------------------------------------------------------

    async def _passes(self) -> None:
        while not self._stop.is_set():
            await self._dirty.wait()
            self._dirty.clear()
            if self._stop.is_set():
                continue
            if not all(feed.ready for feed in self.feeds.values()):
                self._announced = False
                continue
            try:
                await self._pass()
            except Exception as e:  # a pass must never end the agent's passes for good
                log.error("pass failed: %s: %s; again in %.1fs", type(e).__name__, e, RETRY_BASE)
                self._announced = False
                asyncio.get_running_loop().call_later(RETRY_BASE, self._changed)

    async def _pass(self) -> None:
        since, self._since = self._since, None
        workloads = dict(self.feeds["workloads"].objects)
        accounts = dict(self.feeds["serviceaccounts"].objects)
        secrets = dict(self.feeds["secrets"].objects)
        wanted = {key: accounts[key] for key in accounts_needed(self.config.node, workloads) if key in accounts}
        self.credentials.want(wanted)
        rejected = Rejected()
        now = time.time()
        valid = {key: c for key, c in self.credentials.issued.items() if c.expire_time > now}  # else pending
        tree = desired(self.config.node, workloads, accounts, secrets, valid, rejected)
        revisions = {name: feed.revision for name, feed in self.feeds.items()}  # as of the tree
        revision = max(revisions.values())
        outcome = await asyncio.to_thread(self.reconciler.reconcile, tree)
        landed = time.monotonic()
        latency = f"{(landed - since) * 1000:.1f}" if since is not None else "-"
        renewals = {key: (c.renew_time, c.account_version) for key, c in self.credentials.issued.items()}
        saving = (revisions, renewals)
        if saving != self._saved and not outcome.errors:  # what is saved is on disk
            self._saved = saving
            await self._state_file.put(
                _state.State(self.config.node, revisions, workloads, accounts, secrets, renewals)
            )
        # The metrics first, then the log lines: whoever sees a line finds the metrics current.
        s = self.status
        if not outcome.errors:  # else some of it may not be on disk
            s.revision = max(s.revision, revision)
            s.versions = {(lf.namespace, lf.workload, lf.secret): lf.version for lf in tree.leaves.values()}
        s.certificates = {key: c.expire_time for key, c in self.credentials.issued.items()}
        s.connected = self._connected()
        s.writes += len(outcome.written)
        s.removals += len(outcome.removed) + len(outcome.strays)
        s.errors += len(outcome.errors)
        if not outcome.errors:
            s.last_sync_time = time.time()
        await self._write_metrics()
        self._report(tree, outcome, revision, latency, rejected)
        if not outcome.errors:
            self._retries = 0
            if not self._announced and not tree.pending:
                self._announced = True
                log.info("in sync at revision %d: %d leaves", revision, len(tree.leaves))
        else:
            for error in outcome.errors:
                log.error("%s", error)
            self._announced = False
            delay = min(RECONNECT_CAP, RETRY_BASE * 2**self._retries)
            self._retries += 1
            asyncio.get_running_loop().call_later(delay, self._changed)
        if self.config.once and not outcome.errors and not tree.pending:
            if rejected.reasons:  # nothing will change that: say so now rather than at the deadline
                self._failure = f"not written: {rejected.reasons[0]}"
                self._stop.set()
            else:
                self._complete.set()

    def _report(self, tree: Tree, outcome: Outcome, revision: int, latency: str, rejected: Rejected) -> None:
        """One log line per change (never a value), and the hooks."""
        for leaf in outcome.written:
            where = "serviceaccount" if leaf.path[-1] == SERVICE_ACCOUNT_DIR else "secret"
            log.info(
                "wrote %s/%s %s=%s version=%d revision=%d latency_ms=%s",
                leaf.namespace, leaf.workload, where, leaf.secret, leaf.version, leaf.revision, latency,
            )  # fmt: skip
            event = HookEvent(leaf.namespace, leaf.workload, leaf.secret, leaf.version, "written", leaf.source)
            self.hooks.notify(leaf.path, event)
        for path in outcome.removed:
            if len(path) <= 2:
                log.info("removed %s revision=%d latency_ms=%s", "/".join(path), revision, latency)
                continue
            secret = path[3] if path[2] == SECRETS_DIR else SERVICE_ACCOUNT_DIR
            log.info("removed %s/%s secret=%s revision=%d latency_ms=%s", path[0], path[1], secret, revision, latency)
            if (path[0], path[1]) in tree.workloads:
                self.hooks.notify(path, HookEvent(path[0], path[1], secret, 0, "removed"))
        for path in outcome.strays:
            log.warning("removed stray %s", "/".join(path))
        for reason in rejected.reasons:
            if reason not in self._warned:
                self._warned.add(reason)
                log.warning("not written: %s", reason)

    async def _write_metrics(self) -> None:
        if self.config.metrics_file is None:
            return
        self.status.hook_runs, self.status.hook_failures = self.hooks.runs, self.hooks.failures
        await self._metrics_file.put(dataclasses.replace(self.status))
