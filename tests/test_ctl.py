"""`satchelctl` as a real subprocess (the installed console script) against a real
`satcheld serve --dev` subprocess: certificates, CRUD of every kind in every output
format, secret data from flags and files (never in tables), selectors, errors,
JSON equal to grpcurl's, and a live watch."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import re
import shlex
import signal
import stat
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tools import binary, grpcurl, satcheld

import satchel.pki

WAIT = 30  # seconds: the bound on every wait for a line or an exit
EXPORTS = ("SATCHEL_SERVER", "SATCHEL_CA", "SATCHEL_CERT", "SATCHEL_KEY")


def satchelctl() -> str:
    return binary("satchelctl", "`pip install -e .` installs the satchelctl console script")


def _clean_env() -> dict[str, str]:
    """The environment without SATCHEL_ variables, and with stdout buffered as a user's is
    (so the watch tests see whether satchelctl flushes each line)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SATCHEL_") and k != "PYTHONUNBUFFERED"}


class Lines:
    """The lines a subprocess writes to a pipe, read by a thread, taken with a bounded wait."""

    def __init__(self, pipe: IO[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(pipe,), daemon=True)
        self._thread.start()

    def _pump(self, pipe: IO[str]) -> None:
        for line in pipe:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def next(self, what: str) -> str:
        try:
            line = self._queue.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"no line within {WAIT}s while waiting for {what}") from None
        if line is None:
            raise AssertionError(f"the pipe closed while waiting for {what}")
        return line

    def until(self, what: str, predicate) -> list[str]:
        """Lines up to and including the first for which `predicate` is true."""
        seen = []
        while True:
            seen.append(self.next(what))
            if predicate(seen[-1]):
                return seen

    def join(self) -> None:
        self._thread.join(WAIT)


@dataclass
class Server:
    address: str
    env: dict[str, str]  # the environment with the SATCHEL_ variables the server printed
    data: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("ctl") / "data"
    proc = subprocess.Popen(
        [satcheld(), "serve", "--dev", "--data-dir", str(data), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_clean_env(),
    )
    lines = Lines(proc.stdout)
    try:
        first = lines.next("`listening on`")
        match = re.fullmatch(r"listening on (127\.0\.0\.1:\d+)", first)
        assert match, first
        env = _clean_env()
        while not set(EXPORTS) <= env.keys():
            if m := re.fullmatch(r"\s*export (SATCHEL_[A-Z]+)=(.*)", lines.next("the export lines")):
                env[m.group(1)] = shlex.split(m.group(2))[0]
        yield Server(match.group(1), env, data)
        assert proc.poll() is None, "satcheld exited on its own"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        lines.join()  # the reader thread ends at EOF; only then is the pipe closed
        proc.stdout.close()


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):
        assert self.code == 0, self.err
        return json.loads(self.out)

    def yaml(self):
        assert self.code == 0, self.err
        return yaml.safe_load(self.out)


@pytest.fixture
def ctl(server: Server):
    """ctl(*args, env=None) runs satchelctl with the server's exported settings."""

    def run(*args: str, env: dict[str, str] | None = None, input: str = "") -> Result:
        proc = subprocess.run(
            [satchelctl(), *args],
            env=server.env if env is None else env,
            capture_output=True,
            text=True,
            timeout=WAIT,
            input=input,  # never the test's own stdin
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return run


@pytest.fixture
def ns() -> str:
    """A namespace of this test's own, so tests sharing the server do not see each other's objects."""
    return f"t-{uuid.uuid4().hex[:10]}"


def _digest(values: dict[str, str]) -> dict[str, str]:
    """base64 data values as SHA-256 digests, so a failing assert prints no secret value."""
    return {k: hashlib.sha256(base64.b64decode(v)).hexdigest() for k, v in values.items()}


# ---------------------------------------------------------------------------------------------
# certs


def test_certs_init_writes_six_files_and_keys_are_private(ctl, tmp_path) -> None:
    d = tmp_path / "certs"
    hosts = "localhost,10.1.2.3,sat.example"
    r = ctl("certs", "init", "--dir", str(d), "--trust-domain", "example.test", "--hosts", hosts)
    assert r.code == 0, r.err
    names = ["ca.crt", "ca.key", "server.crt", "server.key", "admin.crt", "admin.key"]
    assert r.out.splitlines() == [str(d / n) for n in names]
    for name in names:
        mode = stat.S_IMODE((d / name).stat().st_mode)
        assert mode == (0o600 if name.endswith(".key") else 0o644), (name, oct(mode))
    admin = x509.load_pem_x509_certificate((d / "admin.crt").read_bytes())
    assert satchel.pki.spiffe_ids(admin) == ["spiffe://example.test/user/admin"]
    server_cert = x509.load_pem_x509_certificate((d / "server.crt").read_bytes())
    san = server_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "sat.example"}
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]

    # A second run reuses everything: nothing is written.
    before = {n: (d / n).read_bytes() for n in names}
    again = ctl("certs", "init", "--dir", str(d), "--trust-domain", "example.test")
    assert again.code == 0, again.err
    assert again.out == ""
    assert {n: (d / n).read_bytes() for n in names} == before


