"""Serialized Get responses, kept until a commit replaces what they show.

Reads by name are most of a secret service's traffic and mostly repeat: each
is answered from bytes built once, not from the database, the key ring and
protobuf again. The cache holds secret data in the clear, in the memory of
the process that holds the key ring anyway; it is never written anywhere.
"""

from __future__ import annotations

from ..store import Change

Key = tuple[str, str, str, bool]  # kind, namespace, name, with data

MAX_ENTRIES = 10_000
MAX_BYTES = 64 << 20


class GetCache:
    """Bytes by (kind, namespace, name, with data), bounded in count and size.

    Used on the event loop, where commits are published. A response is built
    from a read made off the loop, and a commit may be published while that
    read runs: `put` keeps a response only if no commit was published since the
    `generation` read before it, so no entry is ever staler than the last
    published commit; `forget` drops, at each commit, the entries it replaces.
    """

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._entries: dict[Key, bytes] = {}
        self._bytes = 0
        self.generation = 0  # +1 at every published commit

    def get(self, key: Key) -> bytes | None:
        return self._entries.get(key)

    def put(self, key: Key, value: bytes, generation: int) -> None:
        """Keeps `value`, built from a read begun at `generation`, unless a commit
        was published since."""
        if generation != self.generation:
            return
        if len(self._entries) >= self._max_entries or self._bytes + len(value) > self._max_bytes:
            self.clear()  # a rare full reset beats per-entry bookkeeping on every hit
        old = self._entries.get(key)
        if old is not None:
            self._bytes -= len(old)
        self._entries[key] = value
        self._bytes += len(value)

    def forget(self, changes: list[Change]) -> None:
        """A store listener: drops every response showing an object that changed."""
        self.generation += 1
        entries = self._entries
        for change in changes:
            meta = change.obj.metadata
            for with_data in (True, False):
                value = entries.pop((change.kind, meta.namespace, meta.name, with_data), None)
                if value is not None:
                    self._bytes -= len(value)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """The bytes held."""
        return self._bytes
