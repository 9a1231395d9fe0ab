"""IssueCertificate over the real in-process mTLS server: the server builds each
certificate itself (exactly the account's SPIFFE ID as the one URI SAN, client-auth
EKU, no CA bit, whatever the CSR asks), caps the TTL, refuses callers who may not
have it (before saying whether the account exists, and before looking at the CSR)
and CSRs it cannot trust; and the certificate then opens a real mTLS connection
as the service account."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from conftest import Identity, Pki, make_config, secure_channel
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from failures import failure
from google.protobuf import duration_pb2
from kinds import SERVICE_ACCOUNTS, WORKLOADS

from satchel.v1 import service_account_pb2
from satcheld._config import ConfigError
from satcheld._server import Server

Code = grpc.StatusCode
NS = "prod"
WEB = f"spiffe://satchel.local/ns/{NS}/sa/web"
SLACK = timedelta(seconds=30)  # between the server's clock reading and the test's


def _csr(key, *, common_name: str = "web", extensions=()) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM).decode()


def _ec_key():
    return ec.generate_private_key(ec.SECP256R1())


def _request(name: str = "web", csr_pem: str = "", namespace: str = NS, ttl: timedelta | None = None):
    request = service_account_pb2.IssueCertificateRequest(namespace=namespace, name=name, csr_pem=csr_pem)
    if ttl is not None:
        request.ttl.FromTimedelta(ttl)
    return request


async def _issue(stubs, name: str = "web", key=None, **fields) -> service_account_pb2.IssueCertificateResponse:
    csr_pem = fields.pop("csr_pem", None) or _csr(key or _ec_key())
    return await stubs.accounts.IssueCertificate(_request(name, csr_pem, **fields), timeout=10)


def _chain(response) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(response.certificate_chain_pem.encode())


async def _accounts(admin, *names: str) -> None:
    for name in names:
        await SERVICE_ACCOUNTS.api(admin).create(SERVICE_ACCOUNTS.make(name, NS))


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _identity(tmp_path: Path, response, key, stem: str = "sa") -> Identity:
    crt, pem = tmp_path / f"{stem}.crt", tmp_path / f"{stem}.key"
    crt.write_text(response.certificate_chain_pem)
    pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return Identity(crt, pem)


# -- what is issued --------------------------------------------------------------------------


async def test_the_certificate_is_built_by_the_server_whatever_the_csr_asks(admin, pki: Pki) -> None:
    await _accounts(admin, "web")
    key = _ec_key()
    greedy = _csr(
        key,
        common_name="admin",
        extensions=[
            (
                x509.SubjectAlternativeName(
                    [
                        x509.UniformResourceIdentifier("spiffe://satchel.local/user/admin"),
                        x509.UniformResourceIdentifier(WEB),
                        x509.DNSName("satchel.example"),
                    ]
                ),
                False,
            ),
            (x509.BasicConstraints(ca=True, path_length=None), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CODE_SIGNING]), False),
            (x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00"), False),
        ],
    )

    response = await _issue(admin, csr_pem=greedy)

    cert, *chain = _chain(response)
    ca = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    assert chain == [ca], "the certificate is followed by the CA's"
    cert.verify_directly_issued_by(ca)
    assert cert.public_key() == key.public_key()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(WEB)], "exactly the account's SPIFFE ID, nothing else"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert (basic.value.ca, basic.critical) == (False, True)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign and not usage.crl_sign
    assert {type(e.value) for e in cert.extensions} == {
        x509.BasicConstraints,
        x509.KeyUsage,
        x509.ExtendedKeyUsage,
        x509.SubjectAlternativeName,
        x509.SubjectKeyIdentifier,
        x509.AuthorityKeyIdentifier,
    }, "no extension of the CSR is copied"
    assert cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value == (
        x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    )
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == ["web"]
    assert cert.issuer == ca.subject


@pytest.mark.parametrize(
    ("ttl", "lifetime"),
    [
        (None, timedelta(hours=1)),
        (timedelta(0), timedelta(hours=1)),
        (timedelta(minutes=10), timedelta(minutes=10)),
        (timedelta(hours=24), timedelta(hours=24)),
        (timedelta(hours=48), timedelta(hours=24)),
        (timedelta(days=3650), timedelta(hours=24)),
    ],
    ids=["unset-1h", "zero-1h", "10m", "24h", "48h-capped", "10y-capped"],
)
async def test_ttl_defaults_to_one_hour_and_is_capped_at_24(admin, ttl, lifetime: timedelta) -> None:
    await _accounts(admin, "web")
    before = datetime.now(UTC)

    response = await _issue(admin, ttl=ttl)

    (cert, _) = _chain(response)
    assert response.expire_time.ToDatetime(tzinfo=UTC) == cert.not_valid_after_utc
    assert before + lifetime - SLACK <= cert.not_valid_after_utc <= datetime.now(UTC) + lifetime + SLACK
    # Backdated a little, for peers whose clocks lag.
    assert before - timedelta(minutes=5) - SLACK <= cert.not_valid_before_utc <= before


@pytest.mark.parametrize(
    "ttl",
    [
        duration_pb2.Duration(seconds=-60),
        duration_pb2.Duration(seconds=1, nanos=-5),
        duration_pb2.Duration(nanos=2**30),
    ],
    ids=["negative", "mixed-signs", "nanos-out-of-range"],
)
async def test_a_negative_or_malformed_ttl_is_invalid(admin, ttl) -> None:
    await _accounts(admin, "web")
    request = _request("web", _csr(_ec_key()))
    request.ttl.CopyFrom(ttl)

    f = await failure(admin.accounts.IssueCertificate(request, timeout=10), Code.INVALID_ARGUMENT)

    assert f.fields == ["ttl"]


async def test_the_certificate_never_outlives_the_issuing_ca(pki: Pki, tmp_path: Path) -> None:
    """A CA with an hour left: a 24h certificate ends with it."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "short-lived CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (tmp_path / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "ca.key").write_bytes(
        ca_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    config = make_config(pki, tmp_path / "data", ca_cert=tmp_path / "ca.crt", ca_key=tmp_path / "ca.key")
    server = Server(config)
    await server.start()
    try:
        async with secure_channel(server.address, pki, pki.admin) as channel:
            stub = SERVICE_ACCOUNTS.stub(channel)
            await stub.CreateServiceAccount(
                service_account_pb2.CreateServiceAccountRequest(service_account=SERVICE_ACCOUNTS.make("web", NS))
            )
            response = await stub.IssueCertificate(_request("web", _csr(_ec_key()), ttl=timedelta(hours=24)))
    finally:
        await server.stop()

    cert, issuer = _chain(response)
    assert issuer == ca
    cert.verify_directly_issued_by(ca)
    assert cert.not_valid_after_utc == ca.not_valid_after_utc
    assert cert.not_valid_before_utc >= ca.not_valid_before_utc


# -- the certificate on a real mTLS connection ----------------------------------------------


KEYS = {
    "ec-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ec-p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "rsa-2048": lambda: rsa.generate_private_key(65537, 2048),
}


@pytest.mark.parametrize("key_type", list(KEYS))
async def test_the_certificate_authenticates_as_the_service_account(
    admin, connect, server: Server, tmp_path: Path, key_type: str
) -> None:
    await _accounts(admin, "web", "db")
    key = KEYS[key_type]()
    web = _identity(tmp_path, await _issue(admin, key=key), key)
    server.config.audit_log.write_text("")

    as_web = connect(web)
    got = await SERVICE_ACCOUNTS.api(as_web).get("web", NS)

    assert got.spiffe_id == WEB
    (record,) = _records(server.config.audit_log)
    assert (record["principal"], record["resource"], record["decision"], record["code"]) == (
        f"sa:{NS}/web",
        f"serviceaccounts/{NS}/web",
        "allow",
        "OK",
    )
    # It is the account and nobody more: another account is not its to read.
    await failure(SERVICE_ACCOUNTS.api(as_web).get("db", NS), Code.PERMISSION_DENIED)


async def test_an_account_renews_its_own_certificate_and_no_other(admin, connect, tmp_path: Path) -> None:
    await _accounts(admin, "web", "db")
    key = _ec_key()
    as_web = connect(_identity(tmp_path, await _issue(admin, key=key), key))

    renewed, _ = _chain(await _issue(as_web, "web"))

    assert list(renewed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value) == [
        x509.UniformResourceIdentifier(WEB)
    ]
    await failure(_issue(as_web, "db"), Code.PERMISSION_DENIED)


async def test_a_certificate_of_another_issuing_ca_is_trusted_too(pki: Pki, tmp_path: Path) -> None:
    """--ca-cert need not be in --client-ca: what the server issues authenticates anyway."""
    other = pki.foreign.cert.parent  # a second CA, which --client-ca does not name
    config = make_config(pki, tmp_path / "data", ca_cert=other / "ca.crt", ca_key=other / "ca.key")
    server = Server(config)
    await server.start()
    try:
        async with secure_channel(server.address, pki, pki.admin) as channel:
            stub = SERVICE_ACCOUNTS.stub(channel)
            await stub.CreateServiceAccount(
                service_account_pb2.CreateServiceAccountRequest(service_account=SERVICE_ACCOUNTS.make("web", NS))
            )
            key = _ec_key()
            response = await stub.IssueCertificate(_request("web", _csr(key)))
        _, issuer = _chain(response)
        assert issuer == x509.load_pem_x509_certificate((other / "ca.crt").read_bytes())
        async with secure_channel(server.address, pki, _identity(tmp_path, response, key)) as channel:
            got = await SERVICE_ACCOUNTS.stub(channel).GetServiceAccount(
                service_account_pb2.GetServiceAccountRequest(namespace=NS, name="web"), timeout=10
            )
        assert got.service_account.spiffe_id == WEB
    finally:
        await server.stop()


@pytest.mark.parametrize("problem", ["key-of-another-certificate", "not-a-ca"])
async def test_a_ca_that_cannot_issue_fails_the_start_naming_its_files(pki: Pki, tmp_path: Path, problem: str) -> None:
    if problem == "not-a-ca":
        ca_cert, ca_key = pki.admin.cert, pki.admin.key
    else:
        ca_cert, ca_key = pki.ca, pki.admin.key
    server = Server(make_config(pki, tmp_path / "data", ca_cert=ca_cert, ca_key=ca_key))

    with pytest.raises(ConfigError) as raised:
        await server.start()

    assert str(ca_cert) in str(raised.value) and str(ca_key) in str(raised.value)
    assert ("not the key" if problem != "not-a-ca" else "not a CA") in str(raised.value)


# -- who may ---------------------------------------------------------------------------------


async def test_a_node_may_issue_for_the_accounts_of_its_workloads_only(admin, connect, pki: Pki) -> None:
    await _accounts(admin, "web", "db")
    workloads = WORKLOADS.api(admin)
    await workloads.create(WORKLOADS.make("frontend", NS, node_name="n1", service_account="web"))
    n1, n2 = connect(pki.node), connect(pki.identity("node", "n2"))

    cert, _ = _chain(await _issue(n1, "web"))

    assert list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value) == [
        x509.UniformResourceIdentifier(WEB)
    ]
    await failure(_issue(n1, "db"), Code.PERMISSION_DENIED)  # no workload of n1 uses it
    await failure(_issue(n2, "web"), Code.PERMISSION_DENIED)  # n2 hosts nothing of web

    # The workload moves to n2: the right moves with it.
    moved = WORKLOADS.make("frontend", NS, node_name="n2", service_account="web")
    await workloads.update(moved, ["node_name"])
    await _issue(n2, "web")
    await failure(_issue(n1, "web"), Code.PERMISSION_DENIED)


