"""The ergonomic clients, `Client` (blocking) and `AsyncClient` (asyncio), one method per RPC.

Three tiers: the generated stubs; `_Transport`/`_AsyncTransport`, which own the channel, send the
credentials and metadata and turn `grpc.RpcError` into `SatchelError`s; and the clients. Each RPC's
arguments are handled once, by a request builder below (`_create_secret`, ...) that both clients
turn into a method, so the two clients cannot drift apart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import random
import threading
import typing
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from operator import attrgetter
from os import PathLike
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

import grpc
from google.protobuf import duration_pb2, field_mask_pb2
from google.protobuf.message import Message

from satchel._config import ClientConfig
from satchel._errors import RevisionCompactedError, SatchelError, from_rpc_error
from satchel.v1 import (
    meta_pb2,
    secret_pb2,
    secret_pb2_grpc,
    service_account_pb2,
    service_account_pb2_grpc,
    token_pb2,
    token_pb2_grpc,
    workload_pb2,
    workload_pb2_grpc,
)

Secret = secret_pb2.Secret
ServiceAccount = service_account_pb2.ServiceAccount
Workload = workload_pb2.Workload
ObjectMeta = meta_pb2.ObjectMeta
SecretType = secret_pb2.SecretType
EventType = meta_pb2.EventType

P = ParamSpec("P")
R = TypeVar("R")
E = TypeVar("E", bound=Message)

Data = Mapping[str, bytes | str]
Duration = timedelta | float

_SERVICE_ACCOUNTS = "ServiceAccountService"
_SECRETS = "SecretService"
_WORKLOADS = "WorkloadService"
_TOKENS = "TokenService"
_STUBS: dict[str, Callable[[Any], Any]] = {
    _SERVICE_ACCOUNTS: service_account_pb2_grpc.ServiceAccountServiceStub,
    _SECRETS: secret_pb2_grpc.SecretServiceStub,
    _WORKLOADS: workload_pb2_grpc.WorkloadServiceStub,
    _TOKENS: token_pb2_grpc.TokenServiceStub,
}

# Watch reconnects: exponential backoff with full jitter, reset by every event received.
BACKOFF_BASE = 0.1
BACKOFF_CAP = 10.0
# The errors after which a watch reconnects from its last revision rather than giving up.
_RESUMABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


# ---------------------------------------------------------------------------------------------
# What a method call becomes: an RPC, its request, and how to read the response.


@dataclass(frozen=True)
class _Unary(Generic[R]):
    service: str
    rpc: str
    request: Message
    result: Callable[[Any], R]


@dataclass(frozen=True)
class _List(Generic[R]):
    service: str
    rpc: str
    request: Any  # a ListXRequest; its page_token is advanced as pages are read
    items: str  # the response field holding the resources


@dataclass(frozen=True)
class _Watch(Generic[E]):
    service: str
    rpc: str
    request: Any  # a WatchXRequest
    on_relist: Callable[[], object] | None


def _none(response: Message) -> None:
    return None


def _itself(response: R) -> R:
    return response


# ---------------------------------------------------------------------------------------------
# Request builders: the public signature and documentation of every method.


def _create_service_account(
    name: str | None = None,
    *,
    namespace: str = "default",
    secrets: Iterable[str] | None = None,
    description: str = "",
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    service_account: ServiceAccount | None = None,
) -> _Unary[ServiceAccount]:
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
    return _Unary(_SERVICE_ACCOUNTS, "CreateServiceAccount", request, attrgetter("service_account"))


def _get_service_account(name: str, *, namespace: str = "default") -> _Unary[ServiceAccount]:
    """Return the service account `namespace/name`."""
    request = service_account_pb2.GetServiceAccountRequest(namespace=namespace, name=name)
    return _Unary(_SERVICE_ACCOUNTS, "GetServiceAccount", request, attrgetter("service_account"))


def _list_service_accounts(
    *, namespace: str = "", label_selector: str = "", page_size: int = 0
) -> _List[ServiceAccount]:
    """Iterate over the service accounts (all namespaces the caller may see when `namespace` is
    empty) matching `label_selector` (`k=v,k2!=v2,k3`), fetching `page_size` at a time."""
    request = service_account_pb2.ListServiceAccountsRequest(
        namespace=namespace, label_selector=label_selector, page_size=page_size
    )
    return _List(_SERVICE_ACCOUNTS, "ListServiceAccounts", request, "service_accounts")


def _update_service_account(
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
) -> _Unary[ServiceAccount]:
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
    return _Unary(_SERVICE_ACCOUNTS, "UpdateServiceAccount", request, attrgetter("service_account"))


def _delete_service_account(name: str, *, namespace: str = "default", etag: str = "") -> _Unary[None]:
    """Delete the service account and its token secret. With `etag`, only if it still matches."""
    request = service_account_pb2.DeleteServiceAccountRequest(namespace=namespace, name=name, etag=etag)
    return _Unary(_SERVICE_ACCOUNTS, "DeleteServiceAccount", request, _none)


def _watch_service_accounts(
    *,
    namespace: str = "",
    label_selector: str = "",
    since_revision: int = 0,
    send_initial: bool = False,
    on_relist: Callable[[], object] | None = None,
) -> _Watch[service_account_pb2.WatchServiceAccountsResponse]:
    """Watch service accounts: `WatchServiceAccountsResponse` events, resumed transparently.

    See `WatchStream` for resumption and relisting (`on_relist`).
    """
    request = service_account_pb2.WatchServiceAccountsRequest(
        namespace=namespace, label_selector=label_selector, since_revision=since_revision, send_initial=send_initial
    )
    return _Watch(_SERVICE_ACCOUNTS, "WatchServiceAccounts", request, on_relist)


def _issue_certificate(
    name: str, *, namespace: str = "default", csr_pem: str | bytes, ttl: Duration | None = None
) -> _Unary[service_account_pb2.IssueCertificateResponse]:
    """Have the server sign `csr_pem` (see `satchel.pki.make_csr`) for the service account.

    Returns the response: `certificate_chain_pem` and `expire_time`. The key never leaves the caller.
    """
    if isinstance(csr_pem, bytes):
        csr_pem = csr_pem.decode()
    request = service_account_pb2.IssueCertificateRequest(
        namespace=namespace, name=name, csr_pem=csr_pem, ttl=_duration(ttl, "ttl")
    )
    return _Unary(_SERVICE_ACCOUNTS, "IssueCertificate", request, _itself)


def _create_secret(
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
) -> _Unary[Secret]:
    """Create a secret and return it as stored (with `version`, `etag` and `data_keys`).

    `data` values may be bytes or str (encoded as UTF-8). `type` is a `SecretType` value or a short
    name: opaque, tls, basic-auth, docker-config-json, service-account-token. With
    `rotation_period` the server rotates the secret on schedule, keeping the previous version valid
    for `grace_period`. Give the fields, or a ready proto as `secret=`.
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
    return _Unary(_SECRETS, "CreateSecret", secret_pb2.CreateSecretRequest(secret=secret), attrgetter("secret"))


