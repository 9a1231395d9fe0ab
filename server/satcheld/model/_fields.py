"""The field rules of each kind: defaults, output-only and derived fields,
validation of a whole object, update masks, and what a caller who may not read
secret data sees. Pure functions of protos; no I/O, no gRPC.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable

from google.protobuf import field_mask_pb2
from google.protobuf.message import Message

from satchel.v1 import meta_pb2, secret_pb2, service_account_pb2, workload_pb2

from ..errors import FailedPrecondition
from . import _kinds
from ._kinds import R, Resource, copy_of
from ._validation import (
    MAX_OBJECT_BYTES,
    Violations,
    check_annotations,
    check_data,
    check_labels,
    check_name,
    check_namespace,
    check_type_rules,
    is_dns_subdomain,
)

DEFAULT_NAMESPACE = "default"
# The largest google.protobuf.Duration: 10,000 years.
MAX_DURATION_SECONDS = 315_576_000_000
DEFAULT_SERVICE_ACCOUNT = "default"
TOKEN = secret_pb2.SECRET_TYPE_SERVICE_ACCOUNT_TOKEN
# A service account's token secret is `<name>-token`, itself a name of at most 253.
TOKEN_SECRET_SUFFIX = "-token"
MAX_SERVICE_ACCOUNT_NAME = 253 - len(TOKEN_SECRET_SUFFIX)


_META_PATHS = ("metadata.labels", "metadata.annotations")
# The paths an update mask may name, per kind; `*` means all of them.
MUTABLE_PATHS: dict[str, tuple[str, ...]] = {
    _kinds.SERVICE_ACCOUNTS: (*_META_PATHS, "secrets", "description"),
    _kinds.SECRETS: (*_META_PATHS, "type", "data", "immutable", "rotation", "rotation.period", "rotation.grace_period"),
    _kinds.WORKLOADS: (*_META_PATHS, "node_name", "service_account", "secrets"),
}
_WILDCARD_PATHS = {
    kind: tuple(p for p in paths if not p.startswith("rotation.")) for kind, paths in MUTABLE_PATHS.items()
}

Secret = secret_pb2.Secret
ServiceAccount = service_account_pb2.ServiceAccount
Workload = workload_pb2.Workload


def namespace_or_default(namespace: str) -> str:
    return namespace or DEFAULT_NAMESPACE


def check_namespace_and_name(namespace: str, name: str | None = None, prefix: str = "") -> None:
    """For requests that name an object (or, with no `name`, just a namespace)."""
    v = Violations()
    check_namespace(v, f"{prefix}namespace", namespace)
    if name is not None:
        check_name(v, f"{prefix}name", name)
    v.raise_if_any()


def clear_output_only(obj: Resource) -> None:
    """Drops whatever the caller may not set; the server fills it in."""
    meta: meta_pb2.ObjectMeta = obj.metadata
    for field in ("uid", "resource_version", "etag", "create_time", "update_time"):
        meta.ClearField(field)
    if isinstance(obj, ServiceAccount):
        for field in ("username", "spiffe_id", "email"):
            obj.ClearField(field)
    elif isinstance(obj, Secret):
        for field in ("version", "previous_version_expire_time", "data_keys"):
            obj.ClearField(field)
        obj.rotation.ClearField("next_rotate_time")
        obj.rotation.ClearField("last_rotate_time")
        if not obj.rotation.ListFields():
            obj.ClearField("rotation")


def validate(obj: Resource) -> None:
    """Raises InvalidArgument naming every bad field of `obj`."""
    f = _kinds.kind_of(obj).field
    v = Violations()
    meta = obj.metadata
    check_namespace(v, f"{f}.metadata.namespace", meta.namespace)
    check_name(v, f"{f}.metadata.name", meta.name)
    check_labels(v, f"{f}.metadata.labels", meta.labels)
    check_annotations(v, f"{f}.metadata.annotations", meta.annotations)
    if isinstance(obj, ServiceAccount):
        for i, ref in enumerate(obj.secrets):
            check_name(v, f"{f}.secrets[{i}].name", ref.name)
        if len(obj.description) > 1024:
            v.add(f"{f}.description", "must be at most 1024 characters")
    elif isinstance(obj, Secret):
        if obj.type not in secret_pb2.SecretType.values():
            v.add(f"{f}.type", f"unknown secret type {obj.type}")
        check_data(v, f"{f}.data", obj.data)
        check_type_rules(v, f"{f}.data", obj.type, obj.data)
        if obj.service_account:
            check_name(v, f"{f}.service_account", obj.service_account)
        elif obj.type == TOKEN:
            v.add(f"{f}.service_account", "is required for a token secret: the account whose token it holds")
        for part in ("period", "grace_period"):
            if obj.rotation.HasField(part):
                d = getattr(obj.rotation, part)
                if d.seconds < 0 or d.nanos < 0:
                    v.add(f"{f}.rotation.{part}", "must not be negative")
                elif d.seconds > MAX_DURATION_SECONDS or d.nanos >= 1_000_000_000:
                    # Checked before any arithmetic: timedelta overflows long before int64 does.
                    v.add(f"{f}.rotation.{part}", f"is not a valid duration (at most {MAX_DURATION_SECONDS}s)")
                elif part == "period" and d.seconds < 60:
                    v.add(f"{f}.rotation.period", "must be at least 1m")
                elif part == "period" and obj.type != secret_pb2.SECRET_TYPE_SERVICE_ACCOUNT_TOKEN:
                    # The server can make a new token, but no value of any other type.
                    v.add(
                        f"{f}.rotation.period",
                        "only token secrets are rotated by the server; rotate other types with RotateSecret",
                    )
    elif isinstance(obj, Workload):
        check_name(v, f"{f}.node_name", obj.node_name)
        check_name(v, f"{f}.service_account", obj.service_account)
        for i, name in enumerate(obj.secrets):
            check_name(v, f"{f}.secrets[{i}]", name)
    size = obj.ByteSize()
    if size > MAX_OBJECT_BYTES:
        v.add(
            f,
            f"is {size} bytes serialized, labels, annotations and data included;"
            f" at most {MAX_OBJECT_BYTES} are allowed",
        )
    v.raise_if_any()


def prepare_create(obj: Resource, *, trust_domain: str) -> None:
    """Turns a caller's object into the one to store (defaults, derived fields)."""
    clear_output_only(obj)
    meta = obj.metadata
    meta.namespace = namespace_or_default(meta.namespace)
    if isinstance(obj, Secret):
        if obj.type == secret_pb2.SECRET_TYPE_UNSPECIFIED:
            obj.type = secret_pb2.SECRET_TYPE_OPAQUE
        obj.version = 1
        set_data_keys(obj)
    elif isinstance(obj, Workload):
        obj.service_account = obj.service_account or DEFAULT_SERVICE_ACCOUNT
    elif isinstance(obj, ServiceAccount):
        set_identity(obj, trust_domain)
    v = Violations()
    if isinstance(obj, Secret) and obj.type == TOKEN and obj.data:
        v.add("secret.data", "the server fills in a token secret's data: give only its service_account")
    if isinstance(obj, Secret) and obj.type != TOKEN and obj.service_account:
        # On create only: secrets stored before this rule keep the field they cannot unset.
        v.add("secret.service_account", "only token secrets name a service account")
    if isinstance(obj, ServiceAccount) and len(meta.name) > MAX_SERVICE_ACCOUNT_NAME and is_dns_subdomain(meta.name):
        v.add(
            "service_account.metadata.name",
            f"must be at most {MAX_SERVICE_ACCOUNT_NAME} characters, so that its token secret"
            f" (the name and {TOKEN_SECRET_SUFFIX!r}) has a valid name",
        )
    v.collect(validate, obj)
    v.raise_if_any()


