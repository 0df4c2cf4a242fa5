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
from lanchat.protocol.bucket import TokenBucket
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


# Plain mode's /nick (before the session), /join, /part and /switch read ahead of the hub's answers: (what, room).
_HELLO: Final = "hello"
_JOIN: Final = "join"
_PART: Final = "part"
_SWITCH: Final = "switch"
_Move = tuple[str, str]
# Moves waiting for the hub's answers at most (about 60 bytes each, and each line read replays them): one more
# is refused (too_fast), not sent. Only a paste of over 100 of them read faster than the hub answers gets there.
MAX_MOVES: Final = 2 * const.MAX_ROOMS_PER_SESSION


def _apply(
    rooms: list[str], current: str | None, registered: bool, move: _Move, member: bool | None = True
) -> tuple[str | None, bool]:
    """``move`` applied to ``rooms`` (in place) and the current room. ``member``: the hub's answer, whether the
    session is in the room now (None: a hello that was a rename); moves not answered yet are taken as granted.
    ``registered``: the session is made (a later hello is a rename: it joins nothing)."""
    what, room = move
    if what == _SWITCH:
        return (room if room in rooms else current), registered
    if what == _PART:
        if room in rooms:
            rooms.remove(room)
        return ((rooms[-1] if rooms else None) if current == room else current), registered
    if not member or (what == _HELLO and registered):  # refused, or a rename
        return current, registered
    if room not in rooms:
        rooms.append(room)
    return room, registered or what == _HELLO


