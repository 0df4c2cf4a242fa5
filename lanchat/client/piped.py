"""Piped mode of `lanchat join` (stdin not a terminal): each stdin line is sent (slash commands are
interpreted), each event is printed as one line (one JSON object per line with --json). On stdin EOF
it exits only once the server has acknowledged every message it sent."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from typing import Any

from lanchat.client.connection import EXIT_LOST, EXIT_OK, ChatClient
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

    def emit(text: str) -> None:
        try:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            pass

    def on_frame(frame: dict[str, Any]) -> None:
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
    current: str | None = room
    closed = asyncio.create_task(client.wait_closed())
    while True:
        getter = asyncio.create_task(queue.get())
        await asyncio.wait({getter, closed}, return_when=asyncio.FIRST_COMPLETED)
        if not getter.done():
            getter.cancel()
            print(f"lanchat: connection lost: {client.lost_reason}", file=sys.stderr)
            return EXIT_LOST
        line = getter.result()
        if line is None:
            break
        try:
            cmd = parse_command(line, current)
        except RemoteProtocolError as exc:
            print(f"lanchat: {exc.message}", file=sys.stderr)
            continue
        if cmd is None:
            continue
        if isinstance(cmd, LocalCommand):
            if cmd.name == "switch" and cmd.arg:
                current = cmd.arg
            else:
                emit(HELP)
            continue
        if isinstance(cmd, m.Quit):
            break
        if isinstance(cmd, m.Join):
            current = cmd.room
        elif isinstance(cmd, m.Part) and cmd.room == current:
            others = [r for r in client.state.rooms if r != current]
            current = others[-1] if others else None
        client.send(cmd)
    # EOF: everything typed must be acknowledged (or the connection given up) before we leave.
    acked = asyncio.create_task(client.wait_acked())
    await asyncio.wait({acked, closed}, return_when=asyncio.FIRST_COMPLETED)
    if not acked.done():
        acked.cancel()
        print(f"lanchat: connection lost with {client.state.unacked} messages unsent", file=sys.stderr)
        return EXIT_LOST
    closed.cancel()
    await client.close()
    return EXIT_OK
