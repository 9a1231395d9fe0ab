"""`satchel-agent`: flags (each also a `SATCHEL_…` variable), startup checks, logging.

Everything that can be wrong before the first call (a missing file, a certificate that is not
a node's, a mode that makes no sense) is one line on stderr and exit status 2; `--once` exits 0
when everything is written, 1 with a one-line reason when not.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path

from cryptography import x509

from satchel import pki
from satchel._agent._daemon import Agent, AgentConfig
from satchel._agent._layout import is_name
from satchel._client import AsyncClient
from satchel._config import ClientConfig
from satchel.durations import parse_duration

_PREFIX = "satchel-agent"


class StartupError(Exception):
    """A reason the agent cannot start, said in one line."""


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"SATCHEL_{name.upper()}", default)


def _flag_bool(name: str) -> bool:
    return (_env(name) or "").lower() in ("1", "true", "yes", "on")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=_PREFIX,
        description="Keep a node's secrets and service-account credentials on disk, in sync with Satchel.",
        epilog="Each flag may also be given as an environment variable: --on-change as SATCHEL_ON_CHANGE, and so on.",
    )
    p.add_argument("--server", default=_env("server"), help="the server, HOST:PORT (SATCHEL_SERVER)")
    p.add_argument("--ca", default=_env("ca"), help="the CA certificate that signed the server's (SATCHEL_CA)")
    p.add_argument("--cert", default=_env("cert"), help="this node's certificate (SATCHEL_CERT)")
    p.add_argument("--key", default=_env("key"), help="this node's private key (SATCHEL_KEY)")
    p.add_argument("--root", default=_env("root"), help="the directory the agent owns and writes (SATCHEL_ROOT)")
    p.add_argument("--once", action="store_true", default=_flag_bool("once"), help="sync once and exit")
    p.add_argument("--on-change", default=_env("on_change"), help="a shell command run after a change lands")
    p.add_argument("--hook-timeout", default=_env("hook_timeout", "30s"), help="how long --on-change may run (30s)")
    p.add_argument("--file-mode", default=_env("file_mode", "0400"), help="the mode of the files written (0400)")
    p.add_argument("--metrics-file", default=_env("metrics_file"), help="a Prometheus textfile to keep up to date")
    p.add_argument(
        "--cert-ttl", default=_env("cert_ttl"), help="the lifetime asked for service-account certificates (server: 1h)"
    )
    p.add_argument("--sync-timeout", default=_env("sync_timeout", "30s"), help="how long --once may take (30s)")
    return p


def _duration(text: str, flag: str, *, positive: bool = True) -> float:
    try:
        seconds = parse_duration(text).total_seconds()
    except ValueError as e:
        raise StartupError(f"{flag}: {e}") from None
    if positive and seconds <= 0:
        raise StartupError(f"{flag} must be positive")
    return seconds


def file_mode(text: str) -> int:
    """An octal mode the owner can read and nobody else can write (0400, 0440, 0600...)."""
    try:
        mode = int(text, 8)
    except ValueError:
        raise StartupError(f"--file-mode {text!r} is not an octal mode such as 0400") from None
    if not 0 <= mode <= 0o777 or not mode & 0o400 or mode & 0o133:
        raise StartupError(f"--file-mode {text}: the owner must read, and nobody may execute or, but the owner, write")
    return mode


def node_name(cert_path: Path) -> str:
    """The node named by the certificate's one SPIFFE ID `spiffe://<td>/node/<name>`."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except OSError as e:
        raise StartupError(f"cannot read --cert {cert_path}: {e.strerror or e}") from None
    except ValueError:
        raise StartupError(f"--cert {cert_path} is not a PEM certificate") from None
    ids = pki.spiffe_ids(cert)
    if len(ids) != 1:
        raise StartupError(f"--cert {cert_path} must carry exactly one SPIFFE ID, not {len(ids)}")
    parts = ids[0].removeprefix("spiffe://").split("/")
    if len(parts) != 3 or parts[1] != "node" or not is_name(parts[2]):
        raise StartupError(f"--cert {cert_path} is not a node's certificate (its SPIFFE ID is {ids[0]!r})")
    return parts[2]


def configure(args: argparse.Namespace) -> tuple[AgentConfig, ClientConfig]:
    if not args.root:
        raise StartupError("missing --root (or SATCHEL_ROOT): the directory to write")
    try:
        # token="": the agent is its node, never a bearer token's account (SATCHEL_TOKEN is ignored).
        client = ClientConfig.from_env(server=args.server, ca=args.ca, cert=args.cert, key=args.key, token="")
        client.credentials()  # reads the three files now, so a missing one is a startup error
    except ValueError as e:
        raise StartupError(str(e)) from None
    root = Path(args.root)
    if root.exists() and not root.is_dir():
        raise StartupError(f"--root {root} is not a directory")
    config = AgentConfig(
        node=node_name(client.cert),
        root=root,
        file_mode=file_mode(args.file_mode),
        on_change=args.on_change or None,
        hook_timeout=_duration(args.hook_timeout, "--hook-timeout"),
        metrics_file=Path(args.metrics_file) if args.metrics_file else None,
        cert_ttl=_duration(args.cert_ttl, "--cert-ttl") if args.cert_ttl else None,
        once=args.once,
        sync_timeout=_duration(args.sync_timeout, "--sync-timeout"),
    )
    return config, client


class _Formatter(logging.Formatter):
    """UTC times with milliseconds, ISO 8601: `2026-12-01T18:40:01.123Z`."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config, client_config = configure(args)
    except StartupError as e:
        print(f"{_PREFIX}: {e}", file=sys.stderr)
        return 2
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger(_PREFIX)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.info("node %s, root %s, server %s", config.node, config.root, client_config.server)
    return asyncio.run(_run(config, client_config))


async def _run(config: AgentConfig, client_config: ClientConfig) -> int:
    async with AsyncClient(client_config) as client:
        try:
            agent = Agent(config, client)
        except OSError as e:
            print(f"{_PREFIX}: cannot use --root {config.root}: {e.strerror or e}", file=sys.stderr)
            return 2
        return await agent.run()
