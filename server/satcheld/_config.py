"""What `satcheld serve` takes (`ServerConfig`), and reading the files it names
with one-line errors (`ConfigError`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization


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
    token_issuer: str = "satchel"  # a token's `iss`
    token_audience: str = "satchel"  # a token's `aud`, and what bearer tokens must be meant for
    token_lifetime: timedelta = timedelta(hours=24)  # from a token's signing to its `exp`
    watch_buffer_events: int = 10_000  # per stream, before it is cut off
    watch_buffer_bytes: int = 16 * 1024 * 1024
    # Watch streams reading their initial part (snapshot or replay) at once; others wait their turn.
    max_initial_snapshots: int = 16
    # Of those, how many one principal's streams may read at once (admins are exempt).
    max_initial_snapshots_per_principal: int = 4
    # An initial part whose stream takes none of its events for this long is cut off.
    initial_snapshot_stall: timedelta = timedelta(seconds=30)
    # Limits (docs/architecture.md, "Limits"); a refusal is RESOURCE_EXHAUSTED with an ErrorInfo.
    max_watch_streams_per_principal: int = 16  # admins are exempt
    max_selector_length: int = 4096  # characters of a label selector
    max_selector_terms: int = 32  # requirements of a label selector
    max_streams_per_connection: int = 1024  # HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: further calls wait
    # Connections: closed when idle (no call) this long; told to go away (GOAWAY) at this age,
    # give or take grpc's 10% jitter, and closed this long after, streams still open ending
    # UNAVAILABLE (watches resume from their last revision on a new connection). None: never.
    max_connection_idle: timedelta | None = timedelta(minutes=15)
    max_connection_age: timedelta | None = timedelta(hours=1)
    max_connection_age_grace: timedelta = timedelta(minutes=5)
    shutdown_grace: float = 5.0
    extra_options: list[tuple[str, int]] = field(default_factory=list)


def read_file(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from None


def read_certificates(path: Path, what: str) -> bytes:
    pem = read_file(path, what)
    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ConfigError(f"{what} {path} holds no PEM certificate") from None
    return pem


def read_key(path: Path, what: str) -> bytes:
    pem = read_file(path, what)
    try:
        serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{what} {path} holds no unencrypted PEM private key") from None
    return pem
