"""The real grpcurl binary against the real server: reflection lists and
describes the API, and JSON requests create and read a secret with no proto files."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re

import pytest
from kinds import SECRETS, hashed
from tools import grpcurl as _grpcurl

SERVICES = {
    "satchel.v1.AdminService",
    "satchel.v1.AuthorizationService",
    "satchel.v1.ServiceAccountService",
    "satchel.v1.SecretService",
    "satchel.v1.WorkloadService",
    "satchel.v1.TokenService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}


@pytest.fixture
def grpcurl(server, pki):
    """grpcurl(*args, data=None) -> (exit code, stdout, stderr), as admin, against the test server."""

    async def run(*args: str, data: dict | None = None) -> tuple[int, str, str]:
        tls = ["-cacert", str(pki.ca), "-cert", str(pki.admin.cert), "-key", str(pki.admin.key)]
        body = ["-d", json.dumps(data)] if data is not None else []
        proc = await asyncio.create_subprocess_exec(
            _grpcurl(),
            *tls,
            *body,
            "-max-time",
            "20",
            server.address,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        return proc.returncode, out.decode(), err.decode()

    return run


async def test_grpcurl_is_the_pinned_version() -> None:
    proc = await asyncio.create_subprocess_exec(
        _grpcurl(), "-version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert "1.8.6" in out.decode()


async def test_list_shows_every_service(grpcurl) -> None:
    code, out, err = await grpcurl("list")
    assert code == 0, err
    assert set(out.split()) == SERVICES


async def test_list_and_describe_a_service(grpcurl) -> None:
    code, out, err = await grpcurl("list", "satchel.v1.SecretService")
    assert code == 0, err
    assert set(out.split()) == {
        f"satchel.v1.SecretService.{rpc}"
        for rpc in (
            "CreateSecret",
            "GetSecret",
            "ListSecrets",
            "UpdateSecret",
            "DeleteSecret",
            "RotateSecret",
            "WatchSecrets",
        )
    }

    code, out, err = await grpcurl("describe", "satchel.v1.SecretService")
    assert code == 0, err
    assert "satchel.v1.SecretService is a service:" in out
    assert "rpc CreateSecret ( .satchel.v1.CreateSecretRequest ) returns ( .satchel.v1.CreateSecretResponse );" in out
    assert (
        "rpc WatchSecrets ( .satchel.v1.WatchSecretsRequest ) returns ( stream .satchel.v1.WatchSecretsResponse );"
        in out
    )

    code, out, err = await grpcurl("describe", "satchel.v1.Secret")
    assert code == 0, err
    assert "map<string, bytes> data = 3;" in out
    assert "repeated .satchel.v1.DataKey data_keys = 9;" in out


async def test_create_then_get_a_secret_with_json(grpcurl, admin) -> None:
    value = b"s3cr3t-from-grpcurl"
    request = {
        "secret": {
            "metadata": {"namespace": "tools", "name": "curl-made", "labels": {"via": "grpcurl"}},
            "type": "SECRET_TYPE_BASIC_AUTH",
            "data": {"password": base64.b64encode(value).decode()},
        }
    }
    code, out, err = await grpcurl("satchel.v1.SecretService/CreateSecret", data=request)
    assert code == 0, err
    created = json.loads(out)["secret"]
    assert created["metadata"]["name"] == "curl-made"
    assert created["metadata"]["uid"] and created["metadata"]["etag"]
    assert created["version"] == "1"  # int64 is a string in the protobuf JSON mapping
    # grpcurl prints the proto field names (OrigName), not lowerCamelCase.
    assert created["data_keys"] == [{"name": "password", "size": str(len(value))}]

    code, out, err = await grpcurl(
        "satchel.v1.SecretService/GetSecret", data={"namespace": "tools", "name": "curl-made"}
    )
    assert code == 0, err
    got = json.loads(out)["secret"]
    sent_hash = hashlib.sha256(value).hexdigest()
    received_hash = hashlib.sha256(base64.b64decode(got["data"]["password"])).hexdigest()
    assert received_hash == sent_hash
    assert got["metadata"]["uid"] == created["metadata"]["uid"]
    assert got["type"] == "SECRET_TYPE_BASIC_AUTH"

    # The same object through the generated stubs.
    via_stub = await SECRETS.api(admin).get("curl-made", "tools")
    expected = hashed({"password": value})  # hashes only: a failing assert prints no value
    assert dict(via_stub.data) == expected
    assert via_stub.metadata.resource_version == int(created["metadata"]["resource_version"])


async def test_errors_reach_grpcurl(grpcurl) -> None:
    code, _out, err = await grpcurl("satchel.v1.SecretService/GetSecret", data={"namespace": "tools", "name": "absent"})
    assert code != 0
    assert "NotFound" in err and "secret tools/absent not found" in err

    code, _out, err = await grpcurl(
        "satchel.v1.SecretService/CreateSecret", data={"secret": {"metadata": {"name": "Bad Name"}}}
    )
    assert code != 0
    assert "InvalidArgument" in err and "secret.metadata.name" in err


def _details(err: str) -> list[dict]:
    """The status details grpcurl printed, one JSON object a line under `Details:`."""
    return [json.loads(line.split(")", 1)[1]) for line in err.splitlines() if re.match(r"\s*\d+\)\t", line)]


async def test_grpcurl_decodes_error_details_through_reflection(grpcurl) -> None:
    """grpcurl asks reflection for each detail's type (google.rpc.ErrorInfo,
    google.rpc.BadRequest); a type reflection cannot find it prints as raw bytes
    under "@error"."""
    code, _out, err = await grpcurl("satchel.v1.SecretService/GetSecret", data={"namespace": "tools", "name": "absent"})
    assert code != 0
    assert _details(err) == [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "domain": "satchel.dev", "reason": "NOT_FOUND"}
    ]

    code, _out, err = await grpcurl(
        "satchel.v1.SecretService/CreateSecret", data={"secret": {"metadata": {"name": "Bad Name"}}}
    )
    assert code != 0
    info, bad = _details(err)
    assert info == {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "domain": "satchel.dev",
        "reason": "INVALID_ARGUMENT",
    }
    assert bad["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert [v["field"] for v in bad["field_violations"]] == ["secret.metadata.name"]
    assert "DNS-1123 subdomain" in bad["field_violations"][0]["description"]


async def test_health_answers(grpcurl) -> None:
    for service in ("", "satchel.v1.SecretService"):
        code, out, err = await grpcurl("grpc.health.v1.Health/Check", data={"service": service})
        assert code == 0, err
        assert json.loads(out) == {"status": "SERVING"}
