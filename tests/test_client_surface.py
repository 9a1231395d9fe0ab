"""The client surface: Client and AsyncClient cover every RPC of every service, build the requests
their arguments describe, page, translate errors, and keep watches going.

The server here is a real gRPC server over real mTLS that records what it receives and answers as
each test scripts it, so that the client is tested without the real server's rules.
"""

import asyncio
import importlib.metadata
import inspect
import re
import subprocess
import sys
import threading
import traceback
from dataclasses import dataclass
from datetime import timedelta

import grpc
import pytest
from google.protobuf import any_pb2, message_factory
from google.rpc import error_details_pb2, status_pb2
from kinds import METHODS

import satchel
import satchel.pki
from satchel import AsyncClient, Client, ClientConfig, EventType, _watch
from satchel.v1 import authorization_pb2, meta_pb2, secret_pb2, token_pb2, workload_pb2

WAIT = 10  # seconds: an upper bound for things that happen at once, never a sleep


def snake(name):
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def is_listing(method):
    return method.name.startswith("List")


# ---------------------------------------------------------------------------------------------
# Every RPC has its method.


def test_the_descriptors_have_the_designed_services():
    services = {m.containing_service.name for m in METHODS.values()}
    assert services == {
        "ServiceAccountService",
        "SecretService",
        "WorkloadService",
        "TokenService",
        "AuthorizationService",
        "AdminService",
    }
    assert len(METHODS) == 25


@pytest.mark.parametrize("path", sorted(METHODS))
def test_both_clients_have_a_method_for_the_rpc(path):
    method = METHODS[path]
    name = snake(method.name)
    sync, async_ = getattr(Client, name, None), getattr(AsyncClient, name, None)
    assert callable(sync), f"Client has no {name}() for {path}"
    assert callable(async_), f"AsyncClient has no {name}() for {path}"
    assert not inspect.iscoroutinefunction(sync)
    # Unary calls are awaited; lists and watches are iterated with `async for`.
    assert inspect.iscoroutinefunction(async_) == (not method.server_streaming and not is_listing(method))
    assert inspect.signature(sync) == inspect.signature(async_) or name.startswith(("list_", "watch_"))


# ---------------------------------------------------------------------------------------------
# A scriptable server.


@dataclass
class Received:
    rpc: str
    request: object
    metadata: dict
    time_remaining: float | None  # seconds to the call's deadline; None: no deadline


class FakeServer(grpc.GenericRpcHandler):
    """Answers every satchel.v1 RPC: with `replies[rpc](request, context)` when scripted, else with
    an empty response (streams: one BOOKMARK, then open until cancelled)."""

    def __init__(self):
        self.received = []
        self.replies = {
            "GetPublicKeys": lambda request, context: token_pb2.GetPublicKeysResponse(jwks_json='{"keys": []}'),
        }
        self.cancelled = threading.Event()

    def service(self, details):
        method = METHODS.get(details.method)
        if method is None:
            return None
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)

        def handle(request, context):
            metadata = dict(context.invocation_metadata())
            self.received.append(Received(method.name, request, metadata, context.time_remaining()))
            reply = self.replies.get(method.name)
            if reply is not None:
                return reply(request, context)
            if method.server_streaming:
                return self.hold_open([response_type(type=EventType.EVENT_TYPE_BOOKMARK, revision=1)], context)
            return response_type()

        wrap = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
        return wrap(
            handle, request_deserializer=request_type.FromString, response_serializer=response_type.SerializeToString
        )

    def hold_open(self, events, context):
        """Streams `events`, then stays open until the client goes away (which sets `cancelled`)."""
        gone = threading.Event()
        context.add_callback(gone.set)
        context.add_callback(self.cancelled.set)
        yield from events
        gone.wait(WAIT)

    def rpcs(self):
        return [r.rpc for r in self.received]


def abort(context, code, message, reason, **metadata):
    """Fails the call the way satcheld does: a google.rpc.Status with one ErrorInfo."""
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="satchel.dev", metadata=metadata))
    status = status_pb2.Status(code=code.value[0], message=message, details=[info])
    context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()), ("x-request-id", "req-42")))
    context.abort(code, message)


def watch_event(type, revision, name=""):
    return secret_pb2.WatchSecretsResponse(
        type=type, revision=revision, secret=secret_pb2.Secret(metadata=meta_pb2.ObjectMeta(name=name))
    )


ADDED, MODIFIED, BOOKMARK, SYNCED = (
    EventType.EVENT_TYPE_ADDED,
    EventType.EVENT_TYPE_MODIFIED,
    EventType.EVENT_TYPE_BOOKMARK,
    EventType.EVENT_TYPE_SYNCED,
)


def connections(fake, *scripts):
    """Serves the n-th watch connection with the n-th script (a generator of (request, context))."""
    scripts = iter(scripts)
    return lambda request, context: next(scripts)(request, context)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("client-certs")
    satchel.pki.init(d)
    return d


