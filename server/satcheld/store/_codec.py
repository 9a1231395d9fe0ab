"""Objects to rows and back: the body holds everything but secret data, which is
sealed with the key ring (AES-256-GCM bound to the object's uid and version)."""

from __future__ import annotations

from typing import cast

from cryptography.exceptions import InvalidTag

from satchel.v1 import secret_pb2

from ..errors import DataLoss
from ..model import KINDS, Resource, visible
from ._keyring import KeyRing


class Codec:
    """Turns objects into rows and back; seals secret data on the way in."""

    def __init__(self, keyring: KeyRing) -> None:
        self.keyring = keyring

    @staticmethod
    def body(obj: Resource) -> bytes:
        """The object's serialization without secret data."""
        return visible(obj, with_data=False).SerializeToString()

    def encode(self, obj: Resource) -> tuple[bytes, bytes | None]:
        if isinstance(obj, secret_pb2.Secret):
            payload = secret_pb2.Secret(data=obj.data).SerializeToString(deterministic=True)
            sealed = self.keyring.seal(payload, uid=obj.metadata.uid, version=obj.version)
            return self.body(obj), sealed
        return obj.SerializeToString(), None

    def decode(self, kind: str, body: bytes, sealed: bytes | None, with_data: bool = True) -> Resource:
        obj = cast(Resource, KINDS[kind].message.FromString(body))
        if sealed is not None and with_data and isinstance(obj, secret_pb2.Secret):
            try:
                payload = self.keyring.open(sealed, uid=obj.metadata.uid, version=obj.version)
            except (InvalidTag, KeyError, IndexError, UnicodeDecodeError):
                meta = obj.metadata
                raise DataLoss(
                    f"the data of secret {meta.namespace}/{meta.name} cannot be decrypted with the key ring"
                ) from None
            # The payload is a Secret holding only `data`: merging it sets the data.
            obj.MergeFromString(payload)
        return obj