def test_certs_issue_writes_a_node_and_a_user_pair(ctl, tmp_path) -> None:
    d = tmp_path / "certs"
    assert ctl("certs", "init", "--dir", str(d)).code == 0
    for kind, name in (("node", "n1"), ("user", "alice")):
        r = ctl("certs", "issue", "--dir", str(d), kind, name, "--ttl", "2h")
        assert r.code == 0, r.err
        crt, key = d / f"{kind}-{name}.crt", d / f"{kind}-{name}.key"
        assert r.out.splitlines() == [str(crt), str(key)]
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        assert satchel.pki.spiffe_ids(cert) == [f"spiffe://satchel.local/{kind}/{name}"]
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert 2 * 3600 <= lifetime.total_seconds() <= 2 * 3600 + 600  # 2h, plus the backdating


@pytest.mark.parametrize(
    "args",
    [
        ("node", "Not_A_Name"),
        ("robot", "r1"),
        ("user", "bob", "--ttl", "soon"),
    ],
    ids=["bad-name", "bad-kind", "bad-ttl"],
)
def test_certs_issue_refuses_bad_arguments_with_exit_2(ctl, tmp_path, args) -> None:
    d = tmp_path / "certs"
    assert ctl("certs", "init", "--dir", str(d)).code == 0
    r = ctl("certs", "issue", "--dir", str(d), *args)
    assert r.code == 2
    assert r.err.strip()
    assert not list(d.glob("*-*.crt"))


def test_certs_issue_without_a_ca_names_the_missing_file(ctl, tmp_path) -> None:
    r = ctl("certs", "issue", "--dir", str(tmp_path), "user", "bob")
    assert r.code == 2
    assert str(tmp_path / "ca.crt") in r.err


# ---------------------------------------------------------------------------------------------
# CRUD round trips


@dataclass(frozen=True)
class KindCase:
    command: str
    needs: tuple[str, ...]  # a command to run first (in the test's namespace), or ()
    create_args: tuple[str, ...]  # beyond the name
    update_args: tuple[str, ...]
    columns: tuple[str, ...]

    def check_created(self, obj: dict) -> None:
        if self.command == "sa":
            assert obj["description"] == "the web tier"
            assert {"name": "web-db"} in obj["secrets"]
            meta = obj["metadata"]
            assert obj["spiffe_id"] == f"spiffe://satchel.local/ns/{meta['namespace']}/sa/{meta['name']}"
        elif self.command == "secret":
            assert obj["type"] == "SECRET_TYPE_OPAQUE"
            assert _digest(obj["data"]) == {"user": hashlib.sha256(b"app").hexdigest()}
            assert obj["data_keys"] == [{"name": "user", "size": "3"}]
            assert obj["version"] == "1"
        else:
            assert obj["node_name"] == "n1"
            assert obj["service_account"] == "web"
            assert obj["secrets"] == ["web-db"]

    def check_updated(self, obj: dict) -> None:
        if self.command == "sa":
            assert obj["description"] == "changed"
        elif self.command == "secret":
            assert obj["version"] == "1", "a label-only update must keep the data"
            assert obj["data_keys"] == [{"name": "user", "size": "3"}]
        else:
            assert obj["node_name"] == "n2"
            assert obj["secrets"] == ["web-db"]


KIND_CASES = [
    KindCase(
        "sa",
        needs=(),
        create_args=("--secret", "web-db", "--description", "the web tier"),
        update_args=("--description", "changed"),
        columns=("NAMESPACE", "NAME", "SECRETS", "SPIFFE-ID", "AGE"),
    ),
    KindCase(
        "secret",
        needs=(),
        create_args=("--from-literal", "user=app"),
        update_args=(),
        columns=("NAMESPACE", "NAME", "TYPE", "KEYS", "VERSION", "AGE"),
    ),
    KindCase(
        "workload",
        needs=("sa", "create", "web"),
        create_args=("--node", "n1", "--service-account", "web", "--secret", "web-db"),
        update_args=("--node", "n2"),
        columns=("NAMESPACE", "NAME", "NODE", "SERVICE-ACCOUNT", "AGE"),
    ),
]


