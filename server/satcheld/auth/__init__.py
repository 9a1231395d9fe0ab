"""Who is calling and what they may do: the principal from the verified client
certificate or a bearer token, the policy file, the authorizer; the tokens'
signing keys. Knows no SQL and no service."""

from ._authorizer import Authorizer
from ._graph import Before, NodeBindings, NodeGraph, binding_of, undo_accounts, update_accounts
from ._identity import NODE, SERVICE_ACCOUNT, USER, Principal, parse_spiffe_id, principal_from_certificate
from ._policy import RESOURCES, VERBS, Policy, PolicyError, Rule
from ._scope import EVERYTHING, Scope
from ._tokens import SigningKeys, TokenIndex, Tokens, Verified, username

__all__ = [
    "EVERYTHING",
    "NODE",
    "RESOURCES",
    "SERVICE_ACCOUNT",
    "USER",
    "VERBS",
    "Authorizer",
    "Before",
    "NodeBindings",
    "NodeGraph",
    "Policy",
    "PolicyError",
    "Principal",
    "Rule",
    "Scope",
    "SigningKeys",
    "TokenIndex",
    "Tokens",
    "Verified",
    "binding_of",
    "parse_spiffe_id",
    "principal_from_certificate",
    "undo_accounts",
    "update_accounts",
    "username",
]
