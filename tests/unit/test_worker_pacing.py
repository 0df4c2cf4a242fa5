"""The worker's fan-out pacing: after a long round the next waits as long; after a short one, nothing waits."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from lanchat import const
from lanchat.server.worker import Worker


class FakeConn:
    """Stands in for a ClientConn: records when it was flushed; a slow one takes `cost` seconds to send."""

    def __init__(self, cost: float = 0.0) -> None:
        self.cost = cost
        self.flushed: list[float] = []
        self.event = asyncio.Event()

    def flush(self) -> None:
        self.flushed.append(asyncio.get_running_loop().time())
        if self.cost:
            time.sleep(self.cost)  # stands for a round of many send() calls
        self.event.set()


def make_worker() -> tuple[Worker, list[socket.socket]]:
    a, b = socket.socketpair()
    c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    cfg: dict[str, Any] = {"sendq": 1 << 20, "max_frame": 1024, "rate": 10.0, "burst": 10}
    return Worker(0, a, c, cfg), [a, b, c, d]


def test_a_long_round_defers_the_next_and_a_short_one_does_not() -> None:
    async def main() -> None:
        worker, socks = make_worker()
        try:
            slow, fast = FakeConn(cost=3 * const.FANOUT_PAUSE_MIN), FakeConn()
            worker.mark_dirty(slow)  # type: ignore[arg-type]
            await asyncio.wait_for(slow.event.wait(), 5)
            pause_until = worker._fanout_at
            assert pause_until - slow.flushed[0] >= 3 * const.FANOUT_PAUSE_MIN * const.FANOUT_PAUSE
            worker.mark_dirty(fast)  # type: ignore[arg-type]
            for _ in range(3):
                await asyncio.sleep(0)
            assert fast.flushed == []  # the pause holds it back past the next loop iterations...
            await asyncio.wait_for(fast.event.wait(), 5)
            assert fast.flushed[0] >= pause_until  # ...until the pause is over
            fast.event.clear()
            worker.mark_dirty(fast)  # type: ignore[arg-type]
            for _ in range(3):
                await asyncio.sleep(0)
            assert len(fast.flushed) == 2  # a short round: the next one runs at once
        finally:
            for s in socks:
                s.close()

    asyncio.run(main())