@pytest.mark.parametrize("kind", KIND_CASES, ids=[k.command for k in KIND_CASES])
def test_round_trip_in_every_output_format(ctl, ns, kind: KindCase) -> None:
    if kind.needs:
        assert ctl(*kind.needs, "-n", ns).code == 0
    created = ctl(
        kind.command,
        "create",
        "web",
        "-n",
        ns,
        "--label",
        "app=web",
        "--annotation",
        "owner=ops",
        *kind.create_args,
        "-o",
        "json",
    ).json()
    assert created["metadata"]["namespace"] == ns
    assert created["metadata"]["name"] == "web"
    assert created["metadata"]["labels"] == {"app": "web"}
    assert created["metadata"]["annotations"] == {"owner": "ops"}
    assert int(created["metadata"]["resource_version"]) > 0
    kind.check_created(created)

    # get: yaml is the same object as json.
    assert ctl(kind.command, "get", "web", "-n", ns, "-o", "yaml").yaml() == created
    assert ctl(kind.command, "get", "web", "-n", ns, "-o", "json").json() == created

    # table: a header and one row.
    table = ctl(kind.command, "get", "web", "-n", ns)
    assert table.code == 0, table.err
    header, row = table.out.splitlines()
    assert header.split() == list(kind.columns)
    assert row.split()[:2] == [ns, "web"]

    # list: a list of objects, in json and yaml.
    assert ctl(kind.command, "list", "-n", ns, "-o", "json").json() == [created]
    assert ctl(kind.command, "list", "-n", ns, "-o", "yaml").yaml() == [created]

    # update: labels merge, fields change, the revision moves on.
    updated = ctl(
        kind.command, "update", "web", "-n", ns, "--label", "tier=front", *kind.update_args, "-o", "json"
    ).json()
    assert updated["metadata"]["labels"] == {"app": "web", "tier": "front"}
    assert int(updated["metadata"]["resource_version"]) > int(created["metadata"]["resource_version"])
    assert updated["metadata"]["etag"] != created["metadata"]["etag"]
    kind.check_updated(updated)
    removed = ctl(kind.command, "update", "web", "-n", ns, "--label", "app-", "-o", "json").json()
    assert removed["metadata"]["labels"] == {"tier": "front"}

    # delete with a stale etag is refused; with the current one it succeeds.
    stale = ctl(kind.command, "delete", "web", "-n", ns, "--etag", created["metadata"]["etag"])
    assert stale.code == 1
    assert stale.err.startswith("error: ABORTED: ")
    deleted = ctl(kind.command, "delete", "web", "-n", ns, "--etag", removed["metadata"]["etag"])
    assert deleted.code == 0, deleted.err
    assert "deleted" in deleted.out
    gone = ctl(kind.command, "get", "web", "-n", ns)
    assert gone.code == 1
    assert "NOT_FOUND" in gone.err
    assert ctl(kind.command, "list", "-n", ns, "-o", "json").json() == []


def test_serviceaccount_is_an_alias_of_sa(ctl, ns) -> None:
    created = ctl("serviceaccount", "create", "robot", "-n", ns, "-o", "json").json()
    assert created["username"] == f"system:serviceaccount:{ns}:robot"
    assert ctl("sa", "get", "robot", "-n", ns, "-o", "json").json() == created


def test_update_with_a_stale_etag_is_aborted(ctl, ns) -> None:
    first = ctl("sa", "create", "a", "-n", ns, "-o", "json").json()
    assert ctl("sa", "update", "a", "-n", ns, "--description", "one").code == 0
    r = ctl("sa", "update", "a", "-n", ns, "--description", "two", "--etag", first["metadata"]["etag"])
    assert r.code == 1
    assert r.err.startswith("error: ABORTED: ")
    assert ctl("sa", "get", "a", "-n", ns, "-o", "json").json()["description"] == "one"


def test_update_with_nothing_to_change_is_a_usage_error(ctl, ns) -> None:
    assert ctl("sa", "create", "a", "-n", ns).code == 0
    r = ctl("sa", "update", "a", "-n", ns)
    assert r.code == 2
    assert "nothing to change" in r.err


# ---------------------------------------------------------------------------------------------
# Secret data


