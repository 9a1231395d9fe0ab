"""satchel.kinds, the one registry of kinds: every name it gives a kind is the one the
protos, the generated stubs and the client use."""

from __future__ import annotations

import grpc
import pytest

from satchel import AsyncClient, Client, kinds

each_kind = pytest.mark.parametrize("kind", kinds.ALL, ids=lambda k: k.name)
each_verb = pytest.mark.parametrize("verb", kinds.VERBS)


@each_kind
@each_verb
def test_each_rpc_is_in_the_kinds_service_with_its_request_and_response(kind, verb) -> None:
    service = kind.message.DESCRIPTOR.file.services_by_name[f"{kind.type_name}Service"]
    assert service.full_name == kind.service
    method = service.methods_by_name[kind.rpc(verb)]
    assert kind.method(verb) == f"/{service.full_name}/{method.name}"
    assert kind.request_type(verb).DESCRIPTOR is method.input_type
    assert kind.response_type(verb).DESCRIPTOR is method.output_type
    with grpc.insecure_channel("localhost:1") as channel:  # lazy: never connects
        assert callable(getattr(kind.stub(channel), kind.rpc(verb)))


@each_kind
def test_field_and_items_name_the_response_fields(kind) -> None:
    get = kind.response_type("get").DESCRIPTOR.fields_by_name[kind.field]
    assert get.message_type is kind.message.DESCRIPTOR
    items = kind.response_type("list").DESCRIPTOR.fields_by_name[kind.items]
    assert items.message_type is kind.message.DESCRIPTOR
    assert kind.response_type("watch").DESCRIPTOR.fields_by_name[kind.field].message_type is kind.message.DESCRIPTOR
    assert kind.module.DESCRIPTOR is kind.message.DESCRIPTOR.file


@each_kind
@each_verb
def test_client_method_names_a_method_of_both_clients(kind, verb) -> None:
    name = kind.client_method(verb)
    assert callable(getattr(Client, name)) and callable(getattr(AsyncClient, name))


def test_names_and_lookups() -> None:
    assert [k.name for k in kinds.ALL] == ["serviceaccounts", "secrets", "workloads"]
    assert kinds.KINDS["secrets"] is kinds.SECRETS
    assert kinds.SERVICE_ACCOUNTS.plural_noun == "service accounts"
    assert kinds.SERVICE_ACCOUNTS.noun == "service account"
    assert kinds.SERVICE_ACCOUNTS.client_method("watch") == "watch_service_accounts"
    assert kinds.kind_of(kinds.WORKLOADS.message()) is kinds.WORKLOADS
    with pytest.raises(TypeError):
        kinds.kind_of(kinds.SECRETS.request_type("get")())
    with pytest.raises(ValueError, match="unknown verb"):
        kinds.SECRETS.client_method("rotate")
