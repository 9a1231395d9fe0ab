"""Watch: the hub that fans each published commit out to the streams whose
view it changes, through bounded per-stream buffers."""

from ._hub import WatchHub
from ._subscription import Subscription
from ._view import View, encode

__all__ = ["Subscription", "View", "WatchHub", "encode"]
