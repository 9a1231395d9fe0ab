"""What the credential calls cost on a real `satcheld serve --dev`, each beside a
bare grpc.aio echo server over the same mTLS, driven by the same client; then
reseal throughput (bench/reseal.py, in process).

Per round, each of these, then an echo of a payload as large as the larger of
its request and its response:

- ReviewToken of a service account's token (admin certificate);
- GetSecret authenticated by that token (`authorization: Bearer`, on the admin's
  mTLS connection; a policy rule grants the account get and read-data), the
  echo carrying the same metadata;
- RotateSecret of a token secret (admin: the server signs a new token each time);
- IssueCertificate for a service account from one P-256 CSR (admin).

Satchel and echo alternate in short runs, round after round, and each ratio is
the median of the rounds' ratios, as in bench/unary.py. Not a test.

    .venv/bin/python bench/credentials.py [--rounds 7] [--duration 2] [--warmup 0.5] [--concurrency 32]
        [--reseal-secrets 10000] [--reseal-size 1024] [--reseal-rate 100] [--reseal-repeat 5] [--no-reseal]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import platform
import pstats
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

# This script's directory is on sys.path.
import _harness
import grpc
import unary
from _harness import DATA, Result, Server, percentile
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import duration_pb2

from satchel.v1 import (
    meta_pb2,
    secret_pb2,
    secret_pb2_grpc,
    service_account_pb2,
    service_account_pb2_grpc,
    token_pb2,
    token_pb2_grpc,
)

NAMESPACE = "default"
ACCOUNT = "bench"  # its token is reviewed and authenticates GetSecret; IssueCertificate is for it
ROTATED = "bench-rotate"  # its token secret is rotated, so that the token above stays as it is
SECRET = "bench-get"
# The QPS ratio Satchel / echo each call should reach (None: printed, not judged).
TARGETS: dict[str, float | None] = {
    "ReviewToken": 0.7,
    "GetSecret bearer": 0.75,
    "RotateSecret": 0.4,
    "IssueCertificate": None,
}
Metadata = tuple[tuple[str, str], ...] | None
POLICY = f"""\
# bench/credentials.py: the dev policy, and a rule for its bearer-authenticated GetSecret.
admins: [admin]
rules:
  - subjects: ["sa:{NAMESPACE}/{ACCOUNT}"]
    namespaces: ["{NAMESPACE}"]
    resources: [secrets]
    verbs: [get, read-data]
