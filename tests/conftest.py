"""Shared fixtures: real certificates, a real in-process mTLS server on a real
SQLite file, and channels that present any of the minted identities."""

from __future__ import annotations

import datetime
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from leaks import assert_no_leak, recorded_logs

import satchel.pki
from satchel.v1 import secret_pb2_grpc, service_account_pb2_grpc, token_pb2_grpc, workload_pb2_grpc
from satcheld._config import ServerConfig
from satcheld._server import Server
from satcheld.auth import Policy
from satcheld.store import KeyRing

TRUST_DOMAIN = "satchel.local"


@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    admin: Identity
    alice: Identity  # a user who is not an admin
    node: Identity  # node n1
    foreign: Identity  # from another CA
    no_spiffe: Identity  # our CA, no URI SAN
    other_domain: Identity  # our CA, SPIFFE ID of another trust domain

    def identity(self, kind: str, name: str) -> Identity:
        crt, key = satchel.pki.issue(self.dir, kind, name)
        return Identity(Path(crt), Path(key))


def mint(dir: Path, stem: str, common_name: str, sans: list[x509.GeneralName]) -> Identity:
    """A client certificate signed by the CA in `dir` with exactly this subject and
    these SANs, for identities `satchelctl certs issue` would never make."""
    ca_cert = x509.load_pem_x509_certificate((dir / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((dir / "ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    crt, pem_key = dir / f"{stem}.crt", dir / f"{stem}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem_key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return Identity(crt, pem_key)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    satchel.pki.init(d, trust_domain=TRUST_DOMAIN)
    other = tmp_path_factory.mktemp("other-ca")
    satchel.pki.init(other, trust_domain=TRUST_DOMAIN)

    def issued(kind: str, name: str) -> Identity:
        crt, key = satchel.pki.issue(d, kind, name)
        return Identity(Path(crt), Path(key))

    return Pki(
        dir=d,
        ca=d / "ca.crt",
        admin=Identity(d / "admin.crt", d / "admin.key"),
        alice=issued("user", "alice"),
        node=issued("node", "n1"),
        foreign=Identity(other / "admin.crt", other / "admin.key"),
        no_spiffe=mint(d, "no-spiffe", "no-spiffe", []),
        other_domain=mint(
            d, "other-domain", "other-domain", [x509.UniformResourceIdentifier("spiffe://elsewhere.example/user/admin")]
        ),
    )


def make_config(pki: Pki, data: Path, **overrides) -> ServerConfig:
    data.mkdir(parents=True, exist_ok=True)
    key_file = data / "encryption.key"
    if not key_file.exists():
        KeyRing.create_file(key_file)
    policy = data / "policy.yaml"
    if not policy.exists():
        policy.write_text(Policy.default_text())
    settings = dict(
        listen="127.0.0.1:0",
        db=data / "satchel.db",
        tls_cert=pki.dir / "server.crt",
        tls_key=pki.dir / "server.key",
        client_ca=pki.ca,
        ca_cert=pki.ca,
        ca_key=pki.dir / "ca.key",
        policy=policy,
        encryption_key_file=key_file,
        trust_domain=TRUST_DOMAIN,
        audit_log=data / "audit.log",
        shutdown_grace=0.5,
    )
    settings.update(overrides)
    return ServerConfig(**settings)


@pytest.fixture
async def server(pki: Pki, tmp_path: Path) -> AsyncIterator[Server]:
    srv = Server(make_config(pki, tmp_path / "data"))
    with recorded_logs() as logs:
        await srv.start()
        try:
            yield srv
        finally:
            await srv.stop()
    assert_no_leak(srv.config, logs)


def secure_channel(address: str, pki: Pki, identity: Identity | None) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=identity.key.read_bytes() if identity else None,
        certificate_chain=identity.cert.read_bytes() if identity else None,
    )
    return grpc.aio.secure_channel(address, credentials)


@dataclass
class Stubs:
    channel: grpc.aio.Channel
    accounts: service_account_pb2_grpc.ServiceAccountServiceStub
    secrets: secret_pb2_grpc.SecretServiceStub
    workloads: workload_pb2_grpc.WorkloadServiceStub
    tokens: token_pb2_grpc.TokenServiceStub

    @classmethod
    def over(cls, ch: grpc.aio.Channel) -> Stubs:
        """Every service's stub on one channel."""
        return cls(
            ch,
            service_account_pb2_grpc.ServiceAccountServiceStub(ch),
            secret_pb2_grpc.SecretServiceStub(ch),
            workload_pb2_grpc.WorkloadServiceStub(ch),
            token_pb2_grpc.TokenServiceStub(ch),
        )


@pytest.fixture
async def connect(server: Server, pki: Pki) -> AsyncIterator[Callable[[Identity | None], Stubs]]:
    """connect(identity) -> generated stubs over a channel presenting that identity."""
    channels: list[grpc.aio.Channel] = []

    def open_stubs(identity: Identity | None) -> Stubs:
        ch = secure_channel(server.address, pki, identity)
        channels.append(ch)
        return Stubs.over(ch)

    yield open_stubs
    for ch in channels:
        await ch.close()


@pytest.fixture
async def admin(connect, pki: Pki) -> Stubs:
    return connect(pki.admin)


def db_bytes(path: Path) -> bytes:
    """Everything SQLite has written: the main file and its WAL."""
    data = path.read_bytes()
    wal = path.with_name(path.name + "-wal")
    return data + (wal.read_bytes() if wal.exists() else b"")


def migrations_applied(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM migrations ORDER BY id")]