def test_secret_data_from_files_and_literals(ctl, ns, tmp_path) -> None:
    cert = tmp_path / "client.pem"
    cert.write_bytes(b"-----BEGIN X-----\n\x00\xff binary\n")
    other = tmp_path / "other.bin"
    other.write_bytes(bytes(range(256)))
    created = ctl(
        "secret",
        "create",
        "files",
        "-n",
        ns,
        "--from-file",
        str(cert),
        "--from-file",
        f"blob={other}",
        "--from-literal",
        "mode=ro",
        "-o",
        "json",
    ).json()
    expected = {
        "client.pem": hashlib.sha256(cert.read_bytes()).hexdigest(),
        "blob": hashlib.sha256(other.read_bytes()).hexdigest(),
        "mode": hashlib.sha256(b"ro").hexdigest(),
    }
    assert _digest(created["data"]) == expected
    assert {k["name"]: k["size"] for k in created["data_keys"]} == {
        "client.pem": str(len(cert.read_bytes())),
        "blob": "256",
        "mode": "2",
    }

    # update: data is replaced only when data flags are given.
    relabelled = ctl("secret", "update", "files", "-n", ns, "--label", "a=b", "-o", "json").json()
    assert _digest(relabelled["data"]) == expected
    assert relabelled["version"] == "1"
    replaced = ctl("secret", "update", "files", "-n", ns, "--from-literal", "mode=rw", "-o", "json").json()
    assert _digest(replaced["data"]) == {"mode": hashlib.sha256(b"rw").hexdigest()}
    assert replaced["version"] == "2"


def test_secret_types_and_immutable(ctl, ns) -> None:
    created = ctl(
        "secret",
        "create",
        "login",
        "-n",
        ns,
        "--type",
        "basic-auth",
        "--from-literal",
        "username=u",
        "--immutable",
        "-o",
        "json",
    ).json()
    assert created["type"] == "SECRET_TYPE_BASIC_AUTH"
    assert created["immutable"] is True
    r = ctl("secret", "update", "login", "-n", ns, "--from-literal", "username=v")
    assert r.code == 1
    assert r.err.startswith("error: FAILED_PRECONDITION: ")

    missing = ctl("secret", "create", "bad-login", "-n", ns, "--type", "basic-auth", "--from-literal", "other=x")
    assert missing.code == 1
    assert missing.err.startswith("error: INVALID_ARGUMENT: ")


def test_a_missing_file_is_named_and_nothing_is_created(ctl, ns, tmp_path) -> None:
    r = ctl("secret", "create", "s", "-n", ns, "--from-file", f"k={tmp_path / 'absent'}")
    assert r.code == 2
    assert str(tmp_path / "absent") in r.err
    assert ctl("secret", "list", "-n", ns, "-o", "json").json() == []


def test_secret_values_never_appear_in_tables_or_errors(ctl, ns) -> None:
    value = f"v-{uuid.uuid4().hex}"
    outputs = [
        ctl("secret", "create", "quiet", "-n", ns, "--from-literal", f"password={value}"),
        ctl("secret", "get", "quiet", "-n", ns),
        ctl("secret", "list", "-n", ns),
        ctl("secret", "list"),
        ctl("secret", "update", "quiet", "-n", ns, "--label", "x=y"),
        ctl("secret", "update", "quiet", "-n", ns, "--from-literal", f"password={value}2"),
    ]
    for r in outputs:
        assert r.code == 0, r.err
        leaked = value in r.out or value in r.err
        assert not leaked
    rows = [line.split() for line in outputs[1].out.splitlines()]
    assert rows[0] == ["NAMESPACE", "NAME", "TYPE", "KEYS", "VERSION", "AGE"]
    assert rows[1][:5] == [ns, "quiet", "opaque", "password", "1"]

    # json does carry the data (as base64), so the table leaves it out on purpose.
    data = ctl("secret", "get", "quiet", "-n", ns, "-o", "json").json()["data"]
    assert _digest(data) == {"password": hashlib.sha256(f"{value}2".encode()).hexdigest()}

    # A malformed flag, or a refused value, is reported without the value.
    errors = [
        ctl("secret", "create", "quiet2", "-n", ns, "--from-literal", value),
        ctl("secret", "create", "quiet3", "-n", ns, "--from-literal", f"bad key={value}"),
    ]
    for r in errors:
        assert r.code in (1, 2)
        leaked = value in r.out or value in r.err
        assert not leaked


# ---------------------------------------------------------------------------------------------
# Listing


def test_list_by_label_selector_and_namespace(ctl, ns) -> None:
    other_ns = f"{ns}-b"
    for name, namespace, labels in [
        ("a", ns, ["app=web", "tier=front"]),
        ("b", ns, ["app=web"]),
        ("c", ns, ["app=db"]),
        ("d", other_ns, ["app=web"]),
    ]:
        flags = [f for label in labels for f in ("--label", label)]
        assert ctl("secret", "create", name, "-n", namespace, "--from-literal", "k=v", *flags).code == 0

    def names(*args: str) -> set[tuple[str, str]]:
        items = ctl("secret", "list", *args, "-o", "json").json()
        return {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in items}

    assert names("-n", ns, "-l", "app=web") == {(ns, "a"), (ns, "b")}
    assert names("-n", ns, "--selector", "app!=web") == {(ns, "c")}
    assert names("-n", ns, "-l", "tier") == {(ns, "a")}
    # Without -n: every namespace.
    assert {(ns, "a"), (ns, "b"), (other_ns, "d")} <= names("-l", "app=web")
    assert (ns, "c") not in names("-l", "app=web")

    table = ctl("secret", "list", "-n", ns, "-l", "app=web")
    assert [line.split()[1] for line in table.out.splitlines()[1:]] == ["a", "b"]

    empty = ctl("secret", "list", "-n", ns, "-l", "app=none")
    assert empty.code == 0
    assert empty.out == ""
    assert "no secrets found" in empty.err


