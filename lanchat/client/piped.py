"""Piped mode of `lanchat join` (stdin not a terminal): each stdin line is sent (slash commands are
interpreted), each event is printed as one line (one JSON object per line with --json). On stdin EOF
it exits only once the server has acknowledged every message it sent; with exit code 1 if any line was
refused (by the client or the server), so that a script can tell."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Final

from lanchat.client.connection import (
    EXIT_ERROR,
    EXIT_LOST,
    EXIT_OK,
    GOODBYE_LOST_NOTE,
    ChatClient,
    Relocator,
    on_hangup,
)
from lanchat.client.current import CurrentRoom
from lanchat.config import host_port
from lanchat.errors import ConnectError, RemoteProtocolError
from lanchat.protocol import messages as m
from lanchat.protocol.plain import CLIENT_HELP, LocalCommand, count_of, not_resumed, parse_command, render

SETTLE_ID: Final = m.MAX_ID  # the id of the last request (never one of our posts': they count from 1)
SETTLE_TIMEOUT: Final = 10.0  # seconds to wait for its answer before leaving anyway


async def _within(aw: Awaitable[Any], timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(aw, timeout)


def _stdin_lines(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
    """A thread, because stdin may be a pipe, a file or a socket, and only blocking reads work on all."""
    with contextlib.suppress(RuntimeError):  # the loop is closed: run_piped returned (a signal), nobody reads
        try:
            for number, line in enumerate(sys.stdin):
                if number == 0:  # a byte-order mark (Windows tools write one), as the server skips it: else a
                    line = line.removeprefix("\ufeff")  # first "/join ops" was posted as text to #lobby
                loop.call_soon_threadsafe(queue.put_nowait, line)
        except (OSError, ValueError):  # stdin failed or was closed: as its end
            pass
        loop.call_soon_threadsafe(queue.put_nowait, None)


async def run_piped(
    host: str, port: int, nick: str, room: str, *, json_output: bool, relocate: Relocator | None = None
) -> int:
    unhooks: list[Callable[[], None]] = []  # the signal handlers, put back as they were when we are done
    try:
        return await _run_piped(host, port, nick, room, json_output=json_output, unhooks=unhooks, relocate=relocate)
    finally:
        for unhook in unhooks:
            unhook()


async def _run_piped(
    host: str,
    port: int,
    nick: str,
    room: str,
    *,
    json_output: bool,
    unhooks: list[Callable[[], None]],
    relocate: Relocator | None,
) -> int:
    client: ChatClient
    reconnects: list[str] = []
    current = CurrentRoom(room)  # where text goes, as in the terminal UI
    refused: list[str] = []  # what the client or the server refused: the exit code says so
    by_server: list[str] = []  # those the server refused (with --json, error frames in the output)
    settled = asyncio.Event()  # the hub has answered everything sent before the last request
    terminated: list[int] = []  # the signal that ended us (SIGTERM, SIGHUP, SIGINT)
    closing: list[asyncio.Task[None]] = []  # its goodbye (a reference, or the task could be collected)
    line_of: dict[int, int] = {}  # request id -> the input line it came from, until answered
    held: list[tuple[int, str]] = []  # refusals of input lines, said once every line before them is answered
    new_session: list[str] = []  # the last welcome began a new session (the old one expired): why

    def refuse(number: int, text: str) -> None:
        """A refusal of input line ``number``, the client's or the server's: said in input order (the
        client's own come at once, the server's when it answers, acks of earlier lines after them)."""
        bisect.insort(held, (number, text))
        say_held()

    def say_held(*, all_of_them: bool = False) -> None:
        first_open = min(line_of.values(), default=None)  # the first line the server has not answered
        while held and (all_of_them or first_open is None or held[0][0] < first_open):
            print(held.pop(0)[1], file=sys.stderr, flush=True)

    def emit(text: str) -> None:
        try:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            pass

    def on_frame(frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "welcome":
            new_session[:] = [not_resumed(frame["resume_failed"])] if frame.get("resume_failed") else []
        if kind == "rooms" and frame.get("id") == SETTLE_ID:  # our own round trip at the end (below)
            settled.set()
            return
        rid = frame.get("id")
        final = kind == "ack" or (kind == "error" and frame.get("code") != m.Err.NOT_REGISTERED)  # as ClientState
        number = line_of.pop(rid, None) if final and type(rid) is int else None
        if kind == "welcome" and isinstance(upto := frame.get("last_id"), int):  # changes handled before a drop
            listed = frame.get("refused")
            undone: list[Any] = listed if isinstance(listed, list) else []  # (told next: not done)
            for done in [r for r in line_of if r <= upto and r not in client.state.outbox and r not in undone]:
                del line_of[done]  # get no answer now
        if kind == "error":
            current.refused(frame.get("code"), client.state.rooms, frame.get("request"))
            if client.state.registered and not frame.get("fatal"):  # a refusal of a line we sent (a fatal
                refused.append(str(frame.get("code")))  # one ends the connection: the reconnect says so)
                by_server.append(refused[-1])
        if json_output:  # the resume token is a bearer credential: scripts that log stdout must not keep it
            shown = {k: v for k, v in frame.items() if k != "token"} if kind == "welcome" else frame
            emit(json.dumps(shown, ensure_ascii=False))
            if held:  # the client's own refusals (on stderr), once the lines before them are answered
                say_held()
            return
        if kind == "server":
            return  # its hint is for people on nc/telnet
        text = render(frame, client.nick, client.nicks_had, client.session)
        if text is not None and kind == "error":  # errors go to stderr with the client's own (docs/client.md)
            if number is not None:
                refuse(number, f"lanchat: line {number}: {text}")
            else:
                print(f"lanchat: {text}", file=sys.stderr, flush=True)
        elif text is not None:
            emit(text)
        if held:  # an answer, or a welcome that settles what was sent before a drop, may release some
            say_held()

    def on_status(status: str) -> None:
        if status == "moved":  # (still reconnecting: to the address discovery found it at now)
            print(f"lanchat: the server is at {host_port(client.host, client.port)} now: connecting there",
                  file=sys.stderr, flush=True)  # fmt: skip
        elif status == "reconnecting":  # only changes after the first connect are news
            why = f" ({client.lost_reason})" if client.lost_reason else ""
            print(f"lanchat: reconnecting{why}", file=sys.stderr, flush=True)
        elif status == "connected" and reconnects:
            how = f"; {new_session[0]}: what was said meanwhile follows" if new_session else ""
            print(f"lanchat: connected again{how}", file=sys.stderr, flush=True)
        if status == "reconnecting":
            reconnects.append(status)

    client = ChatClient(host, port, nick, [room], on_frame=on_frame, on_status=on_status, relocate=relocate)
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        """SIGTERM, SIGHUP (the terminal or ssh session went away) or Ctrl-C: say goodbye, so that the nick is
        free at once instead of held for a reconnect that will never come; lines not acknowledged yet are
        dropped. (A second Ctrl-C does not come here: on_hangup ends the process at once.)"""
        if not terminated:
            terminated.append(signum)
            closing.append(loop.create_task(client.close()))

    async def signalled() -> int:
        """The exit after a signal: once its goodbye is done (the connection closes before it is: between
        reconnects it connects once more, and returning sooner would cancel that), with the note /quit
        gives if it found no server. The shell's convention for "killed by signal N"."""
        say_held(all_of_them=True)
        await asyncio.gather(*closing, return_exceptions=True)
        note_goodbye_lost()
        return 128 + terminated[0]

    def note_goodbye_lost() -> None:
        if client.goodbye_lost:
            print(f"lanchat: {GOODBYE_LOST_NOTE}", file=sys.stderr, flush=True)

    unhooks.append(on_hangup(loop, on_signal, interrupt=True))  # before connecting (the session starts there)
    try:
        await client.connect()
    except ConnectError as exc:
        if terminated:
            return await signalled()
        print(f"lanchat: {exc}", file=sys.stderr)
        return exc.exit_code
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

    async def lost(what: str) -> int:
        say_held(all_of_them=True)
        if terminated:
            return await signalled()
        print(f"lanchat: {what}", file=sys.stderr)
        return EXIT_LOST

    def not_sent(number: int, why: str) -> None:
        refused.append(why)
        refuse(number, f"lanchat: line {number} not sent: {why}")

    reason = ""
    number = 0  # of the stdin line, for the messages about it
    while True:
        getter = asyncio.ensure_future(queue.get())
        if not await before_closed(getter):
            return await lost(f"connection lost: {client.lost_reason}")
        line = getter.result()
        if line is None:
            break
        number += 1
        try:
            cmd = parse_command(line, current.room, current.rooms(client.state.rooms))
        except RemoteProtocolError as exc:
            not_sent(number, exc.message)
            continue
        if cmd is None:
            continue
        if isinstance(cmd, LocalCommand):
            if cmd.name == "switch":
                why = current.switch(cmd.arg, client.state.rooms)
                if why:
                    not_sent(number, why)
            elif json_output:  # stdout holds JSON objects only; the client's own words go to stderr
                print(CLIENT_HELP, file=sys.stderr, flush=True)
            else:
                emit(CLIENT_HELP)
            continue
        if isinstance(cmd, m.Quit):
            reason = cmd.reason
            break
        if isinstance(cmd, m.Msg | m.Action | m.PrivMsg) and not await before_closed(client.wait_room()):
            # a long input waits here for acks: the outbox holds OUTBOX_MAX at most
            return await lost(f"connection lost with {client.state.unacked} messages unsent")
        current.typed(cmd, client.state.rooms)
        try:
            rid = client.send(cmd)
            if rid is not None:
                line_of[rid] = number
        except RemoteProtocolError as exc:  # too long for this server, too many waiting: said; the next goes on
            current.not_sent(cmd)
            not_sent(number, exc.message)
    # EOF or /quit: everything typed must be acknowledged (or the connection given up) before we leave.
    if not await before_closed(client.wait_acked()):
        return await lost(f"connection lost with {client.state.unacked} messages unsent")
    # Acks cover messages only: a refused /part or /topic on the last line would come after we left (exit
    # code 0). The hub answers a connection's requests in order, so once it answers one more, every error
    # for what came before it is in.
    # Not while reconnecting with no line waiting for an answer, nor a question queued (a /who: no id, no
    # line_of): it would wait SETTLE_TIMEOUT in the queue for nothing (a /quit with the server down: 11.5 s).
    if client.status == "connected" or line_of or client.queued_requests:
        waiting = len(line_of) + client.queued_requests
        with contextlib.suppress(RemoteProtocolError):  # 1,000 commands waiting for a reconnect: none more
            client.send(m.Rooms(id=SETTLE_ID))
        if not await before_closed(_within(settled.wait(), SETTLE_TIMEOUT)) and terminated:
            return await signalled()
        if not settled.is_set() and client.status != "connected" and waiting:  # not back in time: what was
            # typed for it is not done, and a script must be able to tell (it exited 0, a review found)
            return await lost(f"connection lost with {count_of(waiting, 'command')} not answered")
    closed.cancel()
    say_held(all_of_them=True)
    await client.close(reason)
    note_goodbye_lost()
    if refused:
        where = "above"  # on stderr, as the client's own refusals always are
        if json_output and by_server:
            where = "the server's as error frames in the output" + (
                ", the client's above" if len(by_server) < len(refused) else ""
            )
        print(f"lanchat: {len(refused)} line(s) refused ({where})", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK
