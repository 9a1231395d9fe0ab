"""Limits that say no clearly (DESIGN.md, Watch → Limits): Watch streams per
principal (admins exempt, counted across connections, given back however a
stream ends), label selectors' length and terms (refused before parsing, with a
short message), streams per connection (further calls wait), request size;
and the `satcheld serve` flags that set them."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from conftest import Identity, Pki, Stubs, secure_channel
from failures import failure
from kinds import SECRETS, WORKLOADS
from watchkit import Watcher, running, until

from satchel.v1 import meta_pb2, secret_pb2, service_account_pb2, workload_pb2
from satcheld import _cli
from satcheld._server import MAX_MESSAGE_BYTES, Server, server_options
from satcheld.auth import NODE, Principal

Code = grpc.StatusCode
WAIT = 10.0
N1 = Principal(NODE, "n1")


def _records(audit_log: Path, request_id: str) -> list[dict]:
    return [r for r in map(json.loads, audit_log.read_text().splitlines()) if r["request_id"] == request_id]


class Streams:
    """Watch streams of one test, each on the channel given, all closed at the end."""

    def __init__(self, pki: Pki, server: Server) -> None:
        self._pki = pki
        self._server = server
        self._channels: list[grpc.aio.Channel] = []
        self._watchers: list[Watcher] = []

    def channel(self, identity: Identity) -> Stubs:
        ch = secure_channel(self._server.address, self._pki, identity)
        self._channels.append(ch)
        return Stubs.over(ch)

    async def open(self, stubs: Stubs, metadata: tuple = (), kind=WORKLOADS, **request) -> Watcher:
        """A stream that has received its first event (so the server holds it)."""
        rpc = getattr(kind.stub(stubs.channel), kind.rpc("watch"))
        watcher = Watcher(rpc(kind.request_type("watch")(**request), metadata=metadata), kind)
        self._watchers.append(watcher)
        await watcher.take(1)
        return watcher

    def call(self, stubs: Stubs, metadata: tuple = (), kind=WORKLOADS, **request) -> grpc.aio.UnaryStreamCall:
        rpc = getattr(kind.stub(stubs.channel), kind.rpc("watch"))
        return rpc(kind.request_type("watch")(**request), metadata=metadata)

    async def close(self) -> None:
        for watcher in self._watchers:
            await watcher.close()
        for ch in self._channels:
            await ch.close()
        self._watchers.clear()
        self._channels.clear()


# -- Watch streams per principal ------------------------------------------------------------------


async def test_a_principal_holds_at_most_its_quota_of_watch_streams_across_connections(pki, tmp_path) -> None:
    async with running(pki, tmp_path / "data", max_watch_streams_per_principal=3) as server:
        streams = Streams(pki, server)
        try:
            first, second = streams.channel(pki.node), streams.channel(pki.node)
            held = [
                await streams.open(first),
                await streams.open(first, kind=SECRETS),
                await streams.open(second),
            ]
            assert server.quota.open(N1) == 3

            third = streams.channel(pki.node)  # a new connection changes nothing: the principal is counted
            refused = streams.call(third, metadata=(("x-request-id", "r-over"),))
            f = await failure(refused.read(), Code.RESOURCE_EXHAUSTED)
            assert f.info.reason == "WATCH_STREAMS_PER_PRINCIPAL"
            assert dict(f.info.metadata) == {"limit": "3", "principal": "node:n1"}
            assert "node:n1" in f.message and "3" in f.message
            (record,) = _records(server.config.audit_log, "r-over")  # refused before it started
            assert (record["code"], record["stage"], record["principal"]) == (
                "RESOURCE_EXHAUSTED",
                "completed",
                "node:n1",
            )

            # Another principal has its own quota; admins have none.
            await streams.open(streams.channel(pki.identity("node", "n2")))
            admin = streams.channel(pki.admin)
            for _ in range(5):
                await streams.open(admin)

            # A slot is given back when its stream ends: cancelled...
            await held[0].close()
            await until(lambda: server.quota.open(N1) == 2, "the cancelled stream's slot given back")
            held[0] = await streams.open(third)
            # ... or its connection closed.
            await streams.close()
            await until(lambda: server.quota.open(N1) == 0, "every slot given back")
            assert server.hub is not None and server.hub.streams() == 0
        finally:
            await streams.close()


async def test_a_token_makes_its_account_the_principal_counted_wherever_it_is_sent(pki, tmp_path) -> None:
    """Bearer tokens of one account count together, over any connection; over an
    admin's connection too, since the caller is then the account, not the admin."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "policy.yaml").write_text(
        "admins: [admin]\n"
        "rules:\n"
        '  - {subjects: ["sa:apps/robot"], namespaces: [apps], resources: [workloads], verbs: [watch]}\n'
    )
    async with running(pki, data, max_watch_streams_per_principal=2) as server:
        streams = Streams(pki, server)
        try:
            admin = streams.channel(pki.admin)
            account = service_account_pb2.ServiceAccount(metadata=meta_pb2.ObjectMeta(namespace="apps", name="robot"))
            await admin.accounts.CreateServiceAccount(
                service_account_pb2.CreateServiceAccountRequest(service_account=account)
            )
            token_secret = await admin.secrets.GetSecret(
                secret_pb2.GetSecretRequest(namespace="apps", name="robot-token")
            )
            bearer = (("authorization", f"Bearer {token_secret.secret.data['token'].decode()}"),)

            await streams.open(admin, bearer, namespace="apps")
            await streams.open(streams.channel(pki.alice), bearer, namespace="apps")
            f = await failure(
                streams.call(streams.channel(pki.node), bearer, namespace="apps").read(), Code.RESOURCE_EXHAUSTED
            )
            assert f.info.metadata["principal"] == "sa:apps/robot"
            await streams.open(admin, namespace="apps")  # the admin itself, on the same connection: exempt
        finally:
            await streams.close()


