"""What one Watch stream sees (`View`) and its events, serialized once per view."""

from __future__ import annotations

from dataclasses import dataclass, field

from satchel.v1 import meta_pb2

from ..model import KINDS, LabelSelector, Resource, visible
from ..store import Change

ADDED = meta_pb2.EVENT_TYPE_ADDED
MODIFIED = meta_pb2.EVENT_TYPE_MODIFIED
DELETED = meta_pb2.EVENT_TYPE_DELETED
BOOKMARK = meta_pb2.EVENT_TYPE_BOOKMARK
SYNCED = meta_pb2.EVENT_TYPE_SYNCED


@dataclass(frozen=True)
class View:
    """What one stream may see. Streams with equal views share serialization."""

    kind: str
    namespace: str = ""
    selector: LabelSelector = field(default_factory=LabelSelector)
    with_data: bool = True

    def matches(self, obj: Resource) -> bool:
        meta = obj.metadata
        return (not self.namespace or meta.namespace == self.namespace) and self.selector.matches(meta.labels)

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


def encode(view: View, event_type: int, revision: int, obj: Resource | None = None) -> bytes:
    kind = KINDS[view.kind]
    response = kind.response_type("watch")(type=event_type, revision=revision)
    if obj is not None:
        getattr(response, kind.field).CopyFrom(visible(obj, with_data=view.with_data))
    return response.SerializeToString()