"""


def _csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


async def _reload_policy(satcheld: Server, policy: pathlib.Path) -> None:
    """Writes POLICY over the dev policy file, sends SIGHUP and waits for the log to say it took."""
    policy.write_text(POLICY)
    seen = satcheld.log.read_text(errors="replace").count("SIGHUP: reloaded the policy file")
    satcheld.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        log = satcheld.log.read_text(errors="replace")
        if "SIGHUP: kept the old policy" in log:
            raise SystemExit(f"satcheld refused the bench's policy file:\n{log[-2000:]}")
        if log.count("SIGHUP: reloaded the policy file") > seen:
            return
        await asyncio.sleep(0.05)
    raise SystemExit("satcheld did not say it reloaded the policy file within 10 s")


async def _run(args: argparse.Namespace, servers: _harness.Servers) -> list[list[Result]]:
    """Per round: each call of TARGETS, each followed by an echo of its size."""
    satchel, echo = servers.satcheld, servers.echo
    timing = {"concurrency": args.concurrency, "warmup": args.warmup, "duration": args.duration}
    creds = _harness.credentials(servers.certs)

    async with (
        grpc.aio.secure_channel(satchel.address, creds) as channel,
        grpc.aio.secure_channel(echo.address, creds) as echo_channel,
    ):
        secrets = secret_pb2_grpc.SecretServiceStub(channel)
        accounts = service_account_pb2_grpc.ServiceAccountServiceStub(channel)
        tokens = token_pb2_grpc.TokenServiceStub(channel)
        echo_call = echo_channel.unary_unary(unary.ECHO_METHOD)

        # What the calls need: two accounts (each with its token secret), a secret, the policy rule.
        for name in (ACCOUNT, ROTATED):
            account = service_account_pb2.ServiceAccount(metadata=meta_pb2.ObjectMeta(namespace=NAMESPACE, name=name))
            await accounts.CreateServiceAccount(
                service_account_pb2.CreateServiceAccountRequest(service_account=account)
            )
        token_secret = await secrets.GetSecret(
            secret_pb2.GetSecretRequest(namespace=NAMESPACE, name=f"{ACCOUNT}-token")
        )
        token = token_secret.secret.data["token"].decode()
        bearer = (("authorization", f"Bearer {token}"),)
        secret = secret_pb2.Secret(
            metadata=meta_pb2.ObjectMeta(namespace=NAMESPACE, name=SECRET),
            type=secret_pb2.SECRET_TYPE_OPAQUE,
            data=DATA,
        )
        await secrets.CreateSecret(secret_pb2.CreateSecretRequest(secret=secret))
        await _reload_policy(satchel, servers.workdir / "policy.yaml")

        review = token_pb2.ReviewTokenRequest(token=token)
        get = secret_pb2.GetSecretRequest(namespace=NAMESPACE, name=SECRET)
        rotate = secret_pb2.RotateSecretRequest(namespace=NAMESPACE, name=f"{ROTATED}-token")
        issue = service_account_pb2.IssueCertificateRequest(
            namespace=NAMESPACE, name=ACCOUNT, csr_pem=_csr(), ttl=duration_pb2.Duration(seconds=3600)
        )
        # Each call once, to check it does what it should and to size its echo.
        reviewed = await tokens.ReviewToken(review)
        if not reviewed.authenticated:
            raise SystemExit(f"ReviewToken did not authenticate the bench's token: {reviewed.reason}")
        got = await secrets.GetSecret(get, metadata=bearer)
        if dict(got.secret.data) != DATA:
            raise SystemExit("the bearer-authenticated GetSecret returned no data (is read-data granted?)")
        account = await accounts.GetServiceAccount(
            service_account_pb2.GetServiceAccountRequest(namespace=NAMESPACE, name=ACCOUNT), metadata=bearer
        )
        assert account.service_account.metadata.name == ACCOUNT
        rotated = await secrets.RotateSecret(rotate)
        issued = await accounts.IssueCertificate(issue)

        # Per call: how to make it, the size of its echo, the echo's metadata, what it carries.
        calls: dict[str, tuple[Callable[[], Awaitable[object]], int, Metadata, str]] = {
            "ReviewToken": (
                lambda: tokens.ReviewToken(review),
                max(review.ByteSize(), reviewed.ByteSize()),
                None,
                f"a {len(token)}-character token, request {review.ByteSize()} B, response {reviewed.ByteSize()} B"
                " (the same token every call: verified once, then from the server's cache)",
            ),
            "GetSecret bearer": (
                lambda: secrets.GetSecret(get, metadata=bearer),
                got.ByteSize(),
                bearer,
                f"response {got.ByteSize()} B; the echo carries the same {len(bearer[0][1])}-character"
                " authorization metadata",
            ),
            "RotateSecret": (
                lambda: secrets.RotateSecret(rotate),
                max(rotate.ByteSize(), rotated.ByteSize()),
                None,
                f"response {rotated.ByteSize()} B (the new token and ca.crt: the admin sees data)",
            ),
            "IssueCertificate": (
                lambda: accounts.IssueCertificate(issue),
                max(issue.ByteSize(), issued.ByteSize()),
                None,
                f"request {issue.ByteSize()} B (the CSR), response {issued.ByteSize()} B (the chain)",
            ),
        }
        chosen = {label: calls[label] for label in args.only}
        for label, (_, size, _, what) in chosen.items():
            print(f"{label}: {what}; echo {size} B")
        print(flush=True)

        async def on_echo(size: int, metadata: Metadata) -> Result:
            payload = os.urandom(size)
            return await _harness.measure(
                f"echo {size} B",
                lambda: echo_call(payload, metadata=metadata),
                server_pid=echo.process.pid,
                **timing,
            )

        rounds = []
        for number in range(1, args.rounds + 1):
            runs = []
            for label, (call, size, metadata, _) in chosen.items():
                runs.append(await _harness.measure(label, call, server_pid=satchel.process.pid, **timing))
                runs.append(await on_echo(size, metadata))
            rounds.append(runs)
            ratios = "   ".join(
                f"{s.label} {s.qps:.0f} / {e.qps:.0f} = {s.qps / e.qps:.2f}"
                for s, e in zip(runs[0::2], runs[1::2], strict=True)
            )
            print(f"round {number}: {ratios}", flush=True)
        return rounds


def _report(rounds: list[list[Result]]) -> None:
    """Per call: the median QPS of the rounds, p50 and p99 over every call of
    every round, the median CPU and server CPU per call; then the median of the
    rounds' ratios against its target."""
    print()
    header = f"{'':<22}{'QPS':>8}{'p50 ms':>9}{'p99 ms':>9}{'calls':>8}{'client CPU':>12}{'server CPU':>12}"
    print(f"{header}{'server µs/call':>16}{'main µs/call':>14}")
    for runs in zip(*rounds, strict=True):
        latencies = sorted(t for run in runs for t in run.latencies)
        per_call = statistics.median(r.server_cpu / r.qps * 1e6 for r in runs if r.qps)
        main = statistics.median(r.server_main_cpu / r.qps * 1e6 for r in runs if r.qps)
        print(
            f"{runs[0].label:<22}{statistics.median(r.qps for r in runs):>8.0f}"
            f"{percentile(latencies, 0.50) * 1000:>9.2f}{percentile(latencies, 0.99) * 1000:>9.2f}"
            f"{len(latencies):>8}{statistics.median(r.client_cpu for r in runs):>12.0%}"
            f"{statistics.median(r.server_cpu for r in runs):>12.0%}{per_call:>16.0f}{main:>14.0f}"
        )
    print()
    for first in range(0, len(rounds[0]), 2):
        rpc = rounds[0][first].label
        target = TARGETS[rpc]
        ratios = [run[first].qps / run[first + 1].qps for run in rounds]
        ratio = statistics.median(ratios)
        spread = f"rounds {min(ratios):.2f}-{max(ratios):.2f}"
        if target is None:
            judged = "no target)"
        else:
            judged = f"target >= {target}) {'ok' if ratio >= target else 'BELOW TARGET'}"
        print(f"{rpc}/echo QPS ratio {ratio:.2f}, median of {len(ratios)} ({spread}; {judged}")


