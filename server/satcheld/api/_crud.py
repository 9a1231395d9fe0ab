"""Create, get, list, update, delete and watch for every kind: permission first
(before existence and before the rest of the request is validated), then the
model's field rules, then the store or the watch hub.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar, cast

from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2

from satchel.v1 import secret_pb2, service_account_pb2, workload_pb2

from .. import model
from ..auth import Authorizer, Principal, Scope
from ..errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from ..model import KINDS, SECRETS, SERVICE_ACCOUNTS, LabelSelector, R, SelectorLimits, Violations, shown
from ..store import Store, Transaction
from ..watch import StreamQuota, View, WatchHub
from . import _guard
from ._get_cache import GetCache
from ._paging import MAX_PAGE_BYTES, PageTokens, page_size
from ._token_secrets import TokenSecrets

T = TypeVar("T")


class Crud:
    """The operations every kind shares, authorized and audited per request."""

    def __init__(
        self,
        store: Store,
        hub: WatchHub,
        authorizer: Authorizer,
        page_tokens: PageTokens,
        trust_domain: str,
        token_secrets: TokenSecrets,
        *,
        quota: StreamQuota,
        selector_limits: SelectorLimits,
    ) -> None:
        self.store = store
        self.hub = hub
        self.authorizer = authorizer
        self._page_tokens = page_tokens
        self.trust_domain = trust_domain
        self.token_secrets = token_secrets
        self.quota = quota
        self.selector_limits = selector_limits
        self._get_cache = GetCache()
        store.add_listener(self._get_cache.forget)

    def authorize(self, verb: str, kind: str, namespace: str, name: str = "") -> None:
        """Checks permission before anything else, and notes it for the audit record."""
        resource = f"{kind}/{namespace}/{name}" if name else f"{kind}/{namespace or '*'}"
        _decided(verb, resource, lambda p: self.authorizer.check(p, verb, kind, namespace, name))

    def authorize_admin(self, action: str) -> None:
        """For the AdminService: admins only, noted for the audit record."""

        def check(principal: Principal) -> None:
            if not self.authorizer.is_admin(principal):
                raise PermissionDenied(f"{principal} may not {action}: admins only")

        _decided(action, "admin", check)

    def authorize_scope(self, verb: str, kind: str, namespace: str) -> Scope:
        """For List and Watch: checks permission first, notes it for the audit
        record, and returns what the caller sees."""
        return _decided(
            verb, f"{kind}/{namespace or '*'}", lambda p: self.authorizer.check_scope(p, verb, kind, namespace)
        )

    def _shows_data(self, kind: str, namespace: str, name: str) -> bool:
        return self.authorizer.shows_data(_guard.principal(), kind, namespace, name)

    async def create(self, kind: str, obj: R) -> R:
        namespace = model.namespace_or_default(obj.metadata.namespace)
        self.authorize("create", kind, namespace, obj.metadata.name)
        model.prepare_create(obj, trust_domain=self.trust_domain)

        def write(txn: Transaction) -> R:
            meta = obj.metadata
            if txn.get(kind, meta.namespace, meta.name) is not None:
                raise AlreadyExists(f"{KINDS[kind].noun} {meta.namespace}/{meta.name} already exists")
            if isinstance(obj, workload_pb2.Workload):
                self._ensure_service_account(txn, obj)
            elif isinstance(obj, service_account_pb2.ServiceAccount):
                return cast(R, self.token_secrets.create_account(txn, obj))
            elif isinstance(obj, secret_pb2.Secret) and obj.type == model.TOKEN:
                return cast(R, self.token_secrets.create_token_secret(txn, obj))
            return txn.put(obj)

        created = await self.store.write(write)
        return model.visible(created, with_data=self._shows_data(kind, namespace, created.metadata.name))

    def _ensure_service_account(self, txn: Transaction, workload: workload_pb2.Workload) -> None:
        """`default` is created on first use, with its token secret; any other account must exist."""
        ns, sa = workload.metadata.namespace, workload.service_account
        if txn.get(SERVICE_ACCOUNTS, ns, sa) is not None:
            return
        if sa != model.DEFAULT_SERVICE_ACCOUNT:
            raise FailedPrecondition(
                f"service account {ns}/{sa} does not exist; create it first",
                reason="SERVICE_ACCOUNT_NOT_FOUND",
            )
        account = service_account_pb2.ServiceAccount()
        account.metadata.namespace, account.metadata.name = ns, sa
        model.prepare_create(account, trust_domain=self.trust_domain)
        self.token_secrets.create_account(txn, account)

    async def get(self, kind: str, namespace: str, name: str) -> bytes:
        """The serialized Get response for one object, as this caller may see it.
        Repeated reads are answered from the cache without leaving the event loop."""
        namespace = model.namespace_or_default(namespace)
        self.authorize("get", kind, namespace, name)
        with_data = self._shows_data(kind, namespace, name)
        key = (kind, namespace, name, with_data)
        cached = self._get_cache.get(key)
        if cached is not None:
            return cached
        generation = self._get_cache.generation
        obj = await self.store.get(kind, namespace, name, with_data=with_data)
        if obj is None:
            # Only names that were never valid need checking: stored ones were.
            model.check_namespace_and_name(namespace, name)
            raise NotFound(f"{KINDS[kind].noun} {namespace}/{name} not found")
        k = KINDS[kind]
        response = k.response_type("get")(**{k.field: obj}).SerializeToString()
        self._get_cache.put(key, response, generation)
        return response

    async def list(self, kind: str, request: Any) -> tuple[list[Any], str, int]:
        """A page of objects of `kind` for a ListXRequest, the next page's token
        and the revision the page was read at."""
        namespace = request.namespace
        scope = self.authorize_scope("list", kind, namespace)
        self.selector_limits.check(request.label_selector)
        query = (kind, namespace, request.label_selector)
        v = Violations()
        if namespace:
            v.collect(model.check_namespace_and_name, namespace)
        selector = v.collect(LabelSelector.parse, request.label_selector)
        limit = v.collect(page_size, request.page_size)
        after = v.collect(self._page_tokens.decode, request.page_token, query)
        v.raise_if_any()
        assert selector is not None and limit is not None and after is not None
        items, more, revision = await self.store.list(
            kind,
            namespace=namespace,
            after=after,
            limit=limit,
            max_bytes=MAX_PAGE_BYTES,
            match=lambda obj: scope.admits(obj) and selector.matches(obj.metadata.labels),
            with_data=scope.shows_data if kind == SECRETS else False,
        )
        token = ""
        if more and items:
            last = items[-1].metadata
            token = self._page_tokens.encode(query, (last.namespace, last.name))
        return items, token, revision

    async def update(self, kind: str, obj: R, mask: field_mask_pb2.FieldMask) -> R:
        namespace = model.namespace_or_default(obj.metadata.namespace)
        name = obj.metadata.name
        self.authorize("update", kind, namespace, name)
        v = Violations()
        v.collect(model.check_namespace_and_name, namespace, name, prefix=f"{KINDS[kind].field}.metadata.")
        named_badly = bool(v)
        paths = v.collect(model.mask_paths, kind, obj, mask)
        if named_badly:  # no such object can exist: nothing to check the fields against
            v.raise_if_any()
        if paths is None:  # the valid paths are still applied and checked, so every bad field is named at once
            paths = [path for path in mask.paths if path in model.MUTABLE_PATHS[kind]]
        etag = obj.metadata.etag

        def write(txn: Transaction) -> R:
            current = cast(R | None, txn.get(kind, namespace, name))
            if current is None:
                v.raise_if_any()
                raise NotFound(f"{KINDS[kind].noun} {namespace}/{name} not found")
            updated = model.apply_mask(current, obj, paths)
            if v:  # a bad mask: INVALID_ARGUMENT before the etag, naming the fields' faults too
                v.collect(model.prepare_update, current, updated)
                v.raise_if_any()
            if etag and etag != current.metadata.etag:
                raise Conflict(f"{KINDS[kind].noun} {namespace}/{name} has changed since etag {shown(etag)} was read")
            model.prepare_update(current, updated)
            if isinstance(updated, service_account_pb2.ServiceAccount):
                assert isinstance(current, service_account_pb2.ServiceAccount)
                self.token_secrets.keep_reference(txn, current, updated)
            if (
                isinstance(updated, workload_pb2.Workload)
                and isinstance(current, workload_pb2.Workload)
                and updated.service_account != current.service_account
            ):
                self._ensure_service_account(txn, updated)
            if model.same_content(current, updated):
                return current
            return txn.put(updated)

        stored = await self.store.write(write)
        return model.visible(stored, with_data=self._shows_data(kind, namespace, name))

    async def rotate(
        self, namespace: str, name: str, data: Mapping[str, bytes], grace: duration_pb2.Duration | None
    ) -> secret_pb2.Secret:
        """A new version of a secret: token secrets get a new token from the
        server, others take `data`; the previous version stays valid for the
        grace period. One write, so watchers see one MODIFIED."""
        namespace = model.namespace_or_default(namespace)
        self.authorize("rotate", SECRETS, namespace, name)
        v = Violations()
        v.collect(model.check_namespace_and_name, namespace, name)
        model.check_grace_period(v, "grace_period", grace)
        v.raise_if_any()
        now = datetime.datetime.now(datetime.UTC)

        def write(txn: Transaction) -> secret_pb2.Secret:
            current = txn.get(SECRETS, namespace, name)
            if current is None:
                raise NotFound(f"secret {namespace}/{name} not found")
            assert isinstance(current, secret_pb2.Secret)
            return self._rotate(txn, current, data, grace, now)

        stored = await self.store.write(write)
        return model.visible(stored, with_data=self._shows_data(SECRETS, namespace, name))

    async def rotate_due(self, namespace: str, name: str, due: timestamp_pb2.Timestamp) -> secret_pb2.Secret | None:
        """The scheduled rotation of a secret due at `due`; None if it is no
        longer due then (rotated, rescheduled or deleted meanwhile), so that one
        due time is never rotated twice."""
        now = datetime.datetime.now(datetime.UTC)

        def write(txn: Transaction) -> secret_pb2.Secret | None:
            current = txn.get(SECRETS, namespace, name)
            if not isinstance(current, secret_pb2.Secret) or current.rotation.next_rotate_time != due:
                return None
            return self._rotate(txn, current, {}, None, now)

        return await self.store.write(write)

    def _rotate(
        self,
        txn: Transaction,
        current: secret_pb2.Secret,
        data: Mapping[str, bytes],
        grace: duration_pb2.Duration | None,
        now: datetime.datetime,
    ) -> secret_pb2.Secret:
        grace_period = model.grace_of(current, grace)
        if current.type != secret_pb2.SECRET_TYPE_SERVICE_ACCOUNT_TOKEN:
            if not data:
                raise InvalidArgument([("data", "is required: the new version's values")])
            return txn.put(model.rotated(current, data, grace=grace_period, now=now))
        if data:
            raise InvalidArgument([("data", "a token secret gets its new token from the server; send no data")])
        meta = current.metadata
        account = txn.get(SERVICE_ACCOUNTS, meta.namespace, current.service_account)
        if not isinstance(account, service_account_pb2.ServiceAccount):
            raise FailedPrecondition(
                f"service account {meta.namespace}/{current.service_account} of token secret"
                f" {meta.namespace}/{meta.name} does not exist",
                reason="SERVICE_ACCOUNT_NOT_FOUND",
            )
        new = model.rotated(current, current.data, grace=grace_period, now=now)
        self.token_secrets.fill(txn, account, new, now=now)  # the token for the new version
        return txn.put(new)

    async def watch(self, kind: str, request: Any) -> AsyncIterator[bytes]:
        """The serialized events of one Watch call (see WatchHub.stream), once the
        caller may watch and every field of the request is valid. The hub's
        stream is returned as it is, so that each event passes through as few
        generator frames as possible on its way out."""
        namespace = request.namespace
        scope = self.authorize_scope("watch", kind, namespace)
        self.selector_limits.check(request.label_selector)
        v = Violations()
        if namespace:
            v.collect(model.check_namespace_and_name, namespace)
        selector = v.collect(LabelSelector.parse, request.label_selector)
        since = request.since_revision
        if since < 0:
            v.add("since_revision", "must not be negative")
        elif since > self.hub.revision:
            # Checked against the database: a List may report a revision that is
            # committed but not yet published to the hub.
            latest = await self.store.committed_revision()
            if since > latest:
                v.add("since_revision", f"revision {since} is in the future (the latest is {latest})")
        v.raise_if_any()
        assert selector is not None
        view = View(kind, namespace, selector, scope)
        principal = _guard.principal()
        # Last, with nothing awaited from here until the stream takes its slot.
        slot = self.quota.reserve(principal, exempt=self.authorizer.is_admin(principal))
        return self.hub.stream(
            view, since_revision=since, send_initial=request.send_initial, owner=principal, slot=slot
        )

    async def delete(self, kind: str, namespace: str, name: str, etag: str) -> None:
        namespace = model.namespace_or_default(namespace)
        self.authorize("delete", kind, namespace, name)
        model.check_namespace_and_name(namespace, name)

        def write(txn: Transaction) -> None:
            current = txn.get(kind, namespace, name, with_data=False)
            if current is None:
                raise NotFound(f"{KINDS[kind].noun} {namespace}/{name} not found")
            if etag and etag != current.metadata.etag:
                raise Conflict(f"{KINDS[kind].noun} {namespace}/{name} has changed since etag {shown(etag)} was read")
            if isinstance(current, service_account_pb2.ServiceAccount):
                self.token_secrets.delete_account(txn, current)
            txn.delete(kind, namespace, name)
            if isinstance(current, secret_pb2.Secret):
                self.token_secrets.forget_secret(txn, current)

        await self.store.write(write)


def _decided(verb: str, resource: str, check: Callable[[Principal], T]) -> T:
    """`check(principal)`, its outcome noted in the request's audit record."""
    req = _guard.current()
    req.resource, req.verb = resource, verb
    try:
        result = check(_guard.principal())
    except Exception:
        req.decision = "deny"
        raise
    req.decision = "allow"
    return result