@pytest.fixture
def fake(certs):
    from concurrent import futures

    fake = FakeServer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), handlers=[fake])
    credentials = grpc.ssl_server_credentials(
        [((certs / "server.key").read_bytes(), (certs / "server.crt").read_bytes())],
        root_certificates=(certs / "ca.crt").read_bytes(),
        require_client_auth=True,
    )
    fake.port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    yield fake
    server.stop(grace=None).wait(WAIT)


@pytest.fixture
def config(fake, certs):
    return ClientConfig(
        server=f"localhost:{fake.port}",
        ca=certs / "ca.crt",
        cert=certs / "admin.crt",
        key=certs / "admin.key",
        timeout=WAIT,
    )


@pytest.fixture
def client(config):
    with Client(config) as client:
        yield client


@pytest.fixture
async def aclient(config):
    async with AsyncClient(config) as client:
        yield client


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(_watch, "BACKOFF_BASE", 0.0)


# Arguments that make a call valid, beyond its leading name.
EXTRA = {
    "update_service_account": {"description": "d"},
    "update_secret": {"labels": {"a": "b"}},
    "update_workload": {"node_name": "n1"},
    "issue_certificate": {"csr_pem": "-----BEGIN CERTIFICATE REQUEST-----"},
    "check_access": {"resource": "secrets"},
}


def arguments(name):
    params = list(inspect.signature(getattr(Client, name)).parameters.values())[1:]
    positional = ["x"] if params and params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD else []
    return positional, EXTRA.get(name, {})


@pytest.mark.parametrize("path", sorted(METHODS))
def test_client_method_calls_its_rpc(fake, client, path):
    method = METHODS[path]
    name = snake(method.name)
    args, kwargs = arguments(name)

    result = getattr(client, name)(*args, **kwargs)
    if method.server_streaming:
        with result:
            assert next(result).type == BOOKMARK
    elif is_listing(method):
        assert list(result) == []

    assert fake.rpcs() == [method.name]
    assert fake.received[0].request.DESCRIPTOR is method.input_type


@pytest.mark.parametrize("path", sorted(METHODS))
async def test_async_client_method_calls_its_rpc(fake, aclient, path):
    method = METHODS[path]
    name = snake(method.name)
    args, kwargs = arguments(name)

    if method.server_streaming:
        async with getattr(aclient, name)(*args, **kwargs) as stream:
            assert (await anext(stream)).type == BOOKMARK
    elif is_listing(method):
        assert [item async for item in getattr(aclient, name)(*args, **kwargs)] == []
    else:
        await getattr(aclient, name)(*args, **kwargs)

    assert fake.rpcs() == [method.name]
    assert fake.received[0].request.DESCRIPTOR is method.input_type


# ---------------------------------------------------------------------------------------------
# Requests built from arguments; results read from responses.


def test_create_secret_builds_the_secret(fake, client):
    fake.replies["CreateSecret"] = lambda request, context: secret_pb2.CreateSecretResponse(secret=request.secret)

    secret = client.create_secret(
        "db",
        namespace="prod",
        data={"username": "app", "password": b"\x00\xff"},
        type="basic-auth",
        labels={"team": "a"},
        rotation_period=timedelta(hours=1),
        grace_period=timedelta(minutes=5),
    )

    assert isinstance(secret, satchel.Secret)
    sent = fake.received[0].request.secret
    assert (sent.metadata.namespace, sent.metadata.name) == ("prod", "db")
    assert dict(sent.data) == {"username": b"app", "password": b"\x00\xff"}
    assert sent.type == satchel.SecretType.SECRET_TYPE_BASIC_AUTH
    assert dict(sent.metadata.labels) == {"team": "a"}
    assert sent.rotation.period.ToTimedelta() == timedelta(hours=1)
    assert sent.rotation.grace_period.ToTimedelta() == timedelta(minutes=5)
    assert secret == sent


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("opaque", secret_pb2.SECRET_TYPE_OPAQUE),
        ("tls", secret_pb2.SECRET_TYPE_TLS),
        ("docker-config-json", secret_pb2.SECRET_TYPE_DOCKER_CONFIG_JSON),
        ("service-account-token", secret_pb2.SECRET_TYPE_SERVICE_ACCOUNT_TOKEN),
        ("SECRET_TYPE_TLS", secret_pb2.SECRET_TYPE_TLS),
        (secret_pb2.SECRET_TYPE_BASIC_AUTH, secret_pb2.SECRET_TYPE_BASIC_AUTH),
    ],
)
def test_secret_types_by_name_or_value(fake, client, given, expected):
    client.create_secret("s", type=given)
    assert fake.received[0].request.secret.type == expected


@pytest.mark.parametrize("bad", ["opaq", "unspecified", 99])
def test_unknown_secret_type_is_rejected_before_any_call(fake, client, bad):
    with pytest.raises(ValueError, match="basic-auth"):
        client.create_secret("s", type=bad)
    assert fake.received == []