# ---------------------------------------------------------------------------------------------
# Errors and settings


def test_get_missing_is_not_found_with_exit_1(ctl, ns) -> None:
    r = ctl("secret", "get", "nope", "-n", ns)
    assert r.code == 1
    assert r.out == ""
    assert r.err.startswith("error: NOT_FOUND: ")
    assert f"{ns}/nope" in r.err.splitlines()[0]


def test_invalid_argument_prints_each_field_violation(ctl, ns) -> None:
    r = ctl("workload", "create", "Bad_Name", "-n", ns, "--node", "n1", "--label", "bad key=x")
    assert r.code == 1
    lines = r.err.splitlines()
    assert lines[0].startswith("error: INVALID_ARGUMENT: ")
    violations = [line.strip() for line in lines[1:] if line.startswith("  workload.")]
    assert any(v.startswith("workload.metadata.name:") for v in violations), lines
    assert any(v.startswith("workload.metadata.labels") for v in violations), lines


def test_workload_create_needs_a_node(ctl, ns) -> None:
    r = ctl("workload", "create", "w", "-n", ns)
    assert r.code == 2
    assert "--node" in r.err


def test_missing_settings_are_one_line_and_exit_2(ctl, server: Server) -> None:
    env = {k: v for k, v in server.env.items() if k not in ("SATCHEL_SERVER", "SATCHEL_KEY")}
    r = ctl("secret", "list", env=env)
    assert r.code == 2
    assert len(r.err.splitlines()) == 1
    assert "--server" in r.err and "SATCHEL_SERVER" in r.err
    assert "--key" in r.err and "SATCHEL_KEY" in r.err
    assert "--ca" not in r.err


def test_flags_win_over_the_environment_before_or_after_the_command(ctl, server: Server, ns) -> None:
    env = {**server.env, "SATCHEL_SERVER": "127.0.0.1:1"}  # nothing listens there
    refused = ctl("sa", "list", "-n", ns, env=env)
    assert refused.code == 1
    assert refused.err.startswith("error: UNAVAILABLE: ")
    assert ctl("sa", "list", "-n", ns, "--server", server.address, env=env).code == 0
    assert ctl("--server", server.address, "sa", "list", "-n", ns, env=env).code == 0

    flags_only = _clean_env()
    connection = [
        "--server",
        server.address,
        "--ca",
        server.env["SATCHEL_CA"],
        "--cert",
        server.env["SATCHEL_CERT"],
        "--key",
        server.env["SATCHEL_KEY"],
    ]
    r = ctl("sa", "create", "flagged", "-n", ns, *connection, env=flags_only)
    assert r.code == 0, r.err


def test_an_unreadable_certificate_is_named_and_exit_2(ctl, server: Server, tmp_path) -> None:
    r = ctl("sa", "list", "--cert", str(tmp_path / "none.crt"))
    assert r.code == 2
    assert str(tmp_path / "none.crt") in r.err


def test_rotate_and_token_review_report_the_server_answer(ctl, ns) -> None:
    assert ctl("secret", "create", "r", "-n", ns, "--from-literal", "k=v1").code == 0
    rotated = ctl("secret", "rotate", "r", "-n", ns, "--from-literal", "k=v2", "--grace-period", "1h", "-o", "json")
    if rotated.code == 0:
        assert rotated.json()["version"] == "2"
    else:  # the server may not implement rotation yet; then its error is printed
        assert rotated.code == 1
        assert rotated.err.startswith("error: UNIMPLEMENTED: ")

    reviewed = ctl("token", "review", "--audience", "peers", "-o", "json", input="not-a-token\n")
    assert reviewed.json().get("authenticated", False) is False
    assert reviewed.json()["reason"] == "the bearer token is not a well-formed JWT"


# ---------------------------------------------------------------------------------------------
# tokens and signing keys


def _token(ctl, name: str, ns: str) -> str:
    assert ctl("sa", "create", name, "-n", ns).code == 0
    secret = ctl("secret", "get", f"{name}-token", "-n", ns, "-o", "json").json()
    return base64.b64decode(secret["data"]["token"]).decode()


