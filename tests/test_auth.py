"""Who may call: mTLS is required, the principal comes from a SPIFFE ID of the
trust domain, non-admins are denied before anything is looked up, and every
request leaves one audit record that holds no secret value."""

from __future__ import annotations

import base64
import datetime
import json
import re
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from conftest import Stubs, mint, secure_channel
from cryptography import x509
from failures import failure
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from kinds import ALL, SECRETS, SERVICE_ACCOUNTS, WORKLOADS, Kind
from watchkit import running

from satchel.v1 import secret_pb2

Code = grpc.StatusCode
CALL_TIMEOUT = 10  # seconds; a refused handshake must fail, not hang


async def _transport_failure(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    try:
        await call
    except grpc.aio.AioRpcError as e:
        return e
    raise AssertionError("the call succeeded")


@pytest.mark.parametrize("who", ["nobody", "foreign"])
async def test_handshake_refused_without_a_certificate_of_our_ca(connect, pki, server, who: str) -> None:
    identity = None if who == "nobody" else pki.foreign
    stubs = connect(identity)

    for call in (
        stubs.secrets.GetSecret(secret_pb2.GetSecretRequest(name="x"), timeout=CALL_TIMEOUT),
        stubs.accounts.ListServiceAccounts(SERVICE_ACCOUNTS.module.ListServiceAccountsRequest(), timeout=CALL_TIMEOUT),
    ):
        e = await _transport_failure(call)
        assert e.code() == Code.UNAVAILABLE, f"{e.code().name}: {e.details()}"

    # Nothing reached a handler, so nothing was audited; the server still serves others.
    await connect(pki.admin).secrets.ListSecrets(secret_pb2.ListSecretsRequest(), timeout=CALL_TIMEOUT)
    assert [r["principal"] for r in _records(server.config.audit_log)] == ["user:admin"]


@pytest.mark.parametrize("who", ["no_spiffe", "other_domain"])
async def test_certificate_without_our_spiffe_id_is_unauthenticated(connect, pki, admin, who: str) -> None:
    stubs = connect(getattr(pki, who))
    await SECRETS.api(admin).create(SECRETS.make("there"))

    for kind in ALL:
        api = kind.api(stubs)
        for call in (api.get("there"), api.list(), api.create(kind.make("new")), api.delete("there")):
            f = await failure(call, Code.UNAUTHENTICATED)
            assert f.info.reason == "NO_SPIFFE_ID"
            assert "SPIFFE ID" in f.message and "'satchel.local'" in f.message
    assert (await SECRETS.api(admin).get("there")).metadata.name == "there"


ADMIN_ID = "spiffe://satchel.local/user/admin"
NOT_A_URI_SAN = {
    "common-name-only": (ADMIN_ID, []),
    "dns-san": ("x", [x509.DNSName(ADMIN_ID)]),
    "email-san": ("x", [x509.RFC822Name(ADMIN_ID)]),
    "two-spiffe-uris": (
        "x",
        [x509.UniformResourceIdentifier(ADMIN_ID), x509.UniformResourceIdentifier("spiffe://satchel.local/user/alice")],
    ),
    # grpc's peer_uri stops at the NUL: read from it, this certificate was the admin's.
    "nul-byte-in-the-uri": ("x", [x509.UniformResourceIdentifier(ADMIN_ID + "\x00.attacker")]),
    "control-character-in-the-uri": ("x", [x509.UniformResourceIdentifier("spiffe://satchel.local/user/ad\tmin")]),
    "spiffe-and-https-uris": (
        "x",
        [x509.UniformResourceIdentifier(ADMIN_ID), x509.UniformResourceIdentifier("https://satchel.local/admin")],
    ),
}


@pytest.mark.parametrize("case", NOT_A_URI_SAN)
async def test_the_principal_comes_only_from_one_uri_san(connect, pki, case: str) -> None:
    """A SPIFFE ID counts only as the certificate's one URI SAN (X.509-SVID):
    the same text in the subject or in a DNS or email SAN names nobody."""
    common_name, sans = NOT_A_URI_SAN[case]
    stubs = connect(mint(pki.dir, case, common_name, sans))

    f = await failure(SECRETS.api(stubs).list(), Code.UNAUTHENTICATED)
    assert f.info.reason == "NO_SPIFFE_ID"


async def test_a_uri_san_beside_other_sans_names_the_principal(connect, pki) -> None:
    identity = mint(
        pki.dir, "mixed-sans", "whatever", [x509.DNSName("host.example"), x509.UniformResourceIdentifier(ADMIN_ID)]
    )
    await SECRETS.api(connect(identity)).list()


def _every_crud_rpc(stubs, name: str) -> list[tuple[str, Awaitable[object]]]:
    """One call of each of the fifteen CRUD RPCs, aimed at `default/<name>`."""
    calls = []
    for kind in ALL:
        api = kind.api(stubs)
        obj = kind.make(name, labels={"x": "y"})
        calls += [
            (kind.rpc("create"), api.create(obj)),
            (kind.rpc("get"), api.get(name)),
            (kind.rpc("list"), api.list()),
            (f"{kind.rpc('list')} in a namespace", api.list(namespace="default")),
            (kind.rpc("update"), api.update(obj, ["metadata.labels"])),
            (kind.rpc("delete"), api.delete(name)),
        ]
    return calls


@pytest.mark.parametrize("who", ["alice", "node", "node-named-admin", "service-account"])
@pytest.mark.parametrize("target", ["existing", "missing"])
async def test_non_admins_are_denied_every_crud_rpc(connect, pki, admin, who: str, target: str) -> None:
    # Objects bound to another node (n2), so that no node rule ever lets n1 see them:
    # n1 may list workloads, and its list of them is empty.
    await SECRETS.api(admin).create(SECRETS.make("existing"))
    await SERVICE_ACCOUNTS.api(admin).create(SERVICE_ACCOUNTS.make("existing"))
    await WORKLOADS.api(admin).create(
        WORKLOADS.make("existing", node_name="n2", service_account="existing", secrets=["existing"])
    )
    before = [await kind.api(admin).list() for kind in ALL]
    if who == "node-named-admin":
        identity = pki.identity("node", "admin")
    elif who == "service-account":
        sa_id = x509.UniformResourceIdentifier("spiffe://satchel.local/ns/default/sa/web")
        identity = mint(pki.dir, "sa-web", "web", [sa_id])
    else:
        identity = getattr(pki, who)
    principal = {"alice": "user:alice", "node": "node:n1", "node-named-admin": "node:admin"}.get(who, "sa:default/web")
    stubs = connect(identity)

    for what, call in _every_crud_rpc(stubs, target):
        if who.startswith("node") and what.startswith("ListWorkloads"):
            assert not (await call).workloads, f"{what} showed a workload of another node"  # type: ignore[attr-defined]
            continue
        try:
            f = await failure(call, Code.PERMISSION_DENIED)
        except AssertionError as e:
            raise AssertionError(f"{what}: {e}") from None
        assert f.info.reason == "PERMISSION_DENIED"
        assert f.message.startswith(f"{principal} may not"), f"{what}: {f.message}"
        assert "not found" not in f.message and "exists" not in f.message

    assert [await kind.api(admin).list() for kind in ALL] == before, "a denied request changed what is stored"


# -- audit ---------------------------------------------------------------------------------


RECORD_FIELDS = [
    "time",
    "request_id",
    "principal",
    "token",
    "method",
    "resource",
    "verb",
    "decision",
    "reason",
    "code",
    "stage",
    "duration_ms",
]


def _records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def _with_id(request_id: str, make_call: Callable[[tuple], Awaitable[object]]) -> None:
    try:
        await make_call((("x-request-id", request_id),))
    except grpc.aio.AioRpcError:
        pass


async def test_audit_one_record_per_request(connect, pki, admin, server) -> None:
    alice = connect(pki.alice)
    value = b"s3cr3t-audit-" + secrets.token_hex(16).encode()
    secret = SECRETS.make("audited", data={"token": value})
    bad = SECRETS.make("Bad")

    steps = [
        ("r-create", lambda md: SECRETS.api(admin).create(secret, metadata=md)),
        ("r-get", lambda md: SECRETS.api(admin).get("audited", metadata=md)),
        ("r-list", lambda md: SECRETS.api(admin).list(namespace="", call={"metadata": md})),
        ("r-missing", lambda md: SECRETS.api(admin).get("absent", "ops", metadata=md)),
        ("r-invalid", lambda md: SECRETS.api(admin).create(bad, metadata=md)),
        (
            "r-update",
            lambda md: SECRETS.api(admin).update(
                SECRETS.make("audited", data={"token": value + b"2"}), ["data"], metadata=md
            ),
        ),
        ("r-denied", lambda md: SECRETS.api(alice).get("audited", metadata=md)),
        ("r-delete", lambda md: SECRETS.api(admin).delete("audited", metadata=md)),
    ]
    for request_id, make_call in steps:
        await _with_id(request_id, make_call)

    records = _records(server.config.audit_log)
    assert [r["request_id"] for r in records] == [rid for rid, _ in steps], "one record per request, in order"
    by_id = {r["request_id"]: r for r in records}
    secret_rpc = "/satchel.v1.SecretService/"
    admin_, alice_, ok = "user:admin", "user:alice", "OK"
    expected = {
        "r-create": (admin_, secret_rpc + "CreateSecret", "secrets/default/audited", "create", "allow", ok),
        "r-get": (admin_, secret_rpc + "GetSecret", "secrets/default/audited", "get", "allow", ok),
        "r-list": (admin_, secret_rpc + "ListSecrets", "secrets/*", "list", "allow", ok),
        "r-missing": (admin_, secret_rpc + "GetSecret", "secrets/ops/absent", "get", "allow", "NOT_FOUND"),
        "r-invalid": (
            admin_,
            secret_rpc + "CreateSecret",
            "secrets/default/Bad",
            "create",
            "allow",
            "INVALID_ARGUMENT",
        ),
        "r-update": (admin_, secret_rpc + "UpdateSecret", "secrets/default/audited", "update", "allow", ok),
        "r-denied": (alice_, secret_rpc + "GetSecret", "secrets/default/audited", "get", "deny", "PERMISSION_DENIED"),
        "r-delete": (admin_, secret_rpc + "DeleteSecret", "secrets/default/audited", "delete", "allow", ok),
    }
    for request_id, want in expected.items():
        r = by_id[request_id]
        assert list(r) == RECORD_FIELDS, request_id
        assert (r["principal"], r["method"], r["resource"], r["verb"], r["decision"], r["code"]) == want, request_id
        assert (r["stage"], r["token"]) == ("completed", ""), request_id
        assert isinstance(r["duration_ms"], float) and r["duration_ms"] >= 0, request_id
        assert datetime.datetime.fromisoformat(r["time"]).tzinfo is not None
    assert "alice" in by_id["r-denied"]["reason"]

    raw = server.config.audit_log.read_bytes()
    for needle in (value, value + b"2", base64.b64encode(value), value.hex().encode(), b"s3cr3t-audit"):
        found = needle in raw  # a boolean: a failing assert prints no value
        assert not found, "a secret value (or an encoding of it) is in the audit log"


@pytest.mark.parametrize("who", ["no_spiffe", "other_domain"])
async def test_audit_records_unauthenticated_requests(connect, pki, server, who: str) -> None:
    stranger = connect(getattr(pki, who))

    f = await failure(
        WORKLOADS.api(stranger).get("w", metadata=(("x-request-id", "r-stranger"),)), Code.UNAUTHENTICATED
    )

    (record,) = _records(server.config.audit_log)
    assert (record["request_id"], record["principal"], record["method"], record["code"]) == (
        "r-stranger",
        "",
        "/satchel.v1.WorkloadService/GetWorkload",
        "UNAUTHENTICATED",
    )
    assert record["reason"] == f.message


# Every shape of call to a method the server lacks, each given a deadline so that
# a server waiting for a request message fails the test instead of hanging it.
UNKNOWN_CALLS = {
    "unary": lambda ch, method, md: ch.unary_unary(method)(b"\x0a\x01x", metadata=md, timeout=CALL_TIMEOUT),
    "server-stream": lambda ch, method, md: ch.unary_stream(method)(b"", metadata=md, timeout=CALL_TIMEOUT).read(),
    "client-stream-of-none": lambda ch, method, md: ch.stream_unary(method)(
        iter(()), metadata=md, timeout=CALL_TIMEOUT
    ),
    "bidi-that-sends-nothing": lambda ch, method, md: ch.stream_stream(method)(
        metadata=md, timeout=CALL_TIMEOUT
    ).read(),
}


@pytest.mark.parametrize("shape", UNKNOWN_CALLS, ids=list(UNKNOWN_CALLS))
@pytest.mark.parametrize("method", ["/satchel.v1.SecretService/StealSecret", "/no.such.Service/Call"])
async def test_an_unknown_method_is_an_audited_unimplemented_with_error_info(
    admin, server, method: str, shape: str
) -> None:
    call = UNKNOWN_CALLS[shape](admin.channel, method, (("x-request-id", "r-unknown"),))

    f = await failure(call, Code.UNIMPLEMENTED)  # one ErrorInfo, checked by failure()

    assert f.info.reason == "METHOD_NOT_FOUND"
    assert method in f.message
    (record,) = _records(server.config.audit_log)
    assert (record["request_id"], record["principal"], record["method"], record["code"]) == (
        "r-unknown",
        "user:admin",
        method,
        "UNIMPLEMENTED",
    )


async def test_an_unknown_method_still_needs_a_spiffe_id(connect, pki) -> None:
    stranger = connect(pki.no_spiffe)
    await failure(stranger.channel.unary_unary("/no.such.Service/Call")(b""), Code.UNAUTHENTICATED)


async def test_request_ids_are_made_when_missing(admin, server) -> None:
    request = secret_pb2.ListSecretsRequest()
    await admin.secrets.ListSecrets(request)
    await admin.secrets.ListSecrets(request)
    await admin.secrets.ListSecrets(request, metadata=(("x-request-id", "ci-run-7.step:3"),))
    await admin.secrets.ListSecrets(request, metadata=(("x-request-id", "a b"),))  # unusable: replaced

    made_1, made_2, given, replaced = (r["request_id"] for r in _records(server.config.audit_log))
    assert given == "ci-run-7.step:3"
    assert len({made_1, made_2, replaced}) == 3
    for rid in (made_1, made_2, replaced):
        assert re.fullmatch(r"[-_.:A-Za-z0-9]{8,128}", rid), rid


async def test_request_id_is_returned_in_trailers(admin, server) -> None:
    request = secret_pb2.ListSecretsRequest()
    made = admin.secrets.ListSecrets(request)
    await made
    assert (
        dict(await made.trailing_metadata()).get("x-request-id") == _records(server.config.audit_log)[-1]["request_id"]
    )

    given = admin.secrets.ListSecrets(request, metadata=(("x-request-id", "ci-run-7.step:3"),))
    await given
    assert dict(await given.trailing_metadata()).get("x-request-id") == "ci-run-7.step:3"


@pytest.mark.parametrize("kind", ALL, ids=lambda k: k.name)
async def test_request_id_is_returned_on_errors_too(admin, server, kind: Kind) -> None:
    """A caller reporting a failure can quote the id that finds its audit record."""
    f = await failure(kind.api(admin).get("absent"), Code.NOT_FOUND)
    audited = _records(server.config.audit_log)[-1]["request_id"]
    assert f.trailers.get("x-request-id") == audited

    f = await failure(kind.api(admin).get("absent", metadata=(("x-request-id", "given-1"),)), Code.NOT_FOUND)
    assert f.trailers.get("x-request-id") == "given-1"


async def test_a_request_whose_audit_record_cannot_be_written_is_refused_unavailable(pki, tmp_path) -> None:
    """/dev/full takes the open and refuses every write (ENOSPC): each call is
    UNAVAILABLE (AUDIT_UNAVAILABLE) rather than answered unrecorded, no error
    text of the server's reaches the caller, and the server stays up."""
    async with running(pki, tmp_path / "data", audit_log=Path("/dev/full")) as server:
        channel = secure_channel(server.address, pki, pki.admin)
        try:
            stubs = Stubs.over(channel)
            calls = {
                "a miss": SECRETS.api(stubs).get("absent"),
                "a write": SECRETS.api(stubs).create(SECRETS.make("unrecorded")),
                "a refusal": SECRETS.api(stubs).create(SECRETS.make("Bad Name")),
                "a refused watch": stubs.secrets.WatchSecrets(
                    secret_pb2.WatchSecretsRequest(namespace="Bad_NS")
                ).read(),
            }
            for what, call in calls.items():
                f = await failure(call, Code.UNAVAILABLE)
                assert f.info.reason == "AUDIT_UNAVAILABLE", what
                assert "Errno" not in f.message and "space" not in f.message, f"{what}: {f.message}"
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest())
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            await channel.close()