def test_create_takes_a_ready_proto(fake, client):
    secret = satchel.Secret(metadata=satchel.ObjectMeta(name="ready"), data={"k": b"v"})
    client.create_secret(secret=secret)
    assert fake.received[0].request.secret == secret
    with pytest.raises(TypeError):
        client.create_secret("other", secret=secret)


def test_create_service_account_and_workload(fake, client):
    client.create_service_account("web", namespace="prod", secrets=["db"], description="the web tier")
    client.create_workload("web-1", namespace="prod", node_name="n1", service_account="web", secrets=["tls"])

    sa = fake.received[0].request.service_account
    assert [ref.name for ref in sa.secrets] == ["db"]
    assert sa.description == "the web tier"
    workload = fake.received[1].request.workload
    assert (workload.node_name, workload.service_account, list(workload.secrets)) == ("n1", "web", ["tls"])


def test_update_secret_masks_exactly_the_arguments_given(fake, client):
    client.update_secret("db", namespace="prod", data={"k": "v2"}, labels={}, etag="e-1")

    request = fake.received[0].request
    assert sorted(request.update_mask.paths) == ["data", "metadata.labels"]
    assert request.secret.metadata.etag == "e-1"
    assert (request.secret.metadata.namespace, request.secret.metadata.name) == ("prod", "db")
    assert dict(request.secret.data) == {"k": b"v2"}


def test_update_rotation_paths(fake, client):
    client.update_secret("db", rotation_period=timedelta(0), grace_period=timedelta(seconds=30))
    request = fake.received[0].request
    assert sorted(request.update_mask.paths) == ["rotation.grace_period", "rotation.period"]
    assert not request.secret.rotation.HasField("period")
    assert request.secret.rotation.grace_period.seconds == 30


def test_update_workload_and_service_account_masks(fake, client):
    client.update_workload("w", service_account="sa2", secrets=[])
    client.update_service_account("sa", description="", annotations={"a": "b"})
    assert sorted(fake.received[0].request.update_mask.paths) == ["secrets", "service_account"]
    assert sorted(fake.received[1].request.update_mask.paths) == ["description", "metadata.annotations"]


def test_update_with_nothing_to_change_is_rejected(fake, client):
    with pytest.raises(ValueError, match="nothing to change"):
        client.update_secret("db")
    assert fake.received == []


def test_update_with_a_proto_and_mask(fake, client):
    secret = satchel.Secret(metadata=satchel.ObjectMeta(name="db"), immutable=True)
    client.update_secret(secret=secret, update_mask=["*"], etag="e-2")
    request = fake.received[0].request
    assert list(request.update_mask.paths) == ["*"]
    assert request.secret.metadata.etag == "e-2"
    assert request.secret.immutable
    assert secret.metadata.etag == ""  # the caller's proto is left alone


def test_delete_and_rotate(fake, client):
    assert client.delete_secret("db", namespace="prod", etag="e-3") is None
    client.rotate_secret("db", data={"k": "new"}, grace_period=timedelta(minutes=1))
    delete, rotate = (r.request for r in fake.received)
    assert (delete.namespace, delete.name, delete.etag) == ("prod", "db", "e-3")
    assert dict(rotate.data) == {"k": b"new"}
    assert rotate.grace_period.seconds == 60


def test_token_calls_return_the_response_and_the_jwks(fake, client):
    fake.replies["ReviewToken"] = lambda request, context: token_pb2.ReviewTokenResponse(
        authenticated=True, username="system:serviceaccount:default:web", audiences=request.audiences
    )
    fake.replies["GetPublicKeys"] = lambda request, context: token_pb2.GetPublicKeysResponse(
        jwks_json='{"keys": [{"kid": "k1", "kty": "EC"}]}'
    )

    review = client.review_token("tok", audiences=["peer"])
    assert isinstance(review, token_pb2.ReviewTokenResponse)
    assert review.authenticated and list(review.audiences) == ["peer"]
    assert client.get_public_keys() == {"keys": [{"kid": "k1", "kty": "EC"}]}


def test_check_access_builds_the_request_and_returns_the_response(fake, client):
    fake.replies["CheckAccess"] = lambda request, context: authorization_pb2.CheckAccessResponse(
        allowed=False, reason="user:alice may not get secrets"
    )

    answer = client.check_access("get", "secrets", "db", namespace="prod")
    assert isinstance(answer, authorization_pb2.CheckAccessResponse)
    assert (answer.allowed, answer.reason) == (False, "user:alice may not get secrets")
    client.check_access("list", "workloads")
    first, second = (r.request for r in fake.received)
    assert (first.verb, first.resource, first.namespace, first.name) == ("get", "secrets", "prod", "db")
    assert (second.verb, second.resource, second.namespace, second.name) == ("list", "workloads", "", "")


