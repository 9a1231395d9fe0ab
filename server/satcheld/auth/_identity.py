"""Who is calling: the principal named by the client certificate's SPIFFE ID."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

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


@lru_cache(maxsize=4096)
def principal_from_uris(uris: tuple[bytes, ...], trust_domain: str) -> Principal:
    """The principal named by the URI SANs of a verified client certificate,
    as grpc reports them; cached per set of URIs."""
    found = {p for p in (parse_spiffe_id(u.decode("utf-8", "replace"), trust_domain) for u in uris) if p is not None}
    if len(found) != 1:
        raise Unauthenticated(
            f"the client certificate carries no SPIFFE ID of trust domain {trust_domain!r} "
            "(expected one URI SAN spiffe://<td>/user/<name>, /node/<name> or /ns/<ns>/sa/<name>)",
            reason="NO_SPIFFE_ID",
        )
    return found.pop()
