"""The authorizer: the one room that answers "may this principal do this verb
on this resource?" and, for List and Watch, "what does it see?" (a `Scope`).
Deny by default. Admins may do everything; a node what the node authorizer
grants (its graph); a service account may get itself; anyone what the policy
file's rules grant its subjects. Services and watch views ask it; they never
read the policy or the graph.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from ..errors import PermissionDenied
from ..model import SECRETS, SERVICE_ACCOUNTS, WORKLOADS, shown
from ._graph import NodeGraph
from ._identity import NODE, SERVICE_ACCOUNT, USER, Principal
from ._policy import RESOURCES as RESOURCES  # what a permission names: defined by the policy
from ._policy import VERBS as VERBS
from ._policy import Policy
from ._scope import EVERYTHING, Scope

# What the node authorizer grants a node, per resource: workloads are its own
# by `node_name`; accounts and secrets are those its workloads bind.
_NODE_VERBS = {WORKLOADS: ("get", "list", "watch"), SERVICE_ACCOUNTS: ("get", "watch"), SECRETS: ("get", "watch")}


class Authorizer:
    def __init__(self, policy: Policy, graph: NodeGraph | None = None) -> None:
        self.policy = policy
        self.graph = graph if graph is not None else NodeGraph()
        self._on_policy: list[Callable[[], None]] = []
        self._subjects = lru_cache(maxsize=4096)(self._subjects_of)

    # -- the policy ---------------------------------------------------------

    def set_policy(self, policy: Policy) -> None:
        """Swaps in a reloaded policy; open streams are then re-scoped."""
        self.policy = policy
        self._subjects.cache_clear()
        for listener in self._on_policy:
            listener()

    def on_policy_change(self, listener: Callable[[], None]) -> None:
        self._on_policy.append(listener)

    def is_admin(self, principal: Principal) -> bool:
        return principal.kind == USER and principal.name in self.policy.admins

    def _subjects_of(self, principal: Principal) -> frozenset[str]:
        """The policy subjects that name `principal`: itself and its groups."""
        return self.policy.subjects_of(principal)

    # -- single objects -------------------------------------------------------

    def allowed(self, principal: Principal, verb: str, resource: str, namespace: str, name: str = "") -> bool:
        """Whether `principal` may do `verb` on `resource` in `namespace` (empty:
        in some namespace, as a List or Watch of all asks) named `name` (empty:
        any). Decided from the principal, the policy and the graph alone, never
        from whether the object exists."""
        if self.is_admin(principal):
            return True
        if principal.kind == NODE and self._node_allows(principal.name, verb, resource, namespace, name):
            return True
        if (
            principal.kind == SERVICE_ACCOUNT
            and verb == "get"
            and resource == SERVICE_ACCOUNTS
            and (namespace, name) == (principal.namespace, principal.name)
        ):
            return True
        subjects = self._subjects(principal)
        if namespace:
            return self.policy.allows(subjects, verb, resource, namespace)
        return self.policy.namespaces(subjects, verb, resource) != frozenset()

    def _node_allows(self, node: str, verb: str, resource: str, namespace: str, name: str) -> bool:
        if verb in ("list", "watch"):
            return verb in _NODE_VERBS.get(resource, ())
        if not name or not namespace:
            return False  # one object is granted by name, through the graph
        if resource == WORKLOADS:
            return verb == "get" and self.graph.runs(node, namespace, name)
        if verb == "get" or (verb == "read-data" and resource == SECRETS):
            return self.graph.binds(node, (resource, namespace, name))
        return False

    def may_issue_certificate(self, principal: Principal, namespace: str, account: str) -> bool:
        """IssueCertificate for service account `namespace/account`: admins; the
        account itself (renewal); a node whose workloads use the account."""
        if self.is_admin(principal):
            return True
        if principal.kind == SERVICE_ACCOUNT:
            return (principal.namespace, principal.name) == (namespace, account)
        if principal.kind == NODE:
            return self.graph.binds(principal.name, (SERVICE_ACCOUNTS, namespace, account))
        return False

    def shows_data(self, principal: Principal, resource: str, namespace: str, name: str = "") -> bool:
        """Whether `principal` sees the data of secret `namespace/name`; it sees
        metadata and `data_keys` otherwise."""
        return (
            resource == SECRETS and bool(namespace) and self.allowed(principal, "read-data", SECRETS, namespace, name)
        )

    def denial(self, principal: Principal, verb: str, resource: str, namespace: str, name: str = "") -> str:
        """Why `principal` may not do `verb` on `resource` in `namespace` (empty:
        any namespace) named `name`; an empty string when it may."""
        if self.allowed(principal, verb, resource, namespace, name):
            return ""
        where = f"{resource} in namespace {shown(namespace)}" if namespace else resource
        return f"{principal} may not {verb} {where}"

    def check(self, principal: Principal, verb: str, resource: str, namespace: str, name: str = "") -> None:
        """Raises PermissionDenied unless allowed. Called before any lookup, so
        a denied caller never learns whether the object exists."""
        why = self.denial(principal, verb, resource, namespace, name)
        if why:
            raise PermissionDenied(why)

    # -- sets of objects ------------------------------------------------------

    def scope(self, principal: Principal, verb: str, resource: str, namespace: str) -> Scope | None:
        """What `principal` sees of `resource` in a List or Watch (`verb`) of
        `namespace` (empty: all); None if it may not make that call at all."""
        if self.is_admin(principal):
            return EVERYTHING
        if principal.kind == NODE and verb in _NODE_VERBS.get(resource, ()):
            # A node's List and Watch show the node authorizer's view of it.
            return Scope(node=principal.name)
        subjects = self._subjects(principal)
        namespaces = self.policy.namespaces(subjects, verb, resource)
        if namespace:
            if namespaces is not None and namespace not in namespaces:
                return None
            namespaces = frozenset((namespace,))
        elif namespaces == frozenset():
            return None
        data = self.policy.namespaces(subjects, "read-data", SECRETS) if resource == SECRETS else frozenset()
        return Scope(namespaces, data)

    def check_scope(self, principal: Principal, verb: str, resource: str, namespace: str) -> Scope:
        scope = self.scope(principal, verb, resource, namespace)
        if scope is None:
            raise PermissionDenied(self.denial(principal, verb, resource, namespace) or f"{principal} may not {verb}")
        return scope