def test_list_follows_next_page_token(fake, client):
    pages = {"": (["a", "b"], "p2"), "p2": (["c"], "p3"), "p3": ([], "")}

    def list_secrets(request, context):
        names, token = pages[request.page_token]
        return secret_pb2.ListSecretsResponse(
            secrets=[secret_pb2.Secret(metadata=meta_pb2.ObjectMeta(name=n)) for n in names], next_page_token=token
        )

    fake.replies["ListSecrets"] = list_secrets
    names = [s.metadata.name for s in client.list_secrets(namespace="prod", label_selector="a=b", page_size=2)]

    assert names == ["a", "b", "c"]
    assert [r.request.page_token for r in fake.received] == ["", "p2", "p3"]
    assert {(r.request.namespace, r.request.label_selector, r.request.page_size) for r in fake.received} == {
        ("prod", "a=b", 2)
    }


async def test_async_list_follows_next_page_token(fake, aclient):
    def list_workloads(request, context):
        if request.page_token:
            return workload_pb2.ListWorkloadsResponse(workloads=[workload_pb2.Workload(node_name="n2")])
        first = workload_pb2.Workload(node_name="n1")
        return workload_pb2.ListWorkloadsResponse(workloads=[first], next_page_token="t")

    fake.replies["ListWorkloads"] = list_workloads
    assert [w.node_name async for w in aclient.list_workloads()] == ["n1", "n2"]


def paged_secrets(fake, pages):
    """Serves ListSecrets from `pages`: page token -> (names, next token, revision)."""

    def list_secrets(request, context):
        names, token, revision = pages[request.page_token]
        secrets = [secret_pb2.Secret(metadata=meta_pb2.ObjectMeta(name=n)) for n in names]
        return secret_pb2.ListSecretsResponse(secrets=secrets, next_page_token=token, revision=revision)

    fake.replies["ListSecrets"] = list_secrets


def test_a_listing_keeps_the_revision_of_its_first_page(fake, client):
    paged_secrets(fake, {"": (["a"], "p2", 7), "p2": (["b"], "", 9)})
    listing = client.list_secrets()
    assert isinstance(listing, satchel.ListIterator)
    assert [s.metadata.name for s in listing] == ["a", "b"]
    assert listing.revision == 7


def test_reading_the_revision_first_reads_the_first_page_once(fake, client):
    paged_secrets(fake, {"": (["a"], "p2", 7), "p2": (["b"], "", 9)})
    listing = client.list_secrets()
    assert fake.received == []  # nothing is read until asked for
    assert listing.revision == 7
    assert fake.rpcs() == ["ListSecrets"]
    assert [s.metadata.name for s in listing] == ["a", "b"]
    assert [r.request.page_token for r in fake.received] == ["", "p2"]


def test_an_empty_listing_has_its_revision_too(fake, client):
    paged_secrets(fake, {"": ([], "", 4)})
    listing = client.list_secrets()
    assert list(listing) == []
    assert listing.revision == 4


async def test_an_async_listing_has_its_revision_once_the_first_page_was_read(fake, aclient):
    paged_secrets(fake, {"": (["a"], "p2", 7), "p2": (["b"], "", 9)})
    listing = aclient.list_secrets()
    assert isinstance(listing, satchel.AsyncListIterator)
    with pytest.raises(RuntimeError, match="iterate first"):
        _ = listing.revision
    assert await listing.fetch_revision() == 7
    assert await listing.fetch_revision() == 7
    assert [s.metadata.name async for s in listing] == ["a", "b"]
    assert listing.revision == 7
    assert [r.request.page_token for r in fake.received] == ["", "p2"]

    iterated = aclient.list_secrets()
    assert [s.metadata.name async for s in iterated] == ["a", "b"]
    assert iterated.revision == 7


# ---------------------------------------------------------------------------------------------
# Per-call timeout and metadata.


def calls_of(method: str) -> list[str]:
    return [path for path in sorted(METHODS) if snake(METHODS[path].name) == method]


@pytest.mark.parametrize("path", sorted(METHODS))
def test_every_method_takes_metadata_and_all_but_watches_a_timeout(path):
    name = snake(METHODS[path].name)
    for client_class in (Client, AsyncClient):
        parameters = inspect.signature(getattr(client_class, name)).parameters
        options = [p for p in parameters.values() if p.name in ("timeout", "metadata")]
        expected = ["metadata"] if METHODS[path].server_streaming else ["timeout", "metadata"]
        assert [p.name for p in options] == expected
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is None for p in options)


@pytest.mark.parametrize("path", sorted(METHODS))
def test_every_method_sends_the_calls_metadata_beside_the_token(fake, config, path):
    method = METHODS[path]
    name = snake(method.name)
    args, kwargs = arguments(name)
    with Client(config, token="t0ken") as client:
        result = getattr(client, name)(*args, metadata={"x-trace": "t-1"}, **kwargs)
        if method.server_streaming:
            with result:
                next(result)
        elif is_listing(method):
            list(result)
    (received,) = fake.received
    assert received.metadata["x-trace"] == "t-1"
    assert received.metadata["authorization"] == "Bearer t0ken"


