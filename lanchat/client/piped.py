"""Piped mode of `lanchat join` (stdin not a terminal): each stdin line is sent (slash commands are
interpreted), each event is printed as one line (one JSON object per line with --json). On stdin EOF
it exits only once the server has acknowledged every message it sent."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Awaitable
from typing import Any

from lanchat.client.connection import EXIT_LOST, EXIT_OK, ChatClient
from lanchat.client.current import CurrentRoom
from lanchat.errors import ConnectError, RemoteProtocolError
from lanchat.protocol import messages as m
from lanchat.protocol.plain import HELP, LocalCommand, parse_command, render


def _stdin_lines(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
    """A thread, because stdin may be a pipe, a file or a socket, and only blocking reads work on all."""
    try:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line)
    except (OSError, ValueError):
        pass
    loop.call_soon_threadsafe(queue.put_nowait, None)


async def run_piped(host: str, port: int, nick: str, room: str, *, json_output: bool) -> int:
    client: ChatClient
    reconnects: list[str] = []
    current = CurrentRoom(room)  # where text goes, as in the terminal UI

    def emit(text: str) -> None:
        try:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            pass

    def on_frame(frame: dict[str, Any]) -> None:
        if frame.get("type") == "error":
            current.refused(frame.get("code"), client.state.rooms)
        if json_output:
            emit(json.dumps(frame, ensure_ascii=False))
        else:
            text = render(frame, client.nick)
            if text is not None:
                emit(text)

    def on_status(status: str) -> None:
        if status == "reconnecting":  # only changes after the first connect are news
            why = f" ({client.lost_reason})" if client.lost_reason else ""
            print(f"lanchat: reconnecting{why}", file=sys.stderr, flush=True)
        elif status == "connected" and reconnects:
            print("lanchat: connected again", file=sys.stderr, flush=True)
        if status == "reconnecting":
            reconnects.append(status)

    client = ChatClient(host, port, nick, [room], on_frame=on_frame, on_status=on_status)
    try:
        await client.connect()
    except ConnectError as exc:
        print(f"lanchat: {exc}", file=sys.stderr)
        return exc.exit_code
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    threading.Thread(target=_stdin_lines, args=(loop, queue), daemon=True, name="stdin").start()
    closed = asyncio.create_task(client.wait_closed())

    async def before_closed(aw: Awaitable[Any]) -> bool:
        """Await ``aw`` unless the connection is given up first."""
        task = asyncio.ensure_future(aw)
        await asyncio.wait({task, closed}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return True
        task.cancel()
        return False

    reason = ""
    while True:
        getter = asyncio.ensure_future(queue.get())
        if not await before_closed(getter):
            print(f"lanchat: connection lost: {client.lost_reason}", file=sys.stderr)
            return EXIT_LOST
        line = getter.result()
        if line is None:
            break
        try:
            cmd = parse_command(line, current.room)
        except RemoteProtocolError as exc:
            print(f"lanchat: {exc.message}", file=sys.stderr)
            continue
        if cmd is None:
            continue
        if isinstance(cmd, LocalCommand):
            if cmd.name == "switch":
                refused = current.switch(cmd.arg, client.state.rooms)
                if refused:
                    print(f"lanchat: {refused}", file=sys.stderr)
            else:
                emit(HELP)
            continue
        if isinstance(cmd, m.Quit):
            reason = cmd.reason
            break
        if isinstance(cmd, m.Msg | m.Action | m.PrivMsg) and not await before_closed(client.wait_room()):
            print(f"lanchat: connection lost with {client.state.unacked} messages unsent", file=sys.stderr)
            return EXIT_LOST  # a long input waits here for acks: the outbox holds OUTBOX_MAX at most
        current.typed(cmd, client.state.rooms)
        try:
            client.send(cmd)
        except RemoteProtocolError as exc:  # too long for this server: said, and the next line goes on
            print(f"lanchat: not sent: {exc.message}", file=sys.stderr)
    # EOF or /quit: everything typed must be acknowledged (or the connection given up) before we leave.
    if not await before_closed(client.wait_acked()):
        print(f"lanchat: connection lost with {client.state.unacked} messages unsent", file=sys.stderr)
        return EXIT_LOST
    closed.cancel()
    await client.close(reason)
    return EXIT_OK
