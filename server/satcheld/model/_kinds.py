"""The three resource kinds and what the rest of the server needs to know of each."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from satchel.v1 import secret_pb2, service_account_pb2, workload_pb2

SERVICE_ACCOUNTS = "serviceaccounts"
SECRETS = "secrets"
WORKLOADS = "workloads"


@dataclass(frozen=True)
class Kind:
    name: str  # as the policy file and the store name it
    message: type[Message]
    field: str  # the request and watch-event field that carries one object
    noun: str  # for messages to callers
    watch_response: type[Message]
    get_response: type[Message]


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind(
            SERVICE_ACCOUNTS,
            service_account_pb2.ServiceAccount,
            "service_account",
            "service account",
            service_account_pb2.WatchServiceAccountsResponse,
            service_account_pb2.GetServiceAccountResponse,
        ),
        Kind(
            SECRETS,
            secret_pb2.Secret,
            "secret",
            "secret",
            secret_pb2.WatchSecretsResponse,
            secret_pb2.GetSecretResponse,
        ),
        Kind(
            WORKLOADS,
            workload_pb2.Workload,
            "workload",
            "workload",
            workload_pb2.WatchWorkloadsResponse,
            workload_pb2.GetWorkloadResponse,
        ),
    )
}


def kind_of(obj: Message) -> str:
    for kind in KINDS.values():
        if isinstance(obj, kind.message):
            return kind.name
    raise TypeError(f"not a Satchel resource: {type(obj).__name__}")