async def test_huge_caller_strings_make_bounded_records_and_messages_and_the_right_status(connect, pki, server) -> None:
    """A 2 MiB namespace or etag, or an 8,000-character method name, must neither make a megabyte audit line
    nor a trailer too large for the client (which would see a transport error
    instead of the status)."""
    huge = "n" * (2 * 1024 * 1024)
    alice, admin = connect(pki.alice), connect(pki.admin)
    f = await failure(
        alice.secrets.GetSecret(secret_pb2.GetSecretRequest(namespace=huge, name="x")), Code.PERMISSION_DENIED
    )
    assert len(f.message) < 1024
    await SECRETS.api(admin).create(SECRETS.make("etagged"))
    stale = SECRETS.make("etagged", labels={"a": "b"})
    stale.metadata.etag = huge
    f = await failure(SECRETS.api(admin).update(stale, ["metadata.labels"]), Code.ABORTED)
    assert len(f.message) < 1024
    # Far beyond MAX_FIELD, yet under grpc's 8 KiB metadata soft limit with the other headers
    # (beyond it grpc refuses some calls itself, RESOURCE_EXHAUSTED, before any handler).
    unknown = admin.channel.unary_unary("/satchel.v1.SecretService/" + "M" * 6_000)
    f = await failure(unknown(b""), Code.UNIMPLEMENTED)
    assert len(f.message) < 1024
    lines = server.config.audit_log.read_text().splitlines()
    assert lines and max(len(line) for line in lines) < 4096, "an audit record grew with the caller's strings"


