"""Opaque page tokens: a MAC-protected cursor bound to the query that made it,
so a caller cannot forge one into another namespace, kind or selector."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from ..errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# A page stops short of this many bytes, well under the 4 MiB message limit: a
# page of large secrets must still fit in one response.
MAX_PAGE_BYTES = 3 * 1024 * 1024


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument([("page_size", "must not be negative")])
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


class PageTokens:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:16]

    def encode(self, query: tuple[str, ...], after: tuple[str, str]) -> str:
        payload = json.dumps([list(query), list(after)], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(self._mac(payload) + payload).decode().rstrip("=")

    def decode(self, token: str, query: tuple[str, ...]) -> tuple[str, str]:
        """The cursor after which the next page starts; ("", "") for no token."""
        if not token:
            return ("", "")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            mac, payload = raw[:16], raw[16:]
            if not hmac.compare_digest(mac, self._mac(payload)):
                raise ValueError
            bound, after = json.loads(payload)
            if bound != list(query):
                raise InvalidArgument([("page_token", "belongs to a different query; list again without it")])
            return (str(after[0]), str(after[1]))
        except (ValueError, TypeError, IndexError):
            raise InvalidArgument([("page_token", "is not a token this server issued")]) from None
