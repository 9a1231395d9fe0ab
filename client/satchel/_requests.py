"""Request builders: the public signature and documentation of every client method.

Each builder turns one method's arguments into a description of the call (`UnaryCall`,
`ListCall`, `WatchCall`) without doing any I/O; `_methods` makes both clients' methods from them.
The per-call options every method takes are declared once, as `CallOptionsArgs` (watches:
`WatchOptionsArgs`), which each builder takes as `**options` and puts into its call: a type
checker sees them in every method's signature, and `_methods` shows them in the runtime one.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from operator import attrgetter
from typing import Any, Generic, TypedDict, TypeVar, Unpack, overload

from google.protobuf import duration_pb2, field_mask_pb2
from google.protobuf.message import Message

from satchel._transport import Metadata, Stub, Timeout
from satchel.kinds import SECRETS, SERVICE_ACCOUNTS, WORKLOADS, Kind
from satchel.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    authorization_pb2,
    authorization_pb2_grpc,
    meta_pb2,
    secret_pb2,
    service_account_pb2,
    token_pb2,
    token_pb2_grpc,
    workload_pb2,
)

Secret = secret_pb2.Secret
ServiceAccount = service_account_pb2.ServiceAccount
Workload = workload_pb2.Workload
ObjectMeta = meta_pb2.ObjectMeta
SecretType = secret_pb2.SecretType

R = TypeVar("R")
E = TypeVar("E", bound=Message)

Data = Mapping[str, bytes | str]
Duration = timedelta | float


# ---------------------------------------------------------------------------------------------
# The per-call options: the one place they are declared. Each builder takes them as
# `**options: Unpack[...]` (PEP 692), so that a type checker sees them as keyword-only
# parameters of every method; `_methods` spells them out, with None as their default, in the
# signature that `inspect.signature` and `help()` show. None (or not given): the config's.


class CallOptionsArgs(TypedDict, total=False):
    """The options of a unary or list call."""

    timeout: float | timedelta | None  # seconds or a timedelta; for a list, for each page
    metadata: Metadata | None  # a mapping or (key, value) pairs, sent beside the config's


class WatchOptionsArgs(TypedDict, total=False):
    """The options of a watch: no timeout, as a gRPC deadline would end it (see `WatchStream`)."""

    metadata: Metadata | None  # sent on every connection
    max_backoff: float | None  # the longest wait between reconnections, seconds (default 10)


# ---------------------------------------------------------------------------------------------
# What a method call becomes: an RPC, its request, how to read the response, and the options it
# was given (checked and merged with the config's by the transport).


@dataclass(frozen=True)
class UnaryCall(Generic[R]):
    stub: Stub
    rpc: str
    request: Message
    result: Callable[[Any], R]
    read: bool = False  # it changes nothing, so it may be retried
    timeout: Timeout | None = None
    metadata: Metadata | None = None

    @classmethod
    def of(
        cls,
        kind: Kind,
        verb: str,
        request: Message,
        result: Callable[[Any], Any] | None = None,
        *,
        read: bool = False,
        **options: Unpack[CallOptionsArgs],
    ) -> UnaryCall[Any]:
        """The call of `kind`'s RPC for `verb`; its result is the response's resource unless told."""
        return cls(kind.stub, kind.rpc(verb), request, result or attrgetter(kind.field), read, **options)


@dataclass(frozen=True)
class ListCall(Generic[R]):
    """A List, read page after page (every page a read)."""

    stub: Stub
    rpc: str
    request: Any  # a ListXRequest; its page_token is advanced as pages are read
    items: str  # the response field holding the resources
    timeout: Timeout | None = None
    metadata: Metadata | None = None

    @classmethod
    def of(cls, kind: Kind, request: Message, **options: Unpack[CallOptionsArgs]) -> ListCall[Any]:
        return cls(kind.stub, kind.rpc("list"), request, kind.items, **options)


@dataclass(frozen=True)
class WatchCall(Generic[E]):
    stub: Stub
    rpc: str
    request: Any  # a WatchXRequest
    on_relist: Callable[[], object] | None
    metadata: Metadata | None = None
    max_backoff: float | None = None

    @classmethod
    def of(
        cls, kind: Kind, request: Message, on_relist: Callable[[], object] | None, **options: Unpack[WatchOptionsArgs]
    ) -> WatchCall[Any]:
        return cls(kind.stub, kind.rpc("watch"), request, on_relist, **options)


def _none(response: Message) -> None:
    return None


def _itself(response: R) -> R:
    return response


# ---------------------------------------------------------------------------------------------
# Request builders: the public signature and documentation of every method.


def create_service_account(
    name: str | None = None,
    *,
    namespace: str = "default",
    secrets: Iterable[str] | None = None,
    description: str = "",
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    service_account: ServiceAccount | None = None,
    **options: Unpack[CallOptionsArgs],
) -> UnaryCall[ServiceAccount]:
    """Create a service account and return it as stored.

    The server also creates its token secret `<name>-token` and lists it in `secrets`.
    Give the fields, or a ready proto as `service_account=`.
    """
    if service_account is None:
        service_account = ServiceAccount(
            metadata=_meta(namespace, _name(name, "create_service_account"), labels, annotations),
            secrets=_secret_refs(secrets or ()),
            description=description,
        )
    else:
        _only_proto(name, "create_service_account", "service_account")
    request = service_account_pb2.CreateServiceAccountRequest(service_account=service_account)
    return UnaryCall.of(SERVICE_ACCOUNTS, "create", request, **options)


def get_service_account(
    name: str, *, namespace: str = "default", **options: Unpack[CallOptionsArgs]
) -> UnaryCall[ServiceAccount]:
    """Return the service account `namespace/name`."""
    request = service_account_pb2.GetServiceAccountRequest(namespace=namespace, name=name)
    return UnaryCall.of(SERVICE_ACCOUNTS, "get", request, read=True, **options)


def list_service_accounts(
    *, namespace: str = "", label_selector: str = "", page_size: int = 0, **options: Unpack[CallOptionsArgs]
) -> ListCall[ServiceAccount]:
    """Iterate over the service accounts (all namespaces the caller may see when `namespace` is
    empty) matching `label_selector` (`k=v,k2!=v2,k3`), fetching `page_size` at a time."""
    request = service_account_pb2.ListServiceAccountsRequest(
        namespace=namespace, label_selector=label_selector, page_size=page_size
    )
    return ListCall.of(SERVICE_ACCOUNTS, request, **options)


def update_service_account(
    name: str | None = None,
    *,
    namespace: str = "default",
    secrets: Iterable[str] | None = None,
    description: str | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    etag: str = "",
    service_account: ServiceAccount | None = None,
    update_mask: Iterable[str] | None = None,
    **options: Unpack[CallOptionsArgs],
) -> UnaryCall[ServiceAccount]:
    """Change the fields given (others stay as they are) and return the account as stored.

    `labels={}` removes all labels. With `etag`, fails with `ConflictError` if the account changed
    since it was read. For full control pass `service_account=` and `update_mask=` (paths such as
    `secrets`, `description`, `metadata.labels`; `["*"]` replaces all; empty: the fields set).
    """
    if service_account is None:
        service_account = ServiceAccount(
            metadata=ObjectMeta(namespace=namespace, name=_name(name, "update_service_account"), etag=etag)
        )
        paths = _meta_updates(service_account.metadata, labels, annotations)
        if secrets is not None:
            service_account.secrets.extend(_secret_refs(secrets))
            paths.append("secrets")
        if description is not None:
            service_account.description = description
            paths.append("description")
        mask = _mask(paths, "update_service_account")
    else:
        _only_proto(name, "update_service_account", "service_account")
        service_account, mask = _with_etag(service_account, etag), _given_mask(update_mask)
    request = service_account_pb2.UpdateServiceAccountRequest(service_account=service_account, update_mask=mask)
    return UnaryCall.of(SERVICE_ACCOUNTS, "update", request, **options)


def delete_service_account(
    name: str, *, namespace: str = "default", etag: str = "", **options: Unpack[CallOptionsArgs]
) -> UnaryCall[None]:
    """Delete the service account and its token secret. With `etag`, only if it still matches."""
    request = service_account_pb2.DeleteServiceAccountRequest(namespace=namespace, name=name, etag=etag)
    return UnaryCall.of(SERVICE_ACCOUNTS, "delete", request, _none, **options)


def watch_service_accounts(
    *,
    namespace: str = "",
    label_selector: str = "",
    since_revision: int = 0,
    send_initial: bool = False,
    on_relist: Callable[[], object] | None = None,
    **options: Unpack[WatchOptionsArgs],
) -> WatchCall[service_account_pb2.WatchServiceAccountsResponse]:
    """Watch service accounts: `WatchServiceAccountsResponse` events, resumed transparently.

    See `WatchStream` for resumption and relisting (`on_relist`).
    """
    request = service_account_pb2.WatchServiceAccountsRequest(
        namespace=namespace, label_selector=label_selector, since_revision=since_revision, send_initial=send_initial
    )
    return WatchCall.of(SERVICE_ACCOUNTS, request, on_relist, **options)


def issue_certificate(
    name: str,
    *,
    namespace: str = "default",
    csr_pem: str | bytes,
    ttl: Duration | None = None,
    **options: Unpack[CallOptionsArgs],
) -> UnaryCall[service_account_pb2.IssueCertificateResponse]:
    """Have the server sign `csr_pem` (see `satchel.pki.make_csr`) for the service account.

    `ttl` defaults to 1h on the server, which caps it at 24h. Returns the response:
    `certificate_chain_pem` and `expire_time`. The key never leaves the caller.
    """
    if isinstance(csr_pem, bytes):
        csr_pem = csr_pem.decode()
    request = service_account_pb2.IssueCertificateRequest(
        namespace=namespace, name=name, csr_pem=csr_pem, ttl=_duration(ttl, "ttl")
    )
    return UnaryCall(SERVICE_ACCOUNTS.stub, "IssueCertificate", request, _itself, **options)


def create_secret(
    name: str | None = None,
    *,
    namespace: str = "default",
    data: Data | None = None,
    type: int | str = "opaque",
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    immutable: bool = False,
    rotation_period: Duration | None = None,
    grace_period: Duration | None = None,
    service_account: str = "",
    secret: Secret | None = None,
    **options: Unpack[CallOptionsArgs],
) -> UnaryCall[Secret]:
    """Create a secret and return it as stored (with `version`, `etag` and `data_keys`).

    `data` values may be bytes or str (encoded as UTF-8). `type` is a `SecretType` value or a short
    name: opaque, tls, basic-auth, docker-config-json, service-account-token. With
    `rotation_period` the server rotates the secret on schedule, keeping the previous version valid
    for `grace_period`. A service-account-token secret names its `service_account` (one that has
    no token secret) and no data: the server fills it in. Give the fields, or a ready proto as
    `secret=`.
    """
    if secret is None:
        secret = Secret(
            metadata=_meta(namespace, _name(name, "create_secret"), labels, annotations),
            type=_secret_type(type),
            data=_data(data or {}),
            immutable=immutable,
            service_account=service_account,
            rotation=_rotation(rotation_period, grace_period),
        )
    else:
        _only_proto(name, "create_secret", "secret")
    return UnaryCall.of(SECRETS, "create", secret_pb2.CreateSecretRequest(secret=secret), **options)


def get_secret(name: str, *, namespace: str = "default", **options: Unpack[CallOptionsArgs]) -> UnaryCall[Secret]:
    """Return the secret `namespace/name`; without the read-data permission, `data` is empty."""
    request = secret_pb2.GetSecretRequest(namespace=namespace, name=name)
    return UnaryCall.of(SECRETS, "get", request, read=True, **options)


def list_secrets(
    *, namespace: str = "", label_selector: str = "", page_size: int = 0, **options: Unpack[CallOptionsArgs]
) -> ListCall[Secret]:
    """Iterate over the secrets (all namespaces the caller may see when `namespace` is empty)
    matching `label_selector` (`k=v,k2!=v2,k3`), fetching `page_size` at a time."""
    request = secret_pb2.ListSecretsRequest(namespace=namespace, label_selector=label_selector, page_size=page_size)
    return ListCall.of(SECRETS, request, **options)


def update_secret(
    name: str | None = None,
    *,
    namespace: str = "default",
    data: Data | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    immutable: bool | None = None,
    rotation_period: Duration | None = None,
    grace_period: Duration | None = None,
    etag: str = "",
    secret: Secret | None = None,
    update_mask: Iterable[str] | None = None,
    **options: Unpack[CallOptionsArgs],
) -> UnaryCall[Secret]:
    """Change the fields given (others stay as they are) and return the secret as stored.

    `data` replaces all the data (a new `version`); `labels={}` removes all labels;
    `rotation_period=timedelta(0)` stops scheduled rotation. With `etag`, fails with
    `ConflictError` if the secret changed since it was read. For full control pass `secret=` and
    `update_mask=` (paths such as `data`, `immutable`, `rotation`, `metadata.labels`; `["*"]`
    replaces all; empty: the fields set).
    """
    if secret is None:
        secret = Secret(metadata=ObjectMeta(namespace=namespace, name=_name(name, "update_secret"), etag=etag))
        paths = _meta_updates(secret.metadata, labels, annotations)
        if data is not None:
            secret.data.update(_data(data))
            paths.append("data")
        if immutable is not None:
            secret.immutable = immutable
            paths.append("immutable")
        if rotation_period is not None:
            if rotation_period:
                secret.rotation.period.CopyFrom(_duration(rotation_period, "rotation_period"))
            paths.append("rotation.period")
        if grace_period is not None:
            if grace_period:
                secret.rotation.grace_period.CopyFrom(_duration(grace_period, "grace_period"))
            paths.append("rotation.grace_period")
        mask = _mask(paths, "update_secret")
    else:
        _only_proto(name, "update_secret", "secret")
        secret, mask = _with_etag(secret, etag), _given_mask(update_mask)
    request = secret_pb2.UpdateSecretRequest(secret=secret, update_mask=mask)
    return UnaryCall.of(SECRETS, "update", request, **options)


def delete_secret(
    name: str, *, namespace: str = "default", etag: str = "", **options: Unpack[CallOptionsArgs]
) -> UnaryCall[None]:
    """Delete the secret. With `etag`, only if it still matches."""
    request = secret_pb2.DeleteSecretRequest(namespace=namespace, name=name, etag=etag)
    return UnaryCall.of(SECRETS, "delete", request, _none, **options)


def rotate_secret(
    name: str,
    *,
    namespace: str = "default",
    data: Data | None = None,
    grace_period: Duration | None = None,
    **options: Unpack[CallOptionsArgs],
) -> UnaryCall[Secret]:
    """Rotate the secret and return it with its new `version`.

    Token secrets get a fresh token from the server; others take the new `data`. The previous
    version stays valid for `grace_period` (default: the secret's own), until
    `previous_version_expire_time`.
    """
    request = secret_pb2.RotateSecretRequest(
        namespace=namespace,
        name=name,
        data=_data(data or {}),
        grace_period=_duration(grace_period, "grace_period"),
    )
    return UnaryCall(SECRETS.stub, "RotateSecret", request, attrgetter(SECRETS.field), **options)


def watch_secrets(
    *,
    namespace: str = "",
    label_selector: str = "",
    since_revision: int = 0,
    send_initial: bool = False,
    on_relist: Callable[[], object] | None = None,
    **options: Unpack[WatchOptionsArgs],
) -> WatchCall[secret_pb2.WatchSecretsResponse]:
    """Watch secrets: `WatchSecretsResponse` events, resumed transparently.

    See `WatchStream` for resumption and relisting (`on_relist`).
    """
    request = secret_pb2.WatchSecretsRequest(
        namespace=namespace, label_selector=label_selector, since_revision=since_revision, send_initial=send_initial
    )
    return WatchCall.of(SECRETS, request, on_relist, **options)


def create_workload(
    name: str | None = None,
    *,
    namespace: str = "default",
    node_name: str = "",
    service_account: str = "",
    secrets: Iterable[str] | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    workload: Workload | None = None,
    **options: Unpack[CallOptionsArgs],
) -> UnaryCall[Workload]:
    """Bind `service_account` (empty: `default`) and `secrets` to the node `node_name`; return the
    workload as stored. Give the fields, or a ready proto as `workload=`."""
    if workload is None:
        workload = Workload(
            metadata=_meta(namespace, _name(name, "create_workload"), labels, annotations),
            node_name=node_name,
            service_account=service_account,
            secrets=_strings(secrets or (), "secrets"),
        )
    else:
        _only_proto(name, "create_workload", "workload")
    request = workload_pb2.CreateWorkloadRequest(workload=workload)
    return UnaryCall.of(WORKLOADS, "create", request, **options)


def get_workload(name: str, *, namespace: str = "default", **options: Unpack[CallOptionsArgs]) -> UnaryCall[Workload]:
    """Return the workload `namespace/name`."""
    request = workload_pb2.GetWorkloadRequest(namespace=namespace, name=name)
    return UnaryCall.of(WORKLOADS, "get", request, read=True, **options)


def list_workloads(
    *, namespace: str = "", label_selector: str = "", page_size: int = 0, **options: Unpack[CallOptionsArgs]
) -> ListCall[Workload]:
    """Iterate over the workloads (all namespaces the caller may see when `namespace` is empty)
    matching `label_selector` (`k=v,k2!=v2,k3`), fetching `page_size` at a time."""
    request = workload_pb2.ListWorkloadsRequest(namespace=namespace, label_selector=label_selector, page_size=page_size)
    return ListCall.of(WORKLOADS, request, **options)


def update_workload(
    name: str | None = None,
    *,
    namespace: str = "default",
    node_name: str | None = None,
    service_account: str | None = None,
    secrets: Iterable[str] | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    etag: str = "",
    workload: Workload | None = None,
    update_mask: Iterable[str] | None = None,
    **options: Unpack[CallOptionsArgs],
) -> UnaryCall[Workload]:
    """Change the fields given (others stay as they are) and return the workload as stored.

    `labels={}` removes all labels. With `etag`, fails with `ConflictError` if the workload changed
    since it was read. For full control pass `workload=` and `update_mask=` (paths such as
    `node_name`, `service_account`, `secrets`, `metadata.labels`; `["*"]` replaces all; empty: the
    fields set).
    """
    if workload is None:
        workload = Workload(metadata=ObjectMeta(namespace=namespace, name=_name(name, "update_workload"), etag=etag))
        paths = _meta_updates(workload.metadata, labels, annotations)
        if node_name is not None:
            workload.node_name = node_name
            paths.append("node_name")
        if service_account is not None:
            workload.service_account = service_account
            paths.append("service_account")
        if secrets is not None:
            workload.secrets.extend(_strings(secrets, "secrets"))
            paths.append("secrets")
        mask = _mask(paths, "update_workload")
    else:
        _only_proto(name, "update_workload", "workload")
        workload, mask = _with_etag(workload, etag), _given_mask(update_mask)
    request = workload_pb2.UpdateWorkloadRequest(workload=workload, update_mask=mask)
    return UnaryCall.of(WORKLOADS, "update", request, **options)


def delete_workload(
    name: str, *, namespace: str = "default", etag: str = "", **options: Unpack[CallOptionsArgs]
) -> UnaryCall[None]:
    """Delete the workload. With `etag`, only if it still matches."""
    request = workload_pb2.DeleteWorkloadRequest(namespace=namespace, name=name, etag=etag)
    return UnaryCall.of(WORKLOADS, "delete", request, _none, **options)


def watch_workloads(
    *,
    namespace: str = "",
    label_selector: str = "",
    since_revision: int = 0,
    send_initial: bool = False,
    on_relist: Callable[[], object] | None = None,
    **options: Unpack[WatchOptionsArgs],
) -> WatchCall[workload_pb2.WatchWorkloadsResponse]:
    """Watch workloads: `WatchWorkloadsResponse` events, resumed transparently.

    See `WatchStream` for resumption and relisting (`on_relist`).
    """
    request = workload_pb2.WatchWorkloadsRequest(
        namespace=namespace, label_selector=label_selector, since_revision=since_revision, send_initial=send_initial
    )
    return WatchCall.of(WORKLOADS, request, on_relist, **options)


def review_token(
    token: str, *, audiences: Iterable[str] = (), **options: Unpack[CallOptionsArgs]
) -> UnaryCall[token_pb2.ReviewTokenResponse]:
    """Ask whether a bearer token is valid (for `audiences`, if given) and whose it is.

    Returns the response: `authenticated`, `username`, `uid`, `groups`, `audiences`,
    `expire_time`, and `reason` when it is not valid.
    """
    request = token_pb2.ReviewTokenRequest(token=token, audiences=_strings(audiences, "audiences"))
    return UnaryCall(token_pb2_grpc.TokenServiceStub, "ReviewToken", request, _itself, read=True, **options)


def get_public_keys(**options: Unpack[CallOptionsArgs]) -> UnaryCall[dict[str, Any]]:
    """Return the JWKS (as a dict) with the keys that verify the server's tokens offline."""
    request = token_pb2.GetPublicKeysRequest()
    return UnaryCall(token_pb2_grpc.TokenServiceStub, "GetPublicKeys", request, _jwks, read=True, **options)


def _jwks(response: token_pb2.GetPublicKeysResponse) -> dict[str, Any]:
    jwks: dict[str, Any] = json.loads(response.jwks_json)
    return jwks


def check_access(
    verb: str, resource: str, name: str = "", *, namespace: str = "", **options: Unpack[CallOptionsArgs]
) -> UnaryCall[authorization_pb2.CheckAccessResponse]:
    """Ask whether you (the caller) may do `verb` on `resource` in `namespace` (empty: all of them).

    `verb`: get, list, watch, create, update, delete, rotate or read-data; `resource`:
    serviceaccounts, secrets or workloads; `name`: one object (empty: any). Returns the response:
    `allowed`, and `reason` when not.
    """
    request = authorization_pb2.CheckAccessRequest(verb=verb, resource=resource, namespace=namespace, name=name)
    stub = authorization_pb2_grpc.AuthorizationServiceStub
    return UnaryCall(stub, "CheckAccess", request, _itself, read=True, **options)


def reseal_secrets(**options: Unpack[CallOptionsArgs]) -> UnaryCall[admin_pb2.ResealSecretsResponse]:
    """Re-seal every stored secret under the primary encryption key (admins only).

    Returns the response: `resealed` (how many sealed values) and `key_id` (the primary key).
    """
    request = admin_pb2.ResealSecretsRequest()
    return UnaryCall(admin_pb2_grpc.AdminServiceStub, "ResealSecrets", request, _itself, **options)


def rotate_signing_key(**options: Unpack[CallOptionsArgs]) -> UnaryCall[admin_pb2.RotateSigningKeyResponse]:
    """Make a new token signing key (admins only); the old one keeps verifying its tokens.

    Returns the response: `key_id`, the new key's `kid`.
    """
    request = admin_pb2.RotateSigningKeyRequest()
    return UnaryCall(admin_pb2_grpc.AdminServiceStub, "RotateSigningKey", request, _itself, **options)


# Argument helpers.


def _name(name: str | None, method: str) -> str:
    if name is None:
        raise TypeError(f"{method}() needs a name (or a ready proto)")
    return name


def _only_proto(name: str | None, method: str, proto: str) -> None:
    if name is not None:
        raise TypeError(f"{method}() takes a name and fields, or {proto}=, not both")


def _meta(
    namespace: str, name: str, labels: Mapping[str, str] | None, annotations: Mapping[str, str] | None
) -> meta_pb2.ObjectMeta:
    return ObjectMeta(namespace=namespace, name=name, labels=dict(labels or {}), annotations=dict(annotations or {}))


def _meta_updates(
    meta: meta_pb2.ObjectMeta, labels: Mapping[str, str] | None, annotations: Mapping[str, str] | None
) -> list[str]:
    paths = []
    if labels is not None:
        meta.labels.update(labels)
        paths.append("metadata.labels")
    if annotations is not None:
        meta.annotations.update(annotations)
        paths.append("metadata.annotations")
    return paths


def _mask(paths: list[str], method: str) -> field_mask_pb2.FieldMask:
    if not paths:
        raise ValueError(f"{method}() was given nothing to change")
    return field_mask_pb2.FieldMask(paths=paths)


def _with_etag(obj: Any, etag: str) -> Any:
    if not etag:
        return obj
    copy = type(obj)()
    copy.CopyFrom(obj)
    copy.metadata.etag = etag
    return copy


def _given_mask(update_mask: Iterable[str] | None) -> field_mask_pb2.FieldMask:
    if isinstance(update_mask, str):  # the FieldMask JSON form, "a,b"
        update_mask = update_mask.split(",")
    return field_mask_pb2.FieldMask(paths=list(update_mask or ()))


def _strings(values: Iterable[Any], what: str) -> list[Any]:
    if isinstance(values, str):
        raise TypeError(f"{what} must be a list of strings, not a string")
    return list(values)


def _secret_refs(names: Iterable[str | service_account_pb2.SecretReference]) -> list[Any]:
    return [
        n if isinstance(n, service_account_pb2.SecretReference) else service_account_pb2.SecretReference(name=n)
        for n in _strings(names, "secrets")
    ]


def _data(data: Data) -> dict[str, bytes]:
    out = {}
    for key, value in data.items():
        if isinstance(value, str):
            out[key] = value.encode()
        elif isinstance(value, bytes | bytearray | memoryview):
            out[key] = bytes(value)
        else:
            raise TypeError(f"data[{key!r}] must be bytes or str, not {type(value).__name__}")
    return out


def _secret_type(value: int | str) -> SecretType:
    if isinstance(value, str):
        short = value.strip().upper().replace("-", "_").removeprefix("SECRET_TYPE_")
        if short != "UNSPECIFIED" and f"SECRET_TYPE_{short}" in SecretType.DESCRIPTOR.values_by_name:
            return typing.cast(SecretType, SecretType.Value(f"SECRET_TYPE_{short}"))
    elif value in SecretType.values():
        return typing.cast(SecretType, value)
    names = ", ".join(n.removeprefix("SECRET_TYPE_").lower().replace("_", "-") for n in SecretType.keys()[1:])
    raise ValueError(f"unknown secret type {value!r}; use one of {names}")


@overload
def _duration(value: Duration, what: str) -> duration_pb2.Duration: ...
@overload
def _duration(value: Duration | None, what: str) -> duration_pb2.Duration | None: ...
def _duration(value: Duration | None, what: str) -> duration_pb2.Duration | None:
    """`value` (a timedelta or seconds) as a Duration; None stays None (the field is left unset)."""
    if value is None:
        return None
    if isinstance(value, int | float):
        value = timedelta(seconds=value)
    if not isinstance(value, timedelta):
        raise TypeError(f"{what} must be a timedelta or seconds, not {type(value).__name__}")
    duration = duration_pb2.Duration()
    duration.FromTimedelta(value)
    return duration


def _rotation(period: Duration | None, grace_period: Duration | None) -> secret_pb2.SecretRotation | None:
    if period is None and grace_period is None:
        return None
    return secret_pb2.SecretRotation(
        period=_duration(period, "rotation_period"), grace_period=_duration(grace_period, "grace_period")
    )
