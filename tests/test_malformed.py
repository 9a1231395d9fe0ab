"""Requests grpc cannot even parse, and credentials the server cannot read:
each is a clear, audited error with one ErrorInfo, never grpc's bare UNKNOWN."""

from __future__ import annotations

import json

import grpc
import pytest
from failures import failure

from satchel.v1 import secret_pb2
from satcheld.api import AuditLog
from satcheld.store import KeyRing

# A GetSecretRequest whose `name` holds invalid UTF-8, and bytes that are no message at all.
MALFORMED = {"bad-utf8": b"\x12\x02\xff\xfe", "garbage": b"\xff\xff\xff"}


def _audit(server) -> list[dict]:
    return [json.loads(line) for line in server.config.audit_log.read_text().splitlines()]


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED)
async def test_malformed_unary_request_is_invalid_argument(server, admin, raw: bytes) -> None:
    call = admin.channel.unary_unary("/satchel.v1.SecretService/GetSecret")(raw)
    f = await failure(call, grpc.StatusCode.INVALID_ARGUMENT)
    assert f.fields == ["request"]
    (record,) = _audit(server)
    assert (record["method"], record["code"]) == ("/satchel.v1.SecretService/GetSecret", "INVALID_ARGUMENT")


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED)
async def test_malformed_watch_request_is_invalid_argument(server, admin, raw: bytes) -> None:
    async def drain() -> None:
        async for _ in admin.channel.unary_stream("/satchel.v1.SecretService/WatchSecrets")(raw):
            pass

    f = await failure(drain(), grpc.StatusCode.INVALID_ARGUMENT)
    assert f.fields == ["request"]


async def test_a_token_that_is_not_the_servers_is_refused_and_recorded_only_as_its_hmac(server, admin) -> None:
    """Ignoring the token would run the call as the certificate's principal (here an admin)."""
    call = admin.secrets.GetSecret(
        secret_pb2.GetSecretRequest(name="any"), metadata=(("authorization", "Bearer abc.def.ghi"),)
    )
    f = await failure(call, grpc.StatusCode.UNAUTHENTICATED)
    assert f.info.reason == "TOKEN_MALFORMED"
    assert "abc.def.ghi" not in f.message
    (record,) = _audit(server)
    assert (record["code"], record["principal"]) == ("UNAUTHENTICATED", "")
    assert "abc.def.ghi" not in server.config.audit_log.read_text()
    # The token is in the record only as its HMAC, under a key the server's key ring derives.
    key = KeyRing.load(server.config.encryption_key_file).derive("audit-token-hmac")
    assert record["token"] == AuditLog(None, hmac_key=key).token_digest("abc.def.ghi")


@pytest.mark.parametrize(
    "metadata",
    [
        (("authorization", ""),),
        (("authorization", "Bearer a.b.c"), ("authorization", "")),
        (("authorization", "Bearer a.b.c"), ("authorization", "Bearer a.b.c")),
        (("authorization", "Basic YWRtaW46YWRtaW4="),),
        (("authorization", "Bearer "),),
        (("authorization", "Bearer  a.b.c"),),
        (("authorization", "a.b.c"),),
        (("authorization-bin", b"\x00\x01"),),
    ],
    ids=["empty", "two-values", "the-same-twice", "not-bearer", "no-token", "two-spaces", "no-scheme", "binary"],
)
async def test_a_malformed_authorization_is_refused_never_falling_back_to_the_certificate(
    server, admin, metadata
) -> None:
    """A second, empty, binary or non-Bearer `authorization` must not leave the
    call running as the certificate's principal (here an admin)."""
    call = admin.secrets.GetSecret(secret_pb2.GetSecretRequest(name="any"), metadata=metadata)
    f = await failure(call, grpc.StatusCode.UNAUTHENTICATED)
    assert f.info.reason == "BAD_AUTHORIZATION"
    assert "YWRtaW46YWRtaW4=" not in f.message and "a.b.c" not in f.message
    (record,) = _audit(server)
    assert (record["code"], record["principal"]) == ("UNAUTHENTICATED", "")
