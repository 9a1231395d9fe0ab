"""The server's method table: what the generated registration functions put in
it, and what a call's method name finds. (Every method answering through the
real server: tests/test_grpcurl.py, tests/test_serve.py.)"""

from __future__ import annotations

from typing import NamedTuple

import grpc
import pytest

from satchel.v1 import secret_pb2, secret_pb2_grpc
from satcheld._methods import MethodTable


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
