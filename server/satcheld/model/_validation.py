"""Checks of names, labels and secret contents, collected into one InvalidArgument.

Each check appends (field, why) to a Violations list, so that a caller learns
every bad field of a request at once. Messages never quote secret values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from satchel.v1 import secret_pb2

from ..errors import InvalidArgument

MAX_SECRET_BYTES = 1024 * 1024
MAX_ANNOTATION_BYTES = 256 * 1024
# Every object as stored, serialized. The rules per field leave the whole
# unbounded (labels have no count limit; many tiny data keys cost more on the
# wire than they count), and an object must fit with room to spare in any
# response or event that carries it, under the 4 MiB message limit. etcd holds
# a Kubernetes object to the same 1.5 MiB.
MAX_OBJECT_BYTES = 1536 * 1024

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_LABEL = re.compile(_LABEL)
_DNS_SUBDOMAIN = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DATA_KEY = re.compile(r"[-._a-zA-Z0-9]+")

T = TypeVar("T")


class Violations(list[tuple[str, str]]):
    """The bad fields of one request; `raise_if_any` turns them into an error."""

    def add(self, field: str, why: str) -> None:
        self.append((field, why))

    def collect(self, check: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """`check(...)`, whose InvalidArgument is kept here rather than raised, so
        that checks done in separate steps still make one error naming every
        field; None if it failed. Its violations are kept, not its reason."""
        try:
            return check(*args, **kwargs)
        except InvalidArgument as e:
            self.extend(e.violations)
            return None

    def raise_if_any(self) -> None:
        if self:
            raise InvalidArgument(list(self))


def shown(value: str) -> str:
    """A short, printable rendering of a caller-supplied (non-secret) string, for
    messages and records: a caller never makes them long. Cut after escaping, so
    that characters JSON spells as `\\ud83d\\ude00` count as what they cost."""
    quoted = json.dumps(value)
    if len(quoted) <= 66:
        return quoted
    cut = quoted[:62]
    cut = cut[: cut.rfind("\\")] if "\\" in cut[-11:] else cut  # never half an escape
    return cut + '..."'


def is_dns_label(value: str) -> bool:
    return len(value) <= 63 and _DNS_LABEL.fullmatch(value) is not None


def is_dns_subdomain(value: str) -> bool:
    return len(value) <= 253 and _DNS_SUBDOMAIN.fullmatch(value) is not None


def check_namespace(v: Violations, field: str, value: str) -> None:
    if not is_dns_label(value):
        v.add(field, f"{shown(value)} is not a DNS-1123 label (lowercase a-z, 0-9 and '-', at most 63)")


def check_name(v: Violations, field: str, value: str) -> None:
    if not value:
        v.add(field, "is required")
    elif not is_dns_subdomain(value):
        v.add(
            field,
            f"{shown(value)} is not a DNS-1123 subdomain (lowercase a-z, 0-9, '-' and '.', at most 253)",
        )


def _check_key(v: Violations, field: str, key: str) -> None:
    prefix, slash, name = key.rpartition("/")
    if slash and not (prefix and is_dns_subdomain(prefix)):
        v.add(field, f"key {shown(key)} has a prefix that is not a DNS-1123 subdomain")
    if not (len(name) <= 63 and _QUALIFIED_NAME.fullmatch(name)):
        v.add(
            field,
            f"key {shown(key)} must be at most 63 alphanumerics with '-', '_' or '.' inside,"
            " optionally after a prefix and '/'",
        )


def check_labels(v: Violations, field: str, labels: Mapping[str, str]) -> None:
    for key, value in labels.items():
        _check_key(v, field, key)
        if value and not (len(value) <= 63 and _QUALIFIED_NAME.fullmatch(value)):
            v.add(
                field,
                f"value of {shown(key)} must be empty or at most 63 alphanumerics with '-', '_' or '.' inside",
            )


def check_annotations(v: Violations, field: str, annotations: Mapping[str, str]) -> None:
    total = 0
    for key, value in annotations.items():
        _check_key(v, field, key)
        total += len(key.encode()) + len(value.encode())
    if total > MAX_ANNOTATION_BYTES:
        v.add(field, f"annotations are {total} bytes; at most {MAX_ANNOTATION_BYTES} are allowed")


def check_data(v: Violations, field: str, data: Mapping[str, bytes]) -> None:
    """Keys become file names on nodes, so they are held to a safe alphabet."""
    total = 0
    for key, value in data.items():
        if not (len(key) <= 253 and _DATA_KEY.fullmatch(key)) or key == "." or key.startswith(".."):
            v.add(
                f"{field}[{shown(key)}]",
                "key must be 1-253 of [-._a-zA-Z0-9], not '.' and not starting with '..'",
            )
        total += len(key.encode()) + len(value)
    if total > MAX_SECRET_BYTES:
        v.add(field, f"data is {total} bytes; at most {MAX_SECRET_BYTES} are allowed")


def check_type_rules(v: Violations, field: str, secret_type: int, data: Mapping[str, bytes]) -> None:
    """The per-type key rules of DESIGN.md; values are inspected, never echoed."""
    T = secret_pb2.SecretType
    if secret_type == T.SECRET_TYPE_TLS:
        _check_tls_pair(v, field, data)
    elif secret_type == T.SECRET_TYPE_BASIC_AUTH:
        if "username" not in data and "password" not in data:
            v.add(field, "a BASIC_AUTH secret needs the key 'username' or 'password'")
    elif secret_type == T.SECRET_TYPE_DOCKER_CONFIG_JSON:
        raw = data.get(".dockerconfigjson")
        if raw is None:
            v.add(field, "a DOCKER_CONFIG_JSON secret needs the key '.dockerconfigjson'")
        else:
            try:
                json.loads(raw)
            except (ValueError, RecursionError):  # RecursionError: deeply nested arrays
                v.add(f'{field}[".dockerconfigjson"]', "is not valid JSON")


def _check_tls_pair(v: Violations, field: str, data: Mapping[str, bytes]) -> None:
    crt, key = data.get("tls.crt"), data.get("tls.key")
    if crt is None or key is None:
        v.add(field, "a TLS secret needs the keys 'tls.crt' and 'tls.key'")
        return
    try:
        certificate = x509.load_pem_x509_certificates(crt)[0]
        certificate_key = certificate.public_key()
    except ValueError:
        v.add(f'{field}["tls.crt"]', "is not a PEM certificate")
        return
    except UnsupportedAlgorithm:
        v.add(f'{field}["tls.crt"]', "holds a certificate whose key algorithm is not supported")
        return
    try:
        private_key = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        v.add(f'{field}["tls.key"]', "is not an unencrypted PEM private key")
        return
    except UnsupportedAlgorithm:
        v.add(f'{field}["tls.key"]', "holds a private key whose algorithm is not supported")
        return
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if certificate_key.public_bytes(der, public) != private_key.public_key().public_bytes(der, public):
        v.add(field, "'tls.key' does not match the certificate in 'tls.crt'")
