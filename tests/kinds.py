"""The three resource kinds behind one small interface, so a CRUD test can run
once per kind: `Kind.api(stubs)` calls the kind's generated stub."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from google.protobuf import field_mask_pb2
from google.protobuf.message import Message

from satchel.v1 import meta_pb2, secret_pb2, service_account_pb2, workload_pb2


@dataclass(frozen=True)
class Kind:
    name: str  # the pytest id
    module: ModuleType
    message: type[Message]
    singular: str  # CreateServiceAccount
    plural: str  # ListServiceAccounts
    field: str  # the request/response field: service_account
    items: str  # the list response field: service_accounts
    stub: str  # the attribute of conftest.Stubs
    policy: str  # the resource name of the policy file

    def make(
        self,
        name: str,
        namespace: str = "",
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        **fields: Any,
    ) -> Message:
        """A valid object of this kind; `fields` override its kind-specific fields."""
        meta = meta_pb2.ObjectMeta(
            namespace=namespace, name=name, labels=labels or {}, annotations=annotations or {}
        )
        defaults: dict[str, Any] = {
            "serviceaccounts": {"description": "a robot"},
            "secrets": {"data": {"password": b"s3cr3t-" + name.encode()}},
            "workloads": {"node_name": "n1"},
        }[self.policy]
        return self.message(metadata=meta, **{**defaults, **fields})

    def api(self, stubs: Any) -> Api:
        return Api(self, getattr(stubs, self.stub))


class Api:
    """Create/Get/List/Update/Delete of one kind; returns the resource, not the
    response, always `redacted`: a failing assert about it prints no secret value."""

    def __init__(self, kind: Kind, stub: Any) -> None:
        self.kind = kind
        self._stub = stub
        self._m = kind.module

    def _request(self, verb: str, plural: bool = False, **fields: Any) -> Message:
        name = f"{verb}{self.kind.plural if plural else self.kind.singular}Request"
        return getattr(self._m, name)(**fields)

    def _rpc(self, verb: str, plural: bool = False) -> Any:
        return getattr(self._stub, f"{verb}{self.kind.plural if plural else self.kind.singular}")

    async def create(self, obj: Message, **call: Any) -> Message:
        response = await self._rpc("Create")(self._request("Create", **{self.kind.field: obj}), **call)
        return redacted(getattr(response, self.kind.field))

    async def get(self, name: str, namespace: str = "", **call: Any) -> Message:
        response = await self._rpc("Get")(self._request("Get", namespace=namespace, name=name), **call)
        return redacted(getattr(response, self.kind.field))

    async def list(self, **fields: Any) -> Message:
        call = fields.pop("call", {})
        response = await self._rpc("List", plural=True)(self._request("List", plural=True, **fields), **call)
        return redacted(response)

    async def list_all(self, page_size: int = 0, page_token: str = "", **fields: Any) -> tuple[list[Message], int]:
        """Every page from `page_token` on; returns the objects and how many pages it took."""
        found: list[Message] = []
        token, pages = page_token, 0
        while True:
            response = await self.list(page_size=page_size, page_token=token, **fields)
            pages += 1
            found.extend(getattr(response, self.kind.items))
            token = response.next_page_token
            if not token:
                return found, pages

    async def update(self, obj: Message, paths: Iterable[str] | None = None, **call: Any) -> Message:
        mask = None if paths is None else field_mask_pb2.FieldMask(paths=list(paths))
        request = self._request("Update", **{self.kind.field: obj, "update_mask": mask})
        response = await self._rpc("Update")(request, **call)
        return redacted(getattr(response, self.kind.field))

    async def delete(self, name: str, namespace: str = "", etag: str = "", **call: Any) -> None:
        await self._rpc("Delete")(self._request("Delete", namespace=namespace, name=name, etag=etag), **call)


SERVICE_ACCOUNTS = Kind(
    "serviceaccount",
    service_account_pb2,
    service_account_pb2.ServiceAccount,
    "ServiceAccount",
    "ServiceAccounts",
    "service_account",
    "service_accounts",
    "accounts",
    "serviceaccounts",
)
SECRETS = Kind(
    "secret", secret_pb2, secret_pb2.Secret, "Secret", "Secrets", "secret", "secrets", "secrets", "secrets"
)
WORKLOADS = Kind(
    "workload",
    workload_pb2,
    workload_pb2.Workload,
    "Workload",
    "Workloads",
    "workload",
    "workloads",
    "workloads",
    "workloads",
)
ALL = (SERVICE_ACCOUNTS, SECRETS, WORKLOADS)


def names(objects: Iterable[Message]) -> list[str]:
    return [f"{o.metadata.namespace}/{o.metadata.name}" for o in objects]


def hashed(data: Mapping[str, bytes]) -> dict[str, bytes]:
    """Secret data as `redacted` shows it: each value replaced by its SHA-256 in hex."""
    return {key: hashlib.sha256(value).hexdigest().encode() for key, value in data.items()}


def redacted(obj: Message) -> Message:
    """A copy whose secret data values (in a secret, or in the secrets of a list
    response) are replaced by `hashed` ones, so an assert never prints a value."""
    copy = type(obj)()
    copy.CopyFrom(obj)
    for secret in copy.secrets if isinstance(copy, secret_pb2.ListSecretsResponse) else [copy]:
        if isinstance(secret, secret_pb2.Secret):
            for key, value in hashed(secret.data).items():
                secret.data[key] = value
    return copy