def test_token_review_reads_the_token_from_stdin_or_a_file_never_argv(ctl, ns, tmp_path) -> None:
    token = _token(ctl, "app", ns)
    from_stdin = ctl("token", "review", "-o", "json", input=token + "\n")
    assert from_stdin.json()["authenticated"] is True
    assert from_stdin.json()["username"] == f"system:serviceaccount:{ns}:app"
    path = tmp_path / "token"
    path.write_text(token)
    table = ctl("token", "review", "--token-file", str(path))
    assert table.code == 0, table.err
    assert re.search(r"^authenticated\s+true$", table.out, re.M)
    assert re.search(
        rf"^groups\s+system:authenticated,system:serviceaccounts,system:serviceaccounts:{ns}$", table.out, re.M
    )
    assert token not in table.out + table.err
    refused = ctl("token", "review", "--audience", "peers", "-o", "json", input=token)
    assert refused.json()["reason"] == 'the token is not meant for "peers"'

    assert ctl("token", "review", token).code == 2  # an argument would show it in the process list
    empty = ctl("token", "review", input="")
    assert empty.code == 2 and "stdin" in empty.err
    missing = ctl("token", "review", "--token-file", str(tmp_path / "none"))
    assert missing.code == 2 and str(tmp_path / "none") in missing.err


def test_a_token_given_to_satchelctl_makes_it_the_service_account(ctl, ns, server: Server) -> None:
    token = _token(ctl, "app", ns)
    got = ctl("--token", token, "sa", "get", "app", "-n", ns, "-o", "json")
    assert got.json()["username"] == f"system:serviceaccount:{ns}:app"
    denied = ctl("secret", "list", "-n", ns, "--token", token)
    assert denied.code == 1
    assert denied.err.startswith(f"error: PERMISSION_DENIED: sa:{ns}/app may not list secrets")
    env = {**server.env, "SATCHEL_TOKEN": "not-a-token"}
    bad = ctl("sa", "get", "app", "-n", ns, env=env)
    assert bad.code == 1 and bad.err.startswith("error: UNAUTHENTICATED: the bearer token is not a well-formed JWT")


def test_token_jwks_and_admin_rotate_signing_key(ctl, ns, server: Server) -> None:
    token = _token(ctl, "app", ns)
    before = ctl("token", "jwks").json()
    assert [k["kty"] for k in before["keys"]] == ["EC"] * len(before["keys"])
    assert ctl("token", "jwks", "-o", "yaml").yaml() == before

    rotated = ctl("admin", "rotate-signing-key")
    assert rotated.code == 0, rotated.err
    header, kid = rotated.out.split()
    assert header == "KEY-ID"
    as_json = ctl("admin", "rotate-signing-key", "-o", "json").json()
    assert set(as_json) == {"key_id"} and as_json["key_id"] != kid
    after = [k["kid"] for k in ctl("token", "jwks").json()["keys"]]
    assert after[-2:] == [kid, as_json["key_id"]] and after[: len(before["keys"])] == [k["kid"] for k in before["keys"]]
    assert ctl("token", "review", "-o", "json", input=token).json()["authenticated"] is True  # old keys verify

    certs = server.data / "certs"
    issued = ctl("certs", "issue", "--dir", str(certs), "user", "carol")
    crt, key = issued.out.splitlines()
    denied = ctl("admin", "rotate-signing-key", "--cert", crt, "--key", key)
    assert denied.code == 1 and denied.err.startswith("error: PERMISSION_DENIED: user:carol may not rotate-signing-key")


# ---------------------------------------------------------------------------------------------
# sa cert


def test_sa_cert_writes_a_private_pair_that_authenticates_as_the_account(ctl, ns, tmp_path) -> None:
    assert ctl("sa", "create", "web", "-n", ns).code == 0
    assert ctl("sa", "create", "db", "-n", ns).code == 0
    out = tmp_path / "new" / "web"  # created, parents too
    before = datetime.now(UTC)

    r = ctl("sa", "cert", "web", "-n", ns, "--out", str(out), "--ttl", "2h")

    assert r.code == 0, r.err
    crt, key, expires = r.out.splitlines()
    assert [crt, key] == [str(out / "tls.crt"), str(out / "tls.key")]
    for path in (crt, key):
        assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600, path
    leaf, *chain = x509.load_pem_x509_certificates(Path(crt).read_bytes())
    assert chain, "tls.crt holds the chain: the certificate, then its CA"
    assert satchel.pki.spiffe_ids(leaf) == [f"spiffe://satchel.local/ns/{ns}/sa/web"]
    private = serialization.load_pem_private_key(Path(key).read_bytes(), None)
    assert private.public_key() == leaf.public_key()
    assert expires == f"expires {leaf.not_valid_after_utc.isoformat()}"
    assert abs(leaf.not_valid_after_utc - (before + timedelta(hours=2))) < timedelta(minutes=1)

    as_web = ctl("sa", "get", "web", "-n", ns, "-o", "json", "--cert", crt, "--key", key)
    assert as_web.json()["metadata"]["name"] == "web"
    other = ctl("sa", "get", "db", "-n", ns, "--cert", crt, "--key", key)
    assert other.code == 1
    assert other.err.startswith(f"error: PERMISSION_DENIED: sa:{ns}/web may not get")

    # Renewal: the account itself replaces the pair, with the server's default TTL of 1h.
    renewed = ctl("sa", "cert", "web", "-n", ns, "--out", str(out), "--cert", crt, "--key", key)
    assert renewed.code == 0, renewed.err
    new_leaf = x509.load_pem_x509_certificates(Path(crt).read_bytes())[0]
    assert new_leaf.serial_number != leaf.serial_number
    assert new_leaf.not_valid_after_utc - new_leaf.not_valid_before_utc <= timedelta(hours=1, minutes=5, seconds=1)
    private = serialization.load_pem_private_key(Path(key).read_bytes(), None)
    assert private.public_key() == new_leaf.public_key()