@pytest.mark.parametrize("path", [p for p in sorted(METHODS) if not METHODS[p].server_streaming])
async def test_every_async_method_takes_a_timeout_and_metadata(fake, aclient, path):
    method = METHODS[path]
    name = snake(method.name)
    args, kwargs = arguments(name)
    call = getattr(aclient, name)(*args, timeout=2, metadata=[("x-trace", "t-2")], **kwargs)
    if is_listing(method):
        assert [item async for item in call] == []
    else:
        await call
    (received,) = fake.received
    assert received.metadata["x-trace"] == "t-2"
    assert 0 < received.time_remaining < 3  # 2, as grpc rounds it; the config's is WAIT (10)


@pytest.mark.parametrize("timeout", [2, timedelta(seconds=2)], ids=["seconds", "timedelta"])
def test_a_calls_timeout_replaces_the_configs(fake, client, timeout):
    client.get_secret("x")
    client.get_secret("x", timeout=timeout)
    default, own = (r.time_remaining for r in fake.received)
    assert 5 < default < WAIT + 1  # WAIT (10), as grpc rounds it
    assert 0 < own < 3


def test_a_listings_timeout_holds_for_each_page(fake, client):
    paged_secrets(fake, {"": (["a"], "p2", 7), "p2": (["b"], "", 9)})
    assert len(list(client.list_secrets(timeout=2))) == 2
    assert [0 < r.time_remaining < 3 for r in fake.received] == [True, True]


def test_a_watch_sends_its_metadata_on_every_connection_and_has_no_deadline(fake, client):
    def first(request, context):
        yield watch_event(BOOKMARK, 7)
        abort(context, grpc.StatusCode.UNAVAILABLE, "restarting", "SHUTDOWN")

    def second(request, context):
        return fake.hold_open([watch_event(MODIFIED, 8, "a")], context)

    fake.replies["WatchSecrets"] = connections(fake, first, second)
    with client.watch_secrets(metadata={"x-trace": "w-1"}) as stream:
        assert [next(stream).revision, next(stream).revision] == [7, 8]
    assert [r.metadata["x-trace"] for r in fake.received] == ["w-1", "w-1"]
    assert all(r.time_remaining is None or r.time_remaining > WAIT for r in fake.received)
    with pytest.raises(TypeError, match="timeout"):
        client.watch_secrets(timeout=5)


@pytest.mark.parametrize(
    ("timeout", "error"),
    [(0, ValueError), (-1, ValueError), (timedelta(0), ValueError), ("5", TypeError), (True, TypeError)],
)
def test_a_bad_timeout_is_refused_before_any_call(fake, client, timeout, error):
    with pytest.raises(error, match="timeout"):
        client.get_secret("x", timeout=timeout)
    assert fake.received == []


def test_a_calls_metadata_may_not_repeat_the_configs_token(fake, config):
    with Client(config, token="t0ken") as client:
        with pytest.raises(ValueError, match="authorization"):
            client.get_secret("x", metadata={"authorization": "Bearer other"})
        with pytest.raises(ValueError, match="authorization"):
            client.watch_secrets(metadata=[("authorization", "Bearer other")])
        with pytest.raises(TypeError, match="metadata"):
            client.get_secret("x", metadata=["x-trace"])
    assert fake.received == []
    with Client(config) as client:  # with no token in the config, a call may bring its own
        client.get_secret("x", metadata={"authorization": "Bearer own"})
    assert fake.received[0].metadata["authorization"] == "Bearer own"


def test_malformed_metadata_is_refused_without_echoing_its_values(fake, client):
    with pytest.raises(TypeError) as caught:
        client.get_secret("x", metadata=[["authorization", "Bearer s3cr3t-t0ken"]])  # a list, not a pair
    assert "s3cr3t-t0ken" not in str(caught.value) and "metadata" in str(caught.value)
    assert fake.received == []


def test_errors_arrive_typed_with_their_details(fake, client):
    fake.replies["GetSecret"] = lambda request, context: abort(
        context, grpc.StatusCode.NOT_FOUND, "secret default/db not found", "NOT_FOUND", kind="secrets"
    )
    with pytest.raises(satchel.NotFoundError) as caught:
        client.get_secret("db")
    assert caught.value.reason == "NOT_FOUND"
    assert caught.value.metadata == {"kind": "secrets"}
    assert caught.value.request_id == "req-42"
    assert caught.value.message == "secret default/db not found"


async def test_async_errors_arrive_typed(fake, aclient):
    fake.replies["UpdateSecret"] = lambda request, context: abort(
        context, grpc.StatusCode.ABORTED, "etag mismatch", "ETAG_MISMATCH"
    )
    with pytest.raises(satchel.ConflictError) as caught:
        await aclient.update_secret("db", immutable=True, etag="old")
    assert caught.value.reason == "ETAG_MISMATCH"
    assert caught.value.request_id == "req-42"


