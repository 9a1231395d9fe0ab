"""The policy file: who is an admin (and, with the authorization work, groups
and rules). Read and checked here; only the authorizer consults it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import yaml

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

    # Placeholders until rules are read (the policy work replaces them): no rule grants anything.
    def groups_of(self, user: str) -> frozenset[str]:
        return frozenset()

    def namespaces(self, subjects: frozenset[str], verb: str, resource: str) -> frozenset[str] | None:
        return frozenset()

    def allows(self, subjects: frozenset[str], verb: str, resource: str, namespace: str) -> bool:
        return False

    @staticmethod
    def default_text(admin: str = "admin") -> str:
        return (
            "# Satchel authorization policy. Deny by default.\n"
            f"admins: [{admin}]                  # users who may do everything\n"
            "groups: {}                       # user groups, used as group:<name>\n"
            "rules: []\n"
        )
