"""The server's method table: what the generated registration functions put in
it, what a call's method name finds, and every method of every service
answering through the real server."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

import grpc
import pytest
from conftest import secure_channel
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from watchkit import WAIT, running

from satchel import from_rpc_error
from satchel.v1 import secret_pb2, secret_pb2_grpc
from satcheld.api import SERVICE_NAMES, MethodTable


class Details(NamedTuple):
    method: str
    invocation_metadata: tuple = ()


SECRET_METHODS = secret_pb2.DESCRIPTOR.services_by_name["SecretService"].methods


def test_holds_every_method_of_a_generated_service_under_its_full_name() -> None:
    table = MethodTable()
    secret_pb2_grpc.add_SecretServiceServicer_to_server(secret_pb2_grpc.SecretServiceServicer(), table.registrar())

    for method in SECRET_METHODS:
        handler = table.service(Details(f"/satchel.v1.SecretService/{method.name}"))
        assert handler is not None, method.name
        assert handler.response_streaming == method.server_streaming
    assert table.service(Details("/satchel.v1.SecretService/NoSuchMethod")) is None
    assert table.service(Details("/satchel.v1.ServiceAccountService/GetServiceAccount")) is None


def test_a_wrapping_registrar_wraps_every_handler_once_with_its_method_name() -> None:
    table = MethodTable()
    wrapped: list[str] = []

    def wrap(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        wrapped.append(method)
        return handler._replace(request_deserializer=None)

    secret_pb2_grpc.add_SecretServiceServicer_to_server(secret_pb2_grpc.SecretServiceServicer(), table.registrar(wrap))

    assert sorted(wrapped) == sorted(f"/satchel.v1.SecretService/{m.name}" for m in SECRET_METHODS)
    get = table.service(Details("/satchel.v1.SecretService/GetSecret"))
    assert get is not None and get.request_deserializer is None


def test_a_method_added_twice_is_refused() -> None:
    table = MethodTable()
    secret_pb2_grpc.add_SecretServiceServicer_to_server(secret_pb2_grpc.SecretServiceServicer(), table.registrar())

    with pytest.raises(ValueError, match=r"^/satchel\.v1\.SecretService/\w+ is added twice$"):
        secret_pb2_grpc.add_SecretServiceServicer_to_server(secret_pb2_grpc.SecretServiceServicer(), table.registrar())


def test_a_name_not_in_the_table_gets_the_unknown_handler_made_for_it() -> None:
    asked: list[str] = []

    def unknown(method: str) -> grpc.RpcMethodHandler:
        asked.append(method)
        return grpc.unary_unary_rpc_method_handler(lambda request, context: None)

    table = MethodTable(unknown=unknown)
    secret_pb2_grpc.add_SecretServiceServicer_to_server(secret_pb2_grpc.SecretServiceServicer(), table.registrar())

    assert table.service(Details("/satchel.v1.SecretService/GetSecret")) is not None
    assert table.service(Details("/x.Y/Z")) is not None
    assert asked == ["/x.Y/Z"]


async def _answer(channel: grpc.aio.Channel, service: str, method) -> str:
    """The code a call with an empty request (watches: send_initial) ends with,
    and the ErrorInfo reason if it failed."""
    request = message_factory.GetMessageClass(method.input_type)()
    if "send_initial" in request.DESCRIPTOR.fields_by_name:
        request.send_initial = True  # SYNCED comes at once
    path, raw = f"/{service}/{method.name}", request.SerializeToString()
    try:
        if method.server_streaming:
            await channel.unary_stream(path)(raw, timeout=10).read()
        else:
            await channel.unary_unary(path)(raw, timeout=10)
    except grpc.aio.AioRpcError as e:
        return f"{e.code().name} {from_rpc_error(e).reason}"
    return "OK"


async def test_every_method_of_every_service_is_served(admin) -> None:
    pool = descriptor_pool.Default()
    answers = {}
    for service in (*SERVICE_NAMES, "grpc.health.v1.Health"):
        for method in pool.FindServiceByName(service).methods:
            answers[f"{service}/{method.name}"] = await _answer(admin.channel, service, method)

    unrouted = {
        m: a for m, a in answers.items() if a.startswith("UNIMPLEMENTED") and a != "UNIMPLEMENTED NOT_IMPLEMENTED"
    }
    assert unrouted == {}, "methods the server does not route"
    failed = {m: a for m, a in answers.items() if a.startswith(("UNKNOWN", "INTERNAL"))}
    assert failed == {}, "no request may cause UNKNOWN or INTERNAL"
    assert answers["satchel.v1.SecretService/ListSecrets"] == "OK"
    for method in ("Check", "List", "Watch"):
        assert answers[f"grpc.health.v1.Health/{method}"] == "OK", method


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_both_reflection_services_are_served(admin, version: str) -> None:
    call = admin.channel.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo")(
        iter([reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()]), timeout=10
    )
    response = reflection_pb2.ServerReflectionResponse.FromString(await call.read())
    assert "satchel.v1.SecretService" in {s.name for s in response.list_services_response.service}


async def test_health_lists_the_server_and_every_service_as_serving(admin) -> None:
    raw = await admin.channel.unary_unary("/grpc.health.v1.Health/List")(b"", timeout=10)
    statuses = {name: s.status for name, s in health_pb2.HealthListResponse.FromString(raw).statuses.items()}
    assert statuses == {name: health_pb2.HealthCheckResponse.SERVING for name in ("", *SERVICE_NAMES)}


async def test_health_watch_tells_of_a_graceful_shutdown(pki, tmp_path) -> None:
    """Health/Watch sends the status again when it changes: stopping the server
    turns every service NOT_SERVING while running calls finish."""
    async with running(pki, tmp_path / "data") as server:
        async with secure_channel(server.address, pki, pki.alice) as channel:
            request = health_pb2.HealthCheckRequest(service="satchel.v1.SecretService")
            watch = health_pb2_grpc.HealthStub(channel).Watch(request)
            assert (await asyncio.wait_for(watch.read(), WAIT)).status == health_pb2.HealthCheckResponse.SERVING
            stopping = asyncio.create_task(server.stop(WAIT))  # waits for the watch, which is open
            changed = await asyncio.wait_for(watch.read(), WAIT)
            assert changed.status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()
            await stopping
