"""Every audit record is written before the caller learns the outcome.

A caller that has its answer — a response, or an error status — finds the
record of its request in the audit log already: one read, no waiting. The
server checks this from its side too: at the moment each record is written,
grpc must not have sent the call's status yet (`context.done()` turns true once
it has), which holds or fails the same way on every run.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from conftest import Stubs, make_config, secure_channel
from failures import failure
from grpc_reflection.v1alpha import reflection_pb2
from kinds import SECRETS

from satchel.v1 import secret_pb2, token_pb2
from satcheld._server import Server
from satcheld.api import _audit, _guard, _services

Code = grpc.StatusCode


class Observed:
    """For each request id: the stage and code of each of its records, and
    whether grpc had already sent the call's status when one was written."""

    def __init__(self) -> None:
        self.contexts: dict[str, grpc.aio.ServicerContext] = {}
        self.sent_before_record: dict[str, bool] = {}
        self.written: defaultdict[str, list[tuple[str, str]]] = defaultdict(list)  # (stage, code)
        self.completed: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)  # the server runs on this loop


@pytest.fixture
async def observed_server(pki, tmp_path, monkeypatch) -> AsyncIterator[tuple[Server, Observed]]:
    """A real server whose guard notes each call's context and whose audit log
    notes, at each write, whether that call's status had already gone out."""
    seen = Observed()
    begin, write = _guard.Guard._begin, _guard.AuditLog.write

    def noting_begin(self, method, context, metadata):
        req = begin(self, method, context, metadata)
        seen.contexts[req.request_id] = context
        return req

    def noting_write(self, request, code, stage=_audit.COMPLETED):
        rid = request.request_id
        seen.sent_before_record[rid] = seen.sent_before_record.get(rid, False) or seen.contexts[rid].done()
        seen.written[rid].append((stage, code.name))
        written = write(self, request, code, stage)
        if stage == _audit.COMPLETED:
            seen.completed[rid].set()
        return written

    async def broken(self, request, context):
        raise RuntimeError("a bug in a handler")

    # Patched before the server starts: Guard.wrap binds these once per method.
    monkeypatch.setattr(_guard.Guard, "_begin", noting_begin)
    monkeypatch.setattr(_guard.AuditLog, "write", noting_write)
    monkeypatch.setattr(_services.TokenService, "GetPublicKeys", broken)  # an INTERNAL error
    srv = Server(make_config(pki, tmp_path / "data"))
    await srv.start()
    try:
        yield srv, seen
    finally:
        await srv.stop()


def _records(server: Server) -> dict[str, dict]:
    """Each request's last record."""
    lines = server.config.audit_log.read_text().splitlines()
    return {r["request_id"]: r for r in map(json.loads, lines)}


def _all_records(server: Server, rid: str) -> list[dict]:
    lines = server.config.audit_log.read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["request_id"] == rid]


async def _drain(stream) -> None:
    async for _ in stream:
        pass


def _md(rid: str) -> tuple:
    return (("x-request-id", rid),)


HEALTH_LIST = "/grpc.health.v1.Health/List"
REFLECTION = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
LIST_SERVICES = reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()

