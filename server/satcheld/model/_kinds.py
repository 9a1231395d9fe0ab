"""The three kinds as the server names them, derived from the one registry in
`satchel.kinds`: the server adds nothing to a kind but these short names."""

from __future__ import annotations

from typing import TypeVar

from satchel.kinds import KINDS, Kind, kind_of
from satchel.kinds import SECRETS as _SECRETS
from satchel.kinds import SERVICE_ACCOUNTS as _SERVICE_ACCOUNTS
from satchel.kinds import WORKLOADS as _WORKLOADS
from satchel.v1 import secret_pb2, service_account_pb2, workload_pb2

# The kind names the store, the policy file and the watch hub key on.
SERVICE_ACCOUNTS = _SERVICE_ACCOUNTS.name
SECRETS = _SECRETS.name
WORKLOADS = _WORKLOADS.name

# A stored object of any kind.
Resource = service_account_pb2.ServiceAccount | secret_pb2.Secret | workload_pb2.Workload
# One object of whichever kind, the same kind where it recurs in a signature.
R = TypeVar("R", bound=Resource)

__all__ = [
    "KINDS",
    "SECRETS",
    "SERVICE_ACCOUNTS",
    "WORKLOADS",
    "Kind",
    "R",
    "Resource",
    "copy_of",
    "kind_name",
    "kind_of",
]


def kind_name(obj: Resource) -> str:
    """The kind name of a resource message (TypeError for any other)."""
    return kind_of(obj).name


def copy_of(obj: R) -> R:
    """A deep copy, so that an object others hold is never changed."""
    copy = type(obj)()
    copy.CopyFrom(obj)  # type: ignore[arg-type]  # mypy checks R's bound, a union, not R
    return copy