def test_sa_cert_refused_writes_nothing(ctl, ns, tmp_path) -> None:
    out = tmp_path / "out"

    r = ctl("sa", "cert", "missing", "-n", ns, "--out", str(out))

    assert r.code == 1
    assert r.err.startswith(f"error: NOT_FOUND: service account {ns}/missing not found")
    assert not out.exists()


def test_sa_cert_needs_out(ctl, ns) -> None:
    r = ctl("sa", "cert", "web", "-n", ns)
    assert r.code == 2
    assert "--out" in r.err


# ---------------------------------------------------------------------------------------------
# auth can-i


def test_can_i_says_yes_to_the_admin(ctl) -> None:
    for args in (("get", "secrets"), ("read-data", "secrets", "db", "-n", "prod"), ("delete", "workloads", "-n", "x")):
        r = ctl("auth", "can-i", *args)
        assert (r.code, r.out, r.err) == (0, "yes\n", ""), args


@pytest.mark.parametrize(("kind", "name", "principal"), [("user", "alice", "user:alice"), ("node", "n1", "node:n1")])
def test_can_i_says_no_with_why_and_exit_1(ctl, server: Server, kind: str, name: str, principal: str) -> None:
    certs = server.data / "certs"
    issued = ctl("certs", "issue", "--dir", str(certs), kind, name)
    assert issued.code == 0, issued.err
    crt, key = issued.out.splitlines()
    r = ctl("auth", "can-i", "get", "secrets", "db", "-n", "prod", "--cert", crt, "--key", key)
    assert (r.code, r.out) == (1, "no\n")
    assert r.err == f'{principal} may not get secrets in namespace "prod"\n'


def test_can_i_names_a_bad_verb_and_resource(ctl) -> None:
    r = ctl("auth", "can-i", "steal", "passwords")
    assert r.code == 1
    assert r.out == ""
    assert r.err.startswith("error: INVALID_ARGUMENT: ")
    assert "  verb: " in r.err and "  resource: " in r.err


def test_can_i_needs_a_verb_and_a_resource(ctl) -> None:
    assert ctl("auth", "can-i", "get").code == 2


# ---------------------------------------------------------------------------------------------
# The same JSON as grpcurl