# (request id, who calls, the call, the code it ends with)
Call = Callable[[Stubs, tuple], Awaitable[object]]
CALLS: list[tuple[str, str, Call, Code]] = [
    ("ok-get", "admin", lambda s, md: SECRETS.api(s).get("kept", metadata=md), Code.OK),
    ("ok-list", "admin", lambda s, md: SECRETS.api(s).list(call={"metadata": md}), Code.OK),
    ("missing", "admin", lambda s, md: SECRETS.api(s).get("absent", metadata=md), Code.NOT_FOUND),
    (
        "invalid",
        "admin",
        lambda s, md: SECRETS.api(s).create(SECRETS.make("Bad Name"), metadata=md),
        Code.INVALID_ARGUMENT,
    ),
    (
        "malformed",
        "admin",
        lambda s, md: s.channel.unary_unary("/satchel.v1.SecretService/GetSecret")(b"\xff\xff\xff", metadata=md),
        Code.INVALID_ARGUMENT,
    ),
    ("denied", "alice", lambda s, md: SECRETS.api(s).get("kept", metadata=md), Code.PERMISSION_DENIED),
    ("stranger", "no_spiffe", lambda s, md: SECRETS.api(s).get("kept", metadata=md), Code.UNAUTHENTICATED),
    (
        "token",
        "admin",
        lambda s, md: s.secrets.GetSecret(
            secret_pb2.GetSecretRequest(name="kept"), metadata=(*md, ("authorization", "Bearer x"))
        ),
        Code.UNAUTHENTICATED,
    ),
    (
        "rotate-unnamed",
        "admin",
        lambda s, md: s.secrets.RotateSecret(secret_pb2.RotateSecretRequest(), metadata=md),
        Code.INVALID_ARGUMENT,
    ),
    (
        "unknown",
        "admin",
        lambda s, md: s.channel.stream_unary("/no.such.Service/Call")(iter(()), metadata=md),
        Code.UNIMPLEMENTED,
    ),
    (
        "bug",
        "admin",
        lambda s, md: s.tokens.GetPublicKeys(token_pb2.GetPublicKeysRequest(), metadata=md),
        Code.INTERNAL,
    ),
    (
        "watch-denied",
        "alice",
        lambda s, md: _drain(s.secrets.WatchSecrets(secret_pb2.WatchSecretsRequest(), metadata=md)),
        Code.PERMISSION_DENIED,
    ),
    (
        "watch-malformed",
        "admin",
        lambda s, md: _drain(
            s.channel.unary_stream("/satchel.v1.SecretService/WatchSecrets")(b"\xff\xff\xff", metadata=md)
        ),
        Code.INVALID_ARGUMENT,
    ),
    ("health-list", "admin", lambda s, md: s.channel.unary_unary(HEALTH_LIST)(b"", metadata=md), Code.OK),
    (
        "health-list-stranger",
        "no_spiffe",
        lambda s, md: s.channel.unary_unary(HEALTH_LIST)(b"", metadata=md),
        Code.UNAUTHENTICATED,
    ),
    # A bidirectional stream: one request, then the client's half-close ends it.
    (
        "reflection",
        "admin",
        lambda s, md: _drain(s.channel.stream_stream(REFLECTION)(iter([LIST_SERVICES]), metadata=md)),
        Code.OK,
    ),
    (
        "reflection-malformed",
        "admin",
        lambda s, md: _drain(s.channel.stream_stream(REFLECTION)(iter([b"\xff\xff\xff"]), metadata=md)),
        Code.INVALID_ARGUMENT,
    ),
]


async def test_each_record_is_written_before_the_outcome_is_sent(observed_server, pki) -> None:
    server, seen = observed_server
    channels = {who: secure_channel(server.address, pki, getattr(pki, who)) for who in ("admin", "alice", "no_spiffe")}
    try:
        stubs = {who: Stubs.over(ch) for who, ch in channels.items()}
        await SECRETS.api(stubs["admin"]).create(SECRETS.make("kept"), metadata=_md("setup"))
        for rounds in range(5):  # each outcome several times: a late write would be missed at once, every time
            for rid, who, call, code in CALLS:
                rid = f"{rid}-{rounds}"
                if code == Code.OK:
                    await call(stubs[who], _md(rid))
                else:
                    await failure(call(stubs[who], _md(rid)), code)
                # False, not missing and not True: written, and written before the status left.
                assert seen.sent_before_record.get(rid) is False, (
                    f"{rid}: {code.name} was sent before its audit record was written"
                )
                record = _records(server).get(rid)  # read at once, as a caller checking the log would
                assert record is not None, f"{rid}: the caller had its {code.name} before its audit record was written"
                assert record["code"] == code.name, rid
    finally:
        for ch in channels.values():
            await ch.close()

    assert len(seen.sent_before_record) == 1 + 5 * len(CALLS), "one record per request"