async def test_an_unwritable_log_refuses_a_stream_before_its_first_response(pki, tmp_path) -> None:
    """A stream's first record is written once it is allowed and before anything
    is sent: if it cannot be, the stream ends UNAVAILABLE (AUDIT_UNAVAILABLE)
    where its first response would have been (a secret as ADDED, a health
    status, the reflection answer)."""
    data = tmp_path / "data"
    async with running(pki, data) as server:
        async with secure_channel(server.address, pki, pki.admin) as channel:
            await SECRETS.api(Stubs.over(channel)).create(SECRETS.make("kept"))
    async with running(pki, data, audit_log=Path("/dev/full")) as server:
        async with secure_channel(server.address, pki, pki.admin) as channel:
            streams = {
                "WatchSecrets": Stubs.over(channel).secrets.WatchSecrets(
                    secret_pb2.WatchSecretsRequest(send_initial=True)
                ),
                "Health/Watch": health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest()),
                "reflection": channel.stream_stream(REFLECTION["v1"])(iter([LIST_SERVICES])),
            }
            for what, stream in streams.items():
                f = await failure(stream.read(), Code.UNAVAILABLE)  # not the first response
                assert f.info.reason == "AUDIT_UNAVAILABLE", what
            assert server.hub is not None and server.hub.streams() == 0, "a refused watch kept its subscription"


