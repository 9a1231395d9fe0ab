"""The agent's desired tree and its writer, on a real directory: names that would leave the
root are refused twice (in the tree, and again where paths are made), symlinks are never
followed, and an update cut short leaves the old version whole."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from satchel._agent._files import DATA, Root, UnsafePathError, dir_mode_for
from satchel._agent._layout import Credential, Rejected, desired, is_data_key
from satchel._agent._reconcile import Reconciler
from satchel.v1.meta_pb2 import ObjectMeta
from satchel.v1.secret_pb2 import Secret, SecretType
from satchel.v1.service_account_pb2 import SecretReference, ServiceAccount
from satchel.v1.workload_pb2 import Workload


def workload(ns: str, name: str, secrets: list[str], node: str = "n1", account: str = "") -> Workload:
    return Workload(
        metadata=ObjectMeta(namespace=ns, name=name), node_name=node, secrets=secrets, service_account=account
    )


def secret(ns: str, name: str, data: dict[str, bytes], version: int = 1) -> Secret:
    return Secret(metadata=ObjectMeta(namespace=ns, name=name, resource_version=version), data=data, version=version)


def tree_of(*objects: Workload | Secret | ServiceAccount, credentials=None, rejected=None):
    by_kind: dict[type, dict] = {Workload: {}, Secret: {}, ServiceAccount: {}}
    for obj in objects:
        by_kind[type(obj)][(obj.metadata.namespace, obj.metadata.name)] = obj
    return desired("n1", by_kind[Workload], by_kind[ServiceAccount], by_kind[Secret], credentials or {}, rejected)


@pytest.mark.parametrize("key", ["..data", "..2026_01_01", "../x", "a/b", ".", "..", "", "x" * 254, "nul\0"])
def test_keys_that_are_not_file_names_are_refused(key: str) -> None:
    assert not is_data_key(key)
    rejected = Rejected()
    tree = tree_of(
        workload("default", "web", ["s"]), secret("default", "s", {key: b"v", "ok": b"v"}), rejected=rejected
    )
    assert tree.leaves == {}, "a secret with one bad key is not written at all (never half)"
    assert rejected.reasons == ["secret default/s: 1 data key(s) cannot be file names"]


@pytest.mark.parametrize(("ns", "name"), [("..", "web"), ("default", "../../etc"), ("a/b", "web"), ("Default", "w")])
def test_workloads_whose_names_are_not_paths_are_left_out(ns: str, name: str) -> None:
    rejected = Rejected()
    tree = tree_of(workload(ns, name, ["s"]), secret(ns, "s", {"k": b"v"}), rejected=rejected)
    assert tree.workloads == frozenset() and tree.leaves == {}
    assert len(rejected.reasons) == 1


def test_secret_names_that_are_not_paths_are_left_out() -> None:
    rejected = Rejected()
    tree = tree_of(workload("default", "web", ["../up"]), secret("default", "../up", {"k": b"v"}), rejected=rejected)
    assert tree.leaves == {} and rejected.reasons == ["secret default/../up: not a valid name"]


def test_only_the_nodes_workloads_and_what_they_mount() -> None:
    account = ServiceAccount(
        metadata=ObjectMeta(namespace="default", name="web", resource_version=3),
        secrets=[SecretReference(name="web-token"), SecretReference(name="listed")],
        spiffe_id="spiffe://satchel.local/ns/default/sa/web",
    )
    token = secret("default", "web-token", {"token": b"t", "ca.crt": b"c", "namespace": b"default"})
    token.type = SecretType.SECRET_TYPE_SERVICE_ACCOUNT_TOKEN
    token.service_account = "web"
    objects = (
        workload("default", "web", ["db"], account="web"),
        workload("default", "away", ["db"], node="n2"),
        account,
        token,
        secret("default", "db", {"k": b"v"}),
        secret("default", "listed", {"k": b"l"}),
    )
    waiting = tree_of(*objects)
    assert set(waiting.leaves) == {("default", "web", "secrets", "db"), ("default", "web", "secrets", "listed")}
    assert waiting.pending == {("default", "web", "serviceaccount")}, "the certificate is on its way"
    credential = Credential(b"CERT", b"KEY", 0.0, 0.0, 3)
    tree = tree_of(*objects, credentials={("default", "web"): credential})
    assert dict(tree.leaves[("default", "web", "serviceaccount")].payload) == {
        "token": b"t",
        "ca.crt": b"c",
        "namespace": b"default",
        "tls.crt": b"CERT",
        "tls.key": b"KEY",
    }
    assert tree.workloads == {("default", "web")} and not tree.pending


def test_paths_are_checked_again_where_they_are_made(tmp_path: Path) -> None:
    root = Root(tmp_path / "root", 0o400)
    for bad in [("..", "x"), ("default", "/etc"), ("default", "a/b"), ("default", "")]:
        with pytest.raises(UnsafePathError):
            root.write_leaf(bad, {"k": b"v"})
        with pytest.raises(UnsafePathError):
            root.remove(bad)
    with pytest.raises(UnsafePathError):
        root.write_leaf(("default", "web", "secrets", "s"), {"../../escape": b"v"})
    assert list((tmp_path / "root").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]


def test_an_update_swaps_versions_and_drops_removed_keys(tmp_path: Path) -> None:
    root = Root(tmp_path, 0o400)
    path = ("default", "web", "secrets", "s")
    leaf = tmp_path.joinpath(*path)
    first = root.write_leaf(path, {"a": b"1", "b": b"1"})
    second = root.write_leaf(path, {"a": b"2", "c": b"2"})
    assert first != second and os.readlink(leaf / DATA) == second
    assert sorted(os.listdir(leaf)) == sorted([DATA, second, "a", "c"]), "b and the old version are gone"
    assert (leaf / "a").read_bytes() == b"2" and (leaf / "c").read_bytes() == b"2"
    assert root.read_leaf(path) == {"a": b"2", "c": b"2"}


def test_a_symlink_on_the_way_is_replaced_and_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "default").symlink_to(outside)
    root = Root(tmp_path / "root", 0o400)
    assert root.read_leaf(("default",)) is None
    root.write_leaf(("default", "web", "secrets", "s"), {"k": b"v"})
    assert not (tmp_path / "root" / "default").is_symlink()
    assert sorted(p.name for p in outside.iterdir()) == ["keep"] and (outside / "keep").read_text() == "keep"


def test_an_update_cut_short_leaves_the_old_version_whole(tmp_path: Path, monkeypatch) -> None:
    root = Root(tmp_path, 0o400)
    reconciler = Reconciler(root)
    objects = [workload("default", "web", ["s"]), secret("default", "s", {"k": b"old"})]
    assert len(reconciler.reconcile(tree_of(*objects)).written) == 1
    leaf = tmp_path / "default" / "web" / "secrets" / "s"
    version = os.readlink(leaf / DATA)

    real_rename = os.rename

    def power_cut(src, dst, **kw):  # the machine stops just before the swap
        if dst == DATA:
            raise OSError(5, "Input/output error")
        return real_rename(src, dst, **kw)

    monkeypatch.setattr(os, "rename", power_cut)
    objects[1] = secret("default", "s", {"k": b"new"}, version=2)
    outcome = reconciler.reconcile(tree_of(*objects))
    assert outcome.errors == ["cannot write default/web/secrets/s: Input/output error"] and not outcome.written
    assert (leaf / "k").read_bytes() == b"old" and os.readlink(leaf / DATA) == version
    monkeypatch.undo()

    # What the cut left (a new version directory, ..data_tmp) goes on the next pass.
    assert len([n for n in os.listdir(leaf) if n.startswith("..")]) > 2
    outcome = reconciler.reconcile(tree_of(*objects))
    assert [lf.version for lf in outcome.written] == [2] and not outcome.errors
    assert (leaf / "k").read_bytes() == b"new"
    assert sorted(os.listdir(leaf)) == sorted([DATA, os.readlink(leaf / DATA), "k"])


def test_leftovers_beside_a_right_version_are_removed_without_a_rewrite(tmp_path: Path) -> None:
    root = Root(tmp_path, 0o400)
    objects = (workload("default", "web", ["s"]), secret("default", "s", {"k": b"v"}))
    Reconciler(root).reconcile(tree_of(*objects))
    leaf = tmp_path / "default" / "web" / "secrets" / "s"
    version = os.readlink(leaf / DATA)
    (leaf / "..2020_01_01_00_00_00.000000000000").mkdir()
    (leaf / "..data_tmp").symlink_to("..2020_01_01_00_00_00.000000000000")
    outcome = Reconciler(root).reconcile(tree_of(*objects))  # a new agent: it reads and compares
    assert outcome.written == [] and outcome.errors == []
    assert os.readlink(leaf / DATA) == version and sorted(os.listdir(leaf)) == sorted([DATA, version, "k"])


@pytest.mark.parametrize(("file_mode", "dir_mode"), [(0o400, 0o700), (0o600, 0o700), (0o440, 0o750), (0o444, 0o755)])
def test_directories_let_through_whoever_may_read_the_files(file_mode: int, dir_mode: int) -> None:
    assert dir_mode_for(file_mode) == dir_mode


def test_a_root_that_cannot_be_scanned_is_an_error_not_a_crash(tmp_path: Path, monkeypatch) -> None:
    root = Root(tmp_path, 0o400)

    def unreadable() -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(root, "scan", unreadable)
    outcome = Reconciler(root).reconcile(tree_of(workload("default", "web", [])))
    assert outcome.errors == ["cannot scan the root: Permission denied"]


def test_a_pass_over_leaves_it_wrote_reads_none_of_their_files(tmp_path: Path, monkeypatch) -> None:
    """The write path runs for every event: an unchanged leaf is known by its source (the
    secret's uid and resource_version), never re-read or hashed, however large its files."""
    root = Root(tmp_path, 0o400)
    reconciler = Reconciler(root)
    objects = [workload("default", "web", ["s"]), secret("default", "s", {"k": b"v" * 1_000_000})]
    assert len(reconciler.reconcile(tree_of(*objects)).written) == 1

    def no_reads(path):
        raise AssertionError(f"{path} was read")

    monkeypatch.setattr(root, "read_leaf", no_reads)
    assert reconciler.reconcile(tree_of(*objects)).written == []
    # Another source (a write that left the data as it was) is checked against the disk once.
    monkeypatch.undo()
    objects[1] = secret("default", "s", {"k": b"v" * 1_000_000}, version=2)
    assert reconciler.reconcile(tree_of(*objects)).written == []