@pytest.mark.parametrize("who", ["alice", "other-account"])
async def test_others_are_refused_before_existence_and_before_the_csr(
    admin, connect, pki: Pki, server: Server, tmp_path: Path, who: str
) -> None:
    await _accounts(admin, "web", "db")
    if who == "alice":
        caller = connect(pki.alice)
        principal = "user:alice"
    else:
        key = _ec_key()
        caller = connect(_identity(tmp_path, await _issue(admin, "db", key=key), key))
        principal = f"sa:{NS}/db"
    server.config.audit_log.write_text("")

    for name, csr_pem in (("web", None), ("missing", None), ("web", "garbage"), ("Not A Name!", "garbage")):
        f = await failure(_issue(caller, name, csr_pem=csr_pem), Code.PERMISSION_DENIED)
        assert principal in f.message

    records = _records(server.config.audit_log)
    assert [(r["principal"], r["verb"], r["decision"], r["code"]) for r in records] == [
        (principal, "issue-certificate", "deny", "PERMISSION_DENIED")
    ] * 4
    assert records[0]["resource"] == f"serviceaccounts/{NS}/web"
    assert principal in records[0]["reason"]


async def test_missing_account_is_not_found_before_the_csr_is_looked_at(admin, server: Server) -> None:
    await _accounts(admin, "web")
    server.config.audit_log.write_text("")

    await failure(_issue(admin, "missing", csr_pem="garbage"), Code.NOT_FOUND)
    f = await failure(_issue(admin, "Not A Name!", csr_pem="garbage"), Code.INVALID_ARGUMENT)
    assert f.fields == ["name"]
    f = await failure(_issue(admin, "web", csr_pem="garbage"), Code.INVALID_ARGUMENT)
    assert f.fields == ["csr_pem"]

    records = _records(server.config.audit_log)
    assert [(r["verb"], r["resource"], r["decision"], r["code"]) for r in records] == [
        ("issue-certificate", f"serviceaccounts/{NS}/missing", "allow", "NOT_FOUND"),
        ("issue-certificate", f"serviceaccounts/{NS}/Not A Name!", "allow", "INVALID_ARGUMENT"),
        ("issue-certificate", f"serviceaccounts/{NS}/web", "allow", "INVALID_ARGUMENT"),
    ]


