"""One client connection as a worker sees it, sans-IO: framing, mode detection, validation, rate limit.

``receive_data(bytes, now)`` returns actions for the I/O edge: requests to forward to the hub, bytes to
send back to this client (errors, pongs), or a close. The token bucket pauses the connection instead
of dropping what it sent (like IRC servers' fakelag): a flooder is slowed by TCP itself, nothing it sent
is lost, and the lines already read wait here (at most one read's worth, since reading stops meanwhile).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum
from typing import Final

from lanchat import const
from lanchat.errors import RemoteProtocolError
from lanchat.protocol import messages as m
from lanchat.protocol.framing import FRAME_TOO_LONG, Frame, LineFramer
from lanchat.protocol.plain import HELP, LocalCommand, clean, parse_command, render

_HTTP = re.compile(r"(GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH|CONNECT|TRACE) \S+ HTTP/\d")
_HTTP_REPLY = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: 55\r\n\r\n"
    b"This is a lanchat chat server, not a web server. Bye.\r\n"
)


_BEFORE_NICK = frozenset({"/nick", "/help", "/?", "/quit", "/exit", "/bye", "/rooms", "/list", "/status", "/stats"})
FRAME_CHUNK: Final = 2048  # bytes framed at a time, to the next newline (ServerConnection._raw): 2,048 lines at most


UTF8_BOM: Final = b"\xef\xbb\xbf"  # a byte-order mark: ignored at the start of a connection


class Mode(Enum):
    UNKNOWN = "unknown"  # no line yet
    JSON = "json"
    PLAIN = "plain"


@dataclass(frozen=True, slots=True)
class Forward:
    request: m.Request


@dataclass(frozen=True, slots=True)
class Reply:
    data: bytes


@dataclass(frozen=True, slots=True)
class Close:
    reason: str
    clean: bool  # the client said goodbye (quit): its session ends now instead of waiting for a resume
    final: bytes = b""  # sent last, just before the close (a plain-text user's "* bye")
    # The quit went to the hub: the connection stays open until the hub says close, so that what it
    # sequenced before the quit (room lines, the acks of the client's last posts) still reaches the client.
    after_hub: bool = False


Action = Forward | m.Post | Reply | Close  # m.Post: a msg or action that skipped decoding (m.parse_post)


class TokenBucket:
    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = now

    def take(self, now: float) -> bool:
        tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if tokens >= 1.0 - 1e-9:  # float sums like 0.1 * 10 fall just short of 1.0
            self.tokens = tokens - 1.0
            return True
        self.tokens = tokens
        return False

    def charge(self, extra: float) -> None:
        """Take ``extra`` tokens more for what was just let through (the bucket may go below zero: what
        follows then waits until it is paid)."""
        self.tokens -= extra

    def owed(self, now: float) -> float | None:
        """After a charge: None if a line may go through now, else when the next one may."""
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        return None if self.tokens >= 1.0 - 1e-9 else self.ready_at(now)

    def ready_at(self, now: float) -> float:
        """When the next token will be there."""
        return now + max(0.0, 1.0 - self.tokens) / self.rate

    def spend(self, cost: float, now: float, *, slack: float = 0.0) -> float | None:
        """Take ``cost`` tokens if one is there, or ``slack`` fewer (it may go below zero, as ``charge``):
        None, else the seconds until one will be."""
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0 - slack - 1e-9:
            self.tokens -= cost
            return None
        return (1.0 - slack - self.tokens) / self.rate


# Plain mode's /join, /part and /switch read ahead of the hub's answers: (what, room).
_JOIN: Final = "join"
_PART: Final = "part"
_SWITCH: Final = "switch"
_Move = tuple[str, str]
# Moves tracked at most (about 60 bytes each); a paste of more takes the oldest as granted, and an answer that
# then refuses one counts as the hub's own doing (the current room may not go back for it).
MAX_MOVES: Final = 2 * const.MAX_ROOMS_PER_SESSION


def _step(rooms: list[str], current: str | None, move: _Move, granted: bool = True) -> str | None:
    """``move`` applied to ``rooms`` (in place) as the hub would answer it: the current room after it."""
    what, room = move
    if what == _JOIN:
        if not granted:
            return current
        if room not in rooms:
            rooms.append(room)
        return room
    if room not in rooms:  # a part of a room not joined is refused; /switch to one, too
        return current
    if what == _SWITCH:
        return room
    rooms.remove(room)
    return (rooms[-1] if rooms else None) if current == room else current


class ServerConnection:
    """Per-connection protocol state on the server side (slotted: a worker holds thousands)."""

    __slots__ = (
        "_base", "_bucket", "_framer", "_head", "_moves", "_pending", "_raw", "_raw_at", "closed", "conn_id", "current",
        "forwarded", "frames_in", "hello_sent", "last_seen", "mode", "nick", "registered", "rooms", "throttled_until",
    )  # fmt: skip

    def __init__(self, conn_id: int, *, max_frame: int, rate: float, burst: int, now: float) -> None:
        self.conn_id = conn_id
        self.mode = Mode.UNKNOWN
        self.registered = False  # the hub bound a session to this connection
        self.hello_sent = False
        self.nick = ""
        self.rooms: list[str] = []  # joined rooms as the hub said, most recent last (plain mode's current room)
        self.current: str | None = None  # plain mode's, as the lines read so far leave it (see _moves)
        self._base: str | None = None  # the current room as the hub's answers so far leave it
        self._moves: tuple[_Move, ...] = ()  # read since (a tuple: the empty one is shared; idle connections
        # are counted in bytes)
        self.closed = False
        self.last_seen = now
        self._framer = LineFramer(max_frame)
        self._bucket = TokenBucket(rate, burst, now)
        self._pending: list[Frame] = []  # lines read but not yet handled (a list: a deque costs 600 B idle)
        self._head = 0
        # Bytes read but not framed yet, from _raw_at on: framed FRAME_CHUNK at a time as the rate lets lines
        # through. A read of 64 KiB of 3-byte lines framed at once held 21,800 bytes objects (1.2 MiB) while
        # the rate limit let them through over 18 minutes; unframed they cost the 64 KiB.
        self._raw = b""
        self._raw_at = 0
        self.throttled_until: float | None = None
        self.frames_in = 0
        self.forwarded = False  # something went to the hub: an EOF waits for its answers before the close

    # --- input ---------------------------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[Action]:
        """Bytes from the client; b"" is EOF."""
        if self.closed:
            return []
        if not data:
            out: list[Action] = []
            if self._framer.buffered and not self._raw and self._head >= len(self._pending):
                # A last line without its newline (`printf '{...}' | nc -N`: it was dropped without a word). A
                # JSON object is whole or no object: handled (once, past the rate). Plain text may be a
                # half-typed line of a client that died (a character-at-a-time one): said, not posted.
                if self.mode is Mode.PLAIN:  # (a first line decides the mode: plain text posts nothing before /nick)
                    self._framer.feed(b"\n")
                    why = "the last line had no newline at the end of the input: not sent"
                    out.append(Reply(self.error_bytes(m.Err.INCOMPLETE_LINE, why)))
                else:
                    for frame in self._framer.feed(b"\n"):
                        self._frame(frame, out)
            if self.closed:  # (it was a quit)
                return out
            self.closed = True
            self.throttled_until = None  # nothing more will be read: no pause to wait out
            # A half-close (shutdown(SHUT_WR): `nc -N`, ncat, a script done writing) ends the input, not the
            # connection: what went to the hub before it is answered first (its welcome, acks, replies).
            return [*out, Close("connection closed by peer", clean=False, after_hub=self.forwarded)]
        # Every line counts against the rate, blank ones too: a flood of newlines must pause reading like
        # any other flood, or it keeps the worker framing for nothing.
        self._raw = self._raw[self._raw_at :] + data if self._raw else data
        self._raw_at = 0
        return self.process(now)

    def process(self, now: float) -> list[Action]:
        """Handle pending lines as the rate allows; sets ``throttled_until`` when the bucket is empty."""
        out: list[Action] = []
        self.throttled_until = None
        pending = self._pending
        while not self.closed:
            if self._head >= len(pending):
                if not self._raw:
                    break
                pending.clear()
                self._head = 0
                at = self._raw_at  # a chunk ends at a newline: a long line is fed at once, not rebuilt per chunk
                end = self._raw.find(b"\n", at + FRAME_CHUNK - 1)
                end = len(self._raw) if end < 0 else end + 1
                pending += self._framer.feed(self._raw[at:end])
                self._raw_at = end
                if end >= len(self._raw):
                    self._raw, self._raw_at = b"", 0
                # Bytes of a line over the limit are skipped, not lines: unpaid, a client streaming without a
                # newline was read at full speed (3 GB/s over loopback, two workers' CPU). Each --max-frame
                # of them costs a line of the rate, so it is read no faster than lines of the largest size.
                framer = self._framer
                if framer.discarded >= framer.max_frame:
                    extra, framer.discarded = divmod(framer.discarded, framer.max_frame)
                    self._bucket.charge(extra)
                    if (until := self._bucket.owed(now)) is not None:
                        self.throttled_until = until
                        break
                continue
            if not self._bucket.take(now):
                self.throttled_until = self._bucket.ready_at(now)
                break
            frame = pending[self._head]
            self._head += 1
            self.last_seen = now  # a line handled late (rate limit) is heard now: silence counts from here
            self._frame(frame, out)
        if self._head >= len(pending):
            pending.clear()
            self._head = 0
        return out

    def _frame(self, frame: Frame, out: list[Action]) -> None:
        self.frames_in += 1
        if frame is FRAME_TOO_LONG:
            out.append(
                Reply(self.error_bytes(m.Err.FRAME_TOO_LONG, f"line longer than {self._framer.max_frame} bytes"))
            )
        elif isinstance(frame, bytes) and frame.strip():
            self._line(frame, out)

    @property
    def pending(self) -> int:
        """Lines read and not handled yet (bytes not framed yet count as one)."""
        return len(self._pending) - self._head + (1 if self._raw else 0)

    def _line(self, line: bytes, out: list[Action]) -> None:
        if self.mode is Mode.UNKNOWN:
            line = line.removeprefix(UTF8_BOM)  # (what Windows tools put before the text they send)
            if not line.strip():  # a mark alone: blank, deciding nothing (as any blank line)
                return
            self.mode = Mode.JSON if line.lstrip()[:1] == b"{" else Mode.PLAIN
        try:
            if self.mode is Mode.JSON:
                self._json_line(line, out)
            else:
                self._plain_line(line, out)
        except RemoteProtocolError as exc:
            out.append(Reply(self._error_exc(exc)))

    def _forward(self, req: m.Request, out: list[Action]) -> None:
        """A request for the hub; a listing (history, who, rooms) costs LISTING_COST lines of the rate, a nick
        change a line per room it is told in (an event stored in each: else one line of the rate put 50
        events in 50 rooms' histories, and a rename flood wore them out 50 times as fast as posts)."""
        if isinstance(req, m.History | m.Who | m.Rooms):
            self._bucket.charge(const.LISTING_COST - 1)
        elif isinstance(req, m.Nick) and len(self.rooms) > 1 and req.nick != self.nick:  # (the same: no event)
            self._bucket.charge(len(self.rooms) - 1)
        self.forwarded = True
        out.append(Forward(req))

    def _json_line(self, line: bytes, out: list[Action]) -> None:
        post = m.parse_post(line)
        if post is not None:
            if not self.hello_sent:
                raise RemoteProtocolError(m.Err.NOT_REGISTERED, "send a hello first", request_id=post.id)
            self.forwarded = True
            out.append(post)
            return
        req = m.parse_line(line)
        if isinstance(req, m.Ping):
            out.append(Reply(m.encode({"type": "pong"} if req.id is None else {"type": "pong", "id": req.id})))
            return
        if isinstance(req, m.Pong):
            return  # last_seen was refreshed; that is all a pong is for
        if isinstance(req, m.Quit):
            self._quit(req, out)
            return
        if not self.hello_sent and req.TYPE not in m.PRE_HELLO:
            raise RemoteProtocolError(m.Err.NOT_REGISTERED, "send a hello first", request_id=req.id)
        if isinstance(req, m.Hello):
            self.hello_sent = True
        self._forward(req, out)

    def _plain_line(self, line: bytes, out: list[Action]) -> None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError(m.Err.BAD_UTF8, "that line is not valid UTF-8") from None
        if not self.hello_sent and _HTTP.match(text):
            self.closed = True  # a browser or curl found the port: answer in its language and hang up
            out.append(Reply(_HTTP_REPLY))
            out.append(Close("http request", clean=True))
            return
        if not self.hello_sent and text.split(" ", 1)[0].lower() not in _BEFORE_NICK:
            # Plain sessions start with /nick: a stray protocol (SSH banner, SMTP, ...) never posts.
            raise RemoteProtocolError(m.Err.NOT_REGISTERED, "choose a nick first: /nick NAME")
        cmd = parse_command(text, self.current, self._view())  # "/join dev" pasted with "/part dev x"
        if isinstance(cmd, m.Nick) and not self.registered:  # a nick that was taken may be retried
            self._plain_hello(cmd.nick, out)
            return
        if cmd is None:
            return
        if isinstance(cmd, LocalCommand):
            if cmd.name == "switch" and cmd.arg is not None and cmd.arg in self._view():
                self._move(_SWITCH, cmd.arg)
                out.append(Reply(f"* now talking in #{cmd.arg}\n".encode()))  # the terminal UI's words
            elif cmd.name == "switch":
                out.append(Reply(b"! /switch ROOM needs a room you have joined\n"))
            else:
                out.append(Reply(HELP.encode() + b"\n"))
            return
        if isinstance(cmd, m.Quit):
            self._quit(cmd, out)
            return
        # The current room follows a /join or /part as it is read, as the hello's room does: lines pasted after
        # "/join ops" are for #ops (they went to the room before, the hub's answer not read yet).
        if isinstance(cmd, m.Join):
            self._move(_JOIN, cmd.room)
        elif isinstance(cmd, m.Part) and cmd.room in self._view():  # (else refused, with no answer to wait for)
            self._move(_PART, cmd.room)
        self._forward(cmd, out)

    def _plain_hello(self, nick: str, out: list[Action]) -> None:
        self.hello_sent = True
        # The hello joins the default room; lines typed before the welcome arrives go there.
        self.joined(const.DEFAULT_ROOM)
        self.forwarded = True
        out.append(Forward(m.Hello(nick, plain=True)))

    def _quit(self, req: m.Quit, out: list[Action]) -> None:
        # The hub ends the session and tells the rooms; without one, it answers what was asked before (rooms,
        # stats: a script's `{"type":"stats"}` then quit got nothing) and then says close.
        to_hub = self.hello_sent or self.forwarded
        if to_hub:
            out.append(Forward(req))
        bye = b"* bye\n" if self.mode is Mode.PLAIN else b""  # a telnet user sees the end with a word, not silence
        self.closed = True
        out.append(Close(req.reason or "quit", clean=True, final=bye, after_hub=to_hub))

    # --- what the hub tells us -----------------------------------------------------------------------------

    def bound(self, nick: str) -> None:
        self.registered = True
        self.nick = nick

    def joined(self, room: str) -> None:
        self._answered(room, True)

    def parted(self, room: str) -> None:
        """Left ``room``, or (never a member) its join was refused."""
        self._answered(room, False)

    # Plain mode runs ahead of the hub's answers: a line is for the room current when it is read, as if every
    # /join, /part and /switch read before it had been answered (granted). The hub answers in order, but only a
    # join of a room it does not hold (member true, or false: refused) and a part of one it holds (member
    # false); it says nothing to the rest. So an answer is for the first move read that would get one, given
    # the rooms the hub has said; the moves before it got none. A refused join replays the moves read since
    # without it: the current room is then where answers in turn would have left it.

    def _move(self, what: str, room: str) -> None:
        moves = self._moves
        if len(moves) >= MAX_MOVES:
            self._base = _step(list(self.rooms), self._base, moves[0])
            moves = moves[1:]
        self._moves = (*moves, (what, room))
        self._settle()

    def _answered(self, room: str, joined: bool) -> None:
        """The hub's member record for ``room``."""
        self._settle()
        head = self._moves[0] if self._moves else None
        if head is not None and head[1] == room and (head[0] == _JOIN or not joined):
            self._moves = self._moves[1:]
            self._base = _step(self.rooms, self._base, head, joined)
        elif joined:  # the hub's own doing (a hello's room)
            if room not in self.rooms:
                self.rooms.append(room)
            if self._base is None:
                self._base = room
        elif room in self.rooms:
            self._base = _step(self.rooms, self._base, (_PART, room))
        self._settle()

    def _settle(self) -> None:
        """Take the first moves that will get no answer as done; then the current room from what is left."""
        moves = self._moves
        i = 0
        while i < len(moves) and (moves[i][0] == _SWITCH or (moves[i][1] in self.rooms) == (moves[i][0] == _JOIN)):
            self._base = _step(self.rooms, self._base, moves[i])
            i += 1
        if i:
            self._moves = moves = moves[i:]
        current = self._base
        if moves:
            rooms = list(self.rooms)
            for move in moves:
                current = _step(rooms, current, move)
        self.current = current

    def _view(self) -> list[str]:
        """The rooms as the lines read so far leave them: the hub's answers, then every move since, granted."""
        if not self._moves:
            return self.rooms
        rooms = list(self.rooms)
        for move in self._moves:
            _step(rooms, None, move)
        return rooms

    # --- output --------------------------------------------------------------------------------------------

    def _error_exc(self, exc: RemoteProtocolError) -> bytes:
        if self.mode is Mode.PLAIN:  # messages may quote what was typed: never echo control bytes
            return f"! {clean(exc.message)} [{exc.code}]\n".encode()
        return m.error_line(exc)

    def error_bytes(self, code: str, message: str, *, fatal: bool = False) -> bytes:
        """An error in this connection's mode (used by the I/O edge for timeouts and limits)."""
        if self.mode is Mode.PLAIN:
            return f"! {message} [{code}]\n".encode()
        return m.encode(m.error_frame(code, message, fatal=fatal))


def render_for_plain(line: bytes, nick: str) -> bytes | None:
    """A server line (JSON) as the text a plain-mode client sees."""
    try:
        frame = json.loads(line)
    except ValueError:
        return None
    if isinstance(frame, dict) and frame.get("type") == "error" and frame.get("code") == m.Err.NOT_REGISTERED:
        frame = {**frame, "message": "choose a nick first: /nick NAME"}  # (a /nick refused): not "send a hello"
    text = render(frame, nick) if isinstance(frame, dict) else None
    return None if text is None else text.encode() + b"\n"