# -- health and reflection -------------------------------------------------------------------

HEALTH = "/grpc.health.v1.Health/"
REFLECTION = {v: f"/grpc.reflection.{v}.ServerReflection/ServerReflectionInfo" for v in ("v1", "v1alpha")}
LIST_SERVICES = reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()


def _list_services(channel: grpc.aio.Channel, version: str, md: tuple = ()) -> Awaitable[set[str]]:
    async def call() -> set[str]:
        stream = channel.stream_stream(REFLECTION[version])(iter([LIST_SERVICES]), metadata=md, timeout=CALL_TIMEOUT)
        answers = [reflection_pb2.ServerReflectionResponse.FromString(raw) async for raw in stream]
        return {s.name for answer in answers for s in answer.list_services_response.service}

    return call()


def _health_list(channel: grpc.aio.Channel, md: tuple = ()) -> Awaitable[bytes]:
    return channel.unary_unary(HEALTH + "List")(b"", metadata=md, timeout=CALL_TIMEOUT)


def _health_watch_first(channel: grpc.aio.Channel, md: tuple = ()) -> Awaitable[object]:
    return health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), metadata=md).read()


@pytest.mark.parametrize("who", ["admin", "no_spiffe", "other_domain"])
async def test_health_check_answers_any_certificate_of_our_ca_and_is_not_audited(connect, pki, server, who) -> None:
    """Load balancer probes: any verified client certificate, SPIFFE ID or not."""
    health = health_pb2_grpc.HealthStub(connect(getattr(pki, who)).channel)

    for service in ("", "satchel.v1.SecretService"):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING

    assert _records(server.config.audit_log) == []


