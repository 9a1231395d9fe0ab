"""The three resource kinds as the tests use them: `satchel.kinds`' registry (every
name the API gives a kind) plus what a test needs, `Kind.make` (a valid object) and
`Kind.api(stubs)` (CRUD through the kind's generated stub), so a CRUD test can run
once per kind. Tests are parametrized by `Kind.name` (serviceaccounts, ...)."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import field_mask_pb2
from google.protobuf.message import Message

from satchel import kinds
from satchel.v1 import admin_pb2, authorization_pb2, meta_pb2, secret_pb2, service_account_pb2, token_pb2, workload_pb2

# Every RPC of every Satchel service, by full method name, from the proto descriptors.
METHODS = {
    f"/{service.full_name}/{method.name}": method
    for module in (admin_pb2, authorization_pb2, meta_pb2, secret_pb2, service_account_pb2, token_pb2, workload_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
}


@dataclasses.dataclass(frozen=True)
class Kind(kinds.Kind):
    """A `satchel.kinds.Kind` that can also make objects and talk to the server."""

    @classmethod
    def of(cls, kind: kinds.Kind) -> Kind:
        return cls(**{f.name: getattr(kind, f.name) for f in dataclasses.fields(kind)})

    def make(
        self,
        name: str,
        namespace: str = "",
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        **fields: Any,
    ) -> Message:
        """A valid object of this kind; `fields` override its kind-specific fields."""
        meta = meta_pb2.ObjectMeta(namespace=namespace, name=name, labels=labels or {}, annotations=annotations or {})
        defaults: dict[str, Any] = {
            "serviceaccounts": {"description": "a robot"},
            "secrets": {"data": {"password": b"s3cr3t-" + name.encode()}},
            "workloads": {"node_name": "n1"},
        }[self.name]
        return self.message(metadata=meta, **{**defaults, **fields})

    def api(self, stubs: Any) -> Api:
        """CRUD of this kind over the channel of `stubs` (a conftest.Stubs)."""
        return Api(self, self.stub(stubs.channel))


class Api:
    """Create/Get/List/Update/Delete of one kind; returns the resource, not the
    response, always `redacted`: a failing assert about it prints no secret value."""

    def __init__(self, kind: Kind, stub: Any) -> None:
        self.kind = kind
        self._stub = stub

    def _call(self, verb: str, call: Mapping[str, Any], **fields: Any) -> Any:
        request = self.kind.request_type(verb)(**fields)
        return getattr(self._stub, self.kind.rpc(verb))(request, **call)

    async def create(self, obj: Message, **call: Any) -> Message:
        response = await self._call("create", call, **{self.kind.field: obj})
        return redacted(getattr(response, self.kind.field))

    async def get(self, name: str, namespace: str = "", **call: Any) -> Message:
        response = await self._call("get", call, namespace=namespace, name=name)
        return redacted(getattr(response, self.kind.field))

    async def list(self, **fields: Any) -> Message:
        call = fields.pop("call", {})
        return redacted(await self._call("list", call, **fields))

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
        response = await self._call("update", call, **{self.kind.field: obj, "update_mask": mask})
        return redacted(getattr(response, self.kind.field))

    async def delete(self, name: str, namespace: str = "", etag: str = "", **call: Any) -> None:
        await self._call("delete", call, namespace=namespace, name=name, etag=etag)


SERVICE_ACCOUNTS = Kind.of(kinds.SERVICE_ACCOUNTS)
SECRETS = Kind.of(kinds.SECRETS)
WORKLOADS = Kind.of(kinds.WORKLOADS)
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