def test_json_is_what_grpcurl_prints(ctl, server: Server, ns) -> None:
    assert (
        ctl(
            "secret",
            "create",
            "same",
            "-n",
            ns,
            "--from-literal",
            "a=1",
            "--from-literal",
            "b=2",
            "--label",
            "x=y",
            "--annotation",
            "note=n",
        ).code
        == 0
    )
    certs = server.data / "certs"
    proc = subprocess.run(
        [
            grpcurl(),
            *("-cacert", str(certs / "ca.crt"), "-cert", str(certs / "admin.crt"), "-key", str(certs / "admin.key")),
            *("-d", json.dumps({"namespace": ns, "name": "same"})),
            server.address,
            "satchel.v1.SecretService/GetSecret",
        ],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert proc.returncode == 0, proc.stderr
    expected = json.loads(proc.stdout)["secret"]
    assert ctl("secret", "get", "same", "-n", ns, "-o", "json").json() == expected
    assert ctl("secret", "list", "-n", ns, "-o", "json").json() == [expected]


# ---------------------------------------------------------------------------------------------
# watch


@pytest.fixture
def watch(server: Server):
    """watch(*args) starts `satchelctl watch ARGS`; returns (process, Lines of its stdout)."""
    started: list[tuple[subprocess.Popen, Lines]] = []

    def start(*args: str) -> tuple[subprocess.Popen, Lines]:
        proc = subprocess.Popen(
            [satchelctl(), "watch", *args], env=server.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        started.append((proc, Lines(proc.stdout)))
        return started[-1]

    yield start
    for proc, lines in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(WAIT)
        lines.join()
        proc.stdout.close()
        proc.stderr.close()


def _stop(proc: subprocess.Popen, signum: int) -> str:
    """Sends `signum`; the watch must exit 0 and quietly. Returns its stderr."""
    proc.send_signal(signum)
    assert proc.wait(WAIT) == 0
    err = proc.stderr.read()
    assert err == ""
    return err


def test_watch_json_prints_a_line_per_event_as_it_happens(ctl, watch, ns) -> None:
    assert ctl("secret", "create", "before", "-n", ns, "--from-literal", "k=v").code == 0
    proc, lines = watch("secrets", "-n", ns, "--initial", "-o", "json")
    # The initial listing, then SYNCED: from here on the stream is live.
    initial = [json.loads(line) for line in lines.until("SYNCED", lambda line: "EVENT_TYPE_SYNCED" in line)]
    assert [(e["type"], e.get("secret", {}).get("metadata", {}).get("name")) for e in initial] == [
        ("EVENT_TYPE_ADDED", "before"),
        ("EVENT_TYPE_SYNCED", None),
    ]

    created = ctl("secret", "create", "during", "-n", ns, "--from-literal", "k=v", "-o", "json").json()
    line = lines.until("ADDED during", lambda line: '"name":"during"' in line)[-1]
    assert "\n" not in line and ": " not in line, "one compact JSON object per line"
    event = json.loads(line)
    assert event["type"] == "EVENT_TYPE_ADDED"
    assert event["revision"] == created["metadata"]["resource_version"]
    assert event["secret"] == created

    assert ctl("secret", "delete", "during", "-n", ns).code == 0
    deleted = json.loads(lines.until("DELETED", lambda line: "EVENT_TYPE_DELETED" in line)[-1])
    assert deleted["secret"]["metadata"]["name"] == "during"
    _stop(proc, signal.SIGTERM)


def test_watch_yaml_prints_a_document_per_event_as_it_happens(ctl, watch, ns) -> None:
    proc, lines = watch("secrets", "-n", ns, "--initial", "-o", "yaml")
    synced = lines.until("SYNCED", lambda line: "EVENT_TYPE_SYNCED" in line)
    assert synced == ["---", "type: EVENT_TYPE_SYNCED"]

    created = ctl("secret", "create", "during", "-n", ns, "--from-literal", "k=v", "-o", "json").json()
    lines.until("the next document", lambda line: line == "---")
    document = lines.until("the document's end", lambda line: line.startswith("  version:"))
    event = yaml.safe_load("\n".join(document))
    assert event["type"] == "EVENT_TYPE_ADDED"
    assert event["revision"] == created["metadata"]["resource_version"]
    assert event["secret"]["metadata"] == created["metadata"]
    _stop(proc, signal.SIGTERM)


def test_watch_table_filters_by_label_and_exits_0_on_ctrl_c(ctl, watch, ns) -> None:
    proc, lines = watch("workloads", "-n", ns, "-l", "app=web", "--initial")
    assert lines.next("SYNCED").split()[0] == "SYNCED"
    assert ctl("workload", "create", "hidden", "-n", ns, "--node", "n1", "--label", "app=db").code == 0
    shown = ctl("workload", "create", "shown", "-n", ns, "--node", "n1", "--label", "app=web", "-o", "json").json()
    # The first event line is the matching workload: the other one is filtered out.
    assert lines.next("ADDED shown").split() == ["ADDED", shown["metadata"]["resource_version"], f"{ns}/shown"]
    _stop(proc, signal.SIGINT)


def test_watch_since_replays_history(ctl, watch, ns) -> None:
    first = ctl("sa", "create", "one", "-n", ns, "-o", "json").json()
    ctl("sa", "update", "one", "-n", ns, "--description", "d")
    since = int(first["metadata"]["resource_version"]) - 1
    proc, lines = watch("serviceaccounts", "-n", ns, "--since", str(since), "-o", "json")
    events = [json.loads(lines.next("replayed events")) for _ in range(2)]
    assert [(e["type"], e["service_account"]["metadata"]["name"]) for e in events] == [
        ("EVENT_TYPE_ADDED", "one"),
        ("EVENT_TYPE_MODIFIED", "one"),
    ]
    _stop(proc, signal.SIGTERM)


def test_watch_errors_end_with_exit_1(watch) -> None:
    proc, _lines = watch("secrets", "-l", "not a selector!")
    assert proc.wait(WAIT) == 1
    assert proc.stderr.read().startswith("error: INVALID_ARGUMENT: ")
