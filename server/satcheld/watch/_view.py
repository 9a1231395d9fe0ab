"""What one Watch stream sees (`View`) and its events, serialized once per
(event, data visibility)."""

from __future__ import annotations

from dataclasses import dataclass, field

from satchel.v1 import meta_pb2

from ..auth import EVERYTHING, Scope
from ..model import KINDS, LabelSelector, Resource, visible
from ..store import Change

ADDED = meta_pb2.EVENT_TYPE_ADDED
MODIFIED = meta_pb2.EVENT_TYPE_MODIFIED
DELETED = meta_pb2.EVENT_TYPE_DELETED
BOOKMARK = meta_pb2.EVENT_TYPE_BOOKMARK
SYNCED = meta_pb2.EVENT_TYPE_SYNCED


@dataclass(frozen=True)
class View:
    """What one stream asked for (kind, namespace, selector) within what its
    caller may see (`scope`). Streams with equal views share serialization."""

    kind: str
    namespace: str = ""
    selector: LabelSelector = field(default_factory=LabelSelector)
    scope: Scope = EVERYTHING

    @property
    def follows_bindings(self) -> bool:
        return self.scope.follows_bindings(self.kind)

    def asked_for(self, obj: Resource) -> bool:
        """Whether `obj` is in the namespace and matches the selector asked for."""
        meta = obj.metadata
        return (not self.namespace or meta.namespace == self.namespace) and self.selector.matches(meta.labels)

    def matches(self, obj: Resource) -> bool:
        return self.asked_for(obj) and self.scope.admits(obj)

    def event_for(self, change: Change) -> int | None:
        """The event type this view sees for `change`: objects whose labels move
        them into or out of the view are ADDED or DELETED for it."""
        if change.kind != self.kind:
            return None
        now = change.type != DELETED and self.matches(change.obj)
        before = change.prev is not None and self.matches(change.prev)
        if change.type == DELETED:
            return DELETED if before else None
        if now:
            return MODIFIED if before else ADDED
        return DELETED if before else None


def encode(
    kind_name: str, event_type: int, revision: int, obj: Resource | None = None, with_data: bool = False
) -> bytes:
    kind = KINDS[kind_name]
    response = kind.response_type("watch")(type=event_type, revision=revision)
    if obj is not None:
        getattr(response, kind.field).CopyFrom(visible(obj, with_data=with_data))
    return response.SerializeToString()
