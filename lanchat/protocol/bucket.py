"""The token bucket behind every rate limit (a client's lines, renames, connections per address, replies to
discovery probes). Pure: the time is an argument."""

from __future__ import annotations

from typing import Final

_EPS: Final = 1e-9  # float sums like 0.1 * 10 fall just short of 1.0


class TokenBucket:
    """``rate`` tokens a second, up to ``burst``; starts full. A charge may take it below zero: what follows then
    waits until it is paid."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = now

    def refill(self, now: float) -> None:
        if now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now

    @property
    def ready(self) -> bool:
        """Whether a token is there (after a refill)."""
        return self.tokens >= 1.0 - _EPS

    def take(self, now: float) -> bool:
        """Take a token if one is there."""
        self.refill(now)
        if self.tokens >= 1.0 - _EPS:
            self.tokens -= 1.0
            return True
        return False

    def charge(self, extra: float) -> None:
        """Take ``extra`` tokens more for what was just let through."""
        self.tokens -= extra

    def owed(self, now: float) -> float | None:
        """After a charge: None if a line may go through now, else when the next one may."""
        self.refill(now)
        return None if self.tokens >= 1.0 - _EPS else self.ready_at(now)

    def ready_at(self, now: float) -> float:
        """When the next token will be there."""
        return now + max(0.0, 1.0 - self.tokens) / self.rate

    def spend(self, cost: float, now: float, *, slack: float = 0.0) -> float | None:
        """Take ``cost`` tokens if one is there, or ``slack`` fewer (it may go below zero, as ``charge``):
        None, else the seconds until one will be."""
        self.refill(now)
        if self.tokens >= 1.0 - slack - _EPS:
            self.tokens -= cost
            return None
        return (1.0 - slack - self.tokens) / self.rate
