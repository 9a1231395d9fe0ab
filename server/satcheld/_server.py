"""Assembles one server: reads its files, opens the store, loads the token
signing keys, builds the hub, the authorizer and the method table, listens on
TLS, and runs the background tasks (bookmarks, history compaction, deleting
expired signing keys) until stopped."""

from __future__ import annotations

import asyncio
import gc
import logging
from datetime import timedelta

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2

from ._config import ConfigError, ServerConfig, read_certificates, read_key
from .api import (
    SERVICE_NAMES,
    AuditLog,
    CertificateAuthority,
    Crud,
    Guard,
    HealthService,
    PageTokens,
    Rotator,
    TokenSecrets,
    method_table,
)
from .auth import Authorizer, NodeGraph, Policy, PolicyError, Tokens
from .model import SelectorLimits
from .store import KeyFileError, KeyRing, SqliteStore
from .watch import StreamQuota, WatchHub

log = logging.getLogger("satcheld")

MAX_MESSAGE_BYTES = 4 * 1024 * 1024

# CPython's default (700, 10, 10) runs a young collection every 700 net
# allocations. A fan-out to 1,000 streams keeps that many sends in flight for
# tens of milliseconds, long enough to outlive two young collections, so they
# are promoted to the old generation, and every few seconds a full collection
# walks every tracked object (100,000 or more at 1,000 streams: tens of
# milliseconds with the event loop stopped, 10-15% of the CPU). One young
# collection per 20,000 lets short-lived objects die first.
GC_THRESHOLDS = (20_000, 10, 10)


def tune_gc() -> None:
    """Garbage collection for a server process (the CLI calls it; tests' processes
    keep CPython's defaults)."""
    gc.set_threshold(*GC_THRESHOLDS)


def server_options(config: ServerConfig) -> list[tuple[str, int]]:
    return [
        # grpc sets SO_REUSEPORT by default: a second server on a busy port
        # would "listen" too and share its clients.
        ("grpc.so_reuseport", 0),
        # Notice dead peers within a minute and free their streams.
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        # A fleet reconnecting at once: grpc's defaults cancel calls beyond
        # 1,000 pending (3,000 hard) before the application picks them up.
        ("grpc.server.max_pending_requests", 50_000),
        ("grpc.server.max_pending_requests_hard_limit", 100_000),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # Streams one connection may have open at once; a client's further calls wait their turn.
        ("grpc.max_concurrent_streams", config.max_streams_per_connection),
        *_connection_lifetime(config),
        *config.extra_options,
    ]


def _connection_lifetime(config: ServerConfig) -> list[tuple[str, int]]:
    """Idle connections are closed, and old ones replaced (GOAWAY, then closed
    after the grace), so that long-lived clients spread over servers added later."""
    options = []
    if config.max_connection_idle is not None:
        options.append(("grpc.max_connection_idle_ms", _ms(config.max_connection_idle)))
    if config.max_connection_age is not None:
        options.append(("grpc.max_connection_age_ms", _ms(config.max_connection_age)))
        options.append(("grpc.max_connection_age_grace_ms", _ms(config.max_connection_age_grace)))
    return options


def _ms(duration: timedelta) -> int:
    return max(1, round(duration.total_seconds() * 1000))