# -- CSRs it cannot trust --------------------------------------------------------------------


def _tampered() -> str:
    """A CSR whose subject was changed after it was signed."""
    der = x509.load_pem_x509_csr(_csr(_ec_key(), common_name="aaaaaaaa").encode()).public_bytes(
        serialization.Encoding.DER
    )
    assert der.count(b"aaaaaaaa") == 1
    forged = x509.load_der_x509_csr(der.replace(b"aaaaaaaa", b"aaaaaaab"))
    return forged.public_bytes(serialization.Encoding.PEM).decode()


BAD_CSRS = {
    "empty": lambda pki: "",
    "garbage": lambda pki: "this is not a CSR",
    "pem-garbage": lambda pki: "-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgY3Ny\n-----END CERTIFICATE REQUEST-----\n",
    "a-certificate": lambda pki: pki.ca.read_text(),
    "bad-signature": lambda pki: _tampered(),
    "rsa-1024": lambda pki: _csr(rsa.generate_private_key(65537, 1024)),
    "dsa-2048": lambda pki: _csr(dsa.generate_private_key(2048)),
    "ec-p521": lambda pki: _csr(ec.generate_private_key(ec.SECP521R1())),
    "ec-secp256k1": lambda pki: _csr(ec.generate_private_key(ec.SECP256K1())),
    # grpc's TLS could not use the certificate: it offers no Ed25519 for client certificates.
    "ed25519": lambda pki: _csr(ed25519.Ed25519PrivateKey.generate()),
    "oversized": lambda pki: _csr(_ec_key()) + "x" * 70_000,
}


