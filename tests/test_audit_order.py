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
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from conftest import Stubs, make_config, secure_channel
from failures import failure
from kinds import SECRETS

from satchel.v1 import secret_pb2, token_pb2
from satcheld._server import Server
from satcheld.api import _guard, _services

Code = grpc.StatusCode


class Observed:
    """For each request id: the code its record gave, and whether grpc had
    already sent the call's status when the record was written."""

    def __init__(self) -> None:
        self.contexts: dict[str, grpc.aio.ServicerContext] = {}
        self.sent_before_record: dict[str, bool] = {}
        self.codes: dict[str, str] = {}
        self.written: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)  # the server runs on this loop


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

    def noting_write(self, request, code):
        seen.sent_before_record[request.request_id] = seen.contexts[request.request_id].done()
        seen.codes[request.request_id] = code.name
        written = write(self, request, code)
        seen.written[request.request_id].set()
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
    lines = server.config.audit_log.read_text().splitlines()
    return {r["request_id"]: r for r in map(json.loads, lines)}


async def _drain(stream) -> None:
    async for _ in stream:
        pass


def _md(rid: str) -> tuple:
    return (("x-request-id", rid),)


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
        "later",
        "admin",
        lambda s, md: s.tokens.ReviewToken(token_pb2.ReviewTokenRequest(), metadata=md),
        Code.UNIMPLEMENTED,
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


async def test_a_cancelled_watch_is_recorded_as_cancelled(observed_server, pki) -> None:
    server, seen = observed_server
    async with secure_channel(server.address, pki, pki.admin) as channel:
        stubs = Stubs.over(channel)
        await SECRETS.api(stubs).create(SECRETS.make("seen"))
        request = secret_pb2.WatchSecretsRequest(send_initial=True)
        watch = stubs.secrets.WatchSecrets(request, metadata=_md("watch-cancelled"))
        first = await watch.read()  # the stream is open and serving
        assert first.secret.metadata.name == "seen"
        watch.cancel()
        await asyncio.wait_for(seen.written["watch-cancelled"].wait(), 10)
        assert seen.codes["watch-cancelled"] == "CANCELLED"
        assert _records(server)["watch-cancelled"]["code"] == "CANCELLED"
        # The cancellation ended the handler (it was not swallowed) and the server serves on.
        await SECRETS.api(stubs).get("seen")
