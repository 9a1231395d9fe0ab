"""The three kinds as the server names them, derived from the one registry in
`satchel.kinds`: the server adds nothing to a kind but these short names."""

from __future__ import annotations

from satchel.kinds import KINDS, Kind, kind_of
from satchel.kinds import SECRETS as _SECRETS
from satchel.kinds import SERVICE_ACCOUNTS as _SERVICE_ACCOUNTS
from satchel.kinds import WORKLOADS as _WORKLOADS

# The kind names the store, the policy file and the watch hub key on.
SERVICE_ACCOUNTS = _SERVICE_ACCOUNTS.name
SECRETS = _SECRETS.name
WORKLOADS = _WORKLOADS.name

__all__ = ["KINDS", "SECRETS", "SERVICE_ACCOUNTS", "WORKLOADS", "Kind", "kind_name", "kind_of"]


def kind_name(obj: object) -> str:
    """The kind name of a resource message (TypeError for any other)."""
    return kind_of(obj).name  # type: ignore[arg-type]
