"""The clients retry reads, and only reads, that fail with UNAVAILABLE: a real grpc.aio server
over real mTLS answers every satchel.v1 RPC with UNAVAILABLE the first N times it is called, then
with a real response, and counts the calls. Writes are never retried; no retry outlives the
call's deadline; other errors are not retried.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from kinds import METHODS

import satchel
from satchel import AsyncClient, Client, _transport

WAIT = 10  # seconds: the config's timeout, and the bound on anything that happens at once
DEFAULT_BASE = _transport.RETRY_BASE  # before quick_backoff changes it

# Each RPC that reads, with the client method and arguments that call it.
READS = {
    "GetServiceAccount": ("get_service_account", ("web",), {}),
    "GetSecret": ("get_secret", ("db",), {}),
    "GetWorkload": ("get_workload", ("w",), {}),
    "ListServiceAccounts": ("list_service_accounts", (), {}),
    "ListSecrets": ("list_secrets", (), {}),
    "ListWorkloads": ("list_workloads", (), {}),
    "ReviewToken": ("review_token", ("tok",), {}),
    "GetPublicKeys": ("get_public_keys", (), {}),
    "CheckAccess": ("check_access", ("get", "secrets"), {}),
}
WRITES = {
    "CreateServiceAccount": ("create_service_account", ("web",), {}),
    "UpdateServiceAccount": ("update_service_account", ("web",), {"description": "d"}),
    "DeleteServiceAccount": ("delete_service_account", ("web",), {}),
    "IssueCertificate": ("issue_certificate", ("web",), {"csr_pem": "-----BEGIN CERTIFICATE REQUEST-----"}),
    "CreateSecret": ("create_secret", ("db",), {}),
    "UpdateSecret": ("update_secret", ("db",), {"immutable": True}),
    "DeleteSecret": ("delete_secret", ("db",), {}),
    "RotateSecret": ("rotate_secret", ("db",), {}),
    "CreateWorkload": ("create_workload", ("w",), {"node_name": "n1"}),
    "UpdateWorkload": ("update_workload", ("w",), {"node_name": "n2"}),
    "DeleteWorkload": ("delete_workload", ("w",), {}),
    "ResealSecrets": ("reseal_secrets", (), {}),
    "RotateSigningKey": ("rotate_signing_key", (), {}),
}


def test_the_tables_cover_every_unary_rpc() -> None:
    unary = {m.name for m in METHODS.values() if not m.server_streaming}
    assert set(READS) | set(WRITES) == unary
    assert not set(READS) & set(WRITES)


@dataclass
class Flaky(grpc.GenericRpcHandler):
    """Answers each RPC with `code` for its first `failures[rpc]` calls (`failures["*"]` for
    any RPC not named), then with a response; `calls` counts the calls and `deadlines` keeps
    the time each had left. Lists answer `pages` pages of one item each, and fail page P
    the first `page_failures[P]` times it is asked for."""

    failures: dict[str, int] = field(default_factory=dict)
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    calls: Counter[str] = field(default_factory=Counter)
    deadlines: list[float | None] = field(default_factory=list)
    pages: int = 1
    page_failures: Counter[int] = field(default_factory=Counter)

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = METHODS.get(details.method)
        if method is None or method.server_streaming:
            return None
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self.calls[method.name] += 1
            self.deadlines.append(context.time_remaining())
            if self.calls[method.name] <= self.failures.get(method.name, self.failures.get("*", 0)):
                await context.abort(self.code, "not now")
            page = int(getattr(request, "page_token", "") or "0")
            if self.page_failures[page] > 0:
                self.page_failures[page] -= 1
                await context.abort(self.code, f"not page {page} now")
            return self.respond(method.name, request, response_type)

        return grpc.unary_unary_rpc_method_handler(
            handle, request_deserializer=request_type.FromString, response_serializer=response_type.SerializeToString
        )

    def respond(self, rpc: str, request: Any, response_type: Any) -> Any:
        if rpc == "GetPublicKeys":
            return response_type(jwks_json='{"keys": []}')
        if rpc == "ReviewToken":
            return response_type(authenticated=True, username="system:serviceaccount:default:web")
        if rpc == "CheckAccess":
            return response_type(allowed=True)
        if rpc.startswith("List"):
            page = int(request.page_token or "0")
            field_name = response_type.DESCRIPTOR.fields[0]  # the repeated resources
            item = message_factory.GetMessageClass(field_name.message_type)(metadata={"name": f"item-{page}"})
            token = str(page + 1) if page + 1 < self.pages else ""
            return response_type(**{field_name.name: [item]}, next_page_token=token, revision=40 + page)
        if rpc.startswith("Get"):
            resource = response_type.DESCRIPTOR.fields[0]
            return response_type(**{resource.name: {"metadata": {"name": request.name}}})
        return response_type()


@pytest.fixture
async def flaky(pki) -> AsyncIterator[tuple[Flaky, str]]:
    handler = Flaky()
    server = grpc.aio.server(handlers=[handler])
    credentials = grpc.ssl_server_credentials(
        [((pki.dir / "server.key").read_bytes(), (pki.dir / "server.crt").read_bytes())],
        root_certificates=pki.ca.read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield handler, f"localhost:{port}"
    finally:
        await server.stop(None)


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch) -> None:
    """No waiting between attempts (the waits themselves are tested below)."""
    monkeypatch.setattr(_transport, "RETRY_BASE", 0.0)


def clients(pki, address: str) -> tuple[Client, AsyncClient]:
    files = dict(ca=pki.ca, cert=pki.admin.cert, key=pki.admin.key, timeout=WAIT)
    return Client(server=address, **files), AsyncClient(server=address, **files)


async def call(client: Client | AsyncClient, method: str, *args: Any, **kwargs: Any) -> Any:
    """Calls `method` on either client (a blocking one in a thread, as the server runs on this
    loop); a listing is read to its end."""
    bound: Callable[..., Any] = getattr(client, method)
    if isinstance(client, Client):

        def blocking() -> Any:
            result = bound(*args, **kwargs)
            return list(result) if isinstance(result, satchel.ListIterator) else result

        return await asyncio.to_thread(blocking)
    result = bound(*args, **kwargs)
    if isinstance(result, satchel.AsyncListIterator):
        return [item async for item in result]
    return await result


@pytest.fixture(params=["blocking", "asyncio"])
async def client(request, pki, flaky) -> AsyncIterator[Client | AsyncClient]:
    blocking, asyncio_ = clients(pki, flaky[1])
    try:
        yield blocking if request.param == "blocking" else asyncio_
    finally:
        blocking.close()
        await asyncio_.close()


@pytest.mark.parametrize("rpc", sorted(READS))
async def test_a_read_is_retried_after_unavailable_until_it_succeeds(flaky, client, rpc) -> None:
    handler, _ = flaky
    handler.failures[rpc] = 2
    method, args, kwargs = READS[rpc]
    result = await call(client, method, *args, **kwargs)
    assert handler.calls == {rpc: 3}
    if rpc.startswith("Get") and rpc != "GetPublicKeys":
        assert result.metadata.name == args[0]
    elif rpc.startswith("List"):
        assert [item.metadata.name for item in result] == ["item-0"]
    elif rpc == "GetPublicKeys":
        assert result == {"keys": []}
    elif rpc == "CheckAccess":
        assert result.allowed
    else:
        assert result.authenticated


@pytest.mark.parametrize("rpc", sorted(WRITES))
async def test_a_write_is_never_retried(flaky, client, rpc) -> None:
    handler, _ = flaky
    handler.failures[rpc] = 1
    method, args, kwargs = WRITES[rpc]
    with pytest.raises(satchel.UnavailableError):
        await call(client, method, *args, **kwargs)
    assert handler.calls == {rpc: 1}


async def test_each_page_of_a_listing_is_retried_on_its_own(flaky, client) -> None:
    handler, _ = flaky
    handler.pages = 3
    handler.page_failures.update({1: 2, 2: 1})
    listed = await call(client, "list_secrets")
    assert [s.metadata.name for s in listed] == ["item-0", "item-1", "item-2"]
    assert handler.calls == {"ListSecrets": 1 + 3 + 2}


async def test_a_read_gives_up_after_the_last_attempt(flaky, client) -> None:
    handler, _ = flaky
    handler.failures["*"] = 1000
    with pytest.raises(satchel.UnavailableError):
        await call(client, "get_secret", "db")
    assert handler.calls == {"GetSecret": _transport.RETRY_ATTEMPTS}


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED]
)
async def test_a_read_is_not_retried_after_other_errors(flaky, client, code) -> None:
    handler, _ = flaky
    handler.failures["*"], handler.code = 1, code
    with pytest.raises(satchel.SatchelError) as caught:
        await call(client, "get_secret", "db")
    assert caught.value.code is code
    assert handler.calls == {"GetSecret": 1}


async def test_every_attempt_has_only_what_is_left_of_the_calls_timeout(flaky, client, monkeypatch) -> None:
    """The timeout is the whole call's, retries and waits included: after waits of 0.4 s and
    0.8 s, the later attempts are given that much less."""
    handler, _ = flaky
    handler.failures["*"] = 2
    monkeypatch.setattr(_transport, "RETRY_BASE", 0.4)
    monkeypatch.setattr(_transport.random, "uniform", lambda low, high: high)
    await call(client, "get_secret", "db", timeout=3)
    first, second, third = handler.deadlines
    assert 0 < first < 4  # 3 s, as grpc rounds it; the config's is WAIT (10)
    assert second < first - 0.3  # less 0.4 s, as grpc rounds it
    assert third < second - 0.7


async def test_no_retry_waits_past_the_calls_deadline(flaky, client, monkeypatch) -> None:
    """With a backoff far longer than the timeout, the read fails at once with the
    UnavailableError rather than waiting, and is not tried again."""
    handler, _ = flaky
    handler.failures["*"] = 1
    monkeypatch.setattr(_transport, "RETRY_BASE", 60.0)
    monkeypatch.setattr(_transport, "RETRY_CAP", 60.0)
    monkeypatch.setattr(_transport.random, "uniform", lambda low, high: high)
    started = time.monotonic()
    with pytest.raises(satchel.UnavailableError):
        await call(client, "get_secret", "db", timeout=5)
    assert time.monotonic() - started < 5
    assert handler.calls == {"GetSecret": 1}


def test_the_backoff_doubles_with_full_jitter_up_to_the_cap(monkeypatch) -> None:
    monkeypatch.setattr(_transport, "RETRY_ATTEMPTS", 10)
    monkeypatch.setattr(_transport, "RETRY_BASE", DEFAULT_BASE)
    drawn = []
    monkeypatch.setattr(_transport.random, "uniform", lambda low, high: drawn.append((low, high)) or high)
    unavailable = satchel.UnavailableError("down", code=grpc.StatusCode.UNAVAILABLE)
    retry = _transport._Retry(timeout=3600, read=True)
    waits = [retry.after(unavailable) for _ in range(9)]
    assert drawn[:5] == [(0, 0.1), (0, 0.2), (0, 0.4), (0, 0.8), (0, 1.6)]  # full jitter: from 0
    assert drawn[5:] == [(0, 2.0)] * 4
    assert waits == [high for _, high in drawn]
    assert retry.after(unavailable) is None  # the tenth attempt was the last
    assert _transport._Retry(timeout=3600, read=False).after(unavailable) is None
