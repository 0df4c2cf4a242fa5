"""Crashes and restarts (issue 7, both found by scripts/soak.py --crash): exactly once across a crash of the
main process, and a resuming client that does not give up when the server refuses it for a moment (the
client gave up for good on any refusal before the welcome; fixed).

The bug this pins (fixed): the hub relayed an event at once and acknowledged it only after the history
commit (every 5 ms). A SIGKILL of the main process in between lost the event and the sender's dedup mark
(the session's highest id, committed with it) although members had seen it; the sender resent the
unacknowledged post after its resume, and members got it a second time under a new seq. Now the server
commits before it relays.

Network safety: servers on 127.0.0.1 with --no-discovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections import Counter
from pathlib import Path

import pytest
from support import Client, Frame, MakeServer, ServerProcess

from lanchat.client.connection import ChatClient
from lanchat.protocol import messages as m

POSTS = 300
ROUNDS = 4  # the crash must land in a window of a few ms: before the fix, 2 rounds in 3 hit it


def _posts(ids: list[int]) -> bytes:
    return b"".join(
        json.dumps({"type": "msg", "room": "lobby", "text": f"post {i}", "id": i}).encode() + b"\n" for i in ids
    )


def _drain(c: Client) -> None:
    """Read what is left until the connection ends (the server was killed)."""
    while True:
        try:
            c.recv(timeout=2)
        except (ConnectionError, TimeoutError, OSError):
            return


def _crash_round(make_server: MakeServer, data_dir: Path) -> tuple[int, int]:
    """Posts in flight, SIGKILL of the main process as the first one reaches a member, restart, resume, resend.

    Returns (posts the member saw twice, posts it never saw).
    """
    server: ServerProcess = make_server("--rate", "10000", "--burst", "10000", workers=1, data_dir=data_dir)
    rx, tx = Client(server.port, "rx"), Client(server.port, "tx")
    try:
        rx.expect(lambda f: f.get("type") == "join" and f.get("nick") == "tx")
        tx.send_raw(_posts(list(range(1, POSTS + 1))))
        rx.expect("msg")
        assert server.proc is not None
        server.proc.kill()  # SIGKILL, right as the first post reaches a member
        server.proc.wait(5)
        _drain(rx)
        _drain(tx)
    finally:
        rx.close()
        tx.close()
    server.kill()
    acked = {f["id"] for f in tx.seen if f.get("type") == "ack"}
    rx_last = max(f["seq"] for f in rx.seen if isinstance(f.get("seq"), int))
    tx_last = max(f["seq"] for f in tx.seen if isinstance(f.get("seq"), int))
    again = make_server("--rate", "10000", "--burst", "10000", workers=1, data_dir=data_dir, port=server.port)
    # Both resume (what ChatClient does): token + last_seq, then the sender resends every unacked post.
    with (
        Client(again.port, "rx", token=rx.welcome["token"], last_seq=rx_last) as rx2,
        Client(again.port, "tx", token=tx.welcome["token"], last_seq=tx_last) as tx2,
    ):
        assert rx2.welcome["resumed"] and tx2.welcome["resumed"]
        tx2.send_raw(_posts([i for i in range(1, POSTS + 1) if i not in acked] + [POSTS + 1]))
        rx2.expect(lambda f: f.get("text") == f"post {POSTS + 1}", timeout=10)
        seen = Counter(f["text"] for f in rx.seen + rx2.seen if f.get("type") == "msg")
    again.kill()
    twice = sum(1 for n in seen.values() if n > 1)
    never = sum(1 for i in range(1, POSTS + 1) if seen[f"post {i}"] == 0)
    return twice, never


def test_a_crash_of_the_main_process_never_delivers_a_post_twice(make_server: MakeServer, tmp_path: Path) -> None:
    for n in range(ROUNDS):
        twice, never = _crash_round(make_server, tmp_path / f"round{n}")
        assert never == 0, f"round {n}: {never} posts lost"  # resend after resume: nothing is lost
        assert twice == 0, f"round {n}: {twice} of {POSTS} posts delivered twice to a member"


# --- a refusal for a moment must not end a resumable session ----------------------------------------------------

REFUSALS = {
    "internal": "no worker available; try again in a moment",  # every worker down (e.g. --workers 1, a crash)
    "shutting_down": "server is shutting down",  # the reconnect lands as a restart begins
    "server_full": "server is full (2 connections)",  # someone took the slot in between
}


@pytest.mark.parametrize("code", sorted(REFUSALS))
def test_a_resuming_client_keeps_trying_a_server_that_refuses_it_for_a_moment(code: str) -> None:
    """A scripted server on 127.0.0.1 refuses the first reconnect exactly as the acceptor does (one fatal
    error frame, no greeting), then takes the next one: the client must resume, not give up."""
    attempts: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        attempts.append(len(attempts) + 1)
        n = len(attempts)
        try:
            if n == 2:
                writer.write(m.encode(m.error_frame(code, REFUSALS[code], fatal=True)))
                await writer.drain()
                return
            writer.write(m.encode(m.server_hello("scripted")))
            hello = json.loads(await reader.readline())
            welcome = {"type": "welcome", "nick": hello["nick"], "session": "s1", "token": "tok", "seq": 0,
                       "resumed": n > 1, "rooms": ["lobby"]}  # fmt: skip
            writer.write(m.encode(welcome))
            await writer.drain()
            if n > 1:
                await reader.read()  # stay until the client leaves
        finally:
            writer.close()  # the first connection drops at once: the client must reconnect

    async def scenario() -> tuple[str, list[str]]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        statuses: list[str] = []
        settled = asyncio.Event()  # connected after the third connection, or given up

        def on_status(status: str) -> None:
            statuses.append(status)
            if status == "closed" or (status == "connected" and len(attempts) >= 3):
                settled.set()

        client = ChatClient("127.0.0.1", port, "ann", on_status=on_status, give_up_after=10)
        try:
            await client.connect()
            with contextlib.suppress(TimeoutError):  # backoff: 0.2 s then 0.4 s, each +-50 %
                await asyncio.wait_for(settled.wait(), 8)
            return client.status, statuses
        finally:
            await client.close()
            server.close()
            await server.wait_closed()

    status, statuses = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert len(attempts) >= 3, f"the client stopped after {len(attempts)} connections: {statuses}"
    assert status == "connected", statuses


def test_a_worker_crash_with_a_single_worker_is_invisible_to_a_chat_client(make_server: MakeServer) -> None:
    """The real case behind the refusals above: with --workers 1 a reconnect lands while the replacement
    worker boots and is refused with "no worker available" (before the fix: 4 clients in 5 gave up)."""
    server = make_server("--resume-grace", "30", workers=1)

    async def scenario() -> list[tuple[str, bool, int | None]]:
        outcomes = []
        for trial in range(3):
            resumed: list[bool] = []
            settled = asyncio.Event()  # the second welcome (the resume), or the client gave up

            def on_frame(frame: Frame, resumed: list[bool] = resumed, settled: asyncio.Event = settled) -> None:
                if frame.get("type") == "welcome":
                    resumed.append(bool(frame.get("resumed")))
                    if len(resumed) >= 2:
                        settled.set()

            def on_status(status: str, settled: asyncio.Event = settled) -> None:
                if status == "closed":
                    settled.set()

            client = ChatClient("127.0.0.1", server.port, f"ann{trial}", on_frame=on_frame, on_status=on_status)
            try:
                await client.connect()
                [worker] = await asyncio.to_thread(server.worker_pids)
                os.kill(worker, signal.SIGKILL)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(settled.wait(), 10)
                rid = client.send(m.Msg("lobby", f"after crash {trial}"))
                acked = await client.wait_acked(5)
                outcomes.append((client.status, resumed[-1], rid if acked else None))
            finally:
                await client.close()
        return outcomes

    for status, resumed, acked_id in asyncio.run(asyncio.wait_for(scenario(), 60)):
        assert (status, resumed, acked_id) == ("connected", True, 1)


# The server, with its second Popen (the first respawn of a worker) failing as fork does under memory or
# process limits (EAGAIN). Run as `python -c FORK_FAILS_ONCE serve ...`.
FORK_FAILS_ONCE = """
import errno, subprocess, sys
real, calls = subprocess.Popen, []
def popen(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
    return real(*args, **kwargs)
subprocess.Popen = popen
from lanchat.cli import main
sys.argv[0] = "lanchat"
main()
"""


def test_a_worker_that_cannot_be_started_again_is_retried_and_the_server_still_stops(make_server: MakeServer) -> None:
    """A failed respawn used to end the supervisor for good: no worker ever again, detached sessions kept
    forever, and SIGTERM queued but never handled."""
    server = make_server(workers=1, launcher=("-c", FORK_FAILS_ONCE))
    (first,) = server.worker_pids()
    mark = server.mark()
    os.kill(first, signal.SIGKILL)
    server.wait_log(r"worker 0: cannot start a process \(.*Resource temporarily unavailable\); next try", start=mark)
    server.wait_log(r"worker 0 ready", start=mark)
    with Client(server.port, "after") as c:  # served by the replacement
        assert c.welcome["nick"] == "after"
    assert server.stop(signal.SIGTERM, timeout=10) == 0


def test_a_worker_killed_by_a_signal_without_a_name_is_replaced(make_server: MakeServer) -> None:
    """A real-time signal (SIGRTMIN+1) has no name in Python's enum: naming it for the log raised, and the
    slot was never given a new worker."""
    server = make_server(workers=1)
    (first,) = server.worker_pids()
    mark = server.mark()
    os.kill(first, signal.SIGRTMIN + 1)
    server.wait_log(rf"worker 0 was killed by signal {signal.SIGRTMIN + 1}; replacing it", start=mark)
    server.wait_log(r"worker 0 ready", start=mark)
    with Client(server.port, "after") as c:
        assert c.welcome["nick"] == "after"
