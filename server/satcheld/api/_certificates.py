"""IssueCertificate: the issuing CA, loaded once at start, and the X.509-SVIDs it
signs for service accounts. From the caller's CSR only the public key is taken
(its signature proves the caller holds the private key); everything else in the
certificate is the server's own, so no CSR can ask for another name, a CA bit or
any extension.

The order of checks is the API's: permission (verb `issue-certificate` on
`serviceaccounts/<ns>/<name>` in the audit record), then whether the account
exists, then the CSR and the TTL.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.protobuf import duration_pb2, timestamp_pb2

from satchel.v1 import service_account_pb2

from .. import model
from ..errors import FailedPrecondition, NotFound, PermissionDenied
from ..model import SERVICE_ACCOUNTS, Violations, shown
from . import _guard
from ._crud import Crud

ISSUE_VERB = "issue-certificate"  # the verb audit records name for IssueCertificate
DEFAULT_TTL = timedelta(hours=1)
MAX_TTL = timedelta(hours=24)  # a longer TTL is capped to this, not refused
# Certificates start a little in the past so that a peer whose clock lags still accepts them.
BACKDATE = timedelta(minutes=5)
MAX_CSR_CHARS = 64 * 1024  # an RSA-8192 CSR is under 4 KiB; more is not a CSR worth parsing
_CURVES = (ec.SECP256R1, ec.SECP384R1)
_RSA_BITS = (2048, 8192)  # smallest and largest modulus accepted
# Not Ed25519: grpc's TLS (BoringSSL) offers no Ed25519 signature for a client
# certificate, so such a certificate could never authenticate.
_SUPPORTED = "EC P-256 or P-384, or RSA of 2048 to 8192 bits"

CSRPublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
CAKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class CertificateAuthority:
    """The CA that signs service-account certificates (`--ca-cert`/`--ca-key`;
    under `--dev`, the dev CA). `chain` is the CA certificate file's certificates,
    the issuer first; each issued certificate is sent followed by them."""

    def __init__(self, chain: list[x509.Certificate], key: CAKey) -> None:
        self.chain = chain
        self.certificate = chain[0]
        self._key = key
        self._chain_pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain)
        try:
            ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        except x509.ExtensionNotFound:
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())

    @classmethod
    def load(cls, cert_pem: bytes, key_pem: bytes) -> CertificateAuthority:
        """The CA of these PEM files; ValueError says what is wrong with them."""
        chain = x509.load_pem_x509_certificates(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, CAKey):
            raise ValueError("the CA key is neither an EC nor an RSA key")
        issuer = chain[0]
        try:
            is_ca = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise ValueError(
                "the first certificate of the CA certificate file is not a CA (no BasicConstraints CA:TRUE)"
            )
        der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(der, spki) != issuer.public_key().public_bytes(der, spki):
            raise ValueError("the CA key is not the key of the CA certificate")
        return cls(chain, key)

    def issue(
        self, csr_pem: str, ttl: duration_pb2.Duration | None, *, namespace: str, name: str, spiffe_id: str
    ) -> x509.Certificate:
        """A client certificate for the key of `csr_pem`, naming `spiffe_id` and
        nothing else. Checks the CSR and the TTL (InvalidArgument naming both)."""
        v = Violations()
        lifetime = v.collect(lifetime_of, ttl)
        public_key = v.collect(public_key_of, csr_pem)
        v.raise_if_any()
        assert lifetime is not None and public_key is not None
        now = datetime.now(UTC)
        ca = self.certificate
        # Whole seconds, rounded up: X.509 times have no fraction, and the TTL is a minimum.
        not_after = (now + lifetime + timedelta(microseconds=999_999)).replace(microsecond=0)
        not_after = min(not_after, ca.not_valid_after_utc)  # never outlives its CA
        if not_after <= now:
            raise FailedPrecondition("the issuing CA has expired; no certificate can be issued", reason="CA_EXPIRED")
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Satchel"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, namespace),
                # Only a help to people reading it: the URI SAN is the identity.
                x509.NameAttribute(NameOID.COMMON_NAME, name[:64]),
            ]
        )
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(max(now - BACKDATE, ca.not_valid_before_utc))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_DIGITAL_SIGNATURE, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(self._aki, critical=False)
            .sign(self._key, hashes.SHA256())
        )

    def trusted_beside(self, client_ca_pem: bytes) -> bytes:
        """The client CA bundle (`--client-ca`) with the issuing CA added unless it is
        already there, so that the certificates this CA issues authenticate."""
        trusted = {c.fingerprint(hashes.SHA256()) for c in x509.load_pem_x509_certificates(client_ca_pem)}
        if self.certificate.fingerprint(hashes.SHA256()) in trusted:
            return client_ca_pem
        return client_ca_pem.rstrip(b"\n") + b"\n" + self.certificate.public_bytes(serialization.Encoding.PEM)

    def chain_pem(self, certificate: x509.Certificate) -> str:
        """`certificate` followed by the CA's chain, PEM-encoded."""
        return certificate.public_bytes(serialization.Encoding.PEM).decode() + self._chain_pem


