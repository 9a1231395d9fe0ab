"""How a client reaches the server: address, mTLS files, optional bearer token, timeouts.

`ClientConfig` is what `Client`, `AsyncClient`, `satchelctl` and the node agent are built from.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

# The command-line flag and environment variable behind each field, for error messages.
_SOURCES = {
    "server": ("--server", "SATCHEL_SERVER"),
    "ca": ("--ca", "SATCHEL_CA"),
    "cert": ("--cert", "SATCHEL_CERT"),
    "key": ("--key", "SATCHEL_KEY"),
    "token": ("--token", "SATCHEL_TOKEN"),
}

MAX_MESSAGE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class ClientConfig:
    """Where the server is and how to prove who we are (mTLS, optionally a bearer token)."""

    server: str
    """The server address, `HOST:PORT`."""
    ca: Path
    """The CA certificate (PEM) that signed the server's certificate."""
    cert: Path
    """Our client certificate (PEM)."""
    key: Path
    """The private key (PEM) of `cert`."""
    token: str | None = field(default=None, repr=False)
    """A bearer token; when set, calls are made as the token's service account. Never printed."""
    timeout: float = 30.0
    """Seconds each unary call may take, retries of a read included (a call's own `timeout=`
    replaces it; each page of a listing has its own). Watches have no deadline."""

    def __post_init__(self) -> None:
        for name in ("server", "ca", "cert", "key"):
            if not getattr(self, name):
                flag, env = _SOURCES[name]
                raise ValueError(f"missing {name}: pass {flag} or set {env}")
        for name in ("ca", "cert", "key"):
            object.__setattr__(self, name, Path(getattr(self, name)))
        if not self.token:
            object.__setattr__(self, "token", None)
        if not self.timeout > 0:
            raise ValueError(f"timeout must be positive, not {self.timeout!r}")

    @classmethod
    def from_env(cls, **overrides: Any) -> ClientConfig:
        """A config from `SATCHEL_SERVER`, `SATCHEL_CA`, `SATCHEL_CERT`, `SATCHEL_KEY`, `SATCHEL_TOKEN`.

        Keyword arguments (such as command-line flags) win over the environment; those that are
        None are ignored, so unset flags fall back to the environment.
        """
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown ClientConfig fields: {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {name: os.environ.get(env, "") for name, (_, env) in _SOURCES.items()}
        values.update((name, value) for name, value in overrides.items() if value is not None)
        return cls(**values)

    def credentials(self) -> grpc.ChannelCredentials:
        """mTLS channel credentials from the `ca`, `cert` and `key` files, read now."""
        ca, cert, key = (_read_pem(name, getattr(self, name)) for name in ("ca", "cert", "key"))
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata sent with every call: the bearer token, if any."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def channel_options(self) -> list[tuple[str, Any]]:
        """gRPC channel options: keepalive that notices dead servers, message size limits."""
        return [
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            # gRPC's own reconnect backoff grows to 2 minutes; keep it within the watch
            # helper's cap so a restarted server is found again promptly.
            ("grpc.max_reconnect_backoff_ms", 10_000),
        ]


def _read_pem(name: str, path: Path) -> bytes:
    flag, env = _SOURCES[name]
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {name} file {path} ({flag} / {env}): {e.strerror or e}") from e
    if b"-----BEGIN " not in data:
        raise ValueError(f"{name} file {path} ({flag} / {env}) is not PEM")
    return data
