"""One connection object for every face of the client (terminal UI, piped mode, benchmarks):
connect, hello, keepalive, and after a drop: reconnect with capped exponential backoff and jitter,
resume the session, resend what was not acknowledged. The sans-IO ClientState holds the logic.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import random
import re
import signal
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from itertools import count, islice
from typing import Any, Final

from lanchat import const
from lanchat.config import host_port, stop_signals
from lanchat.errors import ConnectError, RemoteProtocolError
from lanchat.protocol import messages as m
from lanchat.protocol.client_conn import OUTBOX_MAX, ClientState, NotLanchat, server_frame
from lanchat.protocol.framing import FRAME_TOO_LONG

log = logging.getLogger("lanchat.client")

# Exit codes of `lanchat join` (documented in docs/client.md).
EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2  # bad address or option (as typer's own usage errors)
EXIT_UNREACHABLE: Final = 3  # no connection to the server (refused, timeout, bad address)
EXIT_NICK: Final = 4  # nick taken or invalid
EXIT_SEVERAL: Final = 5  # discovery found several servers and there is no terminal to choose
EXIT_NONE_FOUND: Final = 6  # discovery found no server
EXIT_LOST: Final = 7  # the connection was lost and could not be resumed in time

# Said when a quit found no server (between reconnects): the user's next `lanchat join` would be refused
GOODBYE_LOST_NOTE: Final = (
    "the server did not answer the goodbye (unreachable, or busy): it may keep your nick for its resume "
    "grace (60 s by default) before anyone, you included, can take it again"
)

# Refusals that say "not now" (full, restarting, no worker ready): a reconnecting client keeps trying.
_REFUSED_FOR_NOW: Final = frozenset({m.Err.SERVER_FULL, m.Err.TOO_MANY_FROM_IP, m.Err.SHUTTING_DOWN, m.Err.INTERNAL})
_ERRNO_RE: Final = re.compile(r"\[Errno (-?\d+)\]")
QUEUED_MAX: Final = 1000  # non-post requests (joins, who, ...) held while reconnecting
SAVE_INTERVAL: Final = 1.0  # seconds from events coming to the state's save (a kill loses at most this)

FrameHandler = Callable[[dict[str, Any]], None]
StateHandler = Callable[[str], None]


def fallback_nick(nick: str, attempt: int) -> str:
    """The nick to try after ``nick`` was taken ``attempt`` times on a reconnect: the attempt-th of nick_,
    nick_2, nick_3, ... (each cut to fit NICK_MAX) that differs from ``nick`` itself: a full-length nick
    ending in _ would otherwise come back unchanged, and the client would ask for the same nick again."""
    candidates = (nick[: const.NICK_MAX - len(sfx)] + sfx for sfx in ("_" if k == 1 else f"_{k}" for k in count(1)))
    return next(islice((c for c in candidates if c != nick), max(0, attempt - 1), None))


# Where the server is now: (host, port), or None if it cannot be found (see ChatClient's ``relocate``).
Relocator = Callable[[], Awaitable[tuple[str, int] | None]]
RTT_COUNTED: Final = 3.0  # seconds of a round trip counted at most in the goodbye's waits
RELOCATE_AFTER: Final = 3.0  # seconds of failed reconnects before the server is looked for elsewhere (and between)
MAX_NICK_FALLBACKS: Final = 50  # nick_, nick_2 ... tried on one reconnect's connection before the next try


class ChatClient:
    """A resumable chat connection. ``status`` is connecting | connected | reconnecting | closed."""

    def __init__(
        self,
        host: str,
        port: int,
        nick: str,
        rooms: list[str] | tuple[str, ...] = (const.DEFAULT_ROOM,),
        *,
        on_frame: FrameHandler | None = None,
        on_status: StateHandler | None = None,
        give_up_after: float = const.RECONNECT_GIVE_UP,
        relocate: Relocator | None = None,
        saver: Callable[[ClientState], None] | None = None,
    ) -> None:
        """``relocate``: where the server is now (discovery, by the id of the server found at the start), or
        None; asked while reconnecting fails (a server restarted on another port, or renumbered by DHCP).
        A move is told as the status ``moved`` (``host`` and ``port`` are the new address).

        ``saver``: keeps the state a later run needs to resume the session (saved.SessionFile): called
        before each hello (its attempt), at each welcome, and SAVE_INTERVAL after events came."""
        self.host = host
        self.port = port
        self.relocate = relocate
        self.state = ClientState(nick, rooms)
        self.on_frame = on_frame or (lambda frame: None)
        self.on_status = on_status or (lambda status: None)
        self.give_up_after = give_up_after
        self.status = "connecting"
        self.server_name = ""
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        # What was typed while not connected, in order: request lines, and the ids of posts (their lines
        # come from the outbox then, unless acknowledged meanwhile). A join typed before a message to that
        # room must reach the server first, or the message would be refused as not in the room.
        self._queued: list[bytes | int] = []
        self._queued_requests = 0
        self._nick_attempts = 0  # nick_taken answers to this reconnect's hellos so far
        self._wanted_nick = nick
        self._acked = asyncio.Event()
        self._acked.set()
        self._room = asyncio.Event()  # set while the outbox can take another post (see wait_room)
        self._room.set()
        self._closing = False
        self._connecting = False  # connect() is reading the first welcome: nobody else may read
        self._server_closed = False  # the connection ended by the server's close, not a reset or our own
        self._last_rx = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self.lost_reason = ""
        self.lost_exit = EXIT_LOST  # the exit code when reconnecting is given up (lost_reason says why)
        self.goodbye_lost = False  # a quit between reconnects the server did not confirm: it may hold our nick
        # The last hello's round trip to its welcome (seconds): the goodbye's waits grow with it (a link with a
        # round trip of 1.1 s made every clean quit look lost: the server's close came after GOODBYE_LINGER).
        self.rtt = -1.0  # (none yet: the waits count 0)
        self._stay_away = False  # a bye said reconnect: false (the session was taken over elsewhere)
        self._welcomed_at = 0.0  # monotonic time of the last welcome
        self._flap_delay = const.RECONNECT_MIN  # the backoff's next delay if that connection ends too soon
        self.saver = saver
        self._save_due: asyncio.TimerHandle | None = None

    # --- public API ----------------------------------------------------------------------------------------

    @property
    def queued_requests(self) -> int:
        """Requests other than posts typed while not connected, waiting for the next connection."""
        return self._queued_requests

    @property
    def nick(self) -> str:
        return self.state.info.nick

    @property
    def nicks_had(self) -> dict[str, int]:
        """The nicks (nick_key) this client has had (plain.sent_by_me)."""
        return self.state.info.had

    @property
    def session(self) -> str:
        """The session's id, from the last welcome (plain.sent_by_me)."""
        return self.state.info.session

    async def connect(self) -> None:
        """First connection. Raises ConnectError (with the CLI exit code) if it cannot register."""
        self._connecting = True
        try:
            await self._connect_once(first=True)
        finally:
            self._connecting = False
        if self._closing:  # close() came while connecting (a SIGTERM): say goodbye now that we can
            await self.close()
            raise ConnectError("closed while connecting", EXIT_ERROR)
        self._task = asyncio.create_task(self._run())

    def send(self, req: m.Request) -> int | None:
        """Send a request; posts and changes (joins, parts, nick and topic changes) get an id and survive
        reconnects until acknowledged. Returns the id (None for questions).
        Raises RemoteProtocolError when it cannot be kept (outbox full, QUEUED_MAX commands waiting, a line
        longer than the server takes)."""
        if isinstance(req, m.Msg | m.Action | m.PrivMsg):
            rid, line = self.state.post(req)
            self._acked.clear()
            if self.state.unacked >= OUTBOX_MAX:
                self._room.clear()
            if self.status == "connected":
                self._write(line)
            else:
                self._queued.append(rid)
            return rid
        if self.status != "connected" and self._queued_requests >= QUEUED_MAX:
            raise RemoteProtocolError("queue_full", f"{QUEUED_MAX} commands are waiting to be sent already")
        line = self.state.request(req)
        if self.status == "connected":
            self._write(line)
            self.state.sent(line)
        else:
            self._queued.append(line)
            self._queued_requests += 1
        return self.state.last_change_id if m.is_change(req) else None

    @property
    def never_sent(self) -> int:
        """Posts typed while disconnected and not written since: a goodbye now drops them unsent (the
        goodbye's own connection carries nothing else)."""
        return sum(1 for item in self._queued if isinstance(item, int) and item in self.state.outbox)

    async def wait_acked(self, timeout: float | None = None) -> bool:
        """Wait until the server acknowledged every post (what piped mode does before exiting)."""
        try:
            await asyncio.wait_for(self._acked.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def wait_room(self) -> None:
        """Wait until the outbox can take another post (it holds OUTBOX_MAX unacknowledged ones at most):
        a script piping a long file in waits here for acks instead of being refused."""
        await self._room.wait()

    async def wait_closed(self) -> None:
        """Until the connection is given up (or closed). Cancelling the wait leaves the connection be."""
        if self._task is not None:
            await asyncio.wait({self._task})

    async def close(self, reason: str = "") -> None:
        """Say goodbye (ends the session at once) and close.

        The quit queues behind whatever was sent before it, and the server reads it once it has handled
        those (at its rate limit). Until it closes the connection we keep reading: a socket closed with
        unread input is reset, and the reset throws away what the server had not read yet, the quit with
        it (the session would be held for --resume-grace). A server that has not closed within
        GOODBYE_LINGER gets the quit on a new connection instead, and what it had not read is dropped."""
        self._closing = True
        self._cancel_save()  # (the caller decides what becomes of the saved state now)
        quit_line = m.encode({"type": "quit", "reason": reason} if reason else {"type": "quit"})
        writer = self._writer
        said = False
        if writer is not None and self._connecting:  # a signal while connect() waits for the welcome: the
            self._write(quit_line)  # hello and the quit go with a plain close (nothing queued behind them),
            said = True  # and connect() then fails at once instead of waiting for its timeout
        elif writer is not None:  # connected, or a reconnect's hello is out: the server has (or will have) a session
            self._write(quit_line)
            said = await self._linger()
            if not said:
                writer.transport.abort()
        self._drop_connection()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if not said and self.state.info.token is not None:  # between reconnects, or not read in time
            self.goodbye_lost = not await self._goodbye_from_afar(quit_line)
        self._set_status("closed")

    async def _linger(self) -> bool:
        """After the quit: True once the server closed the connection, frames delivered meanwhile as usual
        (the acks of the last posts). False if it did not within GOODBYE_LINGER, or reset it."""
        task = self._task
        self._server_closed = False
        try:
            async with asyncio.timeout(const.GOODBYE_LINGER + 2 * max(self.rtt, 0.0)):
                if task is not None and task is not asyncio.current_task():
                    await asyncio.wait({task})  # _run reads on, and ends at the server's close
                elif self._reader is not None:  # connect()'s own close, after the welcome: nobody reads yet
                    await self._read_loop()
        except (TimeoutError, OSError, ConnectionError):
            return False
        return self._server_closed

    async def _goodbye_from_afar(self, quit_line: bytes) -> bool:
        """Resume the session only to end it: else the server holds the nick for --resume-grace and the
        user's next `lanchat join` is refused. One short try (GOODBYE_TIMEOUT); True once the server closed
        the connection without an error (its worker closes it on the quit), False if it did not (no
        server, no answer in time, or a refusal: the front end tells the user the nick may stay taken)."""
        head, done = b"", False
        try:
            # (3 round trips: the connect, the hello and quit, the close)
            async with asyncio.timeout(const.GOODBYE_TIMEOUT + 3 * max(self.rtt, 0.0)):
                reader, writer = await asyncio.open_connection(self.host, self.port)
                try:
                    # No rooms: if the session expired meanwhile, the new one must not join and quit them
                    writer.write(self.state.hello(rooms=[]) + quit_line)
                    while data := await reader.read(65536):  # until the server closes: the quit was handled
                        head = head if len(head) > 65536 else head + data
                    done = True
                finally:
                    writer.close()
        except (OSError, TimeoutError, UnicodeError):
            pass
        return done and b'"type":"error"' not in head

    # --- connection lifecycle ------------------------------------------------------------------------------

    async def _connect_once(self, *, first: bool) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, limit=1 << 20), const.CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError, UnicodeError) as exc:  # UnicodeError: a name that cannot be one ("a..b")
            reason = unreachable_reason(exc)
            if first and reason == "connection refused":  # a host joined without its server's port, maybe
                reason += " (hint: `lanchat discover` lists the servers and their ports)"
            raise ConnectError(f"cannot reach {host_port(self.host, self.port)}: {reason}", EXIT_UNREACHABLE) from None
        self._reader, self._writer = reader, writer
        writer.write(self._hello())
        asked = time.monotonic()  # the hello's round trip to the welcome: self.rtt
        deadline = time.monotonic() + const.CONNECT_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:  # (bytes that keep coming, a line without its end, are no welcome either)
                    raise TimeoutError
                data = await asyncio.wait_for(reader.read(65536), remaining)
            except (OSError, TimeoutError) as exc:
                self._drop_connection(reset=True)
                where, why = host_port(self.host, self.port), unreachable_reason(exc, const.CONNECT_TIMEOUT)
                raise ConnectError(f"no welcome from {where}: {why}", EXIT_UNREACHABLE) from None
            if not data:
                self._drop_connection()
                raise ConnectError(f"{host_port(self.host, self.port)} closed the connection", EXIT_UNREACHABLE)
            self._last_rx = time.monotonic()
            welcomed = False
            try:
                frames = self.state.receive_data(data)
            except NotLanchat as exc:  # say so now, rather than "no welcome" after the timeout
                self._drop_connection()
                raise ConnectError(f"{host_port(self.host, self.port)} {exc}", EXIT_UNREACHABLE) from None
            for frame in frames:
                kind = frame.get("type")
                if kind == "server":
                    self.server_name = str(frame.get("name", ""))
                if kind == "error" and not self.state.registered:
                    code = frame.get("code")
                    code = code if isinstance(code, str) else ""  # (a list in a broken server's frame: unhashable)
                    # The nick held by someone else after a drop: nick_, nick_2, ... A nick this server refuses
                    # (an upgrade's stricter rules) is refused in every fallback: 269 hellos in 10 s, for good
                    # (a review). It ends the client, as at the first connect.
                    if code == m.Err.NICK_TAKEN and not first and self._nick_attempts < MAX_NICK_FALLBACKS:
                        if not self._nick_attempts:  # what the user had; every fallback derives from it
                            self._wanted_nick = self.state.info.nick
                        self._nick_attempts += 1
                        self.state.info.nick = fallback_nick(self._wanted_nick, self._nick_attempts)
                        writer.write(self._hello())
                        asked = time.monotonic()
                        self._deliver(frame)
                        continue
                    self._drop_connection()
                    hint = ""
                    final = False
                    if code in (m.Err.NICK_TAKEN, m.Err.BAD_NICK):
                        exit_code = EXIT_NICK
                        final = code == m.Err.BAD_NICK  # (another try cannot make the nick acceptable)
                        hint = "; choose another with --nick NAME"  # (a shared lab login: the nick is its name)
                    elif code in _REFUSED_FOR_NOW:  # the server is there but cannot take us yet: retry
                        exit_code = EXIT_UNREACHABLE
                    else:
                        exit_code = EXIT_ERROR
                    raise ConnectError(str(frame.get("message", code)) + hint, exit_code, final=final)
                if kind == "welcome":
                    welcomed = True
                    # the least seen: a server busy at one hello (or just started) must not stretch every wait
                    took = min(time.monotonic() - asked, RTT_COUNTED)
                    self.rtt = took if self.rtt < 0 else min(self.rtt, took)
                self._deliver(frame)
            if welcomed:
                break
        self._nick_attempts = 0
        self._welcomed_at = time.monotonic()
        if self._closing:  # close() came meanwhile, and its quit is on the wire already: nothing may follow it
            return
        queued, self._queued, self._queued_requests = self._queued, [], 0
        typed_offline = {item for item in queued if isinstance(item, int)}
        # First what was sent before the drop, in the order typed: the joins and parts the server did not
        # handle, and every post not acknowledged (those it handled are acked again); then what was typed since.
        resend = self.state.unconfirmed()
        resend += ((rid, self.state.post_line(rid) or b"") for rid in self.state.outbox if rid not in typed_offline)
        # Through _write, which skips a transport already closing: the server may close at once (its worker
        # killed), and asyncio warns on stderr (a stray line among the chat's) at the 5th write after that
        self._write(b"".join(line for _, line in sorted(resend)))
        limit = self.state.max_frame
        for item in queued:
            line = self.state.post_line(item) if isinstance(item, int) else item
            # (a change too long for this server was refused with the welcome, as a post is: _too_long_now)
            if line and (limit is None or len(line) - 1 <= limit):
                self._write(line)
                self.state.sent(line)
        for line in self.state.take_due():  # (the replay came with the welcome)
            self._write(line)
        if not self.state.outbox:
            self._acked.set()
        if self.state.unacked < OUTBOX_MAX:
            self._room.set()
        self.lost_reason = ""  # the next drop gives its own reason, not one of an earlier outage
        self.save()
        self._set_status("connected")

    async def _run(self) -> None:
        while True:  # a reconnect that close() came during reads on too: the quit went out on it
            try:
                await self._read_loop()
            except (OSError, ConnectionError) as exc:
                self.lost_reason = unreachable_reason(exc)
            if self._closing:
                break
            self._drop_connection()
            # Another connection resumed the session: reconnecting would take it back, and that one would
            # take it again, in turns. The front end says why (lost_reason) and ends.
            if self._stay_away or not await self._reconnect():
                self._set_status("closed")
                return

    async def _read_loop(self) -> None:
        reader = self._reader
        assert reader is not None
        pinged = False
        while True:
            # A ping after CLIENT_PING_INTERVAL of silence, then CLIENT_PING_TIMEOUT for any byte (the wait was
            # one more interval: a dead link took 30 s to notice where 25 were meant)
            quiet = time.monotonic() - self._last_rx
            if quiet >= const.CLIENT_PING_INTERVAL + const.CLIENT_PING_TIMEOUT:
                self.lost_reason = "server stopped answering"
                return
            if quiet >= const.CLIENT_PING_INTERVAL and not pinged:
                self._write(b'{"type":"ping"}\n')
                pinged = True
            limit = const.CLIENT_PING_INTERVAL + (const.CLIENT_PING_TIMEOUT if pinged else 0.0)
            try:
                data = await asyncio.wait_for(reader.read(1 << 16), max(0.0, limit - quiet))
            except TimeoutError:
                continue
            pinged = False
            if not data:
                self.lost_reason = self.lost_reason or "connection closed by server"
                self._server_closed = True
                return
            self._last_rx = time.monotonic()
            if self.saver is not None and self._save_due is None and not self._closing:  # (its last_seq moves on;
                self._save_due = asyncio.get_running_loop().call_later(SAVE_INTERVAL, self.save)  # a close
                # decides what becomes of the saved state, and the reads of its linger must not undo that)
            for frame in self.state.receive_data(data):
                kind = frame.get("type")
                if kind == "ping":
                    self._write(b'{"type":"pong"}\n')
                    continue
                if kind == "bye":
                    self.lost_reason = str(frame.get("reason", "server said goodbye"))
                    self._stay_away = frame.get("reconnect") is False
                if kind in ("ack", "error"):
                    if not self.state.outbox:
                        self._acked.set()
                    if self.state.unacked < OUTBOX_MAX:
                        self._room.set()
                self._deliver(frame)
            for line in self.state.take_due():
                self._write(line)

    async def _reconnect(self) -> bool:
        """Capped exponential backoff with jitter until resumed or ``give_up_after`` seconds pass."""
        self._set_status("reconnecting")
        started = time.monotonic()
        looked = started  # (a server restarting where it was is back within a look's wait: RELOCATE_AFTER)
        # A connection dropped within RECONNECT_STABLE of its welcome goes on with the backoff where the last
        # reconnect left it: a server that welcomes and then drops (a worker crashing at each resume, a full
        # server closing at once) would otherwise be asked again every RECONNECT_MIN, for ever.
        flapping = started - self._welcomed_at < const.RECONNECT_STABLE
        delay = self._flap_delay if flapping else const.RECONNECT_MIN
        while not self._closing:
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            unreachable = False
            if self._nick_attempts:  # each try asks for the user's nick first: it may be free again (it stayed
                self.state.info.nick, self._nick_attempts = self._wanted_nick, 0  # at nick_50: a review)
            try:
                await self._connect_once(first=False)
                self._flap_delay = min(delay * 2, const.RECONNECT_MAX)
                return True
            except ConnectError as exc:
                self.lost_reason = str(exc)
                if exc.final:  # (a nick this server refuses: exit 4 as at the first connect, not 7, a review)
                    self.lost_exit = exc.exit_code
                    return False
                if exc.exit_code not in (EXIT_UNREACHABLE, EXIT_NICK):
                    return False
                unreachable = exc.exit_code == EXIT_UNREACHABLE
            if time.monotonic() - started > self.give_up_after:
                return False
            delay = min(delay * 2, const.RECONNECT_MAX)
            if unreachable and self.relocate is not None and time.monotonic() - looked >= RELOCATE_AFTER:
                looked = time.monotonic()
                if await self._relocated():
                    delay = const.RECONNECT_MIN
        return False

    async def _relocated(self) -> bool:
        """Asks ``relocate``; True if the server is somewhere else now (and this client goes there)."""
        assert self.relocate is not None
        try:
            where = await self.relocate()
        except (OSError, ValueError) as exc:  # no discovery socket (an interface gone): tried again later
            log.debug("client: looking for the server failed: %s", exc)
            return False
        if where is None or where == (self.host, self.port) or self._closing:
            return False
        self.host, self.port = where
        self.on_status("moved")
        return True

    def _hello(self) -> bytes:
        """The next hello, its attempt saved first (a later run's resume must count above it)."""
        hello = self.state.hello()
        self.save()
        return hello

    def save(self) -> None:
        """Hand the state a later run needs to the saver (if any)."""
        self._cancel_save()
        if self.saver is not None and not self._stay_away:  # (taken over: the other connection's now)
            self.saver(self.state)

    def _cancel_save(self) -> None:
        if self._save_due is not None:
            self._save_due.cancel()
            self._save_due = None

    def _deliver(self, frame: dict[str, Any]) -> None:
        try:
            self.on_frame(frame)
        except Exception:  # a bug in a front end must not end the connection's read loop
            log.exception("client: error showing a %.20s frame", frame.get("type"))

    def _write(self, line: bytes) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(line)

    def _drop_connection(self, *, reset: bool = False) -> None:
        """Close the connection; ``reset``: with a reset, dropping what the kernel has not sent (an attempt
        given up on: its hello, retransmitted on, could still reach the server after a newer attempt's)."""
        if self._writer is not None:
            sock = self._writer.get_extra_info("socket")
            if reset and sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self._writer.transport.abort()
            else:
                self._writer.close()
        self._reader = self._writer = None

    def _set_status(self, status: str) -> None:
        if status != self.status:
            self.status = status
            self.on_status(status)


