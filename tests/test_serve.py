"""`satcheld serve` as a real subprocess: --dev prepares a data directory and
reuses it, prints where it listens and how to connect, and SIGTERM ends it
cleanly; the explicit form names a missing file and exits 2."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from conftest import Pki, Stubs
from kinds import SERVICE_ACCOUNTS, Api
from tools import grpcurl as _grpcurl
from tools import satcheld as _satcheld

STARTUP = 30  # seconds to wait for `listening on`
EXPORTS = ("SATCHEL_SERVER", "SATCHEL_CA", "SATCHEL_CERT", "SATCHEL_KEY")


def _clean_env() -> dict[str, str]:
    """The environment without SATCHEL_ variables, so flags alone decide."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SATCHEL_")}


@dataclass
class Running:
    proc: asyncio.subprocess.Process
    address: str
    lines: list[str] = field(default_factory=list)  # stdout after `listening on`
    exports: dict[str, str] = field(default_factory=dict)


async def _readline(proc: asyncio.subprocess.Process) -> str:
    line = await asyncio.wait_for(proc.stdout.readline(), STARTUP)
    if not line:
        raise AssertionError(f"satcheld closed stdout (exit code {await proc.wait()})")
    return line.decode().rstrip("\n")


@asynccontextmanager
async def satcheld(tmp_path: Path, *args: str, dev: bool = True) -> AsyncIterator[Running]:
    """Starts `satcheld serve ARGS`, waits for `listening on`, and (for --dev)
    reads the connect lines. On exit it must still be running; it is then
    sent SIGTERM and must exit 0."""
    stderr = open(tmp_path / f"satcheld-{len(list(tmp_path.glob('satcheld-*')))}.stderr", "wb")
    proc = await asyncio.create_subprocess_exec(
        _satcheld(), "serve", *args, stdout=asyncio.subprocess.PIPE, stderr=stderr, env=_clean_env()
    )
    try:
        first = await _readline(proc)
        match = re.fullmatch(r"listening on (127\.0\.0\.1:(\d+))", first)
        assert match, f"first line is {first!r}"
        assert int(match.group(2)) > 0, "port 0 must be replaced by the bound port"
        running = Running(proc, match.group(1))
        if dev:
            while not set(EXPORTS) <= running.exports.keys():
                line = await _readline(proc)
                running.lines.append(line)
                if m := re.fullmatch(r"\s*export (SATCHEL_[A-Z]+)=(.*)", line):
                    running.exports[m.group(1)] = shlex.split(m.group(2))[0]
        yield running
        assert proc.returncode is None, "satcheld exited on its own"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), STARTUP) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        stderr.close()


def _accounts(channel: grpc.aio.Channel) -> Api:
    return SERVICE_ACCOUNTS.api(Stubs.over(channel))


def _channel(exports: dict[str, str]) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(exports["SATCHEL_CA"]).read_bytes(),
        private_key=Path(exports["SATCHEL_KEY"]).read_bytes(),
        certificate_chain=Path(exports["SATCHEL_CERT"]).read_bytes(),
    )
    return grpc.aio.secure_channel(exports["SATCHEL_SERVER"], credentials)


