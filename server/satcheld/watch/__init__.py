"""Watch: the hub that fans each published commit out to the streams whose
view it changes, through bounded per-stream buffers, and the quota of streams
each principal may hold open."""

from ._hub import WatchHub
from ._quota import Slot, StreamQuota
from ._subscription import Subscription
from ._view import View, encode

__all__ = ["Slot", "StreamQuota", "Subscription", "View", "WatchHub", "encode"]
