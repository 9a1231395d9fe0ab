"""`satcheld serve`: the explicit form, and `--dev`, which prepares a data directory;
`satcheld add-encryption-key`: a new primary key first in the key file."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import shlex
import signal
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

# grpc's core logs its own copy of errors that satcheld reports in one line;
# GRPC_VERBOSITY=debug (or info) brings them back. Set before grpc loads.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from satchel import pki
from satchel.durations import parse_duration

from ._config import ConfigError, ServerConfig
from ._server import Server, tune_gc
from .auth import Policy
from .store import KeyFileError, KeyRing, add_key

# Flags naming files, and what each file is (for one-line errors).
_FILE_FLAGS = {
    "db": "database",
    "tls_cert": "TLS certificate",
    "tls_key": "TLS key",
    "client_ca": "client CA",
    "ca_cert": "CA certificate",
    "ca_key": "CA key",
    "policy": "policy file",
    "encryption_key_file": "encryption key file",
}


def _duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return value


def _positive_duration(text: str) -> timedelta:
    value = _duration(text)
    if value <= timedelta(0):
        raise argparse.ArgumentTypeError(f"expected a duration above 0, not {text!r}")
    return value


def _duration_or_never(text: str) -> timedelta | None:
    """A duration; `0s` (or `0`) means never."""
    if text == "0":
        return None
    return _duration(text) or None


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"SATCHEL_{name.upper()}", default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="satcheld", description="The Satchel server.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the Satchel API over mTLS gRPC")
    serve.add_argument("--dev", action="store_true", help="prepare and use a data directory; nothing to set up")
    serve.add_argument("--data-dir", default=".satchel", help="the --dev data directory (default .satchel)")
    serve.add_argument("--listen", default=_env("listen"), help="HOST:PORT (default 127.0.0.1:7443; port 0 picks one)")
    for flag in _FILE_FLAGS:
        serve.add_argument(f"--{flag.replace('_', '-')}", dest=flag, default=_env(flag))
    serve.add_argument("--trust-domain", default=_env("trust_domain", "satchel.local"))
    serve.add_argument("--audit-log", default=_env("audit_log"))
    serve.add_argument("--history-age", type=_duration, default=_env("history_age", "1h"))
    serve.add_argument("--history-events", type=_positive_int, default=_env("history_events", "100000"))
    serve.add_argument("--bookmark-interval", type=_positive_duration, default=_env("bookmark_interval", "10s"))
    serve.add_argument(
        "--max-initial-snapshots",
        type=_positive_int,
        default=_env("max_initial_snapshots", "16"),
        help="Watch streams reading their initial snapshot or replay at once; others wait their turn (default 16)",
    )
    serve.add_argument(
        "--max-initial-snapshots-per-principal",
        type=_positive_int,
        default=_env("max_initial_snapshots_per_principal", "4"),
        help="of those, how many one principal's streams read at once; its others wait for one of its own"
        " turns (admins exempt; default 4)",
    )
    serve.add_argument(
        "--initial-snapshot-stall",
        type=_positive_duration,
        default=_env("initial_snapshot_stall", "30s"),
        help="cut off a Watch stream that takes none of its initial events for this long (default 30s)",
    )
    _add_limit_flags(serve)
    serve.add_argument("--token-issuer", default=_env("token_issuer", "satchel"), help="tokens' iss (default satchel)")
    serve.add_argument(
        "--token-audience",
        default=_env("token_audience", "satchel"),
        help="tokens' aud, which bearer tokens must carry (default satchel)",
    )
    serve.add_argument(
        "--token-lifetime",
        type=_token_lifetime,
        default=_env("token_lifetime", "24h"),
        help="how long a token is valid (default 24h)",
    )
    add_key_parser = sub.add_parser(
        "add-encryption-key",
        help="put a new random primary key first in the encryption key file",
        description="Puts a new random key first in the key file (creating the file if it is missing): "
        "after SIGHUP or a restart new writes are sealed under it, and `satchelctl admin reseal` seals "
        "the stored data again under it, after which the older lines may be removed.",
    )
    add_key_parser.add_argument(
        "--encryption-key-file",
        dest="encryption_key_file",
        default=_env("encryption_key_file"),
        help="the key file ($SATCHEL_ENCRYPTION_KEY_FILE)",
    )
    return parser


def _add_limit_flags(serve: argparse.ArgumentParser) -> None:
    """Limits on what one caller may hold, and on connections' lifetimes
    (docs/architecture.md, "Limits")."""
    limits = serve.add_argument_group("limits")
    for flag, default, what in (
        ("max_watch_streams_per_principal", "16", "Watch streams one principal may hold open (admins exempt)"),
        ("max_streams_per_connection", "1024", "streams one connection may have open; further calls wait"),
        ("max_selector_length", "4096", "characters of a label selector"),
        ("max_selector_terms", "32", "requirements of a label selector"),
    ):
        limits.add_argument(
            f"--{flag.replace('_', '-')}",
            type=_positive_int,
            default=_env(flag, default),
            help=f"{what} (default {default})",
        )
    for flag, default, what in (
        ("max_connection_idle", "15m", "close a connection with no call for this long"),
        ("max_connection_age", "1h", "replace a connection this old (GOAWAY; grpc adds 10%% jitter)"),
    ):
        limits.add_argument(
            f"--{flag.replace('_', '-')}",
            type=_duration_or_never,
            default=_env(flag, default),
            help=f"{what}; 0s: never (default {default})",
        )
    limits.add_argument(
        "--max-connection-age-grace",
        type=_duration,
        default=_env("max_connection_age_grace", "5m"),
        help="how long calls may go on after a connection's GOAWAY; then it closes, and watches resume"
        " on a new one (default 5m)",
    )


def _limit_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        flag: getattr(args, flag)
        for flag in (
            "max_watch_streams_per_principal",
            "max_streams_per_connection",
            "max_selector_length",
            "max_selector_terms",
            "max_connection_idle",
            "max_connection_age",
            "max_connection_age_grace",
        )
    }


def _token_lifetime(text: str) -> timedelta:
    value = _duration(text)
    if value < timedelta(seconds=1):
        raise argparse.ArgumentTypeError(f"expected a duration of at least 1s, not {text!r}")
    return value


def _token_settings(args: argparse.Namespace) -> dict[str, Any]:
    for flag in ("token_issuer", "token_audience"):
        if not getattr(args, flag):
            raise ConfigError(f"--{flag.replace('_', '-')} must not be empty")
    return {
        "token_issuer": args.token_issuer,
        "token_audience": args.token_audience,
        "token_lifetime": args.token_lifetime,
    }


def _watch_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "max_initial_snapshots": args.max_initial_snapshots,
        "max_initial_snapshots_per_principal": args.max_initial_snapshots_per_principal,
        "initial_snapshot_stall": args.initial_snapshot_stall,
    }


def _add_encryption_key(args: argparse.Namespace) -> None:
    if not args.encryption_key_file:
        raise ConfigError("missing --encryption-key-file (or SATCHEL_ENCRYPTION_KEY_FILE)")
    path = Path(args.encryption_key_file)
    try:
        kid = add_key(path)
    except KeyFileError as e:
        raise ConfigError(str(e)) from None
    except OSError as e:
        raise ConfigError(f"cannot write encryption key file {path}: {e.strerror}") from None
    print(f"added key {kid} first in {path}", flush=True)
    print(
        "send satcheld SIGHUP (or restart it) to seal new writes under it, then run"
        " `satchelctl admin reseal`; after that the other key lines may be removed",
        flush=True,
    )


def _dev_config(args: argparse.Namespace) -> ServerConfig:
    """Creates what is missing in the data directory and reuses what exists."""
    data = Path(args.data_dir).resolve()
    certs = data / "certs"
    try:
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        data.chmod(0o700)  # keys, the database and the audit log live here
        pki.init(certs, trust_domain=args.trust_domain)
        key_file = data / "encryption.key"
        if not key_file.exists():
            KeyRing.create_file(key_file)
        policy = data / "policy.yaml"
        if not policy.exists():
            fd = os.open(policy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(Policy.default_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot prepare data directory {data}: {e}") from None
    return ServerConfig(
        listen=args.listen or "127.0.0.1:7443",
        db=data / "satchel.db",
        tls_cert=certs / "server.crt",
        tls_key=certs / "server.key",
        client_ca=certs / "ca.crt",
        ca_cert=certs / "ca.crt",
        ca_key=certs / "ca.key",
        policy=policy,
        encryption_key_file=key_file,
        trust_domain=args.trust_domain,
        audit_log=Path(args.audit_log) if args.audit_log else data / "audit.log",
        history_age=args.history_age,
        history_events=args.history_events,
        bookmark_interval=args.bookmark_interval,
        **_watch_settings(args),
        **_token_settings(args),
        **_limit_settings(args),
    )


def _explicit_config(args: argparse.Namespace) -> ServerConfig:
    missing = [f"--{flag.replace('_', '-')}" for flag in _FILE_FLAGS if not getattr(args, flag)]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)} (or SATCHEL_… variables; or use --dev)")
    for flag, what in _FILE_FLAGS.items():
        path = Path(getattr(args, flag))
        if flag != "db" and not os.access(path, os.R_OK):
            raise ConfigError(f"cannot read {what} {path}")
    files: dict[str, Any] = {flag: Path(getattr(args, flag)) for flag in _FILE_FLAGS}
    return ServerConfig(
        listen=args.listen or "127.0.0.1:7443",
        **files,
        trust_domain=args.trust_domain,
        audit_log=Path(args.audit_log) if args.audit_log else None,
        history_age=args.history_age,
        history_events=args.history_events,
        bookmark_interval=args.bookmark_interval,
        **_watch_settings(args),
        **_token_settings(args),
        **_limit_settings(args),
    )


def _how_to_connect(config: ServerConfig, address: str) -> str:
    certs = config.ca_cert.parent
    ca, crt, key = (shlex.quote(str(certs / f)) for f in ("ca.crt", "admin.crt", "admin.key"))
    return "\n".join(
        [
            "connect with grpcurl:",
            f"  grpcurl -cacert {ca} -cert {crt} -key {key} {address} list",
            "or with satchelctl:",
            f"  export SATCHEL_SERVER={address}",
            f"  export SATCHEL_CA={ca}",
            f"  export SATCHEL_CERT={crt}",
            f"  export SATCHEL_KEY={key}",
        ]
    )


async def _serve(config: ServerConfig, dev: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = Server(config)
    address = await server.start()
    # What starting made (modules, the node graph loaded from the store) lives
    # as long as the process: once its garbage is gone, no collection walks it again.
    gc.collect()
    gc.freeze()
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    print(f"listening on {address}", flush=True)
    if dev:
        print(_how_to_connect(config, address), flush=True)
    await stop.wait()
    logging.getLogger("satcheld").info("shutting down")
    await server.stop()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tune_gc()
    try:
        if args.command == "add-encryption-key":
            _add_encryption_key(args)
            return 0
        config = _dev_config(args) if args.dev else _explicit_config(args)
        asyncio.run(_serve(config, args.dev))
    except ConfigError as e:
        # One line, whatever the cause's own message spans (PyYAML's span several).
        print(f"satcheld: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
