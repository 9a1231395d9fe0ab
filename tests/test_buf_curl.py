"""The real `buf curl` (the pinned @bufbuild/buf) against the real server, over
mTLS and the gRPC protocol, with the schema from server reflection only.

What buf curl prints of an error: it asks reflection for the service's file
alone (`file_containing_symbol` of the service), never for the types of the
status details. Its error printer (connect-go's) names each detail's type and
gives its bytes in base64, and adds a decoded `debug` form only for the types
compiled into the buf binary: google.protobuf's well-known types, not
google.rpc.ErrorInfo or BadRequest. So buf curl 1.75.0 cannot decode these two
whatever the server serves (a local `--schema` holding them does not help
either); these tests decode the bytes buf printed, and should a later buf
decode them, hold its decoded form to the same bytes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os

import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from kinds import SECRETS, hashed
from tools import buf as _buf

GRPC_NOT_FOUND, GRPC_INVALID_ARGUMENT = 5, 3


@pytest.fixture
def buf_curl(server, pki, tmp_path):
    """buf_curl(method, data) -> (exit code, stdout, stderr), as admin, against the test server."""

    async def run(method: str, data: dict) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            _buf(),
            "curl",
            "--protocol",
            "grpc",
            "--cacert",
            str(pki.ca),
            "--cert",
            str(pki.admin.cert),
            "--key",
            str(pki.admin.key),
            "--timeout",
            "20s",
            "-d",
            json.dumps(data),
            f"https://{server.address}/{method}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "BUF_CACHE_DIR": str(tmp_path / "buf-cache")},
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        return proc.returncode, out.decode(), err.decode()

    return run


def _details(printed: dict) -> dict[str, error_details_pb2.ErrorInfo | error_details_pb2.BadRequest]:
    """The details buf printed, by type, decoded from the bytes it gives."""
    types = {"google.rpc.ErrorInfo": error_details_pb2.ErrorInfo, "google.rpc.BadRequest": error_details_pb2.BadRequest}
    decoded = {}
    for detail in printed["details"]:
        raw = base64.b64decode(detail["value"] + "=" * (-len(detail["value"]) % 4))
        message = types[detail["type"]].FromString(raw)
        if "debug" in detail:  # a buf that can decode the type: it must say what the bytes say
            assert detail["debug"] == json_format.MessageToDict(message), detail["type"]
        decoded[detail["type"]] = message
    return decoded


async def test_buf_curl_creates_and_reads_a_secret_through_reflection(buf_curl, admin) -> None:
    value = b"s3cr3t-from-buf-curl"
    request = {
        "secret": {
            "metadata": {"namespace": "tools", "name": "buf-made"},
            "type": "SECRET_TYPE_OPAQUE",
            "data": {"token": base64.b64encode(value).decode()},
        }
    }
    code, out, err = await buf_curl("satchel.v1.SecretService/CreateSecret", request)
    assert code == 0, err
    created = json.loads(out)["secret"]
    assert created["metadata"]["name"] == "buf-made"
    assert created["dataKeys"] == [{"name": "token", "size": str(len(value))}]  # buf prints lowerCamelCase

    code, out, err = await buf_curl("satchel.v1.SecretService/GetSecret", {"namespace": "tools", "name": "buf-made"})
    assert code == 0, err
    got = json.loads(out)["secret"]
    received = hashlib.sha256(base64.b64decode(got["data"]["token"])).hexdigest()
    assert received == hashlib.sha256(value).hexdigest()  # hashes only: a failing assert prints no value
    assert dict((await SECRETS.api(admin).get("buf-made", "tools")).data) == hashed({"token": value})


async def test_buf_curl_shows_the_error_info_of_a_missing_secret(buf_curl) -> None:
    code, _out, err = await buf_curl("satchel.v1.SecretService/GetSecret", {"namespace": "tools", "name": "absent"})
    assert code == GRPC_NOT_FOUND << 3, err  # buf curl exits with the gRPC code shifted left three bits
    printed = json.loads(err)
    assert (printed["code"], printed["message"]) == ("not_found", "secret tools/absent not found")
    assert [d["type"] for d in printed["details"]] == ["google.rpc.ErrorInfo"]
    info = _details(printed)["google.rpc.ErrorInfo"]
    assert (info.reason, info.domain) == ("NOT_FOUND", "satchel.dev")


async def test_buf_curl_shows_the_field_violations_of_an_invalid_secret(buf_curl) -> None:
    code, _out, err = await buf_curl(
        "satchel.v1.SecretService/CreateSecret", {"secret": {"metadata": {"name": "Bad Name"}}}
    )
    assert code == GRPC_INVALID_ARGUMENT << 3, err
    printed = json.loads(err)
    assert printed["code"] == "invalid_argument"
    assert [d["type"] for d in printed["details"]] == ["google.rpc.ErrorInfo", "google.rpc.BadRequest"]
    details = _details(printed)
    assert details["google.rpc.ErrorInfo"].reason == "INVALID_ARGUMENT"
    violations = [(v.field, v.description) for v in details["google.rpc.BadRequest"].field_violations]
    assert [field for field, _ in violations] == ["secret.metadata.name"]
    assert "DNS-1123 subdomain" in violations[0][1]
