"""Assembles the server: TLS, the method table (services, health, reflection), store."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from satchel.v1 import secret_pb2, secret_pb2_grpc, service_account_pb2, service_account_pb2_grpc
from satchel.v1 import token_pb2, token_pb2_grpc, workload_pb2, workload_pb2_grpc

from . import _handlers, _reflection
from ._guard import AuditLog, Guard
from ._keyring import KeyRing
from ._methods import MethodTable
from ._paging import PageTokens
from ._policy import Authorizer, Policy
from ._store import Store
from ._watch import WatchHub

log = logging.getLogger("satcheld")

SERVICE_NAMES = (
    service_account_pb2.DESCRIPTOR.services_by_name["ServiceAccountService"].full_name,
    secret_pb2.DESCRIPTOR.services_by_name["SecretService"].full_name,
    workload_pb2.DESCRIPTOR.services_by_name["WorkloadService"].full_name,
    token_pb2.DESCRIPTOR.services_by_name["TokenService"].full_name,
)

MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class HealthService(health.aio.HealthServicer):
    """The standard health service. grpcio-health-checking's aio servicer leaves
    List to the generated base class, which raises: an UNKNOWN status."""

    async def List(
        self, request: health_pb2.HealthListRequest, context: aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        statuses = self._server_status.items()  # the base class's table, which Check reads too
        return health_pb2.HealthListResponse(
            statuses={name: health_pb2.HealthCheckResponse(status=status) for name, status in statuses}
        )


class ConfigError(Exception):
    """A file the server needs is missing, unreadable or malformed."""


@dataclass
class ServerConfig:
    """Everything `satcheld serve` takes; `--dev` fills it in from a data directory."""

    db: Path
    tls_cert: Path
    tls_key: Path
    client_ca: Path
    ca_cert: Path
    ca_key: Path
    policy: Path
    encryption_key_file: Path
    listen: str = "127.0.0.1:7443"
    trust_domain: str = "satchel.local"
    audit_log: Path | None = None
    history_age: timedelta = timedelta(hours=1)
    history_events: int = 100_000
    bookmark_interval: timedelta = timedelta(seconds=10)
    watch_buffer_events: int = 10_000  # per stream, before it is cut off
    watch_buffer_bytes: int = 16 * 1024 * 1024
    shutdown_grace: float = 5.0
    extra_options: list[tuple[str, int]] = field(default_factory=list)


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from None


def _read_certificates(path: Path, what: str) -> bytes:
    pem = _read(path, what)
    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ConfigError(f"{what} {path} holds no PEM certificate") from None
    return pem


def _read_key(path: Path, what: str) -> bytes:
    pem = _read(path, what)
    try:
        serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{what} {path} holds no unencrypted PEM private key") from None
    return pem


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
        *config.extra_options,
    ]


class Server:
    """One Satchel server. `await start()` returns the address it listens on."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._grpc: aio.Server | None = None
        self._store: Store | None = None
        self.hub: WatchHub | None = None
        self._tasks: list[asyncio.Task] = []
        self._audit: AuditLog | None = None
        self._health = HealthService()
        self.address = ""

    def _credentials(self) -> grpc.ServerCredentials:
        c = self.config
        return grpc.ssl_server_credentials(
            [(_read_key(c.tls_key, "TLS key"), _read_certificates(c.tls_cert, "TLS certificate"))],
            root_certificates=_read_certificates(c.client_ca, "client CA"),
            require_client_auth=True,
        )

    async def start(self) -> str:
        try:
            return await self._start()
        except BaseException:
            await self.stop(0)  # release what was opened before the failure
            raise

    async def _start(self) -> str:
        c = self.config
        if c.bookmark_interval.total_seconds() <= 0 or c.history_events < 1 or c.history_age.total_seconds() < 0:
            raise ConfigError("--bookmark-interval must be above 0, --history-events at least 1, --history-age not negative")
        credentials = self._credentials()
        _read_certificates(c.ca_cert, "CA certificate")
        _read_key(c.ca_key, "CA key")
        try:
            keyring = KeyRing.load(c.encryption_key_file)
            policy = Policy.load(c.policy)
        except Exception as e:
            raise ConfigError(str(e)) from None
        try:
            self._audit = AuditLog(c.audit_log)
        except OSError as e:
            raise ConfigError(f"cannot open audit log {c.audit_log}: {e.strerror}") from None
        try:
            self._store = Store(c.db, keyring)
        except Exception as e:
            raise ConfigError(f"cannot open database {c.db}: {e}") from None

        self.hub = WatchHub(
            self._store,
            bookmark_interval=c.bookmark_interval.total_seconds(),
            buffer_events=c.watch_buffer_events,
            buffer_bytes=c.watch_buffer_bytes,
        )
        resources = _handlers.Resources(
            self._store, self.hub, Authorizer(policy), PageTokens(keyring.derive("page-token")), c.trust_domain
        )
        guard = Guard(self._audit, c.trust_domain)
        methods = MethodTable(unknown=lambda method: guard.wrap(method, _handlers.unknown_method(method)))
        guarded = methods.registrar(guard.wrap)
        service_account_pb2_grpc.add_ServiceAccountServiceServicer_to_server(
            _handlers.ServiceAccountService(resources), guarded
        )
        secret_pb2_grpc.add_SecretServiceServicer_to_server(_handlers.SecretService(resources), guarded)
        workload_pb2_grpc.add_WorkloadServiceServicer_to_server(_handlers.WorkloadService(resources), guarded)
        token_pb2_grpc.add_TokenServiceServicer_to_server(_handlers.TokenService(), guarded)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, methods.registrar())
        _reflection.enable(methods.registrar(), (*SERVICE_NAMES, health.SERVICE_NAME))
        server = self._grpc = aio.server(
            handlers=(methods,), options=server_options(c), maximum_concurrent_rpcs=None
        )

        host, _, port = c.listen.rpartition(":")
        try:
            bound = server.add_secure_port(c.listen, credentials)
        except RuntimeError as e:
            raise ConfigError(f"cannot listen on {c.listen}: {e}") from None
        if bound == 0:
            raise ConfigError(f"cannot listen on {c.listen}")
        await server.start()
        self.address = f"{host}:{bound}"
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._tasks = [
            asyncio.create_task(self.hub.run_bookmarks(), name="satchel-bookmarks"),
            asyncio.create_task(self._run_compaction(), name="satchel-compaction"),
        ]
        return self.address

    async def compact(self) -> int:
        """Forgets history beyond the configured age and count; returns the compact revision."""
        assert self._store is not None
        c = self.config
        return await self._store.compact(
            keep_seconds=c.history_age.total_seconds(), keep_events=c.history_events
        )

    async def _run_compaction(self) -> None:
        interval = min(60.0, max(1.0, self.config.history_age.total_seconds() / 10))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.compact()
            except Exception:
                log.exception("history compaction failed; will retry")

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
            await asyncio.to_thread(self._store.close)
            self._store = None
        if self._audit is not None:
            self._audit.close()
            self._audit = None