# -- label selectors ----------------------------------------------------------------------------------


def _list(stubs: Stubs, selector: str):
    return stubs.secrets.ListSecrets(secret_pb2.ListSecretsRequest(label_selector=selector))


def _watch_first(stubs: Stubs, selector: str):
    return stubs.workloads.WatchWorkloads(workload_pb2.WatchWorkloadsRequest(label_selector=selector)).read()


CALLS = {"List": _list, "Watch": _watch_first}


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize(
    "selector, reason, metadata",
    [
        ("a=b," * 262_144, "LABEL_SELECTOR_TOO_LONG", {"max_length": "4096", "length": str(4 * 262_144)}),
        ("a=b," * 2_000, "LABEL_SELECTOR_TOO_LONG", {"max_length": "4096", "length": str(4 * 2_000)}),
        ("a," * 32 + "a", "LABEL_SELECTOR_TOO_MANY_TERMS", {"max_terms": "32", "terms": "33"}),
    ],
    ids=["1 MiB", "8,000 characters", "33 terms"],
)
async def test_an_oversized_selector_is_refused_in_a_short_message(
    admin, call: str, selector: str, reason: str, metadata: dict
) -> None:
    f = await failure(CALLS[call](admin, selector), Code.RESOURCE_EXHAUSTED)

    if call == "Watch" and len(selector) > 16 * 1024:  # the whole request is too large to hold, first
        reason, metadata = "STREAM_REQUEST_TOO_LARGE", {"max_bytes": "16384", "bytes": f.info.metadata["bytes"]}
    assert f.info.reason == reason
    assert dict(f.info.metadata) == metadata
    assert len(f.message) < 100, f.message
    assert "a=b" not in f.message
    assert sum(len(k) + len(v) for k, v in f.trailers.items()) < 1024


async def test_selectors_at_the_limits_are_served_and_an_invalid_one_names_few_of_its_faults(admin) -> None:
    # 32 valid terms of 127 characters each: 4,095 characters.
    at_the_limits = ",".join(f"{'a' * 50}.example/k{i:02d}{'x' * 37}={'v' * 27}" for i in range(32))
    assert len(at_the_limits) == 4095
    for call in CALLS.values():
        await call(admin, at_the_limits)

    # The worst invalid selector within the limits: every term has bad keys and values. Its
    # error must still fit the trailers a client accepts (8 KiB), or the client would see
    # a transport error instead.
    worst = ",".join(f"{'!' * 60}/{'?' * 60}={'#' * 5}" for _ in range(32))
    for call in CALLS.values():
        f = await failure(call(admin, worst), Code.INVALID_ARGUMENT)
        assert len(f.violations) == 6 and f.violations[-1][1].startswith("and "), f.violations
        assert sum(len(k) + len(v) for k, v in f.trailers.items()) < 8 * 1024
    # Characters that JSON escapes (12 bytes for one emoji) count as what they cost.
    emoji = ",".join(f"{'😀' * 100}/{'😀' * 100}=#" for _ in range(20))
    assert len(emoji) <= 4096
    for call in CALLS.values():
        f = await failure(call(admin, emoji), Code.INVALID_ARGUMENT)
        assert sum(len(k) + len(v) for k, v in f.trailers.items()) < 6 * 1024


# -- streams per connection, request size ---------------------------------------------------------------


async def test_a_connection_has_at_most_its_streams_open_and_further_calls_wait(pki, tmp_path) -> None:
    async with running(pki, tmp_path / "data", max_streams_per_connection=2) as server:
        streams = Streams(pki, server)
        try:
            busy = streams.channel(pki.admin)
            watches = [await streams.open(busy), await streams.open(busy)]
            waiting = asyncio.ensure_future(busy.secrets.ListSecrets(secret_pb2.ListSecretsRequest()))
            # Another connection is served at once; this one's third call is held back by the client.
            await streams.channel(pki.admin).secrets.ListSecrets(secret_pb2.ListSecretsRequest(), timeout=WAIT)
            done, _ = await asyncio.wait([waiting], timeout=1.0)
            assert not done, "a third stream was opened on a connection that allows two"
            await watches[0].close()
            await asyncio.wait_for(waiting, WAIT)  # served once a stream ended
        finally:
            await streams.close()


