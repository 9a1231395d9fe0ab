"""Envelope for secret data at rest: AES-256-GCM under a key ring read from a key file.

The key file holds one key per line, `<id>:<base64 of 32 bytes>`; the first
line is the primary key that seals new data, the others still open data sealed
before a rotation. Each sealed blob names its key and binds the object's uid
and version as associated data, so a blob copied to another object or version
fails to open.

The file is refused unless only its owner may read it, every id is printable
ASCII without `:` and appears once. Files this module writes (a new ring, or
a ring with a new primary key first) reach the disk, file and directory, before
they are used: a crash never leaves data sealed under a key that was lost.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import stat
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_NONCE = 12
_HEADER = "# Satchel key-encryption keys; the first seals new data.\n"
# A key id is stored in every blob it seals (one length byte, then the id).
_ID = re.compile(r"[!-9;-~]{1,255}")  # printable ASCII, no space, no ':'
_NUMBERED = re.compile(r"k(\d+)(?:-.*)?")


class KeyFileError(Exception):
    """The key file is missing, unreadable or malformed."""


class KeyRing:
    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise KeyFileError("the key ring is empty")
        self._primary_id, primary = keys[0]
        self._ids = tuple(kid for kid, _ in keys)
        self._ciphers = {kid: AESGCM(key) for kid, key in keys}
        self._primary = self._ciphers[self._primary_id]
        self._header = _blob_header(self._primary_id)
        self._root = primary

    @property
    def primary_id(self) -> str:
        """The id of the key that seals new data."""
        return self._primary_id

    @property
    def ids(self) -> tuple[str, ...]:
        """Every key id, the primary first."""
        return self._ids

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyRing:
        return cls(read_keys(path))

    @staticmethod
    def create_file(path: str | os.PathLike[str]) -> None:
        """Writes a new key file with one random key, readable by its owner only,
        and makes it durable (file and directory) before returning."""
        text = f"{_HEADER}k1:{_new_key()}\n"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _fsync_directory(Path(path).parent)

    def seal(self, plaintext: bytes, *, uid: str, version: int) -> bytes:
        nonce = os.urandom(_NONCE)
        sealed = self._primary.encrypt(nonce, plaintext, _aad(uid, version))
        return self._header + nonce + sealed

    def open(self, blob: bytes, *, uid: str, version: int) -> bytes:
        n = blob[0]
        kid = blob[1 : 1 + n].decode()
        nonce = blob[1 + n : 1 + n + _NONCE]
        return self._ciphers[kid].decrypt(nonce, blob[1 + n + _NONCE :], _aad(uid, version))

    def is_primary(self, blob: bytes) -> bool:
        """Whether `blob` names the primary key (says nothing of whether it opens)."""
        return blob.startswith(self._header)

    def derive(self, purpose: str) -> bytes:
        """A 32-byte key for `purpose` (e.g. page-token MACs), stable while the primary is."""
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode())
        return hkdf.derive(self._root)


def key_id_of(blob: bytes) -> str:
    """The id of the key a sealed blob names."""
    return blob[1 : 1 + blob[0]].decode(errors="replace")


def read_keys(path: str | os.PathLike[str]) -> list[tuple[str, bytes]]:
    """The keys of a key file in order, primary first; KeyFileError (one line,
    naming the file) if it is missing, readable by others, or malformed."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise KeyFileError(f"cannot read encryption key file {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
        if mode & 0o077:
            raise KeyFileError(
                f"encryption key file {path} has mode {mode:04o}: group and others must have no access"
                f" (chmod 600 {path})"
            )
        try:
            text = f.read().decode()
        except OSError as e:
            raise KeyFileError(f"cannot read encryption key file {path}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise KeyFileError(f"encryption key file {path} is not UTF-8 text") from None
    keys: list[tuple[str, bytes]] = []
    lines: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        kid, colon, encoded = line.partition(":")
        try:
            key = base64.b64decode(encoded, validate=True)
        except ValueError:
            key = b""
        if not colon or not kid or len(key) != 32:
            raise KeyFileError(f"{path}:{number}: expected '<id>:<base64 of 32 bytes>'")
        if not _ID.fullmatch(kid):
            raise KeyFileError(
                f"{path}:{number}: a key id must be 1 to 255 printable ASCII characters, without spaces or ':'"
            )
        if kid in lines:
            raise KeyFileError(f"{path}:{number}: key id {kid} is also on line {lines[kid]}; each id must be unique")
        lines[kid] = number
        keys.append((kid, key))
    if not keys:
        raise KeyFileError(f"{path}: no keys")
    return keys


def add_key(path: str | os.PathLike[str]) -> str:
    """Puts a new random key first in the key file (creating the file if it is
    missing), so that it becomes the primary; returns its id. The file is
    replaced atomically: a new file beside it (mode 0600), synced, renamed over
    it, and the directory synced, so a crash leaves the old ring or the new."""
    path = Path(path)
    if not path.exists():
        KeyRing.create_file(path)
        return read_keys(path)[0][0]
    ids = [kid for kid, _ in read_keys(path)]  # refuses a file the server would refuse
    lines = path.read_text().splitlines(keepends=True)
    kid = _fresh_id(ids)
    # After the leading comments, so that they still head the file.
    at = next((i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")), len(lines))
    if at and not lines[at - 1].endswith("\n"):
        lines[at - 1] += "\n"
    lines.insert(at, f"{kid}:{_new_key()}\n")
    text = "".join(lines)
    if not text.endswith("\n"):
        text += "\n"
    owner = path.stat()
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            try:  # the server may run as the file's owner, not as whoever edits it
                os.fchown(f.fileno(), owner.st_uid, owner.st_gid)
            except PermissionError:
                pass
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return kid


def _fresh_id(ids: list[str]) -> str:
    """`k<N>-<random>`: N one above the highest `k<N>` in the ring, for people to
    read; the random part keeps the id unused even by keys removed earlier."""
    numbers = [int(m.group(1)) for kid in ids if (m := _NUMBERED.fullmatch(kid))]
    while True:
        kid = f"k{max(numbers, default=len(ids)) + 1}-{secrets.token_hex(4)}"
        if kid not in ids:
            return kid


def _new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _blob_header(kid: str) -> bytes:
    encoded = kid.encode()
    return bytes([len(encoded)]) + encoded


def _aad(uid: str, version: int) -> bytes:
    return f"{uid}\x00{version}".encode()
