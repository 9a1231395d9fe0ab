"""The tree a node's root should hold, computed from what the streams said (no I/O).

`desired()` is the whole of "what belongs on disk": for each workload bound to the node, its
`serviceaccount/` leaf (the account's token secret and certificate) and one `secrets/<name>/` leaf
per secret it mounts or its account lists. Names are checked again here, because a path is
made of them: a compromised or buggy server must not make the agent write outside its root.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from satchel.v1.secret_pb2 import Secret, SecretType
from satchel.v1.service_account_pb2 import ServiceAccount
from satchel.v1.workload_pb2 import Workload

Key = tuple[str, str]  # (namespace, name)
Path = tuple[str, ...]  # relative to the root, one name per level

SERVICE_ACCOUNT_DIR = "serviceaccount"
SECRETS_DIR = "secrets"
STATE_DIR = ".satchel-agent"
# The token secret's keys that land in serviceaccount/, beside the certificate and its key.
TOKEN_KEYS = ("token", "ca.crt", "namespace")
TLS_CERT, TLS_KEY = "tls.crt", "tls.key"

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DATA_KEY = re.compile(r"[-._a-zA-Z0-9]+")


def is_namespace(name: str) -> bool:
    return _DNS_LABEL.fullmatch(name) is not None


def is_name(name: str) -> bool:
    return len(name) <= 253 and _DNS_SUBDOMAIN.fullmatch(name) is not None


def is_data_key(key: str) -> bool:
    """A key usable as a file name: never `.`, `..`, a `..`-prefixed name (the writer's own
    `..data`, `..data_tmp` and timestamped directories) nor anything with a `/`."""
    return len(key) <= 253 and _DATA_KEY.fullmatch(key) is not None and key != "." and not key.startswith("..")


@dataclass(frozen=True)
class Credential:
    """An account's certificate chain and the key made for it on this node."""

    certificate_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)
    expire_time: float  # Unix seconds
    renew_time: float  # Unix seconds: half the lifetime, with jitter
    account_version: int  # the account's resource_version it was issued for


@dataclass(frozen=True)
class Leaf:
    """One directory of files that changes atomically, and what it came from."""

    path: Path
    payload: Mapping[str, bytes] = field(repr=False)
    namespace: str
    workload: str
    secret: str  # the secret's name (for serviceaccount/, the account's token secret)
    version: int  # that secret's version
    revision: int  # the resource_version of the newest object it came from
    # What the payload was made from (objects' uids and resource_versions, the certificate):
    # the same source makes the same payload, so a pass knows a leaf it wrote is unchanged
    # without hashing or reading it, however large its files.
    source: tuple[object, ...] = ()


@dataclass(frozen=True)
class Tree:
    """What the root should hold: the workload directories and the leaves inside them."""

    workloads: frozenset[Key]
    leaves: Mapping[Path, Leaf]
    # Leaves that belong but cannot be made yet (a certificate on its way): what the disk holds
    # there stays as it is, neither rewritten nor removed.
    pending: frozenset[Path] = frozenset()


@dataclass
class Rejected:
    """What `desired` left out because its names cannot be paths (logged, never written)."""

    reasons: list[str] = field(default_factory=list)


def account_of(workload: Workload) -> str:
    return workload.service_account or "default"


def token_secret(account: ServiceAccount, secrets: Mapping[Key, Secret]) -> Secret | None:
    """The account's token secret, among the secrets it lists."""
    ns = account.metadata.namespace
    for ref in account.secrets:
        secret = secrets.get((ns, ref.name))
        if (
            secret is not None
            and secret.type == SecretType.SECRET_TYPE_SERVICE_ACCOUNT_TOKEN
            and secret.service_account == account.metadata.name
        ):
            return secret
    return None


def accounts_needed(node: str, workloads: Mapping[Key, Workload]) -> set[Key]:
    """The accounts of the workloads bound to `node`: those it needs certificates for."""
    return {(ns, account_of(w)) for (ns, _), w in workloads.items() if w.node_name == node}


def desired(
    node: str,
    workloads: Mapping[Key, Workload],
    accounts: Mapping[Key, ServiceAccount],
    secrets: Mapping[Key, Secret],
    credentials: Mapping[Key, Credential],
    rejected: Rejected | None = None,
) -> Tree:
    """The tree for `node`: a leaf appears once everything it is made of has arrived."""
    rejected = rejected if rejected is not None else Rejected()
    dirs: set[Key] = set()
    leaves: dict[Path, Leaf] = {}
    pending: set[Path] = set()
    for (ns, name), workload in workloads.items():
        if workload.node_name != node:
            continue
        if not (is_namespace(ns) and is_name(name)):
            rejected.reasons.append(f"workload {ns}/{name}: not a valid namespace and name")
            continue
        dirs.add((ns, name))
        account = accounts.get((ns, account_of(workload)))
        token = token_secret(account, secrets) if account is not None else None
        mounted = list(workload.secrets)
        if account is not None:
            mounted += [ref.name for ref in account.secrets if token is None or ref.name != token.metadata.name]
        credential = credentials.get((ns, account_of(workload)))
        path: Path = (ns, name, SERVICE_ACCOUNT_DIR)
        if account is not None and token is not None and credential is None:
            pending.add(path)
        elif account is not None and token is not None and credential is not None:
            payload = {key: token.data[key] for key in TOKEN_KEYS if key in token.data}
            payload[TLS_CERT] = credential.certificate_pem
            payload[TLS_KEY] = credential.key_pem
            revision = max(token.metadata.resource_version, account.metadata.resource_version)
            source: tuple[object, ...] = (
                token.metadata.uid,
                token.metadata.resource_version,
                credential.certificate_pem,
            )
            leaves[path] = Leaf(path, payload, ns, name, token.metadata.name, token.version, revision, source)
        for secret_name in dict.fromkeys(mounted):
            secret = secrets.get((ns, secret_name))
            if secret is None:
                continue
            if not is_name(secret_name):
                rejected.reasons.append(f"secret {ns}/{secret_name}: not a valid name")
                continue
            bad = [key for key in secret.data if not is_data_key(key)]
            if bad:
                rejected.reasons.append(f"secret {ns}/{secret_name}: {len(bad)} data key(s) cannot be file names")
                continue
            path = (ns, name, SECRETS_DIR, secret_name)
            meta = secret.metadata
            source = (meta.uid, meta.resource_version)
            leaves[path] = Leaf(
                path, dict(secret.data), ns, name, secret_name, secret.version, meta.resource_version, source
            )
    return Tree(frozenset(dirs), leaves, frozenset(pending))
