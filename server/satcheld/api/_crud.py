"""The gRPC services. Each RPC asks the authorizer first, then the store; the
CRUD flow shared by the three kinds lives in `Resources`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf.message import Message

from satchel.v1 import (
    secret_pb2,
    secret_pb2_grpc,
    service_account_pb2,
    service_account_pb2_grpc,
    token_pb2_grpc,
    workload_pb2,
    workload_pb2_grpc,
)

from . import _guard, _resources
from ._errors import AlreadyExists, Conflict, FailedPrecondition, NotFound, Unimplemented
from ._kinds import KINDS, SECRETS, SERVICE_ACCOUNTS, WORKLOADS
from ._labels import LabelSelector
from ._paging import MAX_PAGE_BYTES, PageTokens, page_size
from ._policy import Authorizer
from ._responses import ResponseCache
from ._store import Store, Txn
from ._validation import Violations
from ._watch import View, WatchHub



class Resources:
    """Create, get, list, update and delete for every kind, authorized."""

    def __init__(
        self, store: Store, hub: WatchHub, authorizer: Authorizer, page_tokens: PageTokens, trust_domain: str
    ) -> None:
        self.store = store
        self.hub = hub
        self.authorizer = authorizer
        self._page_tokens = page_tokens
        self.trust_domain = trust_domain
        self._responses = ResponseCache()
        store.add_listener(self._responses.forget)

    def authorize(self, verb: str, kind: str, namespace: str, name: str = "") -> None:
        """Checks permission before anything else, and notes it for the audit record."""
        req = _guard.current()
        req.resource = f"{kind}/{namespace}/{name}" if name else f"{kind}/{namespace or '*'}"
        try:
            self.authorizer.check(_guard.principal(), verb, kind, namespace, name)
        except Exception:
            req.decision = "deny"
            raise
        req.decision = "allow"

    def _may_read_data(self, kind: str, namespace: str) -> bool:
        return kind == SECRETS and self.authorizer.allowed(_guard.principal(), "read-data", SECRETS, namespace)

    def _readable(self, obj: Message) -> Message:
        """The object as this caller may see it: secret data only with read-data."""
        if isinstance(obj, secret_pb2.Secret) and obj.data:
            if not self.authorizer.allowed(_guard.principal(), "read-data", SECRETS, obj.metadata.namespace):
                _resources.strip_data(obj)
        return obj

    async def create(self, kind: str, obj: Message) -> Message:
        namespace = _resources.namespace_or_default(obj.metadata.namespace)
        self.authorize("create", kind, namespace, obj.metadata.name)
        _resources.prepare_create(obj, trust_domain=self.trust_domain)

        def write(txn: Txn) -> Message:
            meta = obj.metadata
            if txn.get(kind, meta.namespace, meta.name) is not None:
                raise AlreadyExists(f"{KINDS[kind].noun} {meta.namespace}/{meta.name} already exists")
            if kind == WORKLOADS:
                self._ensure_service_account(txn, obj)
            return txn.put(obj)

        return self._readable(await self.store.write(write))

    def _ensure_service_account(self, txn: Txn, workload: workload_pb2.Workload) -> None:
        """`default` is created on first use; any other account must exist."""
        ns, sa = workload.metadata.namespace, workload.service_account
        if txn.get(SERVICE_ACCOUNTS, ns, sa) is not None:
            return
        if sa != _resources.DEFAULT_SERVICE_ACCOUNT:
            raise FailedPrecondition(
                f"service account {ns}/{sa} does not exist; create it first",
                reason="SERVICE_ACCOUNT_NOT_FOUND",
            )
        account = service_account_pb2.ServiceAccount()
        account.metadata.namespace, account.metadata.name = ns, sa
        _resources.prepare_create(account, trust_domain=self.trust_domain)
        txn.put(account)

    def get(self, kind: str, namespace: str, name: str) -> bytes:
        """The serialized Get response for one object, as this caller may see it."""
        namespace = _resources.namespace_or_default(namespace)
        self.authorize("get", kind, namespace, name)
        with_data = self._may_read_data(kind, namespace)

        def build() -> bytes:
            obj = self.store.get(kind, namespace, name, with_data=with_data)
            if obj is None:
                # Only names that were never valid need checking: stored ones were.
                _resources.check_namespace_and_name(namespace, name)
                raise NotFound(f"{KINDS[kind].noun} {namespace}/{name} not found")
            k = KINDS[kind]
            return k.get_response(**{k.field: obj}).SerializeToString()

        return self._responses.get((kind, namespace, name, with_data), build)

    def list(self, kind: str, request: Message) -> tuple[list[Message], str, int]:
        namespace = request.namespace
        self.authorize("list", kind, namespace)
        query = (kind, namespace, request.label_selector)
        v = Violations()
        if namespace:
            v.collect(_resources.check_namespace_and_name, namespace)
        selector = v.collect(LabelSelector.parse, request.label_selector)
        limit = v.collect(page_size, request.page_size)
        after = v.collect(self._page_tokens.decode, request.page_token, query)
        v.raise_if_any()
        with_data = self._may_read_data(kind, namespace)
        items, more, revision = self.store.list(
            kind,
            namespace=namespace,
            after=after,
            limit=limit,
            max_bytes=MAX_PAGE_BYTES,
            match=lambda obj: selector.matches(obj.metadata.labels),
            with_data=with_data,
        )
        token = ""
        if more and items:
            last = items[-1].metadata
            token = self._page_tokens.encode(query, (last.namespace, last.name))
        return items, token, revision

    async def update(self, kind: str, obj: Message, mask) -> Message:  # noqa: ANN001
        namespace = _resources.namespace_or_default(obj.metadata.namespace)
        name = obj.metadata.name
        self.authorize("update", kind, namespace, name)
        v = Violations()
        v.collect(_resources.check_namespace_and_name, namespace, name, prefix=f"{KINDS[kind].field}.metadata.")
        paths = v.collect(_resources.mask_paths, kind, obj, mask)
        v.raise_if_any()
        etag = obj.metadata.etag

        def write(txn: Txn) -> Message:
            current = txn.get(kind, namespace, name)
            if current is None:
                raise NotFound(f"{KINDS[kind].noun} {namespace}/{name} not found")
            if etag and etag != current.metadata.etag:
                raise Conflict(f"{KINDS[kind].noun} {namespace}/{name} has changed since etag {etag!r} was read")
            updated = _resources.apply_mask(current, obj, paths)
            _resources.prepare_update(current, updated)
            if kind == WORKLOADS and updated.service_account != current.service_account:
                self._ensure_service_account(txn, updated)
            if _resources.same_content(current, updated):
                return current
            return txn.put(updated)

        return self._readable(await self.store.write(write))

    def watch(self, kind: str, request: Message) -> AsyncIterator[bytes]:
        """The serialized events of one Watch call (see WatchHub.stream). A plain
        function: permission is checked when the call starts, and each event
        passes through as few generator frames as possible on its way out."""
        namespace = request.namespace
        self.authorize("watch", kind, namespace)
        v = Violations()
        if namespace:
            v.collect(_resources.check_namespace_and_name, namespace)
        selector = v.collect(LabelSelector.parse, request.label_selector)
        v.raise_if_any()
        view = View(kind, namespace, selector, with_data=self._may_read_data(kind, namespace))
        return self.hub.stream(view, since_revision=request.since_revision, send_initial=request.send_initial)

    async def delete(self, kind: str, namespace: str, name: str, etag: str) -> None:
        namespace = _resources.namespace_or_default(namespace)
        self.authorize("delete", kind, namespace, name)
        _resources.check_namespace_and_name(namespace, name)

        def write(txn: Txn) -> None:
            current = txn.get(kind, namespace, name, with_data=False)
            if current is None:
                raise NotFound(f"{KINDS[kind].noun} {namespace}/{name} not found")
            if etag and etag != current.metadata.etag:
                raise Conflict(f"{KINDS[kind].noun} {namespace}/{name} has changed since etag {etag!r} was read")
            txn.delete(kind, namespace, name)

        await self.store.write(write)


def unknown_method(method: str) -> grpc.RpcMethodHandler:
    """The answer to a method this server does not have, so that it is audited
    and carries an ErrorInfo like every other error. Request-streaming, and
    reading no request, it answers every shape of call at once."""

    async def answer(requests: object, context: object) -> None:
        raise Unimplemented(
            f"{method!r} is not a method of this server (reflection lists those it has)", reason="METHOD_NOT_FOUND"
        )

    return grpc.stream_unary_rpc_method_handler(answer)


def _later(what: str) -> Unimplemented:
    return Unimplemented(f"{what} is not implemented yet")


class ServiceAccountService(service_account_pb2_grpc.ServiceAccountServiceServicer):
    def __init__(self, resources: Resources) -> None:
        self._r = resources

    async def CreateServiceAccount(self, request, context):
        sa = await self._r.create(SERVICE_ACCOUNTS, request.service_account)
        return service_account_pb2.CreateServiceAccountResponse(service_account=sa)

    async def GetServiceAccount(self, request, context):
        return self._r.get(SERVICE_ACCOUNTS, request.namespace, request.name)

    async def ListServiceAccounts(self, request, context):
        items, token, revision = self._r.list(SERVICE_ACCOUNTS, request)
        return service_account_pb2.ListServiceAccountsResponse(
            service_accounts=items, next_page_token=token, revision=revision
        )

    async def UpdateServiceAccount(self, request, context):
        sa = await self._r.update(SERVICE_ACCOUNTS, request.service_account, request.update_mask)
        return service_account_pb2.UpdateServiceAccountResponse(service_account=sa)

    async def DeleteServiceAccount(self, request, context):
        await self._r.delete(SERVICE_ACCOUNTS, request.namespace, request.name, request.etag)
        return service_account_pb2.DeleteServiceAccountResponse()

    def WatchServiceAccounts(self, request, context):
        return self._r.watch(SERVICE_ACCOUNTS, request)

    async def IssueCertificate(self, request, context):
        raise _later("IssueCertificate")


class SecretService(secret_pb2_grpc.SecretServiceServicer):
    def __init__(self, resources: Resources) -> None:
        self._r = resources

    async def CreateSecret(self, request, context):
        return secret_pb2.CreateSecretResponse(secret=await self._r.create(SECRETS, request.secret))

    async def GetSecret(self, request, context):
        return self._r.get(SECRETS, request.namespace, request.name)

    async def ListSecrets(self, request, context):
        items, token, revision = self._r.list(SECRETS, request)
        return secret_pb2.ListSecretsResponse(secrets=items, next_page_token=token, revision=revision)

    async def UpdateSecret(self, request, context):
        secret = await self._r.update(SECRETS, request.secret, request.update_mask)
        return secret_pb2.UpdateSecretResponse(secret=secret)

    async def DeleteSecret(self, request, context):
        await self._r.delete(SECRETS, request.namespace, request.name, request.etag)
        return secret_pb2.DeleteSecretResponse()

    async def RotateSecret(self, request, context):
        raise _later("RotateSecret")

    def WatchSecrets(self, request, context):
        return self._r.watch(SECRETS, request)


class WorkloadService(workload_pb2_grpc.WorkloadServiceServicer):
    def __init__(self, resources: Resources) -> None:
        self._r = resources

    async def CreateWorkload(self, request, context):
        return workload_pb2.CreateWorkloadResponse(workload=await self._r.create(WORKLOADS, request.workload))

    async def GetWorkload(self, request, context):
        return self._r.get(WORKLOADS, request.namespace, request.name)

    async def ListWorkloads(self, request, context):
        items, token, revision = self._r.list(WORKLOADS, request)
        return workload_pb2.ListWorkloadsResponse(workloads=items, next_page_token=token, revision=revision)

    async def UpdateWorkload(self, request, context):
        workload = await self._r.update(WORKLOADS, request.workload, request.update_mask)
        return workload_pb2.UpdateWorkloadResponse(workload=workload)

    async def DeleteWorkload(self, request, context):
        await self._r.delete(WORKLOADS, request.namespace, request.name, request.etag)
        return workload_pb2.DeleteWorkloadResponse()

    def WatchWorkloads(self, request, context):
        return self._r.watch(WORKLOADS, request)


class TokenService(token_pb2_grpc.TokenServiceServicer):
    async def ReviewToken(self, request, context):
        raise _later("ReviewToken")

    async def GetPublicKeys(self, request, context):
        raise _later("GetPublicKeys")