def _get_secret(name: str, *, namespace: str = "default") -> _Unary[Secret]:
    """Return the secret `namespace/name`; without the read-data permission, `data` is empty."""
    request = secret_pb2.GetSecretRequest(namespace=namespace, name=name)
    return _Unary(_SECRETS, "GetSecret", request, attrgetter("secret"))


def _list_secrets(*, namespace: str = "", label_selector: str = "", page_size: int = 0) -> _List[Secret]:
    """Iterate over the secrets (all namespaces the caller may see when `namespace` is empty)
    matching `label_selector` (`k=v,k2!=v2,k3`), fetching `page_size` at a time."""
    request = secret_pb2.ListSecretsRequest(namespace=namespace, label_selector=label_selector, page_size=page_size)
    return _List(_SECRETS, "ListSecrets", request, "secrets")


def _update_secret(
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
) -> _Unary[Secret]:
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
    return _Unary(_SECRETS, "UpdateSecret", request, attrgetter("secret"))


def _delete_secret(name: str, *, namespace: str = "default", etag: str = "") -> _Unary[None]:
    """Delete the secret. With `etag`, only if it still matches."""
    request = secret_pb2.DeleteSecretRequest(namespace=namespace, name=name, etag=etag)
    return _Unary(_SECRETS, "DeleteSecret", request, _none)


def _rotate_secret(
    name: str, *, namespace: str = "default", data: Data | None = None, grace_period: Duration | None = None
) -> _Unary[Secret]:
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
    return _Unary(_SECRETS, "RotateSecret", request, attrgetter("secret"))


