"""The resource model: the kinds, their field rules and validation, label
selectors. Pure functions of protos, no I/O: every other room may use it."""

from ._fields import (
    DEFAULT_NAMESPACE,
    DEFAULT_SERVICE_ACCOUNT,
    MUTABLE_PATHS,
    TOKEN,
    apply_mask,
    check_namespace_and_name,
    mask_paths,
    namespace_or_default,
    prepare_create,
    prepare_update,
    same_content,
    set_data_keys,
    token_secret_name,
    visible,
)
from ._kinds import KINDS, SECRETS, SERVICE_ACCOUNTS, WORKLOADS, Kind, R, Resource, copy_of, kind_name, kind_of
from ._labels import LabelSelector, Requirement, SelectorLimits
from ._references import BINDING_KINDS, Key, binding_changed, references
from ._rotation import DEFAULT_GRACE, MIN_PERIOD, check_grace_period, grace_of, next_due, rotated
from ._validation import MAX_OBJECT_BYTES, Violations, is_dns_label, is_dns_subdomain, shown

__all__ = [
    "BINDING_KINDS",
    "DEFAULT_GRACE",
    "DEFAULT_NAMESPACE",
    "DEFAULT_SERVICE_ACCOUNT",
    "KINDS",
    "MAX_OBJECT_BYTES",
    "MIN_PERIOD",
    "MUTABLE_PATHS",
    "SECRETS",
    "SERVICE_ACCOUNTS",
    "TOKEN",
    "WORKLOADS",
    "Key",
    "Kind",
    "LabelSelector",
    "R",
    "Requirement",
    "Resource",
    "SelectorLimits",
    "Violations",
    "apply_mask",
    "binding_changed",
    "check_grace_period",
    "check_namespace_and_name",
    "copy_of",
    "grace_of",
    "is_dns_label",
    "is_dns_subdomain",
    "kind_name",
    "kind_of",
    "mask_paths",
    "namespace_or_default",
    "next_due",
    "prepare_create",
    "prepare_update",
    "references",
    "rotated",
    "same_content",
    "set_data_keys",
    "shown",
    "token_secret_name",
    "visible",
]
