"""Piped mode's closing round trip, driven by hand (no server): its answer, and a request that cannot be sent."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest

from lanchat.client import piped
from lanchat.client.connection import EXIT_LOST, QUEUED_MAX
from lanchat.errors import RemoteProtocolError


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


def reconnecting_with_a_full_queue(s: piped._PipedSession) -> None:
    s._line_of[7] = 3  # line 3's command waits for its answer
    s._client._queued_requests = QUEUED_MAX  # (status: still connecting, so sends are queued)
    s._closed = asyncio.create_task(asyncio.sleep(3600))  # the connection is not given up


@pytest.mark.parametrize("back", ["for good", "dropped at once, then for good", "not in time"])
def test_a_closing_request_the_full_queue_refuses_is_sent_once_back(monkeypatch: pytest.MonkeyPatch, back: str) -> None:
    """Reconnecting with QUEUED_MAX commands queued, the client refuses the closing request itself. It is
    sent once the queue has gone out, within SETTLE_TIMEOUT as ever; if the server is not back by then, the run
    ends as lost. (A mend had it end as lost at once, the queue never sent; the next sent it only if still
    connected when it woke, and a reconnect dropped at once, a worker killed at each resume, left it unsent:
    reviews.)"""
    monkeypatch.setattr(piped, "SETTLE_TIMEOUT", 0.5)

    async def main() -> None:
        s = session()
        reconnecting_with_a_full_queue(s)
        client = s._client
        sent: list[str] = []
        send = client.send

        def recorded(req: Any) -> Any:
            sent.append(client.status)
            return send(req)

        client.send = recorded  # type: ignore[method-assign]
        settling = asyncio.ensure_future(s._settle())
        await asyncio.sleep(0.01)
        assert not settling.done() and sent == ["connecting"]  # refused: waiting for the server
        if back != "not in time":
            client._queued, client._queued_requests = [], 0  # the queue goes out with the welcome
            client._set_status("connected")
            if back == "dropped at once, then for good":
                client._set_status("reconnecting")
            await asyncio.sleep(0.01)
            assert len(sent) == 2 and (client.queued_requests == 1) == (back != "for good")  # written or queued
            client._set_status("connected")
            s._on_frame({"type": "rooms", "rooms": [], "id": piped.SETTLE_ID})
        started = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(settling, 2.0) == (EXIT_LOST if back == "not in time" else None)
        assert asyncio.get_running_loop().time() - started < (0.6 if back == "not in time" else 0.1)
        assert s._closed is not None
        s._closed.cancel()

    asyncio.run(main())


def test_a_closing_request_never_asked_is_no_answer_if_the_server_is_back_as_the_time_runs_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a full queue, a server back in the very turn the 10 s ran out found the run leaving with exit 0,
    though the closing request was never sent (a review; shown here by a queue that stays full)."""
    monkeypatch.setattr(piped, "SETTLE_TIMEOUT", 0.2)

    async def main() -> None:
        s = session()
        reconnecting_with_a_full_queue(s)

        def refused(req: Any) -> Any:
            raise RemoteProtocolError("queue_full", "1000 commands are waiting to be sent already")

        s._client.send = refused  # type: ignore[method-assign]
        asyncio.get_running_loop().call_later(0.15, setattr, s._client, "status", "connected")  # (no event)
        assert await asyncio.wait_for(s._settle(), 2.0) == EXIT_LOST
        assert s._closed is not None
        s._closed.cancel()

    asyncio.run(main())


@pytest.mark.parametrize("when", ["during the goodbye", "before it"])
def test_a_signal_at_the_end_gets_its_exit_code_and_no_second_goodbye(when: str) -> None:
    """A SIGTERM while the end of the input's goodbye was under way started a second one beside it, and the
    run exited 0 (or 1), not 143 (a review); one as the closing request's answer came, the same."""

    async def main() -> None:
        s = session()
        s._closed = asyncio.create_task(asyncio.sleep(3600))
        goodbyes: list[str] = []

        async def close(reason: str = "") -> None:
            goodbyes.append(reason)
            if when == "during the goodbye":
                s._on_signal(signal.SIGTERM)
            await asyncio.sleep(0.01)

        s._client.close = close  # type: ignore[method-assign]
        if when == "before it":
            s._on_signal(signal.SIGTERM)
        assert await asyncio.wait_for(s._finish(), 2.0) == 128 + signal.SIGTERM
        assert len(goodbyes) == 1
        s._closed.cancel()

    asyncio.run(main())