_DIGITAL_SIGNATURE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def lifetime_of(ttl: duration_pb2.Duration | None) -> timedelta:
    """The certificate's lifetime for a requested `ttl`: unset or zero is
    DEFAULT_TTL; more than MAX_TTL is capped to MAX_TTL; a negative or malformed
    duration is InvalidArgument."""
    v = Violations()
    if ttl is None or (ttl.seconds == 0 and ttl.nanos == 0):
        return DEFAULT_TTL
    if ttl.seconds < 0 or ttl.nanos < 0:
        v.add("ttl", "must not be negative")
    elif ttl.nanos >= 1_000_000_000:
        v.add("ttl", "is not a valid duration (nanos must be below 1,000,000,000)")
    v.raise_if_any()
    if ttl.seconds >= MAX_TTL.total_seconds():  # compared before timedelta, which overflows first
        return MAX_TTL
    return timedelta(seconds=ttl.seconds, microseconds=ttl.nanos / 1000)


def public_key_of(csr_pem: str) -> CSRPublicKey:
    """The public key of a PEM CSR whose signature is valid and whose key is one
    Satchel issues certificates for; InvalidArgument for `csr_pem` otherwise."""
    v = Violations()
    if not csr_pem:
        v.add("csr_pem", "is required: a PEM certificate signing request")
    elif len(csr_pem) > MAX_CSR_CHARS:
        v.add("csr_pem", f"is {len(csr_pem)} characters long; a CSR is at most {MAX_CSR_CHARS}")
    v.raise_if_any()
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError:
        v.add("csr_pem", "is not a PEM certificate signing request (-----BEGIN CERTIFICATE REQUEST-----)")
        v.raise_if_any()
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if isinstance(key, ec.EllipticCurvePublicKey) and not isinstance(key.curve, _CURVES):
        v.add("csr_pem", f"has an EC key on curve {key.curve.name}; supported keys: {_SUPPORTED}")
    elif isinstance(key, rsa.RSAPublicKey) and not _RSA_BITS[0] <= key.key_size <= _RSA_BITS[1]:
        v.add("csr_pem", f"has a {key.key_size}-bit RSA key; supported keys: {_SUPPORTED}")
    elif not isinstance(key, CSRPublicKey):
        v.add("csr_pem", f"has a key of an unsupported type; supported keys: {_SUPPORTED}")
    v.raise_if_any()
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        valid = False
    if not valid:
        v.add("csr_pem", "has an invalid signature: it must be signed with the key it holds")
    v.raise_if_any()
    assert isinstance(key, CSRPublicKey)
    return key


async def issue_certificate(
    crud: Crud, authority: CertificateAuthority, request: service_account_pb2.IssueCertificateRequest
) -> service_account_pb2.IssueCertificateResponse:
    """IssueCertificate: allowed for admins, the account itself (renewal) and a
    node that hosts a workload of the account (`Authorizer.may_issue_certificate`)."""
    namespace, name = model.namespace_or_default(request.namespace), request.name
    req = _guard.current()
    req.resource, req.verb = f"{SERVICE_ACCOUNTS}/{namespace}/{name}", ISSUE_VERB
    principal = _guard.principal()
    if not crud.authorizer.may_issue_certificate(principal, namespace, name):
        req.decision = "deny"
        raise PermissionDenied(
            f"{principal} may not have a certificate issued for service account {shown(f'{namespace}/{name}')}"
        )
    req.decision = "allow"
    if await crud.store.get(SERVICE_ACCOUNTS, namespace, name, with_data=False) is None:
        model.check_namespace_and_name(namespace, name)  # stored names were valid; only others need checking
        raise NotFound(f"service account {namespace}/{name} not found")
    ttl = request.ttl if request.HasField("ttl") else None
    spiffe_id = f"spiffe://{crud.trust_domain}/ns/{namespace}/sa/{name}"
    # Parsing, verifying and signing take milliseconds (more with an RSA CA): off the event loop.
    certificate = await asyncio.to_thread(
        authority.issue, request.csr_pem, ttl, namespace=namespace, name=name, spiffe_id=spiffe_id
    )
    expire_time = timestamp_pb2.Timestamp()
    expire_time.FromDatetime(certificate.not_valid_after_utc)
    return service_account_pb2.IssueCertificateResponse(
        certificate_chain_pem=authority.chain_pem(certificate), expire_time=expire_time
    )
