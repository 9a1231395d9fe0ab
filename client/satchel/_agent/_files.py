"""The node's root on disk: leaf directories written as kubelet's AtomicWriter writes them.

A leaf (`serviceaccount/`, `secrets/<name>/`) holds a timestamped directory with the files of
one version, a `..data` symlink to it and one `<key> -> ..data/<key>` symlink per file. An
update writes a new timestamped directory, renames a `..data_tmp` symlink over `..data` (one
atomic step: a reader sees the old set or the new one), fixes the per-key links and removes
the old directory last. Files are fsynced before the swap and the directory after it, so a
power cut leaves the old version or the new, never an empty file.

Every path is walked from the root's directory descriptor one name at a time with O_NOFOLLOW:
a symlink planted anywhere below the root is never followed; it is removed like any stray.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path as FsPath

from satchel._agent._layout import (
    SECRETS_DIR,
    SERVICE_ACCOUNT_DIR,
    STATE_DIR,
    Key,
    Path,
    is_data_key,
    is_name,
    is_namespace,
)

DATA = "..data"
DATA_TMP = "..data_tmp"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def dir_mode_for(file_mode: int) -> int:
    """Directories 0700, plus search permission for whoever `file_mode` lets read (0440 -> 0750),
    so that a mode that shares the files with a group also lets the group reach them."""
    mode = 0o700
    if file_mode & 0o040:
        mode |= 0o050
    if file_mode & 0o004:
        mode |= 0o005
    return mode


@dataclass
class LeafOnDisk:
    """What a scan found in one leaf directory."""

    version_dir: str | None  # where `..data` points, if it points to a directory of ours
    intact: bool  # `..data`, the per-key links and the files' modes are all as the writer leaves them
    leftovers: list[str] = field(default_factory=list)  # other `..` entries (an update cut short)


@dataclass
class Disk:
    """The root as a scan found it: directories where the layout expects them, and strays."""

    namespaces: set[str] = field(default_factory=set)
    workloads: set[Key] = field(default_factory=set)
    leaves: dict[Path, LeafOnDisk] = field(default_factory=dict)
    strays: list[Path] = field(default_factory=list)  # anything else: files, symlinks, odd names


class UnsafePathError(ValueError):
    """A name that would leave its directory (`/`, `.`, `..`, NUL)."""


def _check_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise UnsafePathError(f"refusing unsafe path component {name!r}")


class Root:
    """The agent's directory: every read, write and removal below it goes through here."""

    def __init__(self, path: FsPath, file_mode: int) -> None:
        self.path = path
        self.file_mode = file_mode
        self.dir_mode = dir_mode_for(file_mode)
        self._fd = self._open_root()

    def _open_root(self) -> int:
        """The root's descriptor (made if missing, with the directories' mode). The root itself
        may be reached through a symlink the operator chose; nothing below it."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        _set_mode(fd, self.dir_mode)
        return fd

    def _same_root(self) -> None:
        """Reopen the root when its path no longer leads to the directory held open (deleted,
        replaced, a filesystem mounted over it): else the agent would write into a ghost."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        held = os.fstat(self._fd)
        if st is None or (st.st_dev, st.st_ino) != (held.st_dev, held.st_ino):
            os.close(self._fd)
            self._fd = self._open_root()

    def close(self) -> None:
        os.close(self._fd)

    # --- walking -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _dir(self, path: Path, *, create: bool = False) -> Iterator[int]:
        """A descriptor of the directory `path`, reached without following any symlink;
        with `create`, missing directories are made and anything else in the way removed."""
        for name in path:
            _check_name(name)  # all of them before anything is made
        fds: list[int] = []
        fd = self._fd
        try:
            for name in path:
                try:
                    fd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    fd = self._mkdir(fd, name)
                except OSError as e:
                    if not create or e.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    _remove_entry(fd, name)  # a symlink or a file where a directory belongs
                    fd = self._mkdir(fd, name)
                else:
                    if create:
                        _set_mode(fd, self.dir_mode)  # --file-mode may have changed since
                fds.append(fd)
            yield fd
        finally:
            for opened in fds:
                os.close(opened)

    def _mkdir(self, parent: int, name: str) -> int:
        os.mkdir(name, 0o700, dir_fd=parent)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        os.fchmod(fd, self.dir_mode)
        os.fsync(parent)
        return fd

    # --- the three things the reconciler does --------------------------------------------

    def ensure_dir(self, path: Path) -> None:
        with self._dir(path, create=True):
            pass

    def remove(self, path: Path) -> bool:
        """Remove the entry at `path` (a directory with all it holds); False if it was not there."""
        *parent, name = path
        _check_name(name)
        try:
            with self._dir(tuple(parent)) as fd:
                _remove_entry(fd, name)
                os.fsync(fd)
        except FileNotFoundError:
            return False
        return True

    def write_leaf(self, path: Path, payload: Mapping[str, bytes]) -> str:
        """Replace the leaf's files with `payload`, atomically for any reader (see the module);
        returns the name of the new version's directory."""
        for key in payload:
            if not is_data_key(key):
                raise UnsafePathError(f"refusing file name {key!r}")
        with self._dir(path, create=True) as leaf:
            version_dir = f"..{time.strftime('%Y_%m_%d_%H_%M_%S', time.gmtime())}.{secrets.token_hex(6)}"
            os.mkdir(version_dir, 0o700, dir_fd=leaf)
            vfd = os.open(version_dir, _DIR_FLAGS, dir_fd=leaf)
            try:
                os.fchmod(vfd, self.dir_mode)
                for key, value in payload.items():
                    fd = os.open(key, _NEW_FILE, 0o600, dir_fd=vfd)
                    try:
                        os.fchmod(fd, self.file_mode)
                        _write_all(fd, value)
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                os.fsync(vfd)
            finally:
                os.close(vfd)
            # The swap: one rename, after which every reader resolves the new version.
            with contextlib.suppress(FileNotFoundError):
                _remove_entry(leaf, DATA_TMP)
            os.symlink(version_dir, DATA_TMP, dir_fd=leaf)
            os.rename(DATA_TMP, DATA, src_dir_fd=leaf, dst_dir_fd=leaf)
            os.fsync(leaf)
            # The names users open: one link per key (added or fixed), none for keys gone.
            for key in payload:
                if _readlink(leaf, key) != f"{DATA}/{key}":
                    os.symlink(f"{DATA}/{key}", DATA_TMP, dir_fd=leaf)
                    with contextlib.suppress(FileNotFoundError):
                        if not stat.S_ISLNK(os.stat(key, dir_fd=leaf, follow_symlinks=False).st_mode):
                            _remove_entry(leaf, key)  # rename cannot replace a directory
                    os.rename(DATA_TMP, key, src_dir_fd=leaf, dst_dir_fd=leaf)
            for name in os.listdir(leaf):
                if name == DATA or name == version_dir:
                    continue
                if name.startswith("..") or name not in payload:
                    _remove_entry(leaf, name)  # the old version last, and any leftover
            # No fsync here: should a power cut undo the links or the removal, the next pass
            # finds the leaf untidy and repairs it; the swap itself was made durable above.
        return version_dir

    def read_leaf(self, path: Path) -> dict[str, bytes] | None:
        """The files of the version `..data` points to, or None when the leaf is not whole."""
        try:
            with self._dir(path) as leaf:
                version_dir = _readlink(leaf, DATA)
                if version_dir is None or not _is_version_dir(version_dir):
                    return None
                with self._dir_at(leaf, version_dir) as vfd:
                    payload = {}
                    for name in os.listdir(vfd):
                        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=vfd)
                        try:
                            if not stat.S_ISREG(os.fstat(fd).st_mode):
                                return None
                            payload[name] = _read_all(fd)
                        finally:
                            os.close(fd)
                    return payload
        except OSError:
            return None

    @contextlib.contextmanager
    def _dir_at(self, parent: int, name: str) -> Iterator[int]:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        try:
            yield fd
        finally:
            os.close(fd)

    # --- what is there -------------------------------------------------------------------

    def scan(self) -> Disk:
        """Every namespace, workload and leaf directory where the layout puts them; anything
        else (files, symlinks, names the layout cannot hold) is a stray, to be removed."""
        self._same_root()
        disk = Disk()
        for ns, kind in _entries(self._fd):
            if ns == STATE_DIR and kind == "dir":
                continue
            if kind != "dir" or not is_namespace(ns):
                disk.strays.append((ns,))
                continue
            try:
                with self._dir_at(self._fd, ns) as nsfd:
                    for name, kind in _entries(nsfd):
                        if kind != "dir" or not is_name(name):
                            disk.strays.append((ns, name))
                            continue
                        try:
                            with self._dir_at(nsfd, name) as wfd:
                                self._scan_workload(disk, wfd, (ns, name))
                        except OSError:  # unreadable, or gone meanwhile: not ours to trust
                            disk.strays.append((ns, name))
                            continue
                        disk.workloads.add((ns, name))
            except OSError:
                disk.strays.append((ns,))
                continue
            disk.namespaces.add(ns)
        return disk

    def _scan_workload(self, disk: Disk, wfd: int, at: Path) -> None:
        for name, kind in _entries(wfd):
            if kind == "dir" and name == SERVICE_ACCOUNT_DIR:
                with self._dir_at(wfd, name) as lfd:
                    disk.leaves[(*at, name)] = self._scan_leaf(lfd)
            elif kind == "dir" and name == SECRETS_DIR:
                with self._dir_at(wfd, name) as sfd:
                    for secret, kind in _entries(sfd):
                        if kind != "dir" or not is_name(secret):
                            disk.strays.append((*at, name, secret))
                            continue
                        try:
                            with self._dir_at(sfd, secret) as lfd:
                                disk.leaves[(*at, name, secret)] = self._scan_leaf(lfd)
                        except OSError:
                            disk.strays.append((*at, name, secret))
            else:
                disk.strays.append((*at, name))

    def _scan_leaf(self, lfd: int) -> LeafOnDisk:
        version_dir = _readlink(lfd, DATA)
        if version_dir is None or not _is_version_dir(version_dir):
            return LeafOnDisk(None, False)
        try:
            with self._dir_at(lfd, version_dir) as vfd:
                files = {}
                for name, kind in _entries(vfd):
                    mode = os.stat(name, dir_fd=vfd, follow_symlinks=False).st_mode
                    files[name] = kind == "file" and stat.S_IMODE(mode) == self.file_mode
                dir_ok = stat.S_IMODE(os.fstat(vfd).st_mode) == stat.S_IMODE(os.fstat(lfd).st_mode) == self.dir_mode
        except OSError:
            return LeafOnDisk(None, False)
        links = {}
        leftovers = []
        for name, _ in _entries(lfd):
            if name in (DATA, version_dir):
                continue
            if name.startswith(".."):
                leftovers.append(name)
            else:
                links[name] = _readlink(lfd, name)
        intact = (
            dir_ok
            and all(files.values())
            and links.keys() == files.keys()
            and all(target == f"{DATA}/{name}" for name, target in links.items())
        )
        return LeafOnDisk(version_dir, intact, leftovers)

    def remove_leftovers(self, path: Path, names: list[str]) -> None:
        with self._dir(path) as leaf:
            for name in names:
                _check_name(name)
                with contextlib.suppress(FileNotFoundError):
                    _remove_entry(leaf, name)
            os.fsync(leaf)


def _is_version_dir(name: str) -> bool:
    return name.startswith("..") and name not in (DATA, DATA_TMP) and "/" not in name


def _entries(fd: int) -> list[tuple[str, str]]:
    """(name, "dir" | "file" | "link" | "other") for each entry, symlinks never followed."""
    out = []
    with os.scandir(fd) as it:
        for entry in it:
            if entry.is_symlink():
                kind = "link"
            elif entry.is_dir(follow_symlinks=False):
                kind = "dir"
            elif entry.is_file(follow_symlinks=False):
                kind = "file"
            else:
                kind = "other"
            out.append((entry.name, kind))
    return out


def _set_mode(fd: int, mode: int) -> None:
    if stat.S_IMODE(os.fstat(fd).st_mode) != mode:
        os.fchmod(fd, mode)


def _readlink(dir_fd: int, name: str) -> str | None:
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError:
        return None


def _remove_entry(dir_fd: int, name: str) -> None:
    """Remove one entry of a directory: a symlink itself (never its target), a file, or a
    directory and everything in it (shutil.rmtree with dir_fd does not follow symlinks)."""
    if stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)