def token_secret_name(account: str) -> str:
    """The name of the token secret made with service account `account`."""
    return account + TOKEN_SECRET_SUFFIX


def set_identity(sa: ServiceAccount, trust_domain: str) -> None:
    ns, name = sa.metadata.namespace, sa.metadata.name
    sa.username = f"system:serviceaccount:{ns}:{name}"
    sa.spiffe_id = f"spiffe://{trust_domain}/ns/{ns}/sa/{name}"
    sa.email = f"{ns}+{name}@serviceaccounts.{trust_domain}"


def set_data_keys(secret: Secret) -> None:
    del secret.data_keys[:]
    secret.data_keys.extend(secret_pb2.DataKey(name=k, size=len(v)) for k, v in sorted(secret.data.items()))


def visible(obj: R, *, with_data: bool) -> R:
    """`obj` as a caller sees it: itself, or for a caller who may not read secret
    data a copy with the shape (`data_keys`) and no values. Never changes `obj`,
    which may be an object the store published to other listeners."""
    if with_data or not isinstance(obj, Secret) or not obj.data:
        return obj
    shown = copy_of(obj)
    shown.ClearField("data")
    return shown


def mask_paths(kind: str, request_obj: Resource, mask: field_mask_pb2.FieldMask) -> list[str]:
    """The update paths a request names, checked against what may change."""
    field = _kinds.KINDS[kind].field
    allowed = MUTABLE_PATHS[kind]
    if not mask.paths:
        return [p for p in _WILDCARD_PATHS[kind] if _is_set(request_obj, p)]
    if list(mask.paths) == ["*"]:
        return list(_WILDCARD_PATHS[kind])
    v = Violations()
    for path in mask.paths:
        if path not in allowed:
            v.add("update_mask", f"{path!r} cannot be updated on a {field}; allowed: {', '.join(allowed)} or '*'")
    v.raise_if_any()
    return list(dict.fromkeys(mask.paths))