async def test_dev_prepares_a_data_directory_and_serves(tmp_path) -> None:
    data = tmp_path / "data"
    async with satcheld(tmp_path, "--dev", "--data-dir", str(data), "--listen", "127.0.0.1:0") as srv:
        assert srv.exports["SATCHEL_SERVER"] == srv.address
        certs = data / "certs"
        assert srv.exports["SATCHEL_CA"] == str(certs / "ca.crt")
        assert srv.exports["SATCHEL_CERT"] == str(certs / "admin.crt")
        assert srv.exports["SATCHEL_KEY"] == str(certs / "admin.key")
        for name in ("ca.crt", "ca.key", "server.crt", "server.key", "admin.crt", "admin.key"):
            assert (certs / name).is_file(), name
        for name in ("satchel.db", "encryption.key", "policy.yaml"):
            assert (data / name).is_file(), name
        for secret_file in (data / "encryption.key", certs / "ca.key", certs / "admin.key"):
            assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600, secret_file

        # The printed grpcurl line works as printed.
        (grpcurl_line,) = [line.strip() for line in srv.lines if line.strip().startswith("grpcurl ")]
        argv = shlex.split(grpcurl_line)
        proc = await asyncio.create_subprocess_exec(
            _grpcurl(), *argv[1:], stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        assert "satchel.v1.SecretService" in out.decode().split()

        # So do the exported files, as the admin.
        async with _channel(srv.exports) as channel:
            await _accounts(channel).create(SERVICE_ACCOUNTS.make("first-run"))


async def test_dev_reuses_what_exists(tmp_path) -> None:
    data = tmp_path / "data"
    args = ("--dev", "--data-dir", str(data), "--listen", "127.0.0.1:0")
    async with satcheld(tmp_path, *args) as srv:
        async with _channel(srv.exports) as channel:
            made = await _accounts(channel).create(SERVICE_ACCOUNTS.make("kept"))
    kept = {p: p.read_bytes() for p in [*(data / "certs").iterdir(), data / "encryption.key", data / "policy.yaml"]}

    async with satcheld(tmp_path, *args) as srv:
        async with _channel(srv.exports) as channel:
            assert (await _accounts(channel).get("kept")).metadata.uid == made.metadata.uid

    assert {p: p.read_bytes() for p in kept} == kept, "a second start changed prepared files"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_right_after_listening_exits_cleanly(tmp_path, signum: int) -> None:
    """`listening on` is what supervisors and scripts wait for; from then on a
    signal must mean a graceful stop (exit 0), not death by the default handler."""
    proc = await asyncio.create_subprocess_exec(
        _satcheld(), "serve", "--dev", "--data-dir", str(tmp_path / "d"), "--listen", "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=_clean_env(),
    )  # fmt: skip
    try:
        assert (await _readline(proc)).startswith("listening on ")
        proc.send_signal(signum)
        assert await asyncio.wait_for(proc.wait(), STARTUP) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_port_in_use_is_an_error(tmp_path) -> None:
    """grpc sets SO_REUSEPORT by default: without turning it off, a second
    server on a busy port "listens" too and the kernel splits clients between
    two servers with different CAs and databases."""
    async with satcheld(tmp_path, "--dev", "--data-dir", str(tmp_path / "one"), "--listen", "127.0.0.1:0") as first:
        proc = await asyncio.create_subprocess_exec(
            _satcheld(), "serve", "--dev", "--data-dir", str(tmp_path / "two"), "--listen", first.address,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_clean_env(),
        )  # fmt: skip
        try:
            line = (await asyncio.wait_for(proc.stdout.readline(), STARTUP)).decode()
            assert not line.startswith("listening on"), f"a second server listens on {first.address} too"
            _, err = await asyncio.wait_for(proc.communicate(), STARTUP)
            assert proc.returncode == 2
            lines = [x for x in err.decode().splitlines() if x.strip()]
            assert len(lines) == 1 and first.address in lines[0], lines
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


# -- the explicit form ----------------------------------------------------------------------------


def _explicit(pki: Pki, tmp_path: Path, **change: str) -> list[str]:
    from satcheld.auth import Policy
    from satcheld.store import KeyRing

    key_file, policy = tmp_path / "encryption.key", tmp_path / "policy.yaml"
    if not key_file.exists():
        KeyRing.create_file(key_file)
        policy.write_text(Policy.default_text())
    flags = {
        "listen": "127.0.0.1:0",
        "db": str(tmp_path / "satchel.db"),
        "tls-cert": str(pki.dir / "server.crt"),
        "tls-key": str(pki.dir / "server.key"),
        "client-ca": str(pki.ca),
        "ca-cert": str(pki.ca),
        "ca-key": str(pki.dir / "ca.key"),
        "policy": str(policy),
        "encryption-key-file": str(key_file),
        "audit-log": str(tmp_path / "audit.log"),
    }
    flags.update(change)
    return [arg for flag, value in flags.items() if value is not None for arg in (f"--{flag}", value)]


async def test_explicit_form_serves_with_every_file_given(pki, tmp_path) -> None:
    async with satcheld(tmp_path, *_explicit(pki, tmp_path), dev=False) as srv:
        exports = dict(zip(EXPORTS, (srv.address, str(pki.ca), str(pki.admin.cert), str(pki.admin.key)), strict=True))
        async with _channel(exports) as channel:
            await _accounts(channel).create(SERVICE_ACCOUNTS.make("explicit"))
    assert (tmp_path / "satchel.db").is_file()
    assert '"method":"/satchel.v1.ServiceAccountService/CreateServiceAccount"' in (tmp_path / "audit.log").read_text()


async def _fails(tmp_path: Path, args: list[str]) -> tuple[int, list[str], str]:
    proc = await asyncio.create_subprocess_exec(
        _satcheld(), "serve", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_clean_env()
    )
    out, err = await asyncio.wait_for(proc.communicate(), STARTUP)
    return proc.returncode, [line for line in err.decode().splitlines() if line.strip()], out.decode()


@pytest.mark.parametrize(
    "flag", ["tls-cert", "tls-key", "client-ca", "ca-cert", "ca-key", "policy", "encryption-key-file"]
)
async def test_explicit_form_names_a_missing_file_and_exits_2(pki, tmp_path, flag: str) -> None:
    missing = tmp_path / f"no-such-{flag}.pem"
    code, err, out = await _fails(tmp_path, _explicit(pki, tmp_path, **{flag: str(missing)}))

    assert code == 2
    assert len(err) == 1, f"expected a one-line error, got {err}"
    assert str(missing) in err[0]
    assert "Traceback" not in err[0] and "listening on" not in out


async def test_explicit_form_names_a_database_it_cannot_create(pki, tmp_path) -> None:
    db = tmp_path / "no-such-dir" / "satchel.db"
    code, err, out = await _fails(tmp_path, _explicit(pki, tmp_path, db=str(db)))

    assert code == 2
    assert len(err) == 1 and str(db) in err[0], err
    assert "listening on" not in out


async def test_explicit_form_names_a_policy_that_is_not_yaml_in_one_line(pki, tmp_path) -> None:
    policy = tmp_path / "broken-policy.yaml"
    policy.write_text("admins: [alice\nrules: {\n")
    code, err, out = await _fails(tmp_path, _explicit(pki, tmp_path, policy=str(policy)))

    assert code == 2
    assert len(err) == 1 and str(policy) in err[0] and "not valid YAML" in err[0], err
    assert "listening on" not in out


@pytest.mark.parametrize(
    ("text", "says"),
    [("- admin\n", "expected a mapping"), ("admins: admin\n", "'admins' must be a list")],
    ids=["not-a-mapping", "admins-not-a-list"],
)
async def test_explicit_form_names_a_policy_of_the_wrong_shape_in_one_line(pki, tmp_path, text, says) -> None:
    policy = tmp_path / "odd-policy.yaml"
    policy.write_text(text)
    code, err, out = await _fails(tmp_path, _explicit(pki, tmp_path, policy=str(policy)))

    assert code == 2
    assert len(err) == 1 and str(policy) in err[0] and says in err[0], err
    assert "listening on" not in out


async def test_explicit_form_names_missing_flags_and_exits_2(pki, tmp_path) -> None:
    code, err, _out = await _fails(tmp_path, _explicit(pki, tmp_path, **{"tls-key": None, "policy": None}))

    assert code == 2
    assert len(err) == 1, err
    assert "--tls-key" in err[0] and "--policy" in err[0]


@pytest.mark.parametrize("flag", ["tls-cert", "tls-key", "client-ca", "ca-cert", "ca-key"])
async def test_explicit_form_names_a_file_that_is_not_pem(pki, tmp_path, flag: str) -> None:
    bogus = tmp_path / f"bogus-{flag}.pem"
    bogus.write_text("not a pem file\n")
    code, err, out = await _fails(tmp_path, _explicit(pki, tmp_path, **{flag: str(bogus)}))

    assert code == 2
    assert len(err) == 1 and str(bogus) in err[0], err
    assert "listening on" not in out


@pytest.mark.parametrize(
    "args",
    [
        ["--bookmark-interval", "0s"],
        ["--history-events", "0"],
        ["--history-events", "abc"],
        ["--max-initial-snapshots", "0"],
        ["--initial-snapshot-stall", "0s"],
        ["--max-watch-streams-per-principal", "0"],
        ["--max-selector-terms", "many"],
        ["--max-connection-age", "soon"],
        ["--max-connection-age-grace", "-1s"],
    ],
)
async def test_watch_tuning_flags_are_checked(tmp_path, args: list[str]) -> None:
    code, err, out = await _fails(tmp_path, ["--dev", "--data-dir", str(tmp_path / "d"), *args])

    assert code == 2
    assert any(args[0] in line for line in err), err
    assert "listening on" not in out


async def test_dev_refuses_certificates_of_another_trust_domain(tmp_path) -> None:
    data = tmp_path / "d"
    async with satcheld(tmp_path, "--dev", "--data-dir", str(data), "--listen", "127.0.0.1:0"):
        pass
    code, err, _out = await _fails(tmp_path, ["--dev", "--data-dir", str(data), "--trust-domain", "other.example"])

    assert code == 2
    assert len(err) == 1 and "other.example" in err[0], err


async def test_dev_keeps_its_files_private(tmp_path) -> None:
    data = tmp_path / "d"
    async with satcheld(tmp_path, "--dev", "--data-dir", str(data), "--listen", "127.0.0.1:0"):
        modes = {p.name: p.stat().st_mode & 0o777 for p in data.iterdir() if p.is_file()}
    assert data.stat().st_mode & 0o777 == 0o700
    for name in ("satchel.db", "satchel.db-wal", "encryption.key", "policy.yaml", "audit.log"):
        assert modes.get(name) == 0o600, f"{name}: {oct(modes.get(name, 0))}"


async def _stderr_says(tmp_path: Path, text: str) -> None:
    """Waits, within STARTUP seconds, until the running satcheld's stderr holds `text`."""
    (log,) = tmp_path.glob("satcheld-*.stderr")
    deadline = asyncio.get_running_loop().time() + STARTUP
    while text not in log.read_text(errors="replace"):
        assert asyncio.get_running_loop().time() < deadline, f"satcheld never logged {text!r}"
        await asyncio.sleep(0.05)  # polling a file for a line, bounded; not a synchronization by time


async def test_sighup_reopens_the_audit_log_so_that_it_can_be_rotated(tmp_path) -> None:
    data = tmp_path / "data"
    async with satcheld(tmp_path, "--dev", "--data-dir", str(data), "--listen", "127.0.0.1:0") as srv:
        async with _channel(srv.exports) as channel:
            accounts = _accounts(channel)
            await accounts.create(SERVICE_ACCOUNTS.make("before-rotation"))
            (data / "audit.log").rename(data / "audit.log.1")  # what logrotate does first
            srv.proc.send_signal(signal.SIGHUP)
            await _stderr_says(tmp_path, "reopened the audit log")
            await accounts.create(SERVICE_ACCOUNTS.make("after-rotation"))
        rotated, fresh = (data / "audit.log.1").read_text(), (data / "audit.log").read_text()
        assert "before-rotation" in rotated and "after-rotation" not in rotated
        assert "after-rotation" in fresh and "before-rotation" not in fresh
        assert stat.S_IMODE((data / "audit.log").stat().st_mode) == 0o600
