"""The authorizer: deny by default; admins named in the policy file may do everything.

Per-subject rules, groups and the node authorizer build on this room; handlers
and watch views ask it, never the policy file directly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import yaml

from ._errors import PermissionDenied
from ._identity import USER, Principal

log = logging.getLogger("satcheld.policy")


class PolicyError(Exception):
    """The policy file is missing, unreadable or malformed."""


@dataclass(frozen=True)
class Policy:
    admins: frozenset[str] = frozenset()

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as e:
            raise PolicyError(f"cannot read policy file {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise PolicyError(f"policy file {path} is not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise PolicyError(f"policy file {path}: expected a mapping at the top level")
        admins = raw.get("admins") or []
        if not isinstance(admins, list) or not all(isinstance(a, str) for a in admins):
            raise PolicyError(f"policy file {path}: 'admins' must be a list of user names")
        if raw.get("rules") or raw.get("groups"):
            # Deny by default holds: ignoring rules can only deny more, never allow.
            log.warning("policy file %s: 'groups' and 'rules' are not enforced yet; only admins are allowed", path)
        return cls(admins=frozenset(admins))

    @staticmethod
    def default_text(admin: str = "admin") -> str:
        return (
            "# Satchel authorization policy. Deny by default.\n"
            f"admins: [{admin}]                  # users who may do everything\n"
            "groups: {}                       # user groups, used as group:<name>\n"
            "rules: []\n"
        )


class Authorizer:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def is_admin(self, principal: Principal) -> bool:
        return principal.kind == USER and principal.name in self.policy.admins

    def allowed(self, principal: Principal, verb: str, resource: str, namespace: str) -> bool:
        return self.is_admin(principal)

    def check(self, principal: Principal, verb: str, resource: str, namespace: str, name: str = "") -> None:
        """Raises PermissionDenied unless allowed. Called before any lookup, so
        a denied caller never learns whether the object exists."""
        if not self.allowed(principal, verb, resource, namespace):
            where = f"{resource} in namespace {namespace!r}" if namespace else resource
            raise PermissionDenied(f"{principal} may not {verb} {where}")
