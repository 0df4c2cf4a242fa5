"""Piped mode of `lanchat join` (stdin not a terminal): each stdin line is sent (slash commands are
interpreted), each event is printed as one line (one JSON object per line with --json). On stdin EOF
it exits only once the server has acknowledged every message it sent; with exit code 1 if any line was
refused (by the client or the server), so that a script can tell."""

from __future__ import annotations

import asyncio
import bisect
import codecs
import contextlib
import json
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Final

from lanchat.client.connection import (
    EXIT_ERROR,
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
            for number, line in enumerate(sys.stdin or ()):  # (None: closed at the start, `<&-`: ended)
                if number == 0:  # a byte-order mark (Windows tools write one), as the server skips it: else a
                    line = line.removeprefix("\ufeff")  # first "/join ops" was posted as text to #lobby
                loop.call_soon_threadsafe(queue.put_nowait, line)
        except (OSError, ValueError):  # stdin failed or was closed: as its end
            pass
        loop.call_soon_threadsafe(queue.put_nowait, None)


async def run_piped(
    host: str, port: int, nick: str, room: str, *, json_output: bool, relocate: Relocator | None = None
) -> int:
    """Piped mode (see the module's docstring) until stdin's end, a /quit or a signal: the exit code."""
    # A byte the locale cannot decode ended stdin, silently, with exit 0 (a review: a Latin-1 é in a UTF-8
    # locale); escaped, its line is refused and counted, and the rest is sent. A character the locale cannot
    # encode (an ASCII one) left its line out of stdout with a traceback: shown as ? instead.
    for stream, errors in ((sys.stdin, "surrogateescape"), (sys.stdout, "replace")):
        with contextlib.suppress(AttributeError, ValueError):  # (not a text file: a test's, or closed)
            stream.reconfigure(errors=errors)  # type: ignore[union-attr]
    session = _PipedSession(host, port, nick, room, json_output=json_output, relocate=relocate)
    try:
        return await session.run()
    finally:
        session.restore_signals()


def _emit(text: str) -> None:
    """One line of output (stdout): a reader that went away is no reason to stop."""
    if sys.stdout is None:  # (closed at the start, `>&-`: nobody reads)
        return
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        pass


class _PipedSession:
    """One run of piped mode: the connection, and what the run must remember about the input it sent.

    Stdin lines go out in ``run``; the server's frames come back through ``_on_frame`` and its status
    through ``_on_status`` (ChatClient's callbacks), and a signal through ``_on_signal``. Refusals of
    input lines are said in input order (``_refuse``), and the exit code says whether any line was
    refused, the connection was lost, or a signal ended the run. Made inside the running loop (whose
    tasks the signal handler starts)."""

    def __init__(
        self, host: str, port: int, nick: str, room: str, *, json_output: bool, relocate: Relocator | None
    ) -> None:
        self._json_output = json_output
        # --json escapes what stdout cannot take (a ? instead was lossy, without a sign: a review)
        self._ascii = codecs.lookup(getattr(sys.stdout, "encoding", None) or "utf-8").name != "utf-8"
        self._current = CurrentRoom(room)  # where text goes, as in the terminal UI
        self._refused: list[str] = []  # what the client or the server refused: the exit code says so
        self._by_server: list[str] = []  # those the server refused (with --json, error frames in the output)
        self._settled = asyncio.Event()  # the hub has answered everything sent before the last request
        self._connected = asyncio.Event()  # connected now (set and cleared by _on_status)
        self._line_of: dict[int, int] = {}  # request id -> the input line it came from, until answered
        self._held: list[tuple[int, str]] = []  # refusals of input lines, said once every line before them is answered
        self._new_session: str | None = None  # the last welcome began a new session (the old one expired): why
        self._reconnected = False  # a reconnect began since the first connect: a "connected" is news
        self._signum: int | None = None  # the signal that ended us (SIGTERM, SIGHUP, SIGINT)
        # The goodbye under way, a signal's or the end of the input's (a reference, or the task could be collected)
        self._goodbye: asyncio.Task[None] | None = None
        self._quit_reason = ""  # from /quit WHY: the others are told WHY
        self._unhook: Callable[[], None] | None = None  # puts the signal handlers back as they were
        self._closed: asyncio.Task[None] | None = None  # ends when the connection is given up (made once connected)
        self._client = ChatClient(
            host, port, nick, [room], on_frame=self._on_frame, on_status=self._on_status, relocate=relocate
        )
        self._loop = asyncio.get_running_loop()

    # --- the run ----------------------------------------------------------------------------------------------

    async def run(self) -> int:
        """Connect, send stdin's lines, and leave once they are answered: the exit code."""
        # The signals are ours before connecting: the session starts there
        self._unhook = on_hangup(self._loop, self._on_signal, interrupt=True)
        try:
            await self._client.connect()
        except ConnectError as exc:
            if self._signum is not None:
                return await self._signalled()
            print(f"lanchat: {exc}", file=sys.stderr)
            return exc.exit_code
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        threading.Thread(target=_stdin_lines, args=(self._loop, queue), daemon=True, name="stdin").start()
        self._closed = asyncio.create_task(self._client.wait_closed())
        lost = await self._send_input(queue)
        if lost is not None:
            return lost
        return await self._finish()

    def restore_signals(self) -> None:
        """Put the signal handlers back as they were, once the run is over (however it ended)."""
        if self._unhook is not None:
            self._unhook()

    async def _send_input(self, queue: asyncio.Queue[str | None]) -> int | None:
        """Send each stdin line, until its end or a /quit: None then, or the exit code if the connection
        was given up first."""
        number = 0  # of the stdin line, for the messages about it
        while True:
            getter = asyncio.ensure_future(queue.get())
            if not await self._before_closed(getter):
                return await self._lost(f"connection lost: {self._client.lost_reason}")
            line = getter.result()
            if line is None:
                return None
            number += 1
            cmd = self._command(number, line)
            if cmd is None:
                continue
            if isinstance(cmd, m.Quit):
                self._quit_reason = cmd.reason
                return None
            if not await self._send(number, cmd):
                return await self._lost(f"connection lost with {self._client.state.unacked} messages unsent")

    def _command(self, number: int, line: str) -> m.Request | None:
        """The request input line ``number`` asks for; None if there is none to send: an empty line, a
        line refused, or a command the client carries out itself (/switch, /help)."""
        try:
            cmd = parse_command(line, self._current.room, self._current.rooms(self._client.state.rooms))
        except RemoteProtocolError as exc:
            self._not_sent(number, exc.message)
            return None
        if isinstance(cmd, LocalCommand):
            self._run_locally(number, cmd)
            return None
        return cmd

    def _run_locally(self, number: int, cmd: LocalCommand) -> None:
        """/switch (refused, as a line not sent, if that room is not joined) or /help."""
        if cmd.name == "switch":
            why = self._current.switch(cmd.arg, self._client.state.rooms)
            if why:
                self._not_sent(number, why)
        elif self._json_output:  # stdout holds JSON objects only; the client's own words go to stderr
            print(CLIENT_HELP, file=sys.stderr, flush=True)
        else:
            _emit(CLIENT_HELP)

    async def _send(self, number: int, cmd: m.Request) -> bool:
        """Send ``cmd``, typed on input line ``number``; False if the connection was given up first."""
        # A long input waits here for acks: the outbox holds OUTBOX_MAX at most
        if isinstance(cmd, m.Msg | m.Action | m.PrivMsg) and not await self._before_closed(self._client.wait_room()):
            return False
        self._current.typed(cmd, self._client.state.rooms)
        try:
            rid = self._client.send(cmd)
        except RemoteProtocolError as exc:  # too long for this server, too many waiting: said; the next goes on
            self._current.not_sent(cmd)
            self._not_sent(number, exc.message)
        else:
            if rid is not None:
                self._line_of[rid] = number
        return True

    async def _finish(self) -> int:
        """After EOF or /quit: everything typed must be acknowledged (or the connection given up) before we
        leave. Then the goodbye, and the exit code."""
        if not await self._before_closed(self._client.wait_acked()):
            return await self._lost(f"connection lost with {self._client.state.unacked} messages unsent")
        lost = await self._settle()
        if lost is not None:
            return lost
        if self._signum is not None:  # a signal as the last answer came: its goodbye is under way
            return await self._signalled()
        assert self._closed is not None
        self._closed.cancel()
        self._say_held(all_of_them=True)
        self._goodbye = self._loop.create_task(self._client.close(self._quit_reason))  # (a signal now waits for it)
        await self._goodbye
        if self._signum is not None:  # a signal during the goodbye: not a second goodbye, but its exit code
            return await self._signalled()
        self._note_goodbye_lost()
        return self._exit_code()

    async def _settle(self) -> int | None:
        """Acks cover messages only: a refused /part or /topic on the last line would come after we left (exit
        code 0). The hub answers a connection's requests in order, so once it answers one more, every error
        for what came before it is in. None once it did (or we leave anyway), else the exit code."""
        client = self._client
        # Not while reconnecting with no line waiting for an answer, nor a question queued (a /who: no id, no
        # line_of): it would wait SETTLE_TIMEOUT in the queue for nothing (a /quit with the server down: 11.5 s).
        if not (client.status == "connected" or self._line_of or client.queued_requests):
            return None
        waiting = len(self._line_of) + client.queued_requests
        deadline = self._loop.time() + SETTLE_TIMEOUT
        asked = True
        try:
            client.send(m.Rooms(id=SETTLE_ID))
        except RemoteProtocolError:  # 1,000 commands waiting for a reconnect: asked once they are sent
            back = _within(self._connected.wait(), SETTLE_TIMEOUT)
            if not await self._before_closed(back) and self._signum is not None:
                return await self._signalled()
            # The queue went out with the welcome: written now, or queued if the connection dropped again at once
            try:  # (and asked again after a drop, as any request)
                client.send(m.Rooms(id=SETTLE_ID))
            except RemoteProtocolError:  # not back in time
                asked = False
        settled = _within(self._settled.wait(), max(0.0, deadline - self._loop.time()))
        if not await self._before_closed(settled) and self._signum is not None:
            return await self._signalled()
        if not self._settled.is_set() and (client.status != "connected" or not asked) and waiting:  # not back in
            # time: what was typed for it is not done, and a script must be able to tell (it exited 0, reviews
            # found: also when the server came back in the very turn the time ran out, never asked)
            return await self._lost(f"connection lost with {count_of(waiting, 'command')} not answered")
        return None

    def _exit_code(self) -> int:
        """EXIT_ERROR if any line was refused (said once more, with where the refusals are), else EXIT_OK."""
        if not self._refused:
            return EXIT_OK
        where = "above"  # on stderr, as the client's own refusals always are
        if self._json_output and self._by_server:
            where = "the server's as error frames in the output" + (
                ", the client's above" if len(self._by_server) < len(self._refused) else ""
            )
        print(f"lanchat: {len(self._refused)} line(s) refused ({where})", file=sys.stderr)
        return EXIT_ERROR

    async def _before_closed(self, aw: Awaitable[Any]) -> bool:
        """Await ``aw`` unless the connection is given up first."""
        assert self._closed is not None  # (made once connected, before anything waits)
        task = asyncio.ensure_future(aw)
        await asyncio.wait({task, self._closed}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return True
        task.cancel()
        return False

    async def _lost(self, what: str) -> int:
        """The exit when the connection is lost (or a signal's goodbye ended it)."""
        self._say_held(all_of_them=True)
        if self._signum is not None:
            return await self._signalled()
        print(f"lanchat: {what}", file=sys.stderr)
        return self._client.lost_exit

    # --- signals ----------------------------------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        """SIGTERM, SIGHUP (the terminal or ssh session went away) or Ctrl-C: say goodbye, so that the nick is
        free at once instead of held for a reconnect that will never come; lines not acknowledged yet are
        dropped. (A second Ctrl-C does not come here: on_hangup ends the process at once.)"""
        if self._signum is None:
            self._signum = signum
            if self._goodbye is None:  # (else the goodbye of the end of the input is under way)
                self._goodbye = self._loop.create_task(self._client.close())

    async def _signalled(self) -> int:
        """The exit after a signal: once its goodbye is done (the connection closes before it is: between
        reconnects it connects once more, and returning sooner would cancel that), with the note /quit
        gives if it found no server. The shell's convention for "killed by signal N"."""
        assert self._signum is not None and self._goodbye is not None  # (set by _on_signal, or by _finish)
        self._say_held(all_of_them=True)
        await asyncio.gather(self._goodbye, return_exceptions=True)
        self._note_goodbye_lost()
        return 128 + self._signum

    def _note_goodbye_lost(self) -> None:
        """What /quit says too when the goodbye found no server: the nick may stay taken a while."""
        if self._client.goodbye_lost:
            print(f"lanchat: {GOODBYE_LOST_NOTE}", file=sys.stderr, flush=True)

    # --- refusals of input lines ------------------------------------------------------------------------------

    def _not_sent(self, number: int, why: str) -> None:
        """The client's own refusal of input line ``number``."""
        self._refused.append(why)
        self._refuse(number, f"lanchat: line {number} not sent: {why}")

    def _refuse(self, number: int, text: str) -> None:
        """A refusal of input line ``number``, the client's or the server's: said in input order (the
        client's own come at once, the server's when it answers, acks of earlier lines after them)."""
        bisect.insort(self._held, (number, text))
        self._say_held()

    def _say_held(self, *, all_of_them: bool = False) -> None:
        """Say the refusals held for lines before the first the server has not answered (or all of them)."""
        first_open = min(self._line_of.values(), default=None)  # the first line the server has not answered
        while self._held and (all_of_them or first_open is None or self._held[0][0] < first_open):
            print(self._held.pop(0)[1], file=sys.stderr, flush=True)

    # --- ChatClient's callbacks -------------------------------------------------------------------------------

    def _on_frame(self, frame: dict[str, Any]) -> None:
        """Each frame from the server: shown (a JSON object or a line), and what it answers noted."""
        kind = frame.get("type")
        if kind == "welcome":
            self._new_session = not_resumed(frame["resume_failed"]) if frame.get("resume_failed") else None
        if frame.get("id") == SETTLE_ID and kind in ("rooms", "error"):  # our own round trip at the end (_settle):
            self._settled.set()  # answered, or refused (busy): either way after everything sent before it
            return
        number = self._answered(frame)
        if kind == "error":
            self._on_error(frame)
        if self._json_output:
            self._show_json(frame)
        else:
            self._show_plain(frame, number)

    def _answered(self, frame: dict[str, Any]) -> int | None:
        """The input line ``frame`` answers (it is no longer open), if any. A welcome closes the lines whose
        changes the server handled before a drop: their answers do not come now."""
        kind, rid = frame.get("type"), frame.get("id")
        final = kind == "ack" or (kind == "error" and frame.get("code") != m.Err.NOT_REGISTERED)  # as ClientState
        number = self._line_of.pop(rid, None) if final and type(rid) is int else None
        if kind == "welcome" and isinstance(upto := frame.get("last_id"), int):  # changes handled before a drop
            listed = frame.get("refused")
            undone: list[Any] = listed if isinstance(listed, list) else []  # (told next: not done)
            outbox = self._client.state.outbox
            for done in [r for r in self._line_of if r <= upto and r not in outbox and r not in undone]:
                del self._line_of[done]  # get no answer now
        return number

    def _on_error(self, frame: dict[str, Any]) -> None:
        """An error frame: the current room follows it, and a refusal counts in the exit code."""
        state = self._client.state
        self._current.refused(frame.get("code"), state.rooms, frame.get("request"))
        if state.registered and not frame.get("fatal"):  # a refusal of a line we sent (a fatal one ends the
            self._refused.append(str(frame.get("code")))  # connection: the reconnect says so)
            self._by_server.append(self._refused[-1])

    def _show_json(self, frame: dict[str, Any]) -> None:
        # The resume token is a bearer credential: scripts that log stdout must not keep it
        shown = {k: v for k, v in frame.items() if k != "token"} if frame.get("type") == "welcome" else frame
        _emit(json.dumps(shown, ensure_ascii=self._ascii))
        if self._held:  # the client's own refusals (on stderr), once the lines before them are answered
            self._say_held()

    def _show_plain(self, frame: dict[str, Any], number: int | None) -> None:
        """``frame`` as a line (``number``: the input line it answers, if any)."""
        kind = frame.get("type")
        if kind == "server":
            return  # its hint is for people on nc/telnet
        client = self._client
        text = render(frame, client.nick, client.nicks_had, client.session)
        if text is not None and kind == "error":  # errors go to stderr with the client's own (docs/client.md)
            if number is not None:
                self._refuse(number, f"lanchat: line {number}: {text}")
            else:
                print(f"lanchat: {text}", file=sys.stderr, flush=True)
        elif text is not None:
            _emit(text)
        if self._held:  # an answer, or a welcome that settles what was sent before a drop, may release some
            self._say_held()

    def _on_status(self, status: str) -> None:
        """The connection's changes after the first connect, said on stderr."""
        client = self._client
        if status == "moved":  # (still reconnecting: to the address discovery found it at now)
            print(f"lanchat: the server is at {host_port(client.host, client.port)} now: connecting there",
                  file=sys.stderr, flush=True)  # fmt: skip
        elif status == "reconnecting":  # only changes after the first connect are news
            why = f" ({client.lost_reason})" if client.lost_reason else ""
            print(f"lanchat: reconnecting{why}", file=sys.stderr, flush=True)
        elif status == "connected" and self._reconnected:
            how = f"; {self._new_session}: what was said meanwhile follows" if self._new_session is not None else ""
            print(f"lanchat: connected again{how}", file=sys.stderr, flush=True)
        if status == "reconnecting":
            self._reconnected = True
        if status == "connected":
            self._connected.set()
        else:
            self._connected.clear()
