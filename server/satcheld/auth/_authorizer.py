"""The authorizer: the one room that answers "may this principal do this?" and
"does it see secret data?". Deny by default; admins named in the policy file
may do everything. Policy rules, groups and the node authorizer build on it;
services and watch views ask it, never the policy file.
"""

from __future__ import annotations

from ..errors import PermissionDenied
from ..model import SECRETS, shown
from ._identity import USER, Principal
from ._policy import RESOURCES as RESOURCES  # what a permission names: defined by the policy
from ._policy import VERBS as VERBS
from ._policy import Policy


class Authorizer:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def set_policy(self, policy: Policy) -> None:
        """Puts a reloaded policy file in force (SIGHUP)."""
        self.policy = policy

    def is_admin(self, principal: Principal) -> bool:
        return principal.kind == USER and principal.name in self.policy.admins

    def allowed(self, principal: Principal, verb: str, resource: str, namespace: str) -> bool:
        return self.is_admin(principal)

    def shows_data(self, principal: Principal, resource: str, namespace: str) -> bool:
        """Whether `principal` sees secret data in what it reads of `resource` in
        `namespace` (an empty namespace: all of them); it sees shape otherwise."""
        return resource == SECRETS and self.allowed(principal, "read-data", SECRETS, namespace)

    def denial(self, principal: Principal, verb: str, resource: str, namespace: str, name: str = "") -> str:
        """Why `principal` may not do `verb` on `resource` in `namespace` (empty:
        all of them); an empty string when it may."""
        if self.allowed(principal, verb, resource, namespace):
            return ""
        where = f"{resource} in namespace {shown(namespace)}" if namespace else resource
        return f"{principal} may not {verb} {where}"

    def check(self, principal: Principal, verb: str, resource: str, namespace: str, name: str = "") -> None:
        """Raises PermissionDenied unless allowed. Called before any lookup, so
        a denied caller never learns whether the object exists."""
        why = self.denial(principal, verb, resource, namespace, name)
        if why:
            raise PermissionDenied(why)