class ServerConnection:
    """Per-connection protocol state on the server side (slotted: a worker holds thousands)."""

    __slots__ = (
        "_asked_nick", "_base", "_bucket", "_framer", "_head", "_made", "_moves", "_pending", "_raw", "_raw_at",
        "_viewed", "closed", "conn_id", "current", "forwarded", "frames_in", "hello_sent", "last_seen", "mode",
        "nick", "nicks_refused", "registered", "rooms", "throttled_until",
    )  # fmt: skip

    def __init__(self, conn_id: int, *, max_frame: int, rate: float, burst: int, now: float) -> None:
        self.conn_id = conn_id
        self.mode = Mode.UNKNOWN
        self.registered = False  # the hub bound a session to this connection
        self.hello_sent = False
        self.nick = ""
        # Plain mode's last rename sent (its answer may not have come): a /nick of the nick bound is said to be
        # it only if that is it too; a refused one is forgotten (plain_text).
        self._asked_nick = ""
        self.nicks_refused = 0  # plain /nicks refused before the session was made (taken, or invalid)
        self.rooms: list[str] = []  # joined rooms as the hub said, most recent last (plain mode's current room)
        self.current: str | None = None  # plain mode's, as the lines read so far leave it (see _moves)
        self._viewed = self.rooms  # ... and the rooms (both replayed once per change, not per line read)
        self._base: str | None = None  # the current room as the hub's answers so far leave it
        self._moves: tuple[_Move, ...] = ()  # read since (a tuple: the empty one is shared; idle connections
        # are counted in bytes)
        self._made = False  # a plain hello's answer came with the session made (a later one is a rename)
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
                for frame in self._framer.feed(b"\n"):
                    if self.mode is Mode.UNKNOWN and isinstance(frame, bytes):  # a first line decides the mode
                        first = frame.removeprefix(UTF8_BOM).lstrip()[:1]  # (as _line does: `/nick x` was sent)
                        if first and first != b"{":
                            self.mode = Mode.PLAIN
                    if self.mode is Mode.PLAIN:
                        why = "the last line had no newline at the end of the input: not sent"
                        out.append(Reply(self.error_bytes(m.Err.INCOMPLETE_LINE, why)))
                    else:
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
                        # Nothing is read until then, their next lines neither: not their silence (an adversarial
                        # review: an idle timeout dropped a client still posting, after a 4 MiB line).
                        self.throttled_until = self.last_seen = max(self.last_seen, until)
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
            if exc.code == m.Err.BAD_NICK and not self.registered and self.mode is Mode.PLAIN:
                self.nicks_refused += 1  # (a /nick refused here, as one the hub refuses: see answered)
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
        moves = isinstance(cmd, m.Join | m.Part) or (isinstance(cmd, m.Nick) and not self.registered)
        if (moves or (isinstance(cmd, LocalCommand) and cmd.name == "switch")) and len(self._moves) >= MAX_MOVES:
            why = f"{MAX_MOVES} /join, /part, /switch and /nick are waiting for the server's answers: not sent"
            raise RemoteProtocolError(m.Err.TOO_FAST, why)
        if isinstance(cmd, m.Nick) and not self.registered:  # a nick that was taken may be retried
            self._plain_hello(cmd.nick, out)
            return
        if cmd is None:
            return
        if isinstance(cmd, m.Nick):  # the hub would change nothing and say nothing (an adversarial review)
            if cmd.nick == self.nick and self._asked_nick in ("", self.nick):
                out.append(Reply(f"* you are {clean(self.nick)} already\n".encode()))  # the terminal UI's words
                return
            self._asked_nick = cmd.nick
        if isinstance(cmd, LocalCommand):
            if cmd.name == "switch" and cmd.arg is not None and cmd.arg in self._view():
                self._move(_SWITCH, cmd.arg)
                out.append(Reply(f"* now talking in #{cmd.arg}\n".encode()))  # the terminal UI's words
            elif cmd.name == "switch":  # (as every error: its code last, which a script may look for)
                raise RemoteProtocolError(m.Err.NOT_IN_ROOM, "/switch ROOM needs a room you have joined")
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
        elif isinstance(cmd, m.Part):
            self._move(_PART, cmd.room)
        self._forward(cmd, out)

    def plain_text(self, line: bytes) -> bytes | None:
        """A line from the hub as this plain-text client sees it. A rename refused is undone for `/nick` of
        the own nick, which is said at once again instead of being sent for no answer (as the terminal UI)."""
        if line.startswith(_RENAME_REFUSED):
            self._asked_nick = ""
        return render_for_plain(line, self.nick)

    def _plain_hello(self, nick: str, out: list[Action]) -> None:
        if self.hello_sent:  # a /nick before the welcome: the hub takes it for a rename (see _asked_nick)
            self._asked_nick = nick
        self.hello_sent = True
        # The hello joins the default room; lines typed before the welcome arrives go there.
        self._move(_HELLO, const.DEFAULT_ROOM)
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
        """The hub's member record: the session is in ``room`` now."""
        if room not in self.rooms:
            self.rooms.append(room)
        if self._base is None:
            self._base = room
        self._settle()

    def parted(self, room: str) -> None:
        """The hub's member record: the session is not in ``room`` (any more)."""
        if room in self.rooms:
            self.rooms.remove(room)
            if self._base == room:
                self._base = self.rooms[-1] if self.rooms else None
        self._settle()

    # Plain mode runs ahead of the hub's answers: a line is for the room current when it is read, as if every
    # /nick, /join, /part and /switch read before it had been answered, and granted. The hub answers each
    # /nick (a hello), /join and /part of a plain connection once, in order (Hub.request: whether the session
    # is in the room now); member records keep the rooms. A refused join (or hello) is taken out, and the
    # moves read since replayed without it: the current room is where answers in turn would have left it.

    def answered(self, room: str, member: bool | None) -> bool:
        """The hub's answer to the oldest /nick, /join or /part not answered yet (``room``'s). True if it
        refused a /nick that was to make the session (the nick taken): the user may choose another."""
        refused = False
        if self._moves:
            move, self._moves = self._moves[0], self._moves[1:]
            if move[1] == room:  # (else not ours to apply: the hub and we disagree on what was sent)
                self._base, _ = _apply(list(self.rooms), self._base, self._made, move, member)
                self._made = self._made or (move[0] == _HELLO and self.registered)  # (bound just before)
                refused = move[0] == _HELLO and not self.registered
        self.nicks_refused += refused
        self._settle()
        return refused

    def _move(self, what: str, room: str) -> None:
        self._moves = (*self._moves, (what, room))
        self._settle()

    def _settle(self) -> None:
        """Take the /switch moves first in line as done (no answer comes for them), then the current room."""
        moves = self._moves
        while moves and moves[0][0] == _SWITCH:
            self._base, _ = _apply(self.rooms, self._base, True, moves[0])
            moves = moves[1:]
        self._moves = moves
        self._viewed, self.current = self._replay()

    def _replay(self) -> tuple[list[str], str | None]:
        """The rooms and the current room as the lines read so far leave them."""
        if not self._moves:
            return self.rooms, self._base
        rooms, current, registered = list(self.rooms), self._base, self._made
        for move in self._moves:
            current, registered = _apply(rooms, current, registered, move)
        return rooms, current

    def _view(self) -> list[str]:
        return self._viewed

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


# A rename's refusal, as the hub encodes it (messages.error_frame, encode: its first fields, in this order)
_RENAME_REFUSED: Final = (
    *(b'{"type":"error","code":"%s"' % c.encode() for c in (m.Err.NICK_TAKEN, m.Err.BAD_NICK)),
    b'{"type":"error","code":"too_fast","message":"nick changes',  # (Hub._rename's)
)


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
