"""Who is calling and what they may do: the principal from the verified client
certificate, the policy file, the authorizer. Knows no SQL and no service."""

from ._authorizer import Authorizer
from ._identity import NODE, SERVICE_ACCOUNT, USER, Principal, parse_spiffe_id, principal_from_certificate
from ._policy import RESOURCES, VERBS, Policy, PolicyError, Rule

__all__ = [
    "NODE",
    "RESOURCES",
    "SERVICE_ACCOUNT",
    "USER",
    "VERBS",
    "Authorizer",
    "Policy",
    "PolicyError",
    "Principal",
    "Rule",
    "parse_spiffe_id",
    "principal_from_certificate",
]
