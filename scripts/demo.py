"""`make demo`: a dev server, a node agent for `node-1`, and a secret rotated under it.

Starts `satcheld serve --dev` in a temporary directory (reading its `listening on` and `export
SATCHEL_…` lines), issues node-1's certificate, starts `satchel-agent` for node-1 with its root in
the same directory, creates a service account, a secret and a workload on node-1 (the client
library, as the admin), waits for the files, then rotates the secret a few times and prints the
file changing on disk and how long after the RotateSecret call each new value was readable (the
file polled every millisecond). Stops both processes and removes the directory on the way out.
The values are demo values, printed on purpose.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from satchel import Client, pki

BIN = pathlib.Path(sys.executable).parent
NODE = "node-1"
ACCOUNT, SECRET, WORKLOAD, KEY = "demo-app", "demo-db", "demo-web", "password"
ROTATIONS = 3
TIMEOUT = 60.0  # seconds for the server to listen, and for the agent's first files
T = TypeVar("T")


class DemoError(Exception):
    """Something did not happen in time; the message says what."""


@contextlib.contextmanager
def running(argv: list[str], log: pathlib.Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process writing to `log`, stopped (SIGTERM, then SIGKILL) on the way out."""
    with log.open("wb") as output:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until(what: str, check: Callable[[], T], process: subprocess.Popen[bytes], log: pathlib.Path) -> T:
    """Polls `check()` every millisecond until it returns something truthy, which it returns."""
    deadline = time.monotonic() + TIMEOUT
    while not (result := check()):
        if process.poll() is not None:
            raise DemoError(f"{what}: the process exited with code {process.returncode}:\n{log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise DemoError(f"{what}: not within {TIMEOUT:.0f} s:\n{log.read_text()[-2000:]}")
        time.sleep(0.001)
    return result


def server_settings(log: pathlib.Path) -> dict[str, str] | None:
    """The `export SATCHEL_X=V` lines satcheld prints after `listening on`, once all are there."""
    text = log.read_text(errors="replace")
    if "listening on " not in text:
        return None
    exports = {}
    for line in text.splitlines():
        name, _, value = line.strip().removeprefix("export ").partition("=")
        if line.strip().startswith("export SATCHEL_") and value:
            exports[name] = value
    return exports if {"SATCHEL_SERVER", "SATCHEL_CA", "SATCHEL_CERT", "SATCHEL_KEY"} <= exports.keys() else None


def read(path: pathlib.Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def text(content: bytes | None) -> str:
    return "(none)" if content is None else content.decode(errors="replace")


def show_leaf(leaf: pathlib.Path, root: pathlib.Path) -> None:
    print(f"  {leaf.relative_to(root)}/")
    for entry in sorted(leaf.iterdir()):
        target = f" -> {os.readlink(entry)}" if entry.is_symlink() else "/"
        print(f"    {entry.name}{target}")


def demo(workdir: pathlib.Path) -> None:
    data_dir, root = workdir / "server", workdir / "node-1"
    serve = [str(BIN / "satcheld"), "serve", "--dev", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0"]
    print(f"$ satcheld serve --dev --data-dir {data_dir} --listen 127.0.0.1:0")
    with running(serve, workdir / "satcheld.log") as server:
        env = wait_until(
            "satcheld", lambda: server_settings(workdir / "satcheld.log"), server, workdir / "satcheld.log"
        )
        for name, value in env.items():
            print(f"  export {name}={value}")
        certs = pathlib.Path(env["SATCHEL_CA"]).parent
        node_cert, node_key = pki.issue(certs, "node", NODE)
        print(f"$ satchelctl certs issue --dir {certs} node {NODE}\n  {node_cert}\n  {node_key}")
        agent = [
            str(BIN / "satchel-agent"),
            *("--server", env["SATCHEL_SERVER"], "--ca", env["SATCHEL_CA"]),
            *("--cert", str(node_cert), "--key", str(node_key), "--root", str(root)),
        ]
        print(f"$ satchel-agent --server {env['SATCHEL_SERVER']} --ca ... --cert {node_cert.name} --root {root}")
        agent_log = workdir / "agent.log"
        with (
            running(agent, agent_log) as agent_process,
            Client(
                server=env["SATCHEL_SERVER"], ca=env["SATCHEL_CA"], cert=env["SATCHEL_CERT"], key=env["SATCHEL_KEY"]
            ) as client,
        ):
            # Connected first, so that the time to the first files below is the agent's, not its start's.
            wait_until(
                "the agent's streams", lambda: " INFO connected" in agent_log.read_text(), agent_process, agent_log
            )
            print("the agent is connected")
            client.create_service_account(ACCOUNT)
            print(f"created service account default/{ACCOUNT} (its token secret {ACCOUNT}-token comes with it)")
            first = b"demo-password-1"
            secret = client.create_secret(SECRET, data={KEY: first})
            print(f"created secret default/{SECRET}: {KEY}={first.decode()} (version {secret.version})")
            client.create_workload(WORKLOAD, node_name=NODE, service_account=ACCOUNT, secrets=[SECRET])
            print(f"created workload default/{WORKLOAD} on {NODE}: account {ACCOUNT}, secret {SECRET}")

            workload = root / "default" / WORKLOAD
            path = workload / "secrets" / SECRET / KEY
            start = time.monotonic()
            wait_until("the agent's first files", lambda: read(path) == first, agent_process, agent_log)
            account = workload / "serviceaccount"
            wait_until(
                "the agent's serviceaccount/",
                lambda: all(read(account / name) for name in ("token", "ca.crt", "namespace", "tls.crt", "tls.key")),
                agent_process,
                agent_log,
            )
            print(f"\nthe agent wrote the files ({time.monotonic() - start:.2f} s after the workload was created):")
            show_leaf(account, root)
            show_leaf(workload / "secrets" / SECRET, root)
            print(f"  {path.relative_to(root)}: {text(read(path))}\n")

            for n in range(2, ROTATIONS + 2):
                new = f"demo-password-{n}".encode()
                before = read(path)
                start = time.monotonic()
                secret = client.rotate_secret(SECRET, data={KEY: new})
                returned = time.monotonic()
                wait_until(
                    f"version {secret.version} on disk", lambda new=new: read(path) == new, agent_process, agent_log
                )
                landed = time.monotonic()
                print(
                    f"rotated {SECRET} to version {secret.version}: {path.name} {text(before)} -> {text(read(path))}, "
                    f"readable {(landed - start) * 1000:.1f} ms after the RotateSecret call "
                    f"(the call took {(returned - start) * 1000:.1f} ms)"
                )
                time.sleep(0.5)

            print("\nthe agent's log:")
            for line in agent_log.read_text(errors="replace").splitlines():
                print(f"  {line}")
    print("\nstopped satchel-agent and satcheld")


def main() -> int:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="satchel-demo-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop the processes, remove the directory
    try:
        demo(workdir)
    except DemoError as e:
        print(f"demo failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"removed {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