def test_bearer_token_is_sent_as_metadata(fake, config):
    with Client(config, token="t0ken") as client:
        client.get_public_keys()
    with Client(config) as client:
        client.get_public_keys()
    assert fake.received[0].metadata["authorization"] == "Bearer t0ken"
    assert "authorization" not in fake.received[1].metadata


def test_client_from_keyword_arguments(fake, certs):
    with Client(
        server=f"localhost:{fake.port}", ca=certs / "ca.crt", cert=certs / "admin.crt", key=certs / "admin.key"
    ) as client:
        assert client.config.timeout == 30
        client.get_secret("x")
    assert fake.rpcs() == ["GetSecret"]


# ---------------------------------------------------------------------------------------------
# Configuration.


def test_from_env_reads_the_environment_and_overrides_win(monkeypatch, certs):
    monkeypatch.setenv("SATCHEL_SERVER", "env:1")
    monkeypatch.setenv("SATCHEL_CA", str(certs / "ca.crt"))
    monkeypatch.setenv("SATCHEL_CERT", str(certs / "admin.crt"))
    monkeypatch.setenv("SATCHEL_KEY", str(certs / "admin.key"))
    monkeypatch.setenv("SATCHEL_TOKEN", "secret-token")

    config = ClientConfig.from_env(server="flag:2", cert=None)

    assert config.server == "flag:2"
    assert config.cert == certs / "admin.crt"
    assert config.token == "secret-token"
    assert "secret-token" not in repr(config)
    assert config.metadata() == (("authorization", "Bearer secret-token"),)


@pytest.mark.parametrize("missing", ["SERVER", "CA", "CERT", "KEY"])
def test_from_env_names_what_is_missing(monkeypatch, certs, missing):
    values = {"SERVER": "h:1", "CA": certs / "ca.crt", "CERT": certs / "admin.crt", "KEY": certs / "admin.key"}
    for name, value in values.items():
        monkeypatch.setenv(f"SATCHEL_{name}", str(value))
    monkeypatch.delenv(f"SATCHEL_{missing}")
    with pytest.raises(ValueError, match=f"--{missing.lower()} or set SATCHEL_{missing}"):
        ClientConfig.from_env()


def test_unreadable_or_non_pem_files_are_named(certs, tmp_path):
    config = ClientConfig(server="h:1", ca=tmp_path / "nope.crt", cert=certs / "admin.crt", key=certs / "admin.key")
    with pytest.raises(ValueError, match=r"ca file .*nope\.crt"):
        Client(config)
    (tmp_path / "junk.key").write_text("junk")
    with pytest.raises(ValueError, match=r"key file .*junk\.key .* not PEM"):
        Client(config, ca=certs / "ca.crt", key=tmp_path / "junk.key")


def test_channel_options():
    options = dict(ClientConfig(server="h:1", ca="a", cert="b", key="c").channel_options())
    assert options["grpc.keepalive_time_ms"] == 30_000
    assert options["grpc.keepalive_timeout_ms"] == 10_000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.http2.max_pings_without_data"] == 0
    assert options["grpc.max_receive_message_length"] == options["grpc.max_send_message_length"] == 8 * 1024 * 1024


# ---------------------------------------------------------------------------------------------
# Watches that resume, relist, stop and close.


@pytest.mark.parametrize("how", ["unavailable", "resource_exhausted", "server_ends_stream"])
def test_watch_resumes_from_the_last_revision(fake, client, how):
    def first(request, context):
        yield watch_event(ADDED, 5, "a")
        yield watch_event(BOOKMARK, 7)
        if how == "unavailable":
            abort(context, grpc.StatusCode.UNAVAILABLE, "restarting", "SHUTDOWN")
        elif how == "resource_exhausted":
            abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "too slow", "WATCH_BUFFER_OVERFLOW")

    def second(request, context):
        return fake.hold_open([watch_event(MODIFIED, 8, "a")], context)

    fake.replies["WatchSecrets"] = connections(fake, first, second)
    with client.watch_secrets(namespace="prod", label_selector="x=y") as stream:
        assert [(e.type, e.revision) for e in (next(stream), next(stream), next(stream))] == [
            (ADDED, 5),
            (BOOKMARK, 7),
            (MODIFIED, 8),
        ]
        assert stream.revision == 8

    first_request, second_request = (r.request for r in fake.received)
    assert (first_request.since_revision, first_request.send_initial) == (0, False)
    assert (second_request.since_revision, second_request.send_initial) == (7, False)
    assert (second_request.namespace, second_request.label_selector) == ("prod", "x=y")


