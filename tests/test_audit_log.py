"""The audit log's records on their own: every line one JSON object with the
same fields, whatever strings a caller sends; a token only as its HMAC under
the server's key."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from pathlib import Path

import grpc
import pytest
from test_auth import RECORD_FIELDS

from satcheld.api._audit import MAX_FIELD, STARTED, AuditLog, Request

KEY = bytes(range(32))


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="ascii").splitlines()


def test_token_digest_is_the_hmac_sha256_of_the_token_under_the_key() -> None:
    digest = AuditLog(None, hmac_key=KEY).token_digest("eyJhbGciOiJFUzI1NiJ9.payload.signature")

    expected = hmac.new(KEY, b"eyJhbGciOiJFUzI1NiJ9.payload.signature", hashlib.sha256).hexdigest()
    assert digest == f"hmac-sha256:{expected}"
    assert re.fullmatch(r"hmac-sha256:[0-9a-f]{64}", digest)


def test_token_digest_matches_one_token_and_no_other() -> None:
    log = AuditLog(None, hmac_key=KEY)

    assert log.token_digest("a.b.c") == log.token_digest("a.b.c"), "records of one token can be matched"
    assert log.token_digest("a.b.c") != log.token_digest("a.b.d")
    assert AuditLog(None, hmac_key=bytes(32)).token_digest("a.b.c") != log.token_digest("a.b.c"), "keyed"


def test_without_a_key_each_log_makes_its_own() -> None:
    """The default key is random: a digest made without the server's key says nothing."""
    assert AuditLog(None).token_digest("a.b.c") != AuditLog(None).token_digest("a.b.c")


def test_a_record_holds_a_token_only_as_its_digest(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, hmac_key=KEY)
    token = "header.claims-s3cr3t.signature"
    with_token = Request("r-1", "/satchel.v1.TokenService/ReviewToken", time.perf_counter(), token=token)
    without = Request("r-2", "/satchel.v1.SecretService/GetSecret", time.perf_counter())

    assert log.write(with_token, grpc.StatusCode.UNAUTHENTICATED)
    assert log.write(without, grpc.StatusCode.OK)
    log.close()

    first, second = map(json.loads, _lines(path))
    assert first["token"] == log.token_digest(token)
    assert second["token"] == ""
    raw = path.read_text()
    for part in ("s3cr3t", token):
        found = part in raw  # a boolean: a failing assert prints no value
        assert not found, "the token is in the audit log"
    assert "s3cr3t" not in repr(with_token), "a logged Request would show the token"


HOSTILE = [
    'quote " and backslash \\',
    "new\nline\r\nand tab\t",
    "nul \x00 and other controls \x01\x1f\x7f",
    "non-ASCII: grüße, 秘密, 🔑",
    "a lone surrogate \ud800",
    '}{"decision":"allow"}',
    "x" * (MAX_FIELD * 10),
]


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_every_record_is_one_line_of_json_with_every_field(tmp_path: Path, value: str) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, hmac_key=KEY)
    req = Request(value, value, time.perf_counter(), resource=value, verb=value, decision="deny", reason=value)

    assert log.write(req, grpc.StatusCode.PERMISSION_DENIED)
    assert log.write(req, grpc.StatusCode.OK, STARTED)
    log.close()

    lines = _lines(path)
    assert len(lines) == 2, "one line per record"
    denied, started = map(json.loads, lines)
    for record in (denied, started):
        assert list(record) == RECORD_FIELDS
        assert record["decision"] == "deny", "a caller's string changed another field"
        for name in ("request_id", "method", "resource", "verb", "reason"):
            assert len(record[name]) <= MAX_FIELD, name
            cut = value if len(value) <= MAX_FIELD else value[: MAX_FIELD - 3] + "..."
            assert record[name] == cut, name
        assert isinstance(record["duration_ms"], float) and record["duration_ms"] >= 0
    assert (denied["stage"], denied["code"]) == ("completed", "PERMISSION_DENIED")
    assert (started["stage"], started["code"]) == ("started", "OK")


def test_duration_runs_from_the_start_of_the_request_to_the_write(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, hmac_key=KEY)
    now = time.perf_counter()

    log.write(Request("r-old", "/m", now - 2.5), grpc.StatusCode.OK)  # began 2.5 s ago
    log.write(Request("r-new", "/m", now), grpc.StatusCode.OK)
    log.close()

    old, new = (json.loads(line)["duration_ms"] for line in _lines(path))
    assert 2500 <= old < 2500 + 60_000
    assert 0 <= new < old - 2000
    assert re.search(r'"duration_ms":\d+\.\d{3}}$', _lines(path)[0]), "milliseconds with 3 decimals"
