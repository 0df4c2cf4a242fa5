"""Piped mode's closing round trip, driven by hand (no server): its answer, and a request that cannot be sent."""

from __future__ import annotations

import asyncio

from lanchat.client import piped
from lanchat.client.connection import EXIT_LOST, QUEUED_MAX


def session() -> piped._PipedSession:
    return piped._PipedSession("127.0.0.1", 9, "al", "lobby", json_output=False, relocate=None)


def test_a_busy_refusal_of_the_closing_request_settles_it_and_refuses_no_line() -> None:
    """The hub refuses a `rooms` while the connection's worker is behind (busy): still an answer in order,
    after everything sent before it. It was taken for a refused input line (exit 1) and waited for in vain."""

    async def main() -> None:
        s = session()
        s._on_frame({"type": "error", "code": "busy", "message": "the server is busy", "id": piped.SETTLE_ID})
        assert s._settled.is_set() and s._refused == [] and s._exit_code() == 0

    asyncio.run(main())


def test_a_closing_request_that_cannot_be_queued_is_not_waited_for() -> None:
    """Reconnecting with QUEUED_MAX commands queued, the closing request is refused by the client itself: no
    answer can come, and the run ends at once as lost (it waited SETTLE_TIMEOUT, 10 s, first)."""

    async def main() -> None:
        s = session()
        s._line_of[7] = 3  # line 3's command waits for its answer
        s._client._queued_requests = QUEUED_MAX  # (status: still connecting)
        assert await asyncio.wait_for(s._settle(), 2.0) == EXIT_LOST

    asyncio.run(main())
