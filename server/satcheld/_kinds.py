"""The three resource kinds, by the names the policy file and the store use."""

from __future__ import annotations

from google.protobuf.message import Message

from satchel.v1 import secret_pb2, service_account_pb2, workload_pb2

SERVICE_ACCOUNTS = "serviceaccounts"
SECRETS = "secrets"
WORKLOADS = "workloads"

MESSAGES: dict[str, type[Message]] = {
    SERVICE_ACCOUNTS: service_account_pb2.ServiceAccount,
    SECRETS: secret_pb2.Secret,
    WORKLOADS: workload_pb2.Workload,
}


def kind_of(obj: Message) -> str:
    for kind, cls in MESSAGES.items():
        if isinstance(obj, cls):
            return kind
    raise TypeError(f"not a Satchel resource: {type(obj).__name__}")
