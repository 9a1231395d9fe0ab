"""satchel-agent as a real process against a real satcheld, writing a real directory.

Every wait is bounded and waits on something (a log line the agent writes once a change is on
disk, a process exit), never on time alone.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from agentkit import (
    DevServer,
    agent,
    agent_args,
    dev_server,
    free_port,
    read_leaf,
    snapshot,
    start_agent,
)
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client.parser import text_string_to_metric_families
from watchkit import until

import satchel
import satchel.pki

NODE = "node-1"


@pytest.fixture
async def dev(tmp_path: Path):
    async with dev_server(tmp_path / "server") as running:
        yield running


@pytest.fixture
async def admin(dev: DevServer):
    async with dev.client() as client:
        yield client


async def web(client: satchel.AsyncClient, *, node: str = NODE, ns: str = "default") -> None:
    """An account `web` (listing a secret `shared` too), a secret `db`, and workload `web`."""
    await client.create_secret("db", namespace=ns, data={"user": "app", "password": "pw-1"})
    await client.create_secret("shared", namespace=ns, data={"ca.pem": "shared-1"})
    await client.create_service_account("web", namespace=ns, secrets=["shared"])
    await client.create_workload("web", namespace=ns, node_name=node, service_account="web", secrets=["db"])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_files_land_with_their_content_and_modes(dev, admin, tmp_path) -> None:
    await web(admin)
    await admin.create_secret("elsewhere", data={"k": "other-node-1"})
    await admin.create_workload("batch", node_name="node-2", secrets=["elsewhere"])
    root = tmp_path / "root"
    async with agent(dev, dev.node_identity(NODE), root) as a:
        await a.wait_for(r"in sync at revision \d+: 3 leaves")
        w = root / "default" / "web"
        assert read_leaf(w / "secrets" / "db") == {"user": b"app", "password": b"pw-1"}
        assert read_leaf(w / "secrets" / "shared") == {"ca.pem": b"shared-1"}, "the account's secrets land too"
        assert sorted(p.name for p in root.iterdir()) == [".satchel-agent", "default"], "node-2's workload is not here"

        sa = read_leaf(w / "serviceaccount")
        assert sorted(sa) == ["ca.crt", "namespace", "tls.crt", "tls.key", "token"]
        token = await admin.get_secret("web-token")
        assert sa["token"] == token.data["token"] and sa["ca.crt"] == token.data["ca.crt"]
        assert sa["namespace"] == b"default"
        account = await admin.get_service_account("web")
        cert = x509.load_pem_x509_certificates(sa["tls.crt"])[0]
        assert satchel.pki.spiffe_ids(cert) == [account.spiffe_id]
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(Path(dev.exports["SATCHEL_CA"]).read_bytes()))
        key = serialization.load_pem_private_key(sa["tls.key"], None)
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        assert key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki)

        for leaf in (w / "secrets" / "db", w / "serviceaccount"):
            for name in os.listdir(leaf):
                if not name.startswith(".."):
                    assert (leaf / name).is_symlink() and os.readlink(leaf / name) == f"..data/{name}"
                    assert mode(leaf / name) == 0o400, name
            assert mode(leaf / "..data") == 0o700
        for d in (root / "default", w, w / "secrets", w / "secrets" / "db", w / "serviceaccount"):
            assert mode(d) == 0o700, d
        assert mode(root / ".satchel-agent" / "state.json") == 0o600
        assert "pw-1" not in a.log() and token.data["token"].decode() not in a.log(), "values never reach the log"


async def test_file_mode_flag_sets_files_and_lets_the_same_readers_reach_them(dev, admin, tmp_path) -> None:
    await web(admin)
    root = tmp_path / "root"
    a = await start_agent(agent_args(dev, dev.node_identity(NODE), root, "--once", "--file-mode", "0440"))
    assert await a.exited() == 0, a.log()
    db = root / "default" / "web" / "secrets" / "db"
    assert mode(db / "user") == 0o440
    assert mode(db) == 0o750 and mode(root / "default" / "web") == 0o750 and mode(root) == 0o750


async def test_a_changed_file_mode_reaches_every_directory(dev, admin, tmp_path) -> None:
    await web(admin)
    root = tmp_path / "root"
    for file_mode in ("0400", "0440"):
        a = await start_agent(agent_args(dev, dev.node_identity(NODE), root, "--once", "--file-mode", file_mode))
        assert await a.exited() == 0, a.log()
    db = root / "default" / "web" / "secrets" / "db"
    for d in (root, root / "default", root / "default" / "web", root / "default" / "web" / "secrets", db):
        assert mode(d) == 0o750, d
    assert mode(db / os.readlink(db / "..data")) == 0o750 and mode(db / "user") == 0o440


async def test_readers_never_see_a_torn_or_mixed_version_through_200_rotations(dev, admin, tmp_path) -> None:
    def value(n: int) -> bytes:
        return f"{n:06d}".encode() * 1000  # 6 KB: a torn write would show

    keys = ("a", "b", "c")
    await admin.create_secret("multi", data=dict.fromkeys(keys, value(1)))
    await admin.create_workload("web", node_name=NODE, secrets=["multi"])
    root = tmp_path / "root"
    leaf = root / "default" / "web" / "secrets" / "multi"
    async with agent(dev, dev.node_identity(NODE), root) as a:
        await a.wait_for(r"wrote default/web secret=multi version=1 ")
        stop = threading.Event()
        seen: set[bytes] = set()
        problems: list[str] = []

        def whole(data: bytes) -> bool:
            return len(data) == 6000 and data == data[:6] * 1000

        def reader() -> None:
            while not stop.is_set():
                for key in keys:  # as a workload reads one file: through its link
                    try:
                        data = (leaf / key).read_bytes()
                    except FileNotFoundError:
                        problems.append(f"{key} missing")
                        continue
                    if not whole(data):
                        problems.append(f"{key} torn")
                # as a workload reads a set: resolve ..data once, read every key from there
                try:
                    fd = os.open(leaf / "..data", os.O_RDONLY | os.O_DIRECTORY)
                except FileNotFoundError:
                    problems.append("..data missing")
                    continue
                try:
                    values = {Path(f"/proc/self/fd/{fd}/{key}").read_bytes() for key in keys}
                except FileNotFoundError:
                    continue  # that version was removed while being read: read the new one
                finally:
                    os.close(fd)
                if len(values) != 1:
                    problems.append("mixed versions")
                seen.update(v[:6] for v in values)

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            for n in range(2, 202):
                await admin.update_secret("multi", data=dict.fromkeys(keys, value(n)))
            await a.wait_for(r"wrote default/web secret=multi version=201 ")
        finally:
            stop.set()
            await asyncio.to_thread(thread.join)
        assert problems == []
        assert len(seen) >= 3, f"the reader saw only {sorted(seen)}: it did not run beside the updates"
        assert read_leaf(leaf) == dict.fromkeys(keys, value(201))
        assert set(os.listdir(leaf)) == {"..data", *keys, os.readlink(leaf / "..data")}, "old versions go"


async def test_what_leaves_the_view_leaves_the_disk(dev, admin, tmp_path) -> None:
    await web(admin)
    await admin.create_secret("api", data={"key": "api-1"})
    await admin.update_workload("web", secrets=["db", "api"])
    await admin.create_workload("mover", node_name=NODE, secrets=["db"])
    await admin.create_workload("short", node_name=NODE, secrets=["db"])
    root = tmp_path / "root"
    w = root / "default" / "web"
    async with agent(dev, dev.node_identity(NODE), root) as a:
        await a.wait_for(r"in sync at revision")
        assert {p.name for p in (w / "secrets").iterdir()} == {"db", "api", "shared"}

        mark = a.mark()
        await admin.delete_secret("api")  # deleted
        await a.wait_for(r"removed default/web secret=api ", after=mark)
        assert not (w / "secrets" / "api").exists()

        mark = a.mark()
        await admin.update_workload("web", secrets=[])  # unbound
        await a.wait_for(r"removed default/web secret=db ", after=mark)
        assert not (w / "secrets" / "db").exists()
        assert (root / "default" / "mover" / "secrets" / "db" / "user").read_bytes() == b"app", "still bound there"

        mark = a.mark()
        await admin.update_service_account("web", secrets=["web-token"])  # the account lists it no more
        await a.wait_for(r"removed default/web secret=shared ", after=mark)

        mark = a.mark()
        await admin.update_workload("mover", node_name="node-2")  # moved away
        await a.wait_for(r"removed default/mover ", after=mark)
        assert not (root / "default" / "mover").exists()

        mark = a.mark()
        await admin.delete_workload("short")  # deleted
        await a.wait_for(r"removed default/short ", after=mark)
        assert not (root / "default" / "short").exists()

        mark = a.mark()
        await admin.delete_service_account("web")  # its token secret goes with it
        await a.wait_for(r"removed default/web secret=serviceaccount ", after=mark)
        assert not (w / "serviceaccount").exists()
        assert w.is_dir(), "the workload is still on the node"

        mark = a.mark()
        await admin.delete_workload("web")
        await a.wait_for(r"removed default/web ", after=mark)  # the last workload of the namespace
        assert sorted(p.name for p in root.iterdir()) == [".satchel-agent"]


async def test_a_restart_resumes_and_rewrites_nothing_that_is_right(dev, admin, tmp_path) -> None:
    await web(admin)
    await admin.create_secret("other", data={"k": "other-1"})
    await admin.create_workload("second", node_name=NODE, secrets=["other"])
    root, runs = tmp_path / "root", tmp_path / "runs"
    runs.mkdir()
    hook = ["--on-change", f'echo "$SATCHEL_WORKLOAD $SATCHEL_SECRET $SATCHEL_VERSION" >> {runs}/log']
    node = dev.node_identity(NODE)
    async with agent(dev, node, root, *hook) as a:
        await a.wait_for(r"in sync at revision")
    before = snapshot(root)
    hooks_before = (runs / "log").read_text()
    assert sorted(hooks_before.splitlines()) == [
        "second default-token 1",
        "second other 1",
        "web db 1",
        "web shared 1",
        "web web-token 1",
    ]

    await admin.update_secret("other", data={"k": "other-2"})  # while the agent is down
    async with agent(dev, node, root, *hook) as a:
        await a.wait_for(r"resuming from revision")
        await a.wait_for(r"wrote default/second secret=other version=2 ")
        assert "starting with a listing" not in a.log()
        assert "wrote default/web" not in a.log()
    after = snapshot(root)
    changed = {p for p in before.entries.keys() | after.entries.keys() if before.entries.get(p) != after.entries.get(p)}
    assert changed and all(p.startswith("default/second/secrets/other") for p in changed), sorted(changed)
    assert (runs / "log").read_text() == hooks_before + "second other 2\n", "no hook ran for what did not change"


async def test_an_outage_keeps_the_files_and_they_converge_after(tmp_path) -> None:
    data, port = tmp_path / "server", free_port()
    root = tmp_path / "root"
    async with dev_server(data, port=port) as dev:
        async with dev.client() as admin:
            await web(admin)
        async with agent(dev, dev.node_identity(NODE), root) as a:
            await a.wait_for(r"in sync at revision")
            await a.wait_for(r"\bconnected\b")
            before = snapshot(root)
            dev.kill()
            await dev.proc.wait()
            await a.wait_for(r"disconnected; the files on disk stay")
            assert snapshot(root) == before, "the last good files stay"
            async with dev_server(data, port=port) as again, again.client() as admin:
                mark = a.mark()
                await admin.update_secret("db", data={"user": "app", "password": "pw-2"})
                await a.wait_for(r"wrote default/web secret=db version=2 ", after=mark, timeout=45)
                assert (root / "default" / "web" / "secrets" / "db" / "password").read_bytes() == b"pw-2"


async def test_history_compacted_while_the_agent_was_down_means_a_relisting(tmp_path) -> None:
    root = tmp_path / "root"
    async with dev_server(tmp_path / "server", "--history-age", "0s", "--history-events", "1") as dev:
        async with dev.client() as admin:
            await web(admin)
            await admin.create_secret("gone", data={"k": "gone-1"})
            await admin.update_workload("web", secrets=["db", "gone"])
            node = dev.node_identity(NODE)
            async with agent(dev, node, root) as a:
                await a.wait_for(r"in sync at revision")
            await admin.delete_secret("gone")
            await admin.update_secret("db", data={"user": "app", "password": "pw-2"})
            for n in range(5):
                await admin.create_secret(f"filler-{n}", data={"k": "x"})
            await compacted_after(admin, revision_in_state(root))
            async with agent(dev, node, root) as a:
                await a.wait_for(r"relisting secrets")
                await a.wait_for(r"removed default/web secret=gone ")
                await a.wait_for(r"wrote default/web secret=db version=2 ")
                assert "wrote default/web secret=shared" not in a.log(), "a relisting rewrites only what changed"


def revision_in_state(root: Path) -> int:
    import json

    return min(json.loads((root / ".satchel-agent" / "state.json").read_text())["revisions"].values())


async def compacted_after(client: satchel.AsyncClient, revision: int) -> None:
    """Wait (bounded) until the server no longer keeps the history after `revision`."""
    async with asyncio.timeout(30):
        while True:
            relisted = asyncio.Event()
            stream = client.watch_secrets(since_revision=revision, on_relist=relisted.set)
            try:
                async with asyncio.timeout(1):
                    await anext(stream)
            except TimeoutError:
                pass
            finally:
                await stream.aclose()
            if relisted.is_set():
                return


async def test_strays_are_removed_and_planted_symlinks_never_followed(dev, admin, tmp_path) -> None:
    await web(admin)
    root, outside = tmp_path / "root", tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the agent's")
    node = dev.node_identity(NODE)
    async with agent(dev, node, root) as a:
        await a.wait_for(r"in sync at revision")
    w = root / "default" / "web"
    (root / "junk.txt").write_text("stale")
    (w / "notes.txt").write_text("stale")
    (root / "default" / "ghost" / "secrets").mkdir(parents=True)  # a workload that is not on the node
    (root / "prod").symlink_to(outside)  # a namespace-like name, pointing out
    (w / "secrets" / "evil").symlink_to(outside / "keep.txt")
    shutil.rmtree(w / "secrets" / "db")
    (w / "secrets" / "db").symlink_to(outside)  # a leaf replaced by a way out
    (w / "serviceaccount" / "token").unlink()
    (w / "serviceaccount" / "token").symlink_to(outside / "keep.txt")  # a key's link bent outward
    shutil.move(root / ".satchel-agent", outside / "state")
    (root / ".satchel-agent").symlink_to(outside / "state")  # its own state, through a way out
    async with agent(dev, node, root) as a:
        await a.wait_for(r"in sync at revision")
        assert sorted(p.name for p in root.iterdir()) == [".satchel-agent", "default"]
        assert sorted(p.name for p in (root / "default").iterdir()) == ["web"]
        assert sorted(p.name for p in w.iterdir()) == ["secrets", "serviceaccount"], a.log()
        assert sorted(p.name for p in (w / "secrets").iterdir()) == ["db", "shared"]
        assert not (w / "secrets" / "db").is_symlink()
        assert read_leaf(w / "secrets" / "db") == {"user": b"app", "password": b"pw-1"}
        assert os.readlink(w / "serviceaccount" / "token") == "..data/token"
        assert "starting with a listing" in a.log(), "a state reached through a symlink is not read"
        assert not (root / ".satchel-agent").is_symlink() and (root / ".satchel-agent" / "state.json").exists()
        assert sorted(p.name for p in outside.iterdir()) == ["keep.txt", "state"], "nothing written or removed outside"
        assert sorted(p.name for p in (outside / "state").iterdir()) == ["state.json"]
        assert (outside / "keep.txt").read_text() == "not the agent's"
        for stray in ("junk.txt", "default/web/notes.txt", "prod", "default/web/secrets/evil"):
            assert f"removed stray {stray}" in a.log()


async def test_on_change_runs_with_the_change_in_its_environment_once_per_version(dev, admin, tmp_path) -> None:
    await web(admin)
    root, runs = tmp_path / "root", tmp_path / "runs"
    runs.mkdir()
    # One file per run, appended to: a version whose hook ran twice would show two copies.
    command = (
        f"env | grep ^SATCHEL_ | sort >> {runs}/$SATCHEL_WORKLOAD.$SATCHEL_SECRET.$SATCHEL_VERSION;"
        ' echo "said by the hook"'
    )
    async with agent(dev, dev.node_identity(NODE), root, "--on-change", command) as a:
        await a.wait_for(r"in sync at revision")
        for version in (2, 3):
            await a.wait_for(rf"hook for default/web db version={version - 1} \(written\): said by the hook")
            await admin.update_secret("db", data={"user": "app", "password": f"pw-{version}"})
        await a.wait_for(r"hook for default/web db version=3 \(written\): said by the hook")
    assert sorted(p.name for p in runs.iterdir()) == [
        *(f"web.db.{v}" for v in (1, 2, 3)),
        "web.shared.1",
        "web.web-token.1",
    ]
    for v in (1, 2, 3):
        assert (runs / f"web.db.{v}").read_text().splitlines() == [
            "SATCHEL_EVENT=written",
            "SATCHEL_NAMESPACE=default",
            "SATCHEL_SECRET=db",
            f"SATCHEL_VERSION={v}",
            "SATCHEL_WORKLOAD=web",
        ]


async def test_a_failing_or_hanging_hook_stops_no_update(dev, admin, tmp_path) -> None:
    await web(admin)
    root, metrics = tmp_path / "root", tmp_path / "agent.prom"
    hang = 'if [ "$SATCHEL_SECRET" = db ] && [ "$SATCHEL_VERSION" = 2 ]; then exec sleep 600; fi; exit 3'
    args = ("--on-change", hang, "--hook-timeout", "2s", "--metrics-file", str(metrics))
    async with agent(dev, dev.node_identity(NODE), root, *args) as a:
        await a.wait_for(r"in sync at revision")
        await admin.update_secret("db", data={"user": "app", "password": "pw-2"})
        await a.wait_for(r"wrote default/web secret=db version=2 ")
        await admin.update_secret("shared", data={"ca.pem": "shared-2"})
        await admin.update_secret("db", data={"user": "app", "password": "pw-3"})
        await a.wait_for(r"wrote default/web secret=shared version=2 ")
        await a.wait_for(r"wrote default/web secret=db version=3 ")
        assert (root / "default" / "web" / "secrets" / "db" / "password").read_bytes() == b"pw-3"
        assert "killed after" not in a.log(), "the hanging hook was still running while updates landed"
        await a.wait_for(r"hook for default/web db version=2 \(written\) killed after 2s")
        await a.wait_for(r"hook for default/web shared version=2 \(written\) failed with exit status 3")
        await admin.update_secret("shared", data={"ca.pem": "shared-3"})
        await a.wait_for(r"hook for default/web shared version=3 \(written\) failed")
        await admin.update_secret("shared", data={"ca.pem": "shared-4"})
        await a.wait_for(r"wrote default/web secret=shared version=4 ")
    values = metric_values(metrics.read_text())
    assert values["satchel_agent_hook_failures_total"] >= 4  # db 1, shared 1..3 failed; db 2 killed
    assert values["satchel_agent_hook_runs_total"] >= values["satchel_agent_hook_failures_total"]


def metric_values(text: str) -> dict[str, float]:
    """Every sample of a Prometheus text file, by name and labels (the real parser)."""
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return values


async def test_the_metrics_file_says_what_is_on_disk(dev, admin, tmp_path) -> None:
    await web(admin)
    root, metrics = tmp_path / "root", tmp_path / "textfile" / "agent.prom"
    metrics.parent.mkdir()
    async with agent(dev, dev.node_identity(NODE), root, "--metrics-file", str(metrics)) as a:
        await a.wait_for(r"in sync at revision")
        updated = await admin.update_secret("db", data={"user": "app", "password": "pw-2"})
        await a.wait_for(r"wrote default/web secret=db version=2 ")
        db = "satchel_agent_secret_version{namespace=default,secret=db,workload=web}"
        await until(lambda: metric_values(metrics.read_text()).get(db) == 2, "the metrics file follows")
        values = metric_values(metrics.read_text())
        assert values["satchel_agent_last_applied_revision"] >= updated.metadata.resource_version
        assert values["satchel_agent_secret_version{namespace=default,secret=web-token,workload=web}"] == 1
        assert values["satchel_agent_connected"] == 1
        assert time.time() - values["satchel_agent_last_sync_timestamp_seconds"] < 60
        expiry = values["satchel_agent_certificate_expiry_timestamp_seconds{namespace=default,service_account=web}"]
        assert time.time() < expiry <= time.time() + 3700
        assert values["satchel_agent_leaf_writes_total"] == 4
        assert values["satchel_agent_hook_runs_total"] == 0
        assert sorted(p.name for p in metrics.parent.iterdir()) == ["agent.prom"], "written by rename, no leftovers"
        assert "pw-2" not in metrics.read_text()
    assert metric_values(metrics.read_text())["satchel_agent_connected"] == 0, "a stopped agent says so"


async def test_the_certificate_is_renewed_before_it_expires_and_the_token_follows_rotations(
    dev, admin, tmp_path
) -> None:
    await web(admin)
    root = tmp_path / "root"
    sa = root / "default" / "web" / "serviceaccount"
    async with agent(dev, dev.node_identity(NODE), root, "--cert-ttl", "6s") as a:
        await a.wait_for(r"wrote default/web serviceaccount=web-token version=1 ")
        first = x509.load_pem_x509_certificate((sa / "tls.crt").read_bytes())
        first_key = (sa / "tls.key").read_bytes()
        mark = a.mark()
        await a.wait_for(r"certificate for default/web issued", after=mark, timeout=20)
        await a.wait_for(r"wrote default/web serviceaccount=web-token version=1 ", after=mark)
        renewed = x509.load_pem_x509_certificate((sa / "tls.crt").read_bytes())
        assert renewed.serial_number != first.serial_number
        assert first.not_valid_after_utc > datetime.now(UTC), "renewed before the old one expired"
        assert renewed.not_valid_after_utc > first.not_valid_after_utc
        assert (sa / "tls.key").read_bytes() != first_key, "each renewal makes a new key"

        old_token = (sa / "token").read_bytes()
        rotated = await admin.rotate_secret("web-token")
        await a.wait_for(rf"wrote default/web serviceaccount=web-token version={rotated.version} ")
        new_token = (sa / "token").read_bytes()
        assert new_token != old_token and new_token == (await admin.get_secret("web-token")).data["token"]
        review = await admin.review_token(new_token.decode())
        assert review.authenticated and review.username == "system:serviceaccount:default:web"


async def test_a_changed_account_gets_a_new_certificate_at_once(dev, admin, tmp_path) -> None:
    await web(admin)
    sa = tmp_path / "root" / "default" / "web" / "serviceaccount"
    async with agent(dev, dev.node_identity(NODE), tmp_path / "root") as a:
        await a.wait_for(r"in sync at revision")
        first = x509.load_pem_x509_certificate((sa / "tls.crt").read_bytes())
        mark = a.mark()
        await admin.update_service_account("web", description="changed")
        await a.wait_for(r"certificate for default/web issued", after=mark)
        await a.wait_for(r"wrote default/web serviceaccount=web-token version=1 ", after=mark)
        assert x509.load_pem_x509_certificate((sa / "tls.crt").read_bytes()).serial_number != first.serial_number


async def test_once_writes_everything_and_exits_0(dev, admin, tmp_path) -> None:
    await web(admin)
    root = tmp_path / "root"
    a = await start_agent(agent_args(dev, dev.node_identity(NODE), root, "--once"))
    assert await a.exited() == 0, a.log()
    assert read_leaf(root / "default" / "web" / "secrets" / "db")["password"] == b"pw-1"
    assert (root / "default" / "web" / "serviceaccount" / "tls.key").exists()
    assert (root / ".satchel-agent" / "state.json").exists()
    again = await start_agent(agent_args(dev, dev.node_identity(NODE), root, "--once"))
    before = snapshot(root)
    assert await again.exited() == 0, again.log()
    assert snapshot(root) == before, "a second --once rewrites nothing"


async def test_once_renews_an_expired_certificate_found_on_disk(dev, admin, tmp_path) -> None:
    await web(admin)
    root = tmp_path / "root"
    args = agent_args(dev, dev.node_identity(NODE), root, "--once", "--cert-ttl", "2s")
    assert await (await start_agent(args)).exited() == 0
    tls = root / "default" / "web" / "serviceaccount" / "tls.crt"
    expiry = x509.load_pem_x509_certificate(tls.read_bytes()).not_valid_after_utc
    await asyncio.sleep(max(0.0, (expiry - datetime.now(UTC)).total_seconds()) + 1.1)  # the scenario: time passes
    a = await start_agent(args)
    assert await a.exited() == 0, a.log()
    assert x509.load_pem_x509_certificate(tls.read_bytes()).not_valid_after_utc > datetime.now(UTC)


async def test_once_does_not_wait_for_a_hanging_hook(dev, admin, tmp_path) -> None:
    await web(admin)
    args = ("--once", "--on-change", "exec sleep 600", "--hook-timeout", "1s", "--sync-timeout", "20s")
    a = await start_agent(agent_args(dev, dev.node_identity(NODE), tmp_path / "root", *args))
    assert await a.exited() == 0, a.log()
    assert "killed after 1s" in a.log()


async def test_the_metrics_file_is_there_while_the_server_never_was(dev, tmp_path) -> None:
    metrics = tmp_path / "agent.prom"
    args = agent_args(dev, dev.node_identity(NODE), tmp_path / "root", "--metrics-file", str(metrics))
    args[1] = f"127.0.0.1:{free_port()}"  # nobody listens there
    a = await start_agent(args)
    try:
        await until(metrics.exists, "the metrics file")
        assert metric_values(metrics.read_text())["satchel_agent_connected"] == 0
    finally:
        assert await a.stop() == 0


async def test_a_root_deleted_under_the_agent_is_made_again(dev, admin, tmp_path) -> None:
    await web(admin)
    root = tmp_path / "root"
    async with agent(dev, dev.node_identity(NODE), root) as a:
        await a.wait_for(r"in sync at revision")
        shutil.rmtree(root)
        mark = a.mark()
        a.proc.send_signal(signal.SIGHUP)
        await a.wait_for(r"wrote default/web secret=db version=1 ", after=mark)
        assert read_leaf(root / "default" / "web" / "secrets" / "db")["password"] == b"pw-1"


async def test_once_without_a_server_exits_1_with_a_reason(dev, tmp_path) -> None:
    args = agent_args(dev, dev.node_identity(NODE), tmp_path / "root", "--once", "--sync-timeout", "2s")
    args[1] = f"127.0.0.1:{free_port()}"  # nobody listens there
    a = await start_agent(args)
    assert await a.exited() == 1
    assert "not synced within 2s: no listing of" in a.lines[-1]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"identity": "user"}, "is not a node's certificate"),
        ({"--root": None}, "missing --root"),
        ({"--file-mode": "0777"}, "--file-mode 0777"),
        ({"--file-mode": "rw"}, "is not an octal mode"),
        ({"--cert-ttl": "soon"}, "--cert-ttl: invalid duration"),
        ({"--key": "/nonexistent/node.key"}, "cannot read key file /nonexistent/node.key"),
    ],
)
async def test_startup_errors_are_one_line_and_exit_2(dev, tmp_path, change, says) -> None:
    identity = (
        tuple(map(Path, satchel.pki.issue(dev.certs, "user", "bob")))
        if change.get("identity") == "user"
        else dev.node_identity(NODE)
    )
    args = agent_args(dev, identity, tmp_path / "root")  # type: ignore[arg-type]
    for flag, value in change.items():
        if flag.startswith("--"):
            at = args.index(flag) if flag in args else None
            if value is None and at is not None:
                del args[at : at + 2]
            elif at is not None:
                args[at + 1] = value
            else:
                args += [flag, value]
    a = await start_agent(args)
    assert await a.exited() == 2
    assert len(a.lines) == 1 and a.lines[0].startswith("satchel-agent: ") and says in a.lines[0], a.lines


async def test_flags_may_come_from_the_environment(dev, admin, tmp_path) -> None:
    await web(admin)
    cert, key = dev.node_identity(NODE)
    env = {
        "SATCHEL_SERVER": dev.address,
        "SATCHEL_CA": dev.exports["SATCHEL_CA"],
        "SATCHEL_CERT": str(cert),
        "SATCHEL_KEY": str(key),
        "SATCHEL_ROOT": str(tmp_path / "root"),
        "SATCHEL_ONCE": "1",
        "SATCHEL_FILE_MODE": "0600",
        "SATCHEL_TOKEN": "not-a-token",  # the agent is its node: a bearer token is ignored
    }
    a = await start_agent([], env)
    assert await a.exited() == 0, a.log()
    assert mode(tmp_path / "root" / "default" / "web" / "secrets" / "db" / "user") == 0o600


async def test_sighup_repairs_the_root_at_once(dev, admin, tmp_path) -> None:
    await web(admin)
    root = tmp_path / "root"
    async with agent(dev, dev.node_identity(NODE), root) as a:
        await a.wait_for(r"in sync at revision")
        (root / "planted.txt").write_text("stale")
        (root / "default" / "web" / "secrets" / "db" / "user").unlink()
        mark = a.mark()
        a.proc.send_signal(signal.SIGHUP)
        await a.wait_for(r"removed stray planted.txt", after=mark)
        await a.wait_for(r"wrote default/web secret=db version=1 ", after=mark)
        assert read_leaf(root / "default" / "web" / "secrets" / "db") == {"user": b"app", "password": b"pw-1"}