def _watch_secrets(
    *,
    namespace: str = "",
    label_selector: str = "",
    since_revision: int = 0,
    send_initial: bool = False,
    on_relist: Callable[[], object] | None = None,
) -> _Watch[secret_pb2.WatchSecretsResponse]:
    """Watch secrets: `WatchSecretsResponse` events, resumed transparently.

    See `WatchStream` for resumption and relisting (`on_relist`).
    """
    request = secret_pb2.WatchSecretsRequest(
        namespace=namespace, label_selector=label_selector, since_revision=since_revision, send_initial=send_initial
    )
    return _Watch(_SECRETS, "WatchSecrets", request, on_relist)


def _create_workload(
    name: str | None = None,
    *,
    namespace: str = "default",
    node_name: str = "",
    service_account: str = "",
    secrets: Iterable[str] | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    workload: Workload | None = None,
) -> _Unary[Workload]:
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
    return _Unary(_WORKLOADS, "CreateWorkload", request, attrgetter("workload"))


def _get_workload(name: str, *, namespace: str = "default") -> _Unary[Workload]:
    """Return the workload `namespace/name`."""
    request = workload_pb2.GetWorkloadRequest(namespace=namespace, name=name)
    return _Unary(_WORKLOADS, "GetWorkload", request, attrgetter("workload"))


def _list_workloads(*, namespace: str = "", label_selector: str = "", page_size: int = 0) -> _List[Workload]:
    """Iterate over the workloads (all namespaces the caller may see when `namespace` is empty)
    matching `label_selector` (`k=v,k2!=v2,k3`), fetching `page_size` at a time."""
    request = workload_pb2.ListWorkloadsRequest(
        namespace=namespace, label_selector=label_selector, page_size=page_size
    )
    return _List(_WORKLOADS, "ListWorkloads", request, "workloads")


def _update_workload(
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
) -> _Unary[Workload]:
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
    return _Unary(_WORKLOADS, "UpdateWorkload", request, attrgetter("workload"))


def _delete_workload(name: str, *, namespace: str = "default", etag: str = "") -> _Unary[None]:
    """Delete the workload. With `etag`, only if it still matches."""
    request = workload_pb2.DeleteWorkloadRequest(namespace=namespace, name=name, etag=etag)
    return _Unary(_WORKLOADS, "DeleteWorkload", request, _none)


def _watch_workloads(
    *,
    namespace: str = "",
    label_selector: str = "",
    since_revision: int = 0,
    send_initial: bool = False,
    on_relist: Callable[[], object] | None = None,
) -> _Watch[workload_pb2.WatchWorkloadsResponse]:
    """Watch workloads: `WatchWorkloadsResponse` events, resumed transparently.

    See `WatchStream` for resumption and relisting (`on_relist`).
    """
    request = workload_pb2.WatchWorkloadsRequest(
        namespace=namespace, label_selector=label_selector, since_revision=since_revision, send_initial=send_initial
    )
    return _Watch(_WORKLOADS, "WatchWorkloads", request, on_relist)


def _review_token(token: str, *, audiences: Iterable[str] = ()) -> _Unary[token_pb2.ReviewTokenResponse]:
    """Ask whether a bearer token is valid (for `audiences`, if given) and whose it is.

    Returns the response: `authenticated`, `username`, `uid`, `groups`, `audiences`,
    `expire_time`, and `reason` when it is not valid.
    """
    request = token_pb2.ReviewTokenRequest(token=token, audiences=_strings(audiences, "audiences"))
    return _Unary(_TOKENS, "ReviewToken", request, _itself)


def _get_public_keys() -> _Unary[dict[str, Any]]:
    """Return the JWKS (as a dict) with the keys that verify the server's tokens offline."""
    return _Unary(_TOKENS, "GetPublicKeys", token_pb2.GetPublicKeysRequest(), _jwks)


def _jwks(response: token_pb2.GetPublicKeysResponse) -> dict[str, Any]:
    return json.loads(response.jwks_json)


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


