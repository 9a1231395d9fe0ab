"""`DIR/.satchel-agent/state.json`: what lets a restarted agent resume instead of relisting.

It holds each stream's last revision and the objects the agent knew at that revision, but never
a secret's value: the values are on disk already, in the leaves, and `restore` reads them back
from there (checking each against the key names and sizes the state recorded). When anything
does not add up the agent starts afresh with a listing, which is always correct, only slower.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path as FsPath
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from google.protobuf import json_format

from satchel import pki
from satchel._agent._files import Root
from satchel._agent._layout import (
    SECRETS_DIR,
    SERVICE_ACCOUNT_DIR,
    STATE_DIR,
    TLS_CERT,
    TLS_KEY,
    TOKEN_KEYS,
    Credential,
    Key,
    Path,
    account_of,
    token_secret,
)
from satchel.v1.secret_pb2 import Secret
from satchel.v1.service_account_pb2 import ServiceAccount
from satchel.v1.workload_pb2 import Workload

STATE_FILE = "state.json"
_FORMAT = 1


@dataclass
class State:
    node: str
    revisions: dict[str, int]  # per stream: "workloads", "serviceaccounts", "secrets"
    workloads: dict[Key, Workload] = field(default_factory=dict)
    accounts: dict[Key, ServiceAccount] = field(default_factory=dict)
    secrets: dict[Key, Secret] = field(default_factory=dict)  # data only once restored
    renewals: dict[Key, tuple[float, int]] = field(default_factory=dict)  # renew time, account version
    credentials: dict[Key, Credential] = field(default_factory=dict)  # only once restored


def save(root: FsPath, state: State) -> None:
    """Write the state atomically (temporary file, fsync, rename), 0600 in a 0700 directory."""
    directory = _state_dir(root)
    directory.mkdir(mode=0o700, exist_ok=True)
    document = {
        "format": _FORMAT,
        "node": state.node,
        "revisions": state.revisions,
        "workloads": [_message(w) for w in state.workloads.values()],
        "serviceaccounts": [_message(a) for a in state.accounts.values()],
        "secrets": [_message(_without_data(s)) for s in state.secrets.values()],
        "renewals": [
            {"namespace": ns, "name": name, "renew_time": t, "account_version": v}
            for (ns, name), (t, v) in state.renewals.items()
        ],
    }
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{STATE_FILE}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(document, separators=(",", ":")))  # dumps: the C encoder
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, directory / STATE_FILE)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def load(root: FsPath, node: str) -> tuple[State | None, str]:
    """The saved state, or None and why not (no file yet, another node's, unreadable)."""
    try:
        fd = os.open(_state_dir(root) / STATE_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd) as f:
            document = json.loads(f.read())
        if document.get("format") != _FORMAT:
            return None, "state.json has an unknown format"
        if document.get("node") != node:
            return None, "state.json belongs to another node"
        revisions = {k: int(v) for k, v in document["revisions"].items()}
        state = State(node, revisions)
        for item in document["workloads"]:
            w = json_format.ParseDict(item, Workload())
            state.workloads[(w.metadata.namespace, w.metadata.name)] = w
        for item in document["serviceaccounts"]:
            a = json_format.ParseDict(item, ServiceAccount())
            state.accounts[(a.metadata.namespace, a.metadata.name)] = a
        for item in document["secrets"]:
            s = json_format.ParseDict(item, Secret())
            state.secrets[(s.metadata.namespace, s.metadata.name)] = s
        for item in document["renewals"]:
            key = (item["namespace"], item["name"])
            state.renewals[key] = (float(item["renew_time"]), int(item["account_version"]))
    except FileNotFoundError:
        return None, "no state.json yet"
    except (OSError, ValueError, KeyError, TypeError, AttributeError, json_format.ParseError) as e:
        return None, f"state.json is unreadable ({type(e).__name__})"
    return state, ""


def _state_dir(root: FsPath) -> FsPath:
    """`DIR/.satchel-agent`, never through a symlink: one planted there is removed."""
    directory = root / STATE_DIR
    if directory.is_symlink():
        directory.unlink()
    return directory


def restore(state: State, root: Root) -> str:
    """Fill the state's secret values and credentials from the leaves on disk; "" when every
    secret was found whole, else why not (the credentials found are filled in either way)."""
    carriers: dict[Key, list[Path]] = {}
    for (ns, name), workload in state.workloads.items():
        if workload.node_name != state.node:
            continue
        account = state.accounts.get((ns, account_of(workload)))
        token = token_secret(account, state.secrets) if account is not None else None
        names = list(workload.secrets) + ([r.name for r in account.secrets] if account is not None else [])
        for secret_name in names:
            if token is not None and secret_name == token.metadata.name:
                carriers.setdefault((ns, secret_name), []).append((ns, name, SERVICE_ACCOUNT_DIR))
            else:
                carriers.setdefault((ns, secret_name), []).append((ns, name, SECRETS_DIR, secret_name))
    missing = ""
    for key, secret in state.secrets.items():
        sizes = {k.name: k.size for k in secret.data_keys}
        is_token = secret.metadata.name == _token_name(state, key)
        wanted = {k: v for k, v in sizes.items() if k in TOKEN_KEYS} if is_token else sizes
        for path in carriers.get(key, []):
            payload = root.read_leaf(path)
            if payload is None:
                continue
            found = {k: v for k, v in payload.items() if k in wanted}
            if {k: len(v) for k, v in found.items()} == wanted:
                secret.data.clear()
                secret.data.update(found)
                if is_token:
                    _restore_credential(state, key, payload)
                break
        else:
            missing = missing or f"the files of secret {key[0]}/{key[1]} are not whole on disk"
    return missing


def _token_name(state: State, key: Key) -> str | None:
    secret = state.secrets[key]
    account = state.accounts.get((key[0], secret.service_account))
    token = token_secret(account, state.secrets) if account is not None else None
    return token.metadata.name if token is not None else None


def _restore_credential(state: State, token_key: Key, payload: Mapping[str, bytes]) -> None:
    """The account's certificate and key from its serviceaccount/ files, if they still fit."""
    ns = token_key[0]
    account_name = state.secrets[token_key].service_account
    account = state.accounts.get((ns, account_name))
    renewal = state.renewals.get((ns, account_name))
    if account is None or renewal is None or TLS_CERT not in payload or TLS_KEY not in payload:
        return
    try:
        cert = x509.load_pem_x509_certificate(payload[TLS_CERT])
        key = serialization.load_pem_private_key(payload[TLS_KEY], password=None)
    except ValueError:
        return
    same_key = key.public_key().public_bytes(*_SPKI) == cert.public_key().public_bytes(*_SPKI)
    if not same_key or pki.spiffe_ids(cert) != [account.spiffe_id]:
        return
    expire = cert.not_valid_after_utc.replace(tzinfo=UTC).timestamp()
    state.credentials[(ns, account_name)] = Credential(payload[TLS_CERT], payload[TLS_KEY], expire, *renewal)


_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _message(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _without_data(secret: Secret) -> Secret:
    copy = Secret()
    copy.CopyFrom(secret)
    copy.data.clear()
    return copy