def _reseal(args: argparse.Namespace, server_cpus: set[int] | None) -> int:
    """bench/reseal.py in its own process, on the servers' CPUs when pinned."""
    argv = [
        sys.executable,
        str(pathlib.Path(__file__).with_name("reseal.py")),
        *("--secrets", str(args.reseal_secrets), "--versions", "1", "--size", str(args.reseal_size)),
        *("--rate", f"{args.reseal_rate:g}", "--repeat", str(args.reseal_repeat)),
    ]
    where = f"on CPU {sorted(server_cpus)}" if server_cpus else "not pinned"
    print(f"\nreseal, in process ({where}): {' '.join(argv[1:])}", flush=True)

    def place() -> None:
        if server_cpus:
            os.sched_setaffinity(0, server_cpus)

    return subprocess.run(argv, preexec_fn=place, check=False).returncode


def _profiles(directory: pathlib.Path) -> None:
    """Names each profile satcheld wrote, with the CPU seconds it saw."""
    print("\nsatcheld's profiles (CPU time, the whole run, setup included; read with `python -m pstats FILE`):")
    for path in sorted(directory.glob("*.prof")):
        seconds = pstats.Stats(str(path)).total_tt
        if seconds >= 0.05:
            print(f"  {path}  {seconds:.2f} s")


def _only(text: str) -> list[str]:
    """The calls named in `text`: each by its first word or the start of it (`rotate`)."""
    chosen = set()
    for word in filter(None, (w.strip().lower() for w in text.split(","))):
        found = [label for label in TARGETS if label.split()[0].lower().startswith(word)]
        if len(found) != 1:
            raise argparse.ArgumentTypeError(f"{word!r} names none of {', '.join(TARGETS)}, or more than one")
        chosen.update(found)
    return [label for label in TARGETS if label in chosen]


def main(argv: list[str] | None = None) -> int:
    parser = _harness.argument_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=7, help="rounds of the eight runs")
    parser.add_argument("--duration", type=float, default=2.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each run")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight")
    parser.add_argument("--reseal-secrets", type=int, default=10_000, help="secrets the reseal bench seeds")
    parser.add_argument("--reseal-size", type=int, default=1024, help="bytes of data in each")
    parser.add_argument("--reseal-rate", type=float, default=100, help="paced writes per second during the reseal")
    parser.add_argument("--reseal-repeat", type=int, default=5, help="reseals, each of a fresh store")
    parser.add_argument("--no-reseal", dest="reseal", action="store_false", help="skip the reseal bench")
    parser.add_argument(
        "--only",
        type=_only,
        default=list(TARGETS),
        help="the calls to run, by first word, comma-separated (e.g. RotateSecret,GetSecret)",
    )
    parser.add_argument("--no-calls", dest="calls", action="store_false", help="skip the gRPC calls")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        type=pathlib.Path,
        help="run satcheld under cProfile (CPU time, every Python thread) and write its profiles to DIR",
    )
    _harness.add_server_arguments(parser)
    args = parser.parse_args(argv)

    if args.echo_server:
        asyncio.run(unary._serve_echo(args.echo_server))
        return 0

    server_cpus = _harness.cpu_plan(args.pin)[0]  # before this process is put on the client's CPU
    if args.calls:
        _harness.require_satcheld(args.satcheld)
        with _harness.servers(args, __file__) as servers:
            print(
                f"satchel credentials bench: grpcio {grpc.__version__}, Python {platform.python_version()}, "
                f"{os.cpu_count()} CPUs ({servers.placement}); {args.concurrency} calls in flight "
                f"from one client process; {args.rounds} rounds, each run {args.warmup:g} s warm-up "
                f"+ {args.duration:g} s"
            )
            print(f"satcheld --dev at {servers.satcheld.address}, echo at {servers.echo.address}")
            if args.profile:
                print("satcheld runs under cProfile, several times slower: its QPS and ratios here mean nothing")
            try:
                rounds = asyncio.run(_run(args, servers))
            except grpc.aio.AioRpcError as error:
                raise SystemExit(f"bench call failed: {error.code().name}: {error.details()}") from None
            _report(rounds)
            servers.warn_exited()
        if args.profile:
            _profiles(args.profile)
    if args.reseal:
        return _reseal(args, server_cpus)
    return 0


if __name__ == "__main__":
    _harness.run(main)
