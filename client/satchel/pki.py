"""X.509 for Satchel: a local CA and the ECDSA P-256 certificates it signs, carrying SPIFFE IDs.

`init` and `issue` back `satchelctl certs init|issue` and `satcheld serve --dev`; the building
blocks (`generate_key`, `make_csr`, `sign`, `load_ca`, `read_key`, ...) serve the server and the
node agent. A public module: the server uses it, so it never reaches into the client's privates.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

CA_TTL = timedelta(days=3650)
LEAF_TTL = timedelta(days=365)
# Certificates start a little in the past so that a peer whose clock lags still accepts them.
_BACKDATE = timedelta(minutes=5)

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")


def generate_key() -> PrivateKey:
    """A new ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(key: PrivateKey, spiffe_id: str = "") -> str:
    """A PEM certificate signing request for `key`, asking for the URI SAN `spiffe_id` (if given).

    Satchel's server takes only the key from it: what it issues names the account asked for.
    """
    builder = x509.CertificateSigningRequestBuilder().subject_name(_subject(spiffe_id))
    if spiffe_id:
        san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def sign(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    public_key: ec.EllipticCurvePublicKey,
    *,
    spiffe_id: str,
    ttl: timedelta,
    dns: Iterable[str] = (),
    ips: Iterable[str | IPAddress] = (),
    server: bool = False,
    client: bool = True,
) -> x509.Certificate:
    """A leaf certificate for `public_key` with the URI SAN `spiffe_id`, signed by the CA.

    It never outlives the CA. `server`/`client` choose the extended key usages.
    """
    if not (server or client):
        raise ValueError("a certificate needs server or client usage")
    now = datetime.now(UTC)
    not_after = min(now + ttl, ca_cert.not_valid_after_utc)
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    sans.append(x509.UniformResourceIdentifier(spiffe_id))
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] * server + [ExtendedKeyUsageOID.CLIENT_AUTH] * client
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(_subject(spiffe_id))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def load_ca(dir: str | os.PathLike[str]) -> tuple[x509.Certificate, PrivateKey]:
    """The CA certificate and key in `dir` (`ca.crt`, `ca.key`)."""
    path = Path(dir)
    return read_cert(path / "ca.crt"), read_key(path / "ca.key")


def trust_domain_of(ca_cert: x509.Certificate) -> str:
    """The trust domain named by the CA's URI SAN `spiffe://<td>`."""
    for spiffe_id in spiffe_ids(ca_cert):
        return spiffe_id.removeprefix("spiffe://").split("/", 1)[0]
    raise ValueError("the CA certificate has no spiffe:// URI SAN naming its trust domain")


