"""Who is calling: the principal named by the SPIFFE ID of the verified client
certificate, read from the certificate itself."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from cryptography import x509

from ..errors import Unauthenticated
from ..model import is_dns_label, is_dns_subdomain

USER, NODE, SERVICE_ACCOUNT = "user", "node", "sa"


@dataclass(frozen=True, slots=True)
class Principal:
    """A caller: a user, a node, or a service account `namespace/name`."""

    kind: str
    name: str
    namespace: str = ""

    def __str__(self) -> str:
        """The policy-file subject syntax: `user:alice`, `node:n1`, `sa:ns/name`."""
        if self.kind == SERVICE_ACCOUNT:
            return f"sa:{self.namespace}/{self.name}"
        return f"{self.kind}:{self.name}"


def parse_spiffe_id(uri: str, trust_domain: str) -> Principal | None:
    """The principal for a SPIFFE ID of `trust_domain`, or None if it names none."""
    prefix = f"spiffe://{trust_domain}/"
    if not uri.startswith(prefix):
        return None
    parts = uri[len(prefix) :].split("/")
    if len(parts) == 2 and parts[0] in (USER, NODE) and is_dns_subdomain(parts[1]):
        return Principal(parts[0], parts[1])
    if (
        len(parts) == 4
        and parts[0] == "ns"
        and parts[2] == "sa"
        and is_dns_label(parts[1])
        and is_dns_subdomain(parts[3])
    ):
        return Principal(SERVICE_ACCOUNT, parts[3], parts[1])
    return None


_EXPECTED = "expected one URI SAN spiffe://<td>/user/<name>, /node/<name> or /ns/<ns>/sa/<name>"


@lru_cache(maxsize=4096)
def principal_from_certificate(pem: bytes, trust_domain: str) -> Principal:
    """The principal named by a verified client certificate (PEM, as grpc's auth
    context gives it), read from the certificate itself: grpc's own `peer_uri`
    strings stop at a NUL byte, so a URI `.../user/admin<NUL>.x` would read as admin.
    As in an X509-SVID the certificate carries exactly one URI SAN, a SPIFFE ID of
    `trust_domain` with no control character in it. Cached per certificate."""
    try:
        certificate = x509.load_pem_x509_certificate(pem)
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    except ValueError:
        raise Unauthenticated("the client certificate cannot be read", reason="BAD_CLIENT_CERTIFICATE") from None
    if len(uris) > 1:
        raise Unauthenticated(
            f"the client certificate carries {len(uris)} URI SANs; {_EXPECTED}", reason="NO_SPIFFE_ID"
        )
    if uris and any(ord(c) < 0x20 or ord(c) == 0x7F for c in uris[0]):
        raise Unauthenticated(
            "the client certificate's URI SAN holds a control character; it names nobody", reason="NO_SPIFFE_ID"
        )
    principal = parse_spiffe_id(uris[0], trust_domain) if uris else None
    if principal is None:
        raise Unauthenticated(
            f"the client certificate carries no SPIFFE ID of trust domain {trust_domain!r} ({_EXPECTED})",
            reason="NO_SPIFFE_ID",
        )
    return principal