def unreachable_reason(exc: BaseException, timeout: float | None = None) -> str:
    """Why a connection failed, in words: a TimeoutError has no message, and asyncio's refusal reads
    ``[Errno 111] Connect call failed ('127.0.0.1', 7310)``."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s" if timeout else "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, UnicodeError):  # the resolver's answer to a name like "a..b"
        return "not a valid host name"
    if isinstance(exc, OSError):
        # A name with several addresses (localhost: ::1 and 127.0.0.1) that all failed: asyncio raises one
        # OSError without errno, "Multiple exceptions: [Errno 111] ..., [Errno 111] ...".
        codes = {int(code) for code in _ERRNO_RE.findall(str(exc))}
        if exc.errno is None and codes == {errno.ECONNREFUSED}:
            return "connection refused"
        if exc.strerror and not exc.strerror.startswith("Connect call failed"):
            return exc.strerror[:1].lower() + exc.strerror[1:]
        if exc.errno:
            return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


def on_hangup(
    loop: asyncio.AbstractEventLoop, callback: Callable[[int], None], *, interrupt: bool = False
) -> Callable[[], None]:
    """Call ``callback(signum)`` on SIGTERM or SIGHUP (the terminal window or the ssh session was closed),
    so that a front end can say goodbye: the server then frees the nick at once instead of holding it for
    a reconnect that will never come. With ``interrupt``, on Ctrl-C (SIGINT) too, unless it was ignored at
    start (a script's `&` job must not be stopped by it); a second Ctrl-C ends the process at once.
    Returns the function that removes the handlers."""
    remove = handle_signals(loop, stop_signals(signal.SIGTERM, signal.SIGHUP), callback)
    previous = signal.getsignal(signal.SIGINT)
    if not interrupt or previous is signal.SIG_IGN:
        return remove
    pressed: list[int] = []

    def on_sigint(signum: int, frame: object) -> None:
        # Python's own handler, not the loop's: it runs even while the loop is stuck in a blocking write
        # (stdout piped to a reader that stopped, `| less` paused), where the loop's would wait with it.
        if pressed or loop.is_closed():
            os._exit(128 + signum)  # the goodbye is not waited for: nothing more is written either
        pressed.append(signum)
        loop.call_soon_threadsafe(callback, signum)

    try:
        signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread (tests): no signals here
        return remove

    def remove_all() -> None:
        remove()
        if signal.getsignal(signal.SIGINT) is on_sigint:
            signal.signal(signal.SIGINT, previous)

    return remove_all


def handle_signals(
    loop: asyncio.AbstractEventLoop, sigs: list[signal.Signals], callback: Callable[[int], None]
) -> Callable[[], None]:
    """Call ``callback(signum)`` on each of ``sigs``, in the loop. Returns the function that removes them
    and puts back the handlers they replaced (asyncio.run's own for SIGINT, say: asyncio would leave
    Python's default, a KeyboardInterrupt wherever the program happens to be). Outside the main thread
    (tests) there are no signals to handle: nothing is installed."""
    installed: list[tuple[signal.Signals, Any]] = []
    for sig in sigs:
        previous = signal.getsignal(sig)
        try:
            loop.add_signal_handler(sig, callback, int(sig))
        except (ValueError, RuntimeError, NotImplementedError):
            break
        installed.append((sig, previous))

    def remove() -> None:
        for sig, previous in installed:
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(sig)
            if previous is not None:  # None: set from outside Python, nothing to put back
                with contextlib.suppress(ValueError, TypeError, OSError):
                    signal.signal(sig, previous)
        installed.clear()

    return remove


async def request_once(host: str, port: int, req: dict[str, Any], *, timeout: float = 5.0) -> dict[str, Any]:
    """Send one pre-hello request (stats, ping) and return the first reply of its type. ConnectError (with
    the address in its words) for a peer that closes without one, or whose first line is not a lanchat
    server's (its greeting, or the error of a refusal: both JSON objects with a type)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=1 << 24), timeout)
    where = host_port(host, port)
    try:
        writer.write(m.encode(req))
        deadline = time.monotonic() + timeout
        first = True
        while True:
            try:
                line = await asyncio.wait_for(reader.readline(), max(0.01, deadline - time.monotonic()))
            except ValueError:  # a "line" of more than the reader's limit (16 MiB): no server of ours
                raise ConnectError(f"{where} {NotLanchat(FRAME_TOO_LONG)}", EXIT_UNREACHABLE) from None
            if not line:
                raise ConnectError(f"{where} closed the connection without answering", EXIT_UNREACHABLE)
            frame = server_frame(line.rstrip(b"\r\n"))
            if first and frame is None:
                raise ConnectError(f"{where} {NotLanchat(line)}", EXIT_UNREACHABLE)
            first = False
            if frame is not None and frame["type"] in (req["type"], "error"):
                if frame.get("type") == "error":
                    raise RemoteProtocolError(str(frame.get("code")), str(frame.get("message")))
                return frame
    finally:
        writer.close()