CALLS_OPEN_TO_ALL = {
    "Health/List": _health_list,
    "Health/Watch": _health_watch_first,
    "reflection v1": lambda ch, md=(): _list_services(ch, "v1", md),
    "reflection v1alpha": lambda ch, md=(): _list_services(ch, "v1alpha", md),
}
METHOD_OF = {
    "Health/List": HEALTH + "List",
    "Health/Watch": HEALTH + "Watch",
    "reflection v1": REFLECTION["v1"],
    "reflection v1alpha": REFLECTION["v1alpha"],
}


@pytest.mark.parametrize("what", CALLS_OPEN_TO_ALL)
@pytest.mark.parametrize("who", ["no_spiffe", "other_domain"])
async def test_health_watch_list_and_reflection_need_a_spiffe_id(connect, pki, server, who: str, what: str) -> None:
    stranger = connect(getattr(pki, who)).channel

    f = await failure(CALLS_OPEN_TO_ALL[what](stranger, (("x-request-id", "r-stranger"),)), Code.UNAUTHENTICATED)

    assert f.info.reason == "NO_SPIFFE_ID"
    (record,) = _records(server.config.audit_log)
    assert (record["request_id"], record["principal"], record["method"], record["code"], record["stage"]) == (
        "r-stranger",
        "",
        METHOD_OF[what],
        "UNAUTHENTICATED",
        "completed",
    )


