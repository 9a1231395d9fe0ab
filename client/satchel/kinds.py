"""The three resource kinds and every name the API gives each: the one registry
that the client, `satchelctl`, the server and the tests derive from.

    >>> from satchel.kinds import SECRETS
    >>> SECRETS.rpc("list"), SECRETS.field, SECRETS.items
    ('ListSecrets', 'secret', 'secrets')
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from google.protobuf.message import Message

from satchel.v1 import (
    secret_pb2,
    secret_pb2_grpc,
    service_account_pb2,
    service_account_pb2_grpc,
    workload_pb2,
    workload_pb2_grpc,
)

VERBS = ("create", "get", "list", "update", "delete", "watch")
_PLURAL_VERBS = frozenset({"list", "watch"})


@dataclass(frozen=True)
class Kind:
    """One resource kind. `name` is the plural noun that the policy file, the store
    and `satchelctl watch` use; the other names follow the proto's."""

    name: str  # serviceaccounts
    noun: str  # service account (in messages to people)
    field: str  # service_account: the request, response and event field holding one
    items: str  # service_accounts: the List response field
    message: type[Message]  # satchel.v1.ServiceAccount
    module: ModuleType  # satchel.v1.service_account_pb2
    stub: Callable[[Any], Any]  # ServiceAccountServiceStub
    plural_type: str  # ServiceAccounts: List and Watch RPCs are named with it

    @property
    def plural_noun(self) -> str:
        """service accounts (in messages to people)."""
        return self.items.replace("_", " ")

    @property
    def type_name(self) -> str:
        """ServiceAccount: the message name, which the single-object RPCs carry."""
        return self.message.DESCRIPTOR.name

    @property
    def service(self) -> str:
        """The full service name: satchel.v1.ServiceAccountService."""
        return f"{self.message.DESCRIPTOR.file.package}.{self.type_name}Service"

    def rpc(self, verb: str) -> str:
        """The RPC for `verb` (one of VERBS): rpc("list") == "ListServiceAccounts"."""
        if verb not in VERBS:
            raise ValueError(f"unknown verb {verb!r}; expected one of {', '.join(VERBS)}")
        return verb.capitalize() + (self.plural_type if verb in _PLURAL_VERBS else self.type_name)

    def method(self, verb: str) -> str:
        """The full method name: /satchel.v1.ServiceAccountService/ListServiceAccounts."""
        return f"/{self.service}/{self.rpc(verb)}"

    def client_method(self, verb: str) -> str:
        """The name of the `satchel.Client` method for `verb`: client_method("list") ==
        "list_service_accounts" (the RPC's name in snake case)."""
        self.rpc(verb)  # refuses an unknown verb
        return f"{verb}_{self.items if verb in _PLURAL_VERBS else self.field}"

    def request_type(self, verb: str) -> type[Message]:
        """The request message of the RPC for `verb`: request_type("get") is GetServiceAccountRequest."""
        request: type[Message] = getattr(self.module, f"{self.rpc(verb)}Request")
        return request

    def response_type(self, verb: str) -> type[Message]:
        """The response message of the RPC for `verb`: response_type("list") is ListServiceAccountsResponse."""
        response: type[Message] = getattr(self.module, f"{self.rpc(verb)}Response")
        return response


SERVICE_ACCOUNTS = Kind(
    name="serviceaccounts",
    noun="service account",
    field="service_account",
    items="service_accounts",
    message=service_account_pb2.ServiceAccount,
    module=service_account_pb2,
    stub=service_account_pb2_grpc.ServiceAccountServiceStub,
    plural_type="ServiceAccounts",
)
SECRETS = Kind(
    name="secrets",
    noun="secret",
    field="secret",
    items="secrets",
    message=secret_pb2.Secret,
    module=secret_pb2,
    stub=secret_pb2_grpc.SecretServiceStub,
    plural_type="Secrets",
)
WORKLOADS = Kind(
    name="workloads",
    noun="workload",
    field="workload",
    items="workloads",
    message=workload_pb2.Workload,
    module=workload_pb2,
    stub=workload_pb2_grpc.WorkloadServiceStub,
    plural_type="Workloads",
)

ALL: tuple[Kind, ...] = (SERVICE_ACCOUNTS, SECRETS, WORKLOADS)
KINDS: Mapping[str, Kind] = {kind.name: kind for kind in ALL}
_BY_MESSAGE = {kind.message: kind for kind in ALL}


def kind_of(obj: Message) -> Kind:
    """The kind of a resource message; TypeError for any other message."""
    kind = _BY_MESSAGE.get(type(obj))
    if kind is None:
        raise TypeError(f"not a Satchel resource: {type(obj).__name__}")
    return kind


__all__ = ["ALL", "KINDS", "SECRETS", "SERVICE_ACCOUNTS", "VERBS", "WORKLOADS", "Kind", "kind_of"]