def _secret_type(value: int | str) -> int:
    if isinstance(value, str):
        short = value.strip().upper().replace("-", "_").removeprefix("SECRET_TYPE_")
        if short != "UNSPECIFIED" and f"SECRET_TYPE_{short}" in SecretType.keys():
            return SecretType.Value(f"SECRET_TYPE_{short}")
    elif value in SecretType.values():
        return value
    names = ", ".join(n.removeprefix("SECRET_TYPE_").lower().replace("_", "-") for n in SecretType.keys()[1:])
    raise ValueError(f"unknown secret type {value!r}; use one of {names}")


def _duration(value: Duration | None, what: str) -> duration_pb2.Duration | None:
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


# ---------------------------------------------------------------------------------------------
# Tier two: the channel, credentials, metadata and error translation.


class _Transport:
    """A blocking gRPC channel to the server with its stubs."""

    def __init__(self, config: ClientConfig) -> None:
        self._timeout = config.timeout
        self._metadata = config.metadata()
        self._channel = grpc.secure_channel(config.server, config.credentials(), options=config.channel_options())
        self._stubs = {name: stub(self._channel) for name, stub in _STUBS.items()}

    def unary(self, service: str, rpc: str, request: Message) -> Any:
        try:
            return getattr(self._stubs[service], rpc)(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e

    def stream(self, service: str, rpc: str, request: Message) -> Any:
        """Starts a server-streaming call: an iterator of responses that also has `cancel()`."""
        return getattr(self._stubs[service], rpc)(request, metadata=self._metadata)

    def close(self) -> None:
        self._channel.close()


class _AsyncTransport:
    """An asyncio gRPC channel to the server with its stubs.

    The channel is opened on first use, so that a client may be made before its event loop runs.
    """

    def __init__(self, config: ClientConfig) -> None:
        self._server = config.server
        self._timeout = config.timeout
        self._metadata = config.metadata()
        self._credentials = config.credentials()
        self._options = config.channel_options()
        self._channel: grpc.aio.Channel | None = None
        self._stubs: dict[str, Any] = {}

    def _stub(self, service: str) -> Any:
        if self._channel is None:
            self._channel = grpc.aio.secure_channel(self._server, self._credentials, options=self._options)
            self._stubs = {name: stub(self._channel) for name, stub in _STUBS.items()}
        return self._stubs[service]

    async def unary(self, service: str, rpc: str, request: Message) -> Any:
        try:
            return await getattr(self._stub(service), rpc)(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e

    def stream(self, service: str, rpc: str, request: Message) -> Any:
        """Starts a server-streaming call (`grpc.aio.UnaryStreamCall`)."""
        return getattr(self._stub(service), rpc)(request, metadata=self._metadata)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


# ---------------------------------------------------------------------------------------------
# Watch streams that resume by themselves.


class _Resume:
    """Where a watch reconnects after its stream breaks, and how long it waits first.

    Shared by the blocking and the asyncio stream; it does no I/O.
    """

    def __init__(self, request: Any) -> None:
        self._request = request
        self._connected = False
        self.revision = int(request.since_revision)
        # True from connecting with send_initial until its SYNCED: resuming mid-listing is not
        # possible, so a break there restarts the listing.
        self._listing = bool(request.send_initial)
        self._listing_started = self._listing
        self._yielded = False
        self._attempt = 0

    def request(self) -> Any:
        """The request for the next connection."""
        request = type(self._request)()
        request.CopyFrom(self._request)
        if self._connected:
            request.send_initial = self._listing
            request.since_revision = 0 if self._listing else self.revision
        self._connected = True
        return request

    def received(self, event: Any) -> bool:
        """Records an event about to be yielded; True if it begins a relisting."""
        if event.revision:
            self.revision = event.revision
        if event.type == EventType.EVENT_TYPE_SYNCED:
            self._listing = False
        if not self._listing:  # a listing that keeps breaking must not retry at full speed
            self._attempt = 0
        # A listing the caller did not ask for (compaction, or a listing that broke and restarts).
        relisting = self._listing_started and (self._yielded or not self._request.send_initial)
        self._listing_started = False
        self._yielded = True
        return relisting

    def broken(self, error: SatchelError | None) -> float | None:
        """Seconds to wait before reconnecting after the stream ended (`error` None: the server
        closed it cleanly), or None when the error is final."""
        if isinstance(error, RevisionCompactedError):
            self._listing = True
        elif error is not None and error.code not in _RESUMABLE:
            return None
        elif self.revision == 0:
            # since_revision=0 means "from now": with no revision learned yet, only a
            # listing is sure to miss nothing that happened while disconnected.
            self._listing = True
        if self._listing:
            self._listing_started = True
        delay = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**self._attempt))
        self._attempt += 1
        return delay


