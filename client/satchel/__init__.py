"""Satchel: identities and secrets for fleets of machines, over mTLS gRPC.

    from satchel import Client

    with Client.from_env() as client:
        client.create_secret("db", data={"password": "hunter2"})
        listing = client.list_secrets()
        secrets = {s.metadata.name: s for s in listing}
        for event in client.watch_secrets(since_revision=listing.revision):
            ...

The generated protobuf and gRPC code lives in `satchel.v1`; `satchel.kinds` names the kinds,
`satchel.pki` makes keys and certificates, `satchel.durations` parses `90s`-style durations.
"""

from satchel._client import AsyncClient, Client
from satchel._config import ClientConfig
from satchel._errors import (
    AlreadyExistsError,
    ConflictError,
    DataLossError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    RequestCancelledError,
    ResourceExhaustedError,
    RevisionCompactedError,
    SatchelError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    from_rpc_error,
)
from satchel._pages import AsyncListIterator, ListIterator
from satchel._watch import AsyncWatchStream, WatchStream
from satchel.v1.meta_pb2 import EventType, ObjectMeta
from satchel.v1.secret_pb2 import DataKey, Secret, SecretRotation, SecretType
from satchel.v1.service_account_pb2 import SecretReference, ServiceAccount
from satchel.v1.workload_pb2 import Workload

__all__ = [
    "AlreadyExistsError",
    "AsyncClient",
    "AsyncListIterator",
    "AsyncWatchStream",
    "Client",
    "ClientConfig",
    "ConflictError",
    "DataKey",
    "DataLossError",
    "DeadlineExceededError",
    "EventType",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "ListIterator",
    "NotFoundError",
    "ObjectMeta",
    "OutOfRangeError",
    "PermissionDeniedError",
    "RequestCancelledError",
    "ResourceExhaustedError",
    "RevisionCompactedError",
    "SatchelError",
    "Secret",
    "SecretReference",
    "SecretRotation",
    "SecretType",
    "ServiceAccount",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "WatchStream",
    "Workload",
    "from_rpc_error",
]

# What this package defines reports itself as `satchel.X`, the name to import it by, in reprs and
# tracebacks (as httpx does); the generated protobuf classes keep their own modules.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("satchel._"):
        _obj.__module__ = "satchel"
del _name, _obj