class Server:
    """One Satchel server. `await start()` returns the address it listens on."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._grpc: aio.Server | None = None
        self._store: SqliteStore | None = None
        self.hub: WatchHub | None = None
        self.rotator: Rotator | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._audit: AuditLog | None = None
        self._authorizer: Authorizer | None = None
        self.tokens: Tokens | None = None
        self._health = HealthService()
        self.quota = StreamQuota(config.max_watch_streams_per_principal)
        self.address = ""

    def _credentials(self, authority: CertificateAuthority) -> grpc.ServerCredentials:
        c = self.config
        return grpc.ssl_server_credentials(
            [(read_key(c.tls_key, "TLS key"), read_certificates(c.tls_cert, "TLS certificate"))],
            # The certificates the server issues authenticate on its own API.
            root_certificates=authority.trusted_beside(read_certificates(c.client_ca, "client CA")),
            require_client_auth=True,
        )

    def _authority(self) -> CertificateAuthority:
        """The CA that signs service-account certificates, loaded once."""
        c = self.config
        cert_pem, key_pem = read_certificates(c.ca_cert, "CA certificate"), read_key(c.ca_key, "CA key")
        try:
            return CertificateAuthority.load(cert_pem, key_pem)
        except ValueError as e:
            raise ConfigError(f"CA certificate {c.ca_cert} and CA key {c.ca_key}: {e}") from None

    async def start(self) -> str:
        try:
            return await self._start()
        except BaseException:
            await self.stop(0)  # release what was opened before the failure
            raise

    async def _start(self) -> str:
        c = self.config
        if c.bookmark_interval.total_seconds() <= 0 or c.history_events < 1 or c.history_age.total_seconds() < 0:
            raise ConfigError(
                "--bookmark-interval must be above 0, --history-events at least 1, --history-age not negative"
            )
        if (
            min(c.max_initial_snapshots, c.max_initial_snapshots_per_principal) < 1
            or c.initial_snapshot_stall.total_seconds() <= 0
        ):
            raise ConfigError(
                "--max-initial-snapshots and --max-initial-snapshots-per-principal must be at least 1,"
                " --initial-snapshot-stall above 0"
            )
        if c.token_lifetime.total_seconds() < 1 or not c.token_issuer or not c.token_audience:
            raise ConfigError("--token-lifetime must be at least 1s; --token-issuer and --token-audience not empty")
        limits = (
            c.max_watch_streams_per_principal,
            c.max_selector_length,
            c.max_selector_terms,
            c.max_streams_per_connection,
        )
        if min(limits) < 1:
            raise ConfigError(
                "--max-watch-streams-per-principal, --max-selector-length, --max-selector-terms and"
                " --max-streams-per-connection must be at least 1"
            )
        authority = self._authority()
        credentials = self._credentials(authority)
        ca_cert = read_certificates(c.ca_cert, "CA certificate")
        try:
            keyring = KeyRing.load(c.encryption_key_file)
            policy = Policy.load(c.policy)
        except Exception as e:
            raise ConfigError(str(e)) from None
        try:
            # Keys the ring derives (token HMACs in the audit log, page-token MACs)
            # come from the ring read at start and stay while the process runs:
            # a SIGHUP that brings a new primary key changes only what seals.
            self._audit = AuditLog(c.audit_log, hmac_key=keyring.derive("audit-token-hmac"))
        except OSError as e:
            raise ConfigError(f"cannot open audit log {c.audit_log}: {e.strerror}") from None
        try:
            self._store = SqliteStore(c.db, keyring)
        except Exception as e:
            raise ConfigError(f"cannot open database {c.db}: {e}") from None

        tokens = self.tokens = Tokens(
            self._store, issuer=c.token_issuer, audience=c.token_audience, lifetime=c.token_lifetime
        )
        graph = NodeGraph()
        await graph.load(self._store)
        self.hub = WatchHub(
            self._store,
            graph=graph,
            bookmark_interval=c.bookmark_interval.total_seconds(),
            buffer_events=c.watch_buffer_events,
            buffer_bytes=c.watch_buffer_bytes,
            initial_reads=c.max_initial_snapshots,
            initial_stall=c.initial_snapshot_stall.total_seconds(),
            initial_reads_per_principal=c.max_initial_snapshots_per_principal,
        )
        authorizer = self._authorizer = Authorizer(policy, graph)
        hub = self.hub
        authorizer.on_policy_change(
            lambda: hub.rescope(lambda owner, view: authorizer.scope(owner, "watch", view.kind, view.namespace))
        )
        token_secrets = TokenSecrets(tokens, ca_cert, c.trust_domain)
        page_tokens = PageTokens(keyring.derive("page-token"))
        crud = Crud(
            self._store,
            self.hub,
            authorizer,
            page_tokens,
            c.trust_domain,
            token_secrets,
            quota=self.quota,
            selector_limits=SelectorLimits(c.max_selector_length, c.max_selector_terms),
        )
        self.rotator = Rotator(self._store, crud)
        await self.rotator.load()
        methods = method_table(crud, Guard(self._audit, c.trust_domain, tokens), self._health, authority)
        server = self._grpc = aio.server(handlers=(methods,), options=server_options(c), maximum_concurrent_rpcs=None)

        host = c.listen.rpartition(":")[0]
        try:
            bound = server.add_secure_port(c.listen, credentials)
        except RuntimeError as e:
            raise ConfigError(f"cannot listen on {c.listen}: {e}") from None
        if bound == 0:
            raise ConfigError(f"cannot listen on {c.listen}")
        # Once the port is ours (a server that cannot listen makes no key), before the first call.
        await tokens.start()
        await server.start()
        self.address = f"{host}:{bound}"
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._tasks = [
            asyncio.create_task(self.hub.run_bookmarks(), name="satchel-bookmarks"),
            asyncio.create_task(self.hub.initials.run(), name="satchel-initial-stalls"),
            asyncio.create_task(self._run_compaction(), name="satchel-compaction"),
            asyncio.create_task(self.rotator.run(), name="satchel-rotation"),
            asyncio.create_task(self._run_key_pruning(tokens), name="satchel-signing-keys"),
        ]
        return self.address

    def reload(self) -> None:
        """What SIGHUP does: reopens the audit log, so that log rotation can move
        the old file away, and re-reads the policy file and the encryption key
        file (new writes are then sealed under its first key). A file that
        cannot be opened or read keeps the old one in use, and the log says why."""
        if self._audit is not None:
            try:
                self._audit.reopen()
            except OSError as e:
                log.error(
                    "SIGHUP: cannot reopen the audit log %s (%s); still writing the old file",
                    self._audit.path,
                    e.strerror,
                )
            else:
                log.info("SIGHUP: reopened the audit log %s", self._audit.path)
        if self._authorizer is not None:
            try:
                policy = Policy.load(self.config.policy)
            except PolicyError as e:
                log.error("SIGHUP: kept the old policy: %s", e)
            else:
                self._authorizer.set_policy(policy)
                log.info("SIGHUP: reloaded the policy file %s", self.config.policy)
        if self._store is not None:
            try:
                keyring = KeyRing.load(self.config.encryption_key_file)
            except KeyFileError as e:
                log.error("SIGHUP: kept the old encryption key ring: %s", e)
            else:
                self._store.set_keyring(keyring)
                log.info(
                    "SIGHUP: reloaded the encryption key file %s; new writes are sealed under key %s",
                    self.config.encryption_key_file,
                    keyring.primary_id,
                )

    async def compact(self) -> int:
        """Forgets history beyond the configured age and count; returns the compact revision."""
        assert self._store is not None
        c = self.config
        return await self._store.compact(keep_seconds=c.history_age.total_seconds(), keep_events=c.history_events)

    async def _run_compaction(self) -> None:
        interval = min(60.0, max(1.0, self.config.history_age.total_seconds() / 10))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.compact()
            except Exception:
                log.exception("history compaction failed; will retry")

    async def _run_key_pruning(self, tokens: Tokens) -> None:
        """Deletes the retired signing keys whose last token has expired."""
        interval = min(60.0, max(1.0, self.config.token_lifetime.total_seconds() / 10))
        while True:
            await asyncio.sleep(interval)
            try:
                await tokens.keys.prune()
            except Exception:
                log.exception("deleting expired signing keys failed; will retry")

    async def stop(self, grace: float | None = None) -> None:
        """Stops accepting calls, lets running ones finish within the grace, closes the store."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self.hub is not None:
            self.hub.close()
        if self._grpc is not None:
            await self._health.enter_graceful_shutdown()
            await self._grpc.stop(self.config.shutdown_grace if grace is None else grace)
            self._grpc = None
        if self._store is not None:
            await self._store.close()
            self._store = None
        if self._audit is not None:
            self._audit.close()
            self._audit = None
        self._authorizer = None