@pytest.mark.parametrize("bad", list(BAD_CSRS))
async def test_a_csr_that_cannot_be_trusted_is_invalid(admin, pki: Pki, bad: str) -> None:
    await _accounts(admin, "web")
    request = _request("web", BAD_CSRS[bad](pki))

    f = await failure(admin.accounts.IssueCertificate(request, timeout=10), Code.INVALID_ARGUMENT)

    assert f.fields == ["csr_pem"], f.violations


async def test_a_bad_csr_and_a_bad_ttl_are_named_together(admin) -> None:
    await _accounts(admin, "web")
    request = _request("web", "garbage")
    request.ttl.seconds = -1

    f = await failure(admin.accounts.IssueCertificate(request, timeout=10), Code.INVALID_ARGUMENT)

    assert sorted(f.fields) == ["csr_pem", "ttl"]


LONGEST_NAME = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 55])  # 247: room for "-token"


@pytest.mark.parametrize("name", ["web", LONGEST_NAME], ids=["short", "longest"])
async def test_the_default_namespace_is_default_and_any_name_fits(admin, name: str) -> None:
    await SERVICE_ACCOUNTS.api(admin).create(SERVICE_ACCOUNTS.make(name))

    response = await admin.accounts.IssueCertificate(
        service_account_pb2.IssueCertificateRequest(name=name, csr_pem=_csr(_ec_key())), timeout=10
    )

    cert, _ = _chain(response)
    assert list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value) == [
        x509.UniformResourceIdentifier(f"spiffe://satchel.local/ns/default/sa/{name}")
    ]
