"""Envelope for secret data at rest: AES-256-GCM under a key ring read from a key file.

The key file holds one key per line, `<id>:<base64 of 32 bytes>`; the first
line is the primary key that seals new data, the others still open data sealed
before a rotation. Each sealed blob names its key and binds the object's uid
and version as associated data, so a blob copied to another object or version
fails to open.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_NONCE = 12


class KeyFileError(Exception):
    """The key file is missing, unreadable or malformed."""


class KeyRing:
    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise KeyFileError("the key ring is empty")
        self._primary_id, primary = keys[0]
        self._ciphers = {kid: AESGCM(key) for kid, key in keys}
        self._primary = self._ciphers[self._primary_id]
        self._root = primary

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyRing:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise KeyFileError(f"cannot read encryption key file {path}: {e.strerror}") from None
        keys = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            kid, _, encoded = line.partition(":")
            try:
                key = base64.b64decode(encoded, validate=True)
            except ValueError:
                key = b""
            if not kid or len(kid) > 255 or len(key) != 32:
                raise KeyFileError(f"{path}:{number}: expected '<id>:<base64 of 32 bytes>'")
            keys.append((kid, key))
        if not keys:
            raise KeyFileError(f"{path}: no keys")
        return cls(keys)

    @staticmethod
    def create_file(path: str | os.PathLike[str]) -> None:
        """Writes a new key file with one random key, readable by its owner only."""
        key = base64.b64encode(secrets.token_bytes(32)).decode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"# Satchel key-encryption keys; the first seals new data.\nk1:{key}\n")

    def seal(self, plaintext: bytes, *, uid: str, version: int) -> bytes:
        kid = self._primary_id.encode()
        nonce = os.urandom(_NONCE)
        sealed = self._primary.encrypt(nonce, plaintext, _aad(uid, version))
        return bytes([len(kid)]) + kid + nonce + sealed

    def open(self, blob: bytes, *, uid: str, version: int) -> bytes:
        n = blob[0]
        kid = blob[1 : 1 + n].decode()
        nonce = blob[1 + n : 1 + n + _NONCE]
        return self._ciphers[kid].decrypt(nonce, blob[1 + n + _NONCE :], _aad(uid, version))

    def derive(self, purpose: str) -> bytes:
        """A 32-byte key for `purpose` (e.g. page-token MACs), stable while the primary is."""
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode())
        return hkdf.derive(self._root)


def _aad(uid: str, version: int) -> bytes:
    return f"{uid}\x00{version}".encode()
