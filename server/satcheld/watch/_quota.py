"""How many Watch streams each principal holds open, and the most it may
(`satcheld serve --max-watch-streams-per-principal`): one caller, however many
connections it opens, cannot hold every slot of the hub. Admins are exempt."""

from __future__ import annotations

from ..auth import Principal
from ..errors import ResourceExhausted

REASON = "WATCH_STREAMS_PER_PRINCIPAL"


class StreamQuota:
    """Open Watch streams per principal, counted across all its connections."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[Principal, int] = {}

    def open(self, principal: Principal) -> int:
        return self._open.get(principal, 0)

    def reserve(self, principal: Principal, *, exempt: bool = False) -> Slot:
        """A slot for one more stream of `principal`, or RESOURCE_EXHAUSTED now,
        while the call can still be refused before it starts. The slot counts
        from `take()`, which the stream calls as its first step, to `release()`,
        in its `finally`: a stream that never starts holds nothing."""
        if not exempt:
            self._check(principal)
        return Slot(self, principal, exempt)

    def _check(self, principal: Principal) -> None:
        if self._open.get(principal, 0) >= self.limit:
            raise ResourceExhausted(
                f"{principal} already has {self.limit} Watch streams open, the most a principal may;"
                " end one before opening another",
                reason=REASON,
                metadata={"limit": str(self.limit), "principal": str(principal)},
            )

    def _take(self, principal: Principal) -> None:
        self._check(principal)
        self._open[principal] = self._open.get(principal, 0) + 1

    def _release(self, principal: Principal) -> None:
        left = self._open[principal] - 1
        if left:
            self._open[principal] = left
        else:
            del self._open[principal]


class Slot:
    """One stream's place in its principal's quota."""

    __slots__ = ("_exempt", "_held", "_principal", "_quota")

    def __init__(self, quota: StreamQuota, principal: Principal, exempt: bool) -> None:
        self._quota = quota
        self._principal = principal
        self._exempt = exempt
        self._held = False

    @property
    def exempt(self) -> bool:
        """An admin's: no quota, and no share of the initial parts' turns."""
        return self._exempt

    def take(self) -> None:
        """Counts the stream (RESOURCE_EXHAUSTED if the principal filled its
        quota since `reserve`, which nothing between the two lets happen)."""
        if not self._exempt and not self._held:
            self._quota._take(self._principal)
            self._held = True

    def release(self) -> None:
        """Gives the slot back; idempotent."""
        if self._held:
            self._held = False
            self._quota._release(self._principal)
