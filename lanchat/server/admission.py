"""How often one address may open a connection (the main process's accept policy; pure: time is an argument).

A connection's rate limit (``--rate``, ``--burst``) starts full, so without this a client could post a
burst, disconnect and connect again, and post another: one address posted 23,000 lines a second into a
room that way (a code review) where ``--rate`` means 20. ``--max-per-ip`` bounds the connections open at
once, not how fast they come. This is the connect throttle IRC servers have: a bucket per address.
"""

from __future__ import annotations

from lanchat.protocol.bucket import TokenBucket


class ConnectThrottle:
    """``rate`` new connections a second from one address, after ``burst`` at once (``rate`` 0: no limit).

    The table holds only addresses whose bucket is not full again (``prune``), so its size is the number
    of hosts that connected in the last ``burst / rate`` seconds."""

    __slots__ = ("_buckets", "burst", "rate")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._buckets: dict[str, TokenBucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def wait(self, ip: str, now: float) -> float:
        """0.0 and the connection counted if ``ip`` may connect now, else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        bucket = self._buckets.get(ip)
        if bucket is None:
            bucket = self._buckets[ip] = TokenBucket(self.rate, self.burst, now)
        if bucket.take(now):
            return 0.0
        return bucket.ready_at(now) - now

    def prune(self, now: float) -> None:
        """Forget the addresses whose bucket has filled up again: they are as if never seen."""
        full = [ip for ip, b in self._buckets.items() if b.tokens + (now - b.last) * b.rate >= b.burst]
        for ip in full:
            del self._buckets[ip]