def test_watch_relists_when_its_revision_is_compacted(fake, client):
    log = []

    def first(request, context):
        yield watch_event(MODIFIED, 4, "a")
        abort(context, grpc.StatusCode.OUT_OF_RANGE, "compacted", "REVISION_COMPACTED", compact_revision="9")

    def second(request, context):
        return fake.hold_open(
            [
                watch_event(ADDED, 10, "a"),
                watch_event(ADDED, 10, "b"),
                watch_event(SYNCED, 10),
                watch_event(MODIFIED, 11, "b"),
            ],
            context,
        )

    fake.replies["WatchSecrets"] = connections(fake, first, second)
    with client.watch_secrets(since_revision=3, on_relist=lambda: log.append("relist")) as stream:
        for _ in range(5):
            event = next(stream)
            log.append((event.type, event.secret.metadata.name))

    assert log == [(MODIFIED, "a"), "relist", (ADDED, "a"), (ADDED, "b"), (SYNCED, ""), (MODIFIED, "b")]
    first_request, second_request = (r.request for r in fake.received)
    assert first_request.since_revision == 3
    assert (second_request.since_revision, second_request.send_initial) == (0, True)


def test_watch_restarts_a_listing_broken_before_synced(fake, client):
    relists = []

    def first(request, context):
        yield watch_event(ADDED, 10, "a")
        abort(context, grpc.StatusCode.UNAVAILABLE, "restarting", "SHUTDOWN")

    def second(request, context):
        return fake.hold_open([watch_event(ADDED, 12, "b"), watch_event(SYNCED, 12)], context)

    fake.replies["WatchSecrets"] = connections(fake, first, second)
    with client.watch_secrets(send_initial=True, on_relist=lambda: relists.append(True)) as stream:
        assert next(stream).secret.metadata.name == "a"
        assert relists == []
        assert next(stream).secret.metadata.name == "b"
        assert relists == [True]
        assert next(stream).type == SYNCED

    assert [(r.request.send_initial, r.request.since_revision) for r in fake.received] == [(True, 0), (True, 0)]


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.PERMISSION_DENIED, satchel.PermissionDeniedError),
        (grpc.StatusCode.UNAUTHENTICATED, satchel.UnauthenticatedError),
        (grpc.StatusCode.INVALID_ARGUMENT, satchel.InvalidArgumentError),
        (grpc.StatusCode.CANCELLED, satchel.RequestCancelledError),
        (grpc.StatusCode.OUT_OF_RANGE, satchel.OutOfRangeError),
    ],
)
def test_watch_stops_on_final_errors(fake, client, code, error):
    def refuse(request, context):
        yield watch_event(BOOKMARK, 2)
        abort(context, code, "no", "SOME_REASON")

    fake.replies["WatchSecrets"] = refuse
    stream = client.watch_secrets()
    assert next(stream).revision == 2
    with pytest.raises(error):
        next(stream)
    with pytest.raises(StopIteration):
        next(stream)
    assert fake.rpcs() == ["WatchSecrets"]


def test_watch_close_from_another_thread_cancels_the_call(fake, client):
    stream = client.watch_workloads()
    assert next(stream).type == BOOKMARK
    ended = threading.Event()
    outcome = []

    def consume():
        outcome.extend(stream)  # blocks until close()
        ended.set()

    threading.Thread(target=consume, daemon=True).start()
    stream.close()
    assert ended.wait(WAIT)
    assert outcome == []
    assert fake.cancelled.wait(WAIT)


def test_closing_the_client_closes_its_watches(fake, config):
    client = Client(config)
    stream = client.watch_service_accounts()
    assert next(stream).type == BOOKMARK
    client.close()
    with pytest.raises(StopIteration):
        next(stream)


async def test_async_watch_resumes_and_relists(fake, aclient):
    relists = []

    def first(request, context):
        yield watch_event(BOOKMARK, 7)
        abort(context, grpc.StatusCode.UNAVAILABLE, "restarting", "SHUTDOWN")

    def second(request, context):
        yield watch_event(MODIFIED, 8, "a")
        abort(context, grpc.StatusCode.OUT_OF_RANGE, "compacted", "REVISION_COMPACTED", compact_revision="20")

    def third(request, context):
        return fake.hold_open([watch_event(ADDED, 21, "a"), watch_event(SYNCED, 21)], context)

    fake.replies["WatchSecrets"] = connections(fake, first, second, third)
    async with aclient.watch_secrets(on_relist=lambda: relists.append(True)) as stream:
        events = [await anext(stream) for _ in range(4)]

    assert [(e.type, e.revision) for e in events] == [(BOOKMARK, 7), (MODIFIED, 8), (ADDED, 21), (SYNCED, 21)]
    assert relists == [True]
    requests = [(r.request.since_revision, r.request.send_initial) for r in fake.received]
    assert requests == [(0, False), (7, False), (0, True)]


async def test_async_watch_stops_on_permission_denied(fake, aclient):
    fake.replies["WatchSecrets"] = lambda request, context: abort(
        context, grpc.StatusCode.PERMISSION_DENIED, "no", "DENIED"
    )
    stream = aclient.watch_secrets()
    with pytest.raises(satchel.PermissionDeniedError):
        await anext(stream)
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_async_watch_aclose_from_another_task_cancels_the_call(fake, aclient):
    stream = aclient.watch_secrets()
    assert (await anext(stream)).type == BOOKMARK
    consumer = asyncio.create_task(anext(stream, "ended"))
    await asyncio.sleep(0)  # let the consumer start waiting; not a timing assumption
    await stream.aclose()
    assert await asyncio.wait_for(consumer, WAIT) == "ended"
    assert await asyncio.to_thread(fake.cancelled.wait, WAIT)


