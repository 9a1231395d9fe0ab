"""AuthorizationService.CheckAccess against the real server over mTLS: the caller asks
about itself, is never refused for asking, gets a reason with every `no`, and a bad verb
or resource is one INVALID_ARGUMENT naming each field; the client methods and the audit
record of the call. (`satchelctl auth can-i` is tested in test_ctl.py.)"""

from __future__ import annotations

import json

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from satchel import AsyncClient, InvalidArgumentError
from satchel.v1 import authorization_pb2, authorization_pb2_grpc

Request = authorization_pb2.CheckAccessRequest
VERBS = ("get", "list", "watch", "create", "update", "delete", "rotate", "read-data")
RESOURCES = ("serviceaccounts", "secrets", "workloads")


def stub(connect, identity) -> authorization_pb2_grpc.AuthorizationServiceStub:
    return authorization_pb2_grpc.AuthorizationServiceStub(connect(identity).channel)


@pytest.mark.parametrize("resource", RESOURCES)
async def test_an_admin_may_do_every_verb(connect, pki, resource: str) -> None:
    admin = stub(connect, pki.admin)
    for verb in VERBS:
        for namespace, name in (("", ""), ("prod", ""), ("prod", "db")):
            response = await admin.CheckAccess(Request(verb=verb, resource=resource, namespace=namespace, name=name))
            assert (response.allowed, response.reason) == (True, ""), (verb, namespace, name)


@pytest.mark.parametrize(("who", "principal"), [("alice", "user:alice"), ("node", "node:n1")])
async def test_others_are_told_no_with_a_reason_never_refused(connect, pki, who: str, principal: str) -> None:
    caller = stub(connect, getattr(pki, who))
    response = await caller.CheckAccess(Request(verb="get", resource="secrets", namespace="prod", name="db"))
    assert response.allowed is False
    assert response.reason == f'{principal} may not get secrets in namespace "prod"'

    everywhere = await caller.CheckAccess(Request(verb="list", resource="secrets"))
    assert everywhere.allowed is False
    assert everywhere.reason == f"{principal} may not list secrets"


async def test_a_bad_verb_and_resource_are_named_together(connect, pki) -> None:
    for identity in (pki.admin, pki.alice):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub(connect, identity).CheckAccess(Request(verb="steal", resource="passwords", namespace="prod"))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        trailers = dict(caught.value.trailing_metadata())
        status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
        fields = []
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                fields += [v.field for v in bad.field_violations]
        assert fields == ["verb", "resource"]


async def test_empty_verb_and_resource_are_invalid(connect, pki) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(connect, pki.admin).CheckAccess(Request())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "verb" in (caught.value.details() or "") and "resource" in (caught.value.details() or "")


async def test_the_async_client_checks_access_for_its_caller(server, pki) -> None:
    files = {"ca": pki.ca}
    async with (
        AsyncClient(server=server.address, cert=pki.admin.cert, key=pki.admin.key, **files) as admin,
        AsyncClient(server=server.address, cert=pki.alice.cert, key=pki.alice.key, **files) as alice,
    ):
        yes = await admin.check_access("read-data", "secrets", "db", namespace="prod")
        assert isinstance(yes, authorization_pb2.CheckAccessResponse)
        assert (yes.allowed, yes.reason) == (True, "")
        no = await alice.check_access("delete", "serviceaccounts")
        assert (no.allowed, no.reason) == (False, "user:alice may not delete serviceaccounts")
        with pytest.raises(InvalidArgumentError) as caught:
            await alice.check_access("fly", "kites")
        assert [field for field, _ in caught.value.field_violations] == ["verb", "resource"]


async def test_each_check_is_audited_as_allowed_with_its_answer(connect, pki, server) -> None:
    alice = stub(connect, pki.alice)
    await alice.CheckAccess(
        Request(verb="get", resource="secrets", namespace="prod", name="db"), metadata=(("x-request-id", "r-no"),)
    )
    admin = stub(connect, pki.admin)
    await admin.CheckAccess(Request(verb="list", resource="workloads"), metadata=(("x-request-id", "r-yes"),))
    with pytest.raises(grpc.aio.AioRpcError):
        await alice.CheckAccess(Request(verb="x", resource="secrets"), metadata=(("x-request-id", "r-bad"),))

    lines = server.config.audit_log.read_text().splitlines()
    by_id = {r["request_id"]: r for r in map(json.loads, lines)}
    method = "/satchel.v1.AuthorizationService/CheckAccess"
    no, yes, bad = by_id["r-no"], by_id["r-yes"], by_id["r-bad"]
    assert (no["principal"], no["method"], no["resource"], no["decision"], no["code"]) == (
        "user:alice",
        method,
        "secrets/prod/db",
        "allow",
        "OK",
    )
    assert "user:alice may not get secrets" in no["reason"]
    assert (no["verb"], yes["verb"], bad["verb"]) == ("get", "list", "")  # the verb asked about, once valid
    assert (yes["principal"], yes["resource"], yes["decision"], yes["code"]) == (
        "user:admin",
        "workloads/*",
        "allow",
        "OK",
    )
    assert (bad["decision"], bad["code"]) == ("allow", "INVALID_ARGUMENT")