def _is_set(obj: Resource, path: str) -> bool:
    *parents, leaf = path.split(".")
    for p in parents:
        if not obj.HasField(p):
            return False
        obj = getattr(obj, p)
    value = getattr(obj, leaf)
    descriptor = obj.DESCRIPTOR.fields_by_name[leaf]
    if descriptor.message_type is not None and not descriptor.is_repeated:
        return obj.HasField(leaf)
    return bool(value)


def apply_mask(current: R, request_obj: R, paths: Iterable[str]) -> R:
    """A copy of `current` with each path replaced by the request's value."""
    updated = copy_of(current)
    for path in paths:
        *parents, leaf = path.split(".")
        src: Message = request_obj
        dst: Message = updated
        for p in parents:
            src, dst = getattr(src, p), getattr(dst, p)
        descriptor = dst.DESCRIPTOR.fields_by_name[leaf]
        if descriptor.is_repeated:
            dst.ClearField(leaf)
            target = getattr(dst, leaf)
            source = getattr(src, leaf)
            entry = descriptor.message_type  # a map field's entry type
            if hasattr(target, "keys") and entry is not None:
                if entry.fields_by_name["value"].message_type is None:
                    target.update(source)
                else:
                    for k, val in source.items():
                        target[k].CopyFrom(val)
            else:
                target.extend(source)
        elif descriptor.message_type is not None:
            if src.HasField(leaf):
                getattr(dst, leaf).CopyFrom(getattr(src, leaf))
            else:
                dst.ClearField(leaf)
        else:
            setattr(dst, leaf, getattr(src, leaf))
    return updated


def prepare_update(current: R, updated: R) -> None:
    """Kind rules for an update: immutability, version bumps, derived fields.
    Raises InvalidArgument naming every bad field at once."""
    v = Violations()
    if isinstance(current, Secret) and isinstance(updated, Secret):
        _prepare_secret_update(current, updated, v)
    elif isinstance(updated, Workload):
        # As on create: an empty service account (e.g. `*` without one) means `default`.
        updated.service_account = updated.service_account or DEFAULT_SERVICE_ACCOUNT
    v.collect(validate, updated)
    v.raise_if_any()


def _prepare_secret_update(current: Secret, updated: Secret, v: Violations) -> None:
    # The rotation times are output only: a mask naming `rotation` (or `*`)
    # replaces the period and grace period, never the server's schedule.
    for field in ("next_rotate_time", "last_rotate_time"):
        if current.rotation.HasField(field):
            getattr(updated.rotation, field).CopyFrom(getattr(current.rotation, field))
        elif updated.HasField("rotation"):
            updated.rotation.ClearField(field)
    if updated.rotation.HasField("period") and updated.rotation.period != current.rotation.period:
        # A new period applies from now, if that is sooner than the rotation already due.
        due = _now() + updated.rotation.period.ToTimedelta()
        scheduled = updated.rotation.next_rotate_time
        if not updated.rotation.HasField("next_rotate_time") or scheduled.ToDatetime(tzinfo=datetime.UTC) > due:
            scheduled.FromDatetime(due)
    if updated.HasField("rotation") and not updated.rotation.ListFields():
        updated.ClearField("rotation")
    if updated.type == secret_pb2.SECRET_TYPE_UNSPECIFIED:
        updated.type = current.type
    if updated.type != current.type:
        v.add("secret.type", "the type of a secret cannot change")
    data_changed = dict(updated.data) != dict(current.data)
    if current.immutable and not v:  # a bad request is INVALID_ARGUMENT first
        if data_changed:
            raise FailedPrecondition(
                f"secret {current.metadata.namespace}/{current.metadata.name} is immutable: its data cannot change",
                reason="SECRET_IMMUTABLE",
            )
        if not updated.immutable:
            raise FailedPrecondition(
                f"secret {current.metadata.namespace}/{current.metadata.name} is immutable: it cannot be made mutable",
                reason="SECRET_IMMUTABLE",
            )
    if data_changed:
        if current.type == secret_pb2.SECRET_TYPE_SERVICE_ACCOUNT_TOKEN:
            v.add("secret.data", "token secrets are changed with RotateSecret")
        updated.version = current.version + 1
        set_data_keys(updated)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def same_content(a: R, b: R) -> bool:
    """Whether an update would change nothing (timestamps and versions aside)."""
    x, y = copy_of(a), copy_of(b)
    for m in (x, y):
        m.metadata.ClearField("update_time")
        m.metadata.ClearField("etag")
        m.metadata.ClearField("resource_version")
    return x.SerializeToString(deterministic=True) == y.SerializeToString(deterministic=True)