def test_backoff_doubles_with_full_jitter_up_to_the_cap_and_resets(monkeypatch):
    monkeypatch.setattr(_watch, "BACKOFF_BASE", 0.1)
    monkeypatch.setattr(_watch.random, "uniform", lambda low, high: (low, high))
    resume = _watch._Resume(secret_pb2.WatchSecretsRequest(since_revision=5))
    unavailable = satchel.UnavailableError("down", code=grpc.StatusCode.UNAVAILABLE)

    bounds = [resume.broken(unavailable) for _ in range(10)]
    assert bounds[:4] == [(0, 0.1), (0, 0.2), (0, 0.4), (0, 0.8)]
    assert bounds[-1] == (0, 10.0)
    resume.received(watch_event(BOOKMARK, 3))
    assert resume.broken(unavailable) == (0, 0.1)


def test_a_listing_that_keeps_breaking_keeps_backing_off(monkeypatch):
    """ADDED events of a listing that breaks before SYNCED must not reset the backoff,
    or a failing relist would fetch the whole listing again every 0.1 s."""
    monkeypatch.setattr(_watch, "BACKOFF_BASE", 0.1)
    monkeypatch.setattr(_watch.random, "uniform", lambda low, high: (low, high))
    resume = _watch._Resume(secret_pb2.WatchSecretsRequest(send_initial=True))
    unavailable = satchel.UnavailableError("down", code=grpc.StatusCode.UNAVAILABLE)

    for attempt in range(4):
        resume.received(watch_event(ADDED, 3))
        assert resume.broken(unavailable) == (0, 0.1 * 2**attempt)
    resume.received(watch_event(ADDED, 3))
    resume.received(watch_event(SYNCED, 3))
    assert resume.broken(unavailable) == (0, 0.1), "a completed listing resets the backoff"


# ---------------------------------------------------------------------------------------------
# Public names.

DEFINED_HERE = {
    "AsyncClient",
    "AsyncListIterator",
    "AsyncWatchStream",
    "Client",
    "ClientConfig",
    "ListIterator",
    "NotFoundError",
    "SatchelError",
    "WatchStream",
    "from_rpc_error",
}


def test_public_names_are_sorted_and_report_satchel_as_their_module():
    assert satchel.__all__ == sorted(satchel.__all__)
    ours = {
        name
        for name in satchel.__all__
        if (getattr(satchel, name).__module__ or "").partition(".")[0] == "satchel"
        and not getattr(satchel, name).__module__.startswith("satchel.v1")
    }
    assert ours >= DEFINED_HERE
    modules = {name: getattr(satchel, name).__module__ for name in ours}
    assert modules == dict.fromkeys(ours, "satchel")
    # The generated protobuf classes keep their own module.
    assert satchel.Secret.__module__ == "satchel.v1.secret_pb2"


def test_a_traceback_names_satchel_dot_the_error(fake, client):
    fake.replies["GetSecret"] = lambda request, context: abort(
        context, grpc.StatusCode.NOT_FOUND, "secret default/db not found", "NOT_FOUND"
    )
    with pytest.raises(satchel.NotFoundError) as caught:
        client.get_secret("db")
    assert traceback.format_exception_only(caught.value)[-1].startswith("satchel.NotFoundError: NOT_FOUND: secret")
    assert repr(type(caught.value)) == "<class 'satchel.NotFoundError'>"
    assert repr(satchel.Client) == "<class 'satchel.Client'>"


# The server's dependencies; DESIGN.md: the client needs only grpcio + protobuf (+ cryptography).
SERVER_ONLY = (
    "googleapis-common-protos",
    "grpcio-status",
    "grpcio-health-checking",
    "grpcio-reflection",
    "PyJWT",
    "sqlite-utils",
    "PyYAML",
)


def _modules_of(distribution: str) -> set[str]:
    """The importable names a distribution installs (google.* down to its own packages)."""
    names = set()
    for file in importlib.metadata.distribution(distribution).files or ():
        parts = file.parts
        if parts[0] == ".." or parts[0].endswith((".dist-info", ".data")) or not file.name.endswith((".py", ".so")):
            continue
        names.add(f"google.{parts[1]}" if parts[0] == "google" else parts[0].removesuffix(".py").split(".")[0])
    return names


def test_every_client_module_loads_without_the_servers_dependencies() -> None:
    blocked = sorted(set().union(*map(_modules_of, SERVER_ONLY)))
    assert {"google.rpc", "grpc_status", "sqlite_utils", "yaml", "jwt"} <= set(blocked)
    code = (
        "import importlib, pkgutil, sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import satchel\n"
        "for module in pkgutil.walk_packages(satchel.__path__, 'satchel.'): importlib.import_module(module.name)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