@pytest.mark.parametrize("who", ["alice", "node"])
async def test_every_principal_may_use_health_and_reflection_and_each_call_is_audited(
    connect, pki, server, who: str
) -> None:
    channel = connect(getattr(pki, who)).channel
    principal = {"alice": "user:alice", "node": "node:n1"}[who]

    statuses = health_pb2.HealthListResponse.FromString(await _health_list(channel, (("x-request-id", "r-list"),)))
    assert statuses.statuses[""].status == health_pb2.HealthCheckResponse.SERVING
    for version in REFLECTION:
        assert "satchel.v1.SecretService" in await _list_services(channel, version, (("x-request-id", version),))
    watch = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(), metadata=(("x-request-id", "r-watch"),)
    )
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    records = _records(server.config.audit_log)  # read while the watch is open
    watch.cancel()

    seen = [(r["request_id"], r["stage"], r["method"], r["resource"], r["verb"], r["code"]) for r in records]
    assert seen == [
        ("r-list", "completed", HEALTH + "List", "health", "list", "OK"),
        ("v1", "started", REFLECTION["v1"], "reflection", "get", "OK"),
        ("v1", "completed", REFLECTION["v1"], "reflection", "get", "OK"),
        ("v1alpha", "started", REFLECTION["v1alpha"], "reflection", "get", "OK"),
        ("v1alpha", "completed", REFLECTION["v1alpha"], "reflection", "get", "OK"),
        ("r-watch", "started", HEALTH + "Watch", "health", "watch", "OK"),
    ]
    assert {(r["principal"], r["decision"]) for r in records} == {(principal, "allow")}


async def test_a_malformed_reflection_request_is_an_audited_invalid_argument(admin, server) -> None:
    stream = admin.channel.stream_stream(REFLECTION["v1"])(
        iter([b"\xff\xff\xff"]), metadata=(("x-request-id", "r-bad"),), timeout=CALL_TIMEOUT
    )

    f = await failure(stream.read(), Code.INVALID_ARGUMENT)

    assert f.fields == ["request"]
    assert [(r["request_id"], r["stage"], r["code"]) for r in _records(server.config.audit_log)] == [
        ("r-bad", "started", "OK"),
        ("r-bad", "completed", "INVALID_ARGUMENT"),
    ]