class WatchStream(Generic[E]):
    """An endless iterator of watch events (`WatchXResponse`) that resumes by itself.

    It remembers the revision of the last event, BOOKMARK and SYNCED included. When the stream
    breaks with UNAVAILABLE or RESOURCE_EXHAUSTED, or the server ends it, it reconnects with
    `since_revision` set to that revision, after a backoff with full jitter (0.1 s doubling up to
    10 s, reset by every event): no event is lost or repeated.

    When the server no longer keeps that history (OUT_OF_RANGE, reason REVISION_COMPACTED), or
    the stream broke before any revision was learned, it relists: it reconnects with `send_initial` and yields every matching object as ADDED, then
    SYNCED, then live events. Events were missed in between, DELETED ones among them, so the caller
    must rebuild its state from that listing: objects not in it are gone. `on_relist`, if given, is
    called just before the first event of such a listing (also when a listing breaks before its
    SYNCED and starts over), e.g. `on_relist=state.clear`.

    Any other error ends the iteration with its typed exception (`PermissionDeniedError`, ...).
    `close()`, or leaving a `with` block, cancels the call and ends the iteration; it may be
    called from another thread.
    """

    def __init__(self, transport: _Transport, watch: _Watch[E]) -> None:
        self._transport = transport
        self._watch = watch
        self._resume = _Resume(watch.request)
        self._call: Any = None
        self._closed = threading.Event()
        self._lock = threading.Lock()

    @property
    def revision(self) -> int:
        """The revision of the last event received (or the `since_revision` asked for)."""
        return self._resume.revision

    def __iter__(self) -> WatchStream[E]:
        return self

    def __next__(self) -> E:
        while not self._closed.is_set():
            with self._lock:
                if self._closed.is_set():
                    break
                if self._call is None:
                    self._call = self._transport.stream(self._watch.service, self._watch.rpc, self._resume.request())
                call = self._call
            try:
                event = next(call)
            except StopIteration:
                delay = self._resume.broken(None)
            except grpc.RpcError as e:
                if self._closed.is_set():
                    break
                error = from_rpc_error(e)
                delay = self._resume.broken(error)
                if delay is None:
                    self.close()
                    raise error from e
            else:
                if self._resume.received(event) and self._watch.on_relist is not None:
                    self._watch.on_relist()
                return typing.cast(E, event)
            self._call = None
            self._closed.wait(delay)
        raise StopIteration

    def close(self) -> None:
        """Cancel the call and end the iteration."""
        with self._lock:
            self._closed.set()
            if self._call is not None:
                self._call.cancel()

    def __enter__(self) -> WatchStream[E]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncWatchStream(Generic[E]):
    """The asyncio form of `WatchStream` (`async for`, `aclose()`, `async with`); the same rules."""

    def __init__(self, transport: _AsyncTransport, watch: _Watch[E]) -> None:
        self._transport = transport
        self._watch = watch
        self._resume = _Resume(watch.request)
        self._call: Any = None
        self._closed = False
        self._wake = asyncio.Event()

    @property
    def revision(self) -> int:
        """The revision of the last event received (or the `since_revision` asked for)."""
        return self._resume.revision

    def __aiter__(self) -> AsyncWatchStream[E]:
        return self

    async def __anext__(self) -> E:
        while not self._closed:
            if self._call is None:
                self._call = self._transport.stream(self._watch.service, self._watch.rpc, self._resume.request())
            call = self._call
            try:
                event = await call.read()
            except asyncio.CancelledError:
                call.cancel()
                task = asyncio.current_task()
                if self._closed and task is not None and not task.cancelling():
                    break  # aclose() from another task cancelled the read
                raise
            except grpc.RpcError as e:
                if self._closed:
                    break
                error = from_rpc_error(e)
                delay = self._resume.broken(error)
                if delay is None:
                    await self.aclose()
                    raise error from e
            else:
                if event is not grpc.aio.EOF:
                    if self._resume.received(event) and self._watch.on_relist is not None:
                        result = self._watch.on_relist()
                        if inspect.isawaitable(result):
                            await result
                    return typing.cast(E, event)
                delay = self._resume.broken(None)
            self._call = None
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Cancel the call and end the iteration."""
        self._closed = True
        self._wake.set()
        if self._call is not None:
            self._call.cancel()

    async def __aenter__(self) -> AsyncWatchStream[E]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


# ---------------------------------------------------------------------------------------------
# Turning builders into methods.


def _method(function: Callable[..., Any], build: Callable[..., Any], returns: Any) -> Any:
    """Gives `function` the name, documentation and signature (with `self`) of `build`."""
    name = build.__name__.removeprefix("_")
    function.__name__ = function.__qualname__ = name
    function.__doc__ = build.__doc__
    signature = inspect.signature(build)
    self = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    function.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[self, *signature.parameters.values()], return_annotation=returns
    )
    return function


def _result_type(build: Callable[..., Any]) -> Any:
    return typing.get_args(typing.get_type_hints(build)["return"])[0]


def _unary(build: Callable[P, _Unary[R]]) -> Callable[Concatenate[Client, P], R]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> R:
        call = build(*args, **kwargs)
        return call.result(self._transport.unary(call.service, call.rpc, call.request))

    return _method(method, build, _result_type(build))


def _async_unary(build: Callable[P, _Unary[R]]) -> Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, R]]:
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
        call = build(*args, **kwargs)
        return call.result(await self._transport.unary(call.service, call.rpc, call.request))

    return _method(method, build, _result_type(build))


def _list(build: Callable[P, _List[R]]) -> Callable[Concatenate[Client, P], Iterator[R]]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[R]:
        call = build(*args, **kwargs)
        return _pages(self._transport, call)

    return _method(method, build, Iterator[_result_type(build)])  # type: ignore[misc]


def _pages(transport: _Transport, call: _List[R]) -> Iterator[R]:
    while True:
        response = transport.unary(call.service, call.rpc, call.request)
        yield from getattr(response, call.items)
        if not response.next_page_token:
            return
        call.request.page_token = response.next_page_token


def _async_list(build: Callable[P, _List[R]]) -> Callable[Concatenate[AsyncClient, P], AsyncIterator[R]]:
    def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> AsyncIterator[R]:
        call = build(*args, **kwargs)
        return _async_pages(self._transport, call)

    return _method(method, build, AsyncIterator[_result_type(build)])  # type: ignore[misc]


async def _async_pages(transport: _AsyncTransport, call: _List[R]) -> AsyncIterator[R]:
    while True:
        response = await transport.unary(call.service, call.rpc, call.request)
        for item in getattr(response, call.items):
            yield item
        if not response.next_page_token:
            return
        call.request.page_token = response.next_page_token


def _watch(build: Callable[P, _Watch[E]]) -> Callable[Concatenate[Client, P], WatchStream[E]]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> WatchStream[E]:
        stream = WatchStream(self._transport, build(*args, **kwargs))
        self._streams.add(stream)
        return stream

    return _method(method, build, WatchStream[_result_type(build)])  # type: ignore[misc]


def _async_watch(build: Callable[P, _Watch[E]]) -> Callable[Concatenate[AsyncClient, P], AsyncWatchStream[E]]:
    def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> AsyncWatchStream[E]:
        stream = AsyncWatchStream(self._transport, build(*args, **kwargs))
        self._streams.add(stream)
        return stream

    return _method(method, build, AsyncWatchStream[_result_type(build)])  # type: ignore[misc]


def _config(config: ClientConfig | None, **fields: Any) -> ClientConfig:
    given = {name: value for name, value in fields.items() if value is not None}
    if config is None:
        return ClientConfig(**{"server": "", "ca": "", "cert": "", "key": "", **given})
    return dataclasses.replace(config, **given)


# ---------------------------------------------------------------------------------------------
# The clients.


class Client:
    """A blocking Satchel client over one gRPC channel; safe to share between threads.

    Build it from a `ClientConfig`, from keyword arguments (`Client(server="localhost:7443",
    ca=..., cert=..., key=...)`) or from the environment (`Client.from_env()`), and close it (or
    use it as a context manager). Failed calls raise `SatchelError` subclasses.
    """

    def __init__(
        self,
        config: ClientConfig | None = None,
        *,
        server: str | None = None,
        ca: str | PathLike[str] | None = None,
        cert: str | PathLike[str] | None = None,
        key: str | PathLike[str] | None = None,
        token: str | None = None,
        timeout: float | None = None,
    ) -> None:
        self.config = _config(config, server=server, ca=ca, cert=cert, key=key, token=token, timeout=timeout)
        self._transport = _Transport(self.config)
        self._streams: weakref.WeakSet[WatchStream[Any]] = weakref.WeakSet()

    @classmethod
    def from_env(cls, **overrides: Any) -> Client:
        """A client configured by `ClientConfig.from_env(**overrides)`."""
        return cls(ClientConfig.from_env(**overrides))

    def close(self) -> None:
        """Close open watches and the channel."""
        for stream in list(self._streams):
            stream.close()
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    create_service_account = _unary(_create_service_account)
    get_service_account = _unary(_get_service_account)
    list_service_accounts = _list(_list_service_accounts)
    update_service_account = _unary(_update_service_account)
    delete_service_account = _unary(_delete_service_account)
    watch_service_accounts = _watch(_watch_service_accounts)
    issue_certificate = _unary(_issue_certificate)

    create_secret = _unary(_create_secret)
    get_secret = _unary(_get_secret)
    list_secrets = _list(_list_secrets)
    update_secret = _unary(_update_secret)
    delete_secret = _unary(_delete_secret)
    rotate_secret = _unary(_rotate_secret)
    watch_secrets = _watch(_watch_secrets)

    create_workload = _unary(_create_workload)
    get_workload = _unary(_get_workload)
    list_workloads = _list(_list_workloads)
    update_workload = _unary(_update_workload)
    delete_workload = _unary(_delete_workload)
    watch_workloads = _watch(_watch_workloads)

    review_token = _unary(_review_token)
    get_public_keys = _unary(_get_public_keys)


class AsyncClient:
    """An asyncio Satchel client over one `grpc.aio` channel, bound to the loop that first uses it.

    The same methods as `Client`: unary ones are coroutines, `list_*` return async iterators and
    `watch_*` return `AsyncWatchStream`s. Close it with `await client.close()` or `async with`.
    """

    def __init__(
        self,
        config: ClientConfig | None = None,
        *,
        server: str | None = None,
        ca: str | PathLike[str] | None = None,
        cert: str | PathLike[str] | None = None,
        key: str | PathLike[str] | None = None,
        token: str | None = None,
        timeout: float | None = None,
    ) -> None:
        self.config = _config(config, server=server, ca=ca, cert=cert, key=key, token=token, timeout=timeout)
        self._transport = _AsyncTransport(self.config)
        self._streams: weakref.WeakSet[AsyncWatchStream[Any]] = weakref.WeakSet()

    @classmethod
    def from_env(cls, **overrides: Any) -> AsyncClient:
        """A client configured by `ClientConfig.from_env(**overrides)`."""
        return cls(ClientConfig.from_env(**overrides))

    async def close(self) -> None:
        """Close open watches and the channel."""
        for stream in list(self._streams):
            await stream.aclose()
        await self._transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    create_service_account = _async_unary(_create_service_account)
    get_service_account = _async_unary(_get_service_account)
    list_service_accounts = _async_list(_list_service_accounts)
    update_service_account = _async_unary(_update_service_account)
    delete_service_account = _async_unary(_delete_service_account)
    watch_service_accounts = _async_watch(_watch_service_accounts)
    issue_certificate = _async_unary(_issue_certificate)

    create_secret = _async_unary(_create_secret)
    get_secret = _async_unary(_get_secret)
    list_secrets = _async_list(_list_secrets)
    update_secret = _async_unary(_update_secret)
    delete_secret = _async_unary(_delete_secret)
    rotate_secret = _async_unary(_rotate_secret)
    watch_secrets = _async_watch(_watch_secrets)

    create_workload = _async_unary(_create_workload)
    get_workload = _async_unary(_get_workload)
    list_workloads = _async_list(_list_workloads)
    update_workload = _async_unary(_update_workload)
    delete_workload = _async_unary(_delete_workload)
    watch_workloads = _async_watch(_watch_workloads)

    review_token = _async_unary(_review_token)
    get_public_keys = _async_unary(_get_public_keys)