def spiffe_ids(cert: x509.Certificate) -> list[str]:
    """The certificate's URI SANs that are SPIFFE IDs."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [uri for uri in san.get_values_for_type(x509.UniformResourceIdentifier) if uri.startswith("spiffe://")]


def init(
    dir: str | os.PathLike[str],
    *,
    trust_domain: str = "satchel.local",
    hosts: Iterable[str] = ("localhost", "127.0.0.1"),
) -> None:
    """Write `ca.crt ca.key server.crt server.key admin.crt admin.key` into `dir`.

    Only what is missing is created; what exists is reused, and new certificates are signed by an
    existing `ca.key`. A certificate whose key is missing is replaced together with a new key.
    """
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise ValueError(f"invalid trust domain {trust_domain!r}: use lowercase letters, digits, '.', '-', '_'")
    if isinstance(hosts, str):
        hosts = hosts.split(",")
    hosts = [host.strip() for host in hosts if host.strip()]
    path = Path(dir)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)

    ca_cert_path, ca_key_path = path / "ca.crt", path / "ca.key"
    if ca_cert_path.exists() and not ca_key_path.exists():
        raise FileNotFoundError(f"{ca_cert_path} exists but its key {ca_key_path} does not")
    if ca_key_path.exists():
        ca_key = read_key(ca_key_path)
    else:
        ca_key = generate_key()
        _write(ca_key_path, _key_pem(ca_key), 0o600)
    if ca_cert_path.exists():
        ca_cert = read_cert(ca_cert_path)
        existing = trust_domain_of(ca_cert)
        if existing != trust_domain:
            raise ValueError(f"{ca_cert_path} is for trust domain {existing!r}, not {trust_domain!r}")
    else:
        ca_cert = _self_signed_ca(ca_key, trust_domain)
        _write(ca_cert_path, _cert_pem(ca_cert), 0o644)

    td = f"spiffe://{trust_domain}"
    dns = [host for host in hosts if not _is_ip(host)]
    ips = [host for host in hosts if _is_ip(host)]
    _ensure_leaf(
        path / "server",
        lambda public_key: sign(
            ca_cert,
            ca_key,
            public_key,
            spiffe_id=f"{td}/server",
            ttl=LEAF_TTL,
            dns=dns,
            ips=ips,
            server=True,
            client=False,
        ),
    )
    _ensure_leaf(
        path / "admin",
        lambda public_key: sign(ca_cert, ca_key, public_key, spiffe_id=f"{td}/user/admin", ttl=LEAF_TTL),
    )


def issue(
    dir: str | os.PathLike[str],
    kind: str,
    name: str,
    *,
    ttl: timedelta = timedelta(hours=24),
) -> tuple[Path, Path]:
    """Write `<kind>-<name>.crt` and `.key` (kind `user` or `node`), signed by the CA in `dir`.

    Returns the certificate and key paths. An existing pair of that name is replaced.
    """
    if kind not in ("user", "node"):
        raise ValueError(f"kind must be 'user' or 'node', not {kind!r}")
    if len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
        raise ValueError(
            f"invalid {kind} name {name!r}: use a DNS-1123 subdomain (lowercase letters, digits, '-', '.'; ≤ 253)"
        )
    if ttl <= timedelta(0):
        raise ValueError("ttl must be positive")
    path = Path(dir)
    ca_cert, ca_key = load_ca(path)
    key = generate_key()
    spiffe_id = f"spiffe://{trust_domain_of(ca_cert)}/{kind}/{name}"
    cert = sign(ca_cert, ca_key, key.public_key(), spiffe_id=spiffe_id, ttl=ttl)
    cert_path, key_path = path / f"{kind}-{name}.crt", path / f"{kind}-{name}.key"
    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, _cert_pem(cert), 0o644)
    return cert_path, key_path


def write_tls(dir: str | os.PathLike[str], certificate_chain_pem: str | bytes, key: PrivateKey) -> tuple[Path, Path]:
    """Write `tls.crt` (the certificate chain) and `tls.key` into `dir`, created 0700 if missing.

    Both files are 0600. Each is replaced atomically, the pair is not: between the two renames
    the new key stands beside the old certificate. Returns both paths.
    """
    path = Path(dir)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if isinstance(certificate_chain_pem, str):
        certificate_chain_pem = certificate_chain_pem.encode()
    cert_path, key_path = path / "tls.crt", path / "tls.key"
    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, certificate_chain_pem, 0o600)
    return cert_path, key_path


def _ensure_leaf(stem: Path, make: Callable[[ec.EllipticCurvePublicKey], x509.Certificate]) -> None:
    """Writes `stem.crt` and `stem.key` unless both exist; an existing key gets a new certificate."""
    cert_path, key_path = stem.with_suffix(".crt"), stem.with_suffix(".key")
    if cert_path.exists() and key_path.exists():
        return
    if key_path.exists():
        key = read_key(key_path)
    else:
        key = generate_key()
        _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, _cert_pem(make(key.public_key())), 0o644)


def _self_signed_ca(key: PrivateKey, trust_domain: str) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Satchel"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Satchel CA {trust_domain}"[:64]),
        ]
    )
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + CA_TTL)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _subject(spiffe_id: str) -> x509.Name:
    # The SPIFFE ID (a SAN) is the identity; the common name only helps people reading the cert.
    common_name = spiffe_id.rstrip("/").rsplit("/", 1)[-1][:64] or "satchel"
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Satchel"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def read_cert(path: str | os.PathLike[str]) -> x509.Certificate:
    """The PEM certificate in the file `path`."""
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def read_key(path: str | os.PathLike[str]) -> PrivateKey:
    """The unencrypted PEM ECDSA private key in the file `path`; ValueError for any other key."""
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} is not an ECDSA private key")
    return key


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` atomically with exactly `mode`; a crash never leaves half a file."""
    # mkstemp creates the file 0600, so a key is never readable by others, not even briefly.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = [
    "CA_TTL",
    "LEAF_TTL",
    "PrivateKey",
    "generate_key",
    "init",
    "issue",
    "load_ca",
    "make_csr",
    "read_cert",
    "read_key",
    "sign",
    "spiffe_ids",
    "trust_domain_of",
    "write_tls",
]