async def test_a_watch_is_recorded_once_allowed_and_again_when_it_ends(observed_server, pki) -> None:
    """Its first record is in the log while the stream is open, so that a server
    killed mid-stream still leaves a record that events went out; its last one,
    once the caller cancels, says CANCELLED."""
    server, seen = observed_server
    async with secure_channel(server.address, pki, pki.admin) as channel:
        stubs = Stubs.over(channel)
        await SECRETS.api(stubs).create(SECRETS.make("seen"))
        request = secret_pb2.WatchSecretsRequest(send_initial=True)
        called = time.perf_counter()  # the server runs on this loop, on this clock
        watch = stubs.secrets.WatchSecrets(request, metadata=_md("watch-cancelled"))
        first = await watch.read()  # the stream is open and serving
        assert first.secret.metadata.name == "seen"
        open_since = time.perf_counter()

        (started,) = _all_records(server, "watch-cancelled")  # read before the stream ends
        assert (started["stage"], started["code"], started["decision"], started["verb"], started["resource"]) == (
            "started",
            "OK",
            "allow",
            "watch",
            "secrets/*",
        )
        assert seen.sent_before_record["watch-cancelled"] is False

        await SECRETS.api(stubs).create(SECRETS.make("more"))  # time passes while the stream is open
        while (await watch.read()).secret.metadata.name != "more":
            pass
        cancelled = time.perf_counter()
        watch.cancel()
        await asyncio.wait_for(seen.completed["watch-cancelled"].wait(), 10)
        ended = time.perf_counter()
        assert seen.written["watch-cancelled"] == [("started", "OK"), ("completed", "CANCELLED")]
        assert [(r["stage"], r["code"]) for r in _all_records(server, "watch-cancelled")] == [
            ("started", "OK"),
            ("completed", "CANCELLED"),
        ]
        # Milliseconds from the server's start of the request to each write: the
        # end record's span covers the time the stream was seen open, and lies
        # within the call's (3 decimals, hence the 0.001 either side).
        completed = _all_records(server, "watch-cancelled")[-1]
        assert isinstance(completed["duration_ms"], float)
        assert started["duration_ms"] <= completed["duration_ms"]
        assert (cancelled - open_since) * 1000 - 0.001 <= completed["duration_ms"] <= (ended - called) * 1000 + 0.001
        # The cancellation ended the handler (it was not swallowed) and the server serves on.
        await SECRETS.api(stubs).get("seen")


async def test_a_denied_watch_has_only_the_record_of_its_denial(observed_server, pki) -> None:
    server, seen = observed_server
    async with secure_channel(server.address, pki, pki.alice) as channel:
        watch = Stubs.over(channel).secrets.WatchSecrets(secret_pb2.WatchSecretsRequest(), metadata=_md("denied"))
        await failure(watch.read(), Code.PERMISSION_DENIED)
    assert seen.written["denied"] == [("completed", "PERMISSION_DENIED")]
    (record,) = _all_records(server, "denied")
    assert (record["stage"], record["decision"], record["verb"]) == ("completed", "deny", "watch")


async def test_a_bidirectional_stream_is_recorded_when_it_starts_and_ends(observed_server, pki) -> None:
    server, seen = observed_server
    async with secure_channel(server.address, pki, pki.alice) as channel:
        call = channel.stream_stream(REFLECTION)(iter([LIST_SERVICES]), metadata=_md("reflect"))
        await _drain(call)
        assert await call.code() == Code.OK
    assert seen.written["reflect"] == [("started", "OK"), ("completed", "OK")]
    started, completed = _all_records(server, "reflect")
    for r in (started, completed):
        assert (r["principal"], r["method"], r["resource"], r["verb"], r["decision"]) == (
            "user:alice",
            REFLECTION,
            "reflection",
            "get",
            "allow",
        )