async def test_a_request_over_4_mib_is_refused(admin) -> None:
    secret = SECRETS.make("huge", data={"blob": b"\0" * (MAX_MESSAGE_BYTES + 1)})
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await admin.secrets.CreateSecret(secret_pb2.CreateSecretRequest(secret=secret))
    # grpc refuses it before any handler runs: its own status, without an ErrorInfo.
    assert e.value.code() == Code.RESOURCE_EXHAUSTED
    assert "larger than max" in (e.value.details() or "")


async def test_a_streaming_call_with_an_oversized_request_is_refused_before_it_holds_it(admin) -> None:
    """A long-lived call keeps what its request made: a Health/Watch's service name, a Watch's
    unknown fields. Neither may be megabytes (16 KiB at most; a valid Watch needs a few)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    big_health = health_pb2.HealthCheckRequest(service="s" * 100_000)
    padded = (
        secret_pb2.WatchSecretsRequest(send_initial=True).SerializeToString()
        + b"\xfa\x3e"
        + (
            b"\x80\x8d\x06" + b"x" * 100_000  # field 999, length-delimited, 100,000 bytes: unknown to the server
        )
    )
    calls = [
        health_pb2_grpc.HealthStub(admin.channel).Watch(big_health),
        admin.channel.unary_stream(
            "/satchel.v1.SecretService/WatchSecrets", request_serializer=None, response_deserializer=None
        )(padded),
    ]
    for call in calls:
        f = await failure(anext(aiter(call)), Code.RESOURCE_EXHAUSTED)
        assert f.info.reason == "STREAM_REQUEST_TOO_LARGE" and f.info.metadata["max_bytes"] == "16384"
        assert len(f.message) < 100, f.message
    # What a Watch needs is well within it.
    stream = admin.secrets.WatchSecrets(secret_pb2.WatchSecretsRequest(send_initial=True, label_selector="a=b"))
    assert (await anext(aiter(stream))).type == meta_pb2.EVENT_TYPE_SYNCED
    stream.cancel()


# -- flags ----------------------------------------------------------------------------------------------


def test_serve_flags_and_their_variables_set_the_limits(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SATCHEL_MAX_WATCH_STREAMS_PER_PRINCIPAL", "7")
    monkeypatch.setenv("SATCHEL_MAX_CONNECTION_AGE", "30m")
    args = _cli.build_parser().parse_args(
        [
            "serve",
            "--dev",
            "--data-dir",
            str(tmp_path / "d"),
            "--max-streams-per-connection",
            "50",
            "--max-selector-length",
            "100",
            "--max-selector-terms",
            "3",
            "--max-connection-idle",
            "0s",
            "--max-connection-age-grace",
            "10s",
        ]
    )
    config = _cli._dev_config(args)
    assert (
        config.max_watch_streams_per_principal,
        config.max_streams_per_connection,
        config.max_selector_length,
        config.max_selector_terms,
    ) == (7, 50, 100, 3)
    assert (config.max_connection_idle, config.max_connection_age, config.max_connection_age_grace) == (
        None,
        timedelta(minutes=30),
        timedelta(seconds=10),
    )
    options = dict(server_options(config))
    assert options["grpc.max_concurrent_streams"] == 50
    assert options["grpc.max_connection_age_ms"] == 30 * 60 * 1000
    assert options["grpc.max_connection_age_grace_ms"] == 10_000
    assert "grpc.max_connection_idle_ms" not in options  # 0s: never


def test_the_defaults_are_those_documented(monkeypatch) -> None:
    for flag in ("WATCH_STREAMS_PER_PRINCIPAL", "STREAMS_PER_CONNECTION", "SELECTOR_LENGTH", "SELECTOR_TERMS"):
        monkeypatch.delenv(f"SATCHEL_MAX_{flag}", raising=False)
    for flag in ("IDLE", "AGE", "AGE_GRACE"):
        monkeypatch.delenv(f"SATCHEL_MAX_CONNECTION_{flag}", raising=False)
    args = _cli.build_parser().parse_args(["serve"])
    assert (
        args.max_watch_streams_per_principal,
        args.max_streams_per_connection,
        args.max_selector_length,
        args.max_selector_terms,
        args.max_connection_idle,
        args.max_connection_age,
        args.max_connection_age_grace,
    ) == (16, 1024, 4096, 32, timedelta(minutes=15), timedelta(hours=1), timedelta(minutes=5))
