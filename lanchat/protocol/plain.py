"""Slash commands and the human rendering of server frames, sans-IO.

One parser of what a person types (``parse_command``) and one renderer of what the server sends
(``render``), shared by the server's plain-text mode (nc, telnet) and the client's piped output, so the
two never disagree. Rendering neutralises every control character: text from the network never reaches
a terminal raw.
"""

from __future__ import annotations

import re
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from lanchat import const
from lanchat.errors import RemoteProtocolError
from lanchat.protocol import messages as m

HELP: Final = """\
Commands:
  TEXT                 say TEXT in the current room (//TEXT sends a line that starts with /)
  /me ACTION           act in the current room
  /msg NICK TEXT       private message
  /join ROOM           join a room (and make it current)
  /part [ROOM] [WHY]   leave a room (default: the current one)
  /switch ROOM         make a joined room current
  /nick NAME           change your nick
  /topic [#ROOM] [TEXT]
                       show or set the topic of the current room or ROOM
  /who [ROOM]          who is in a room
  /rooms               list rooms with their member counts
  /history [N] [#ROOM] [before SEQ]
                       the last N events (20) of the current room or ROOM,
                       or of those before SEQ (a page's hint names the next)
  /status              server figures
  /help                this list
  /quit [WHY]          leave"""

# Nicks shown on joining a room: a LAN party's lobby of 300 would fill the screen with them (/who lists all).
JOIN_NICKS_SHOWN: Final = 30

# `lanchat join` (both faces) also cycles through the joined rooms with /switch alone; nc users cannot
CLIENT_HELP: Final = HELP.replace(
    "  /switch ROOM         make a joined room current",
    "  /switch [ROOM]       make a joined room current (alone: the next)",
)

COMMANDS: Final = (
    "/me", "/msg", "/join", "/part", "/switch", "/nick", "/topic", "/who", "/rooms", "/history",
    "/status", "/help", "/quit",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class LocalCommand:
    """A command handled by the client itself, not sent to the server (/help, /switch)."""

    name: str
    arg: str = ""


def not_resumed(why: object) -> str:
    """What a client says when its reconnect came too late to resume its session (the welcome's resume_failed)."""
    return f"the old session could not be resumed ({clean(why)}): joined again as a new session"


_UNDECODED = re.compile("[\udc80-\udcff]")
_QUIT = re.compile(r"/(?:quit|exit|bye)(?: |$)", re.IGNORECASE)  # (as the commands below are read)


HISTORY_MORE: Final = 100  # the page the hint after a history page offers: /history 100 before SEQ


def _count(word: str) -> int | None:
    """A positive decimal number as typed (ASCII digits only), at most m.MAX_ID, or None. At most 16 digits go
    into int() (more than 4,300 raise ValueError: CPython's guard against slow parsing)."""
    if not (word.isascii() and word.isdigit()) or not word.strip("0"):
        return None
    digits = word.lstrip("0")
    return min(int(digits), m.MAX_ID) if len(digits) <= 16 else m.MAX_ID


def _history(words: list[str], room: str | None) -> m.History:
    """/history [N] [#ROOM] [before SEQ], in any order: the newest N (default 20) events of the room (default
    the current one), or of those numbered below SEQ (the hint after a page names the next one's)."""
    usage = RemoteProtocolError(
        m.Err.BAD_FIELD,
        f"usage: /history [N] [#ROOM] [before SEQ], N from 1 (more than {const.HISTORY_PAGE_MAX}: taken as"
        f" {const.HISTORY_PAGE_MAX})",
    )
    n: int | None = None
    before: int | None = None
    named: str | None = None
    rest = iter(words)
    for word in rest:
        if word.lower() == "before" and before is None:
            before = _count(next(rest, ""))
            if before is None:
                raise usage
        elif word.startswith("#") and named is None:
            named = m.check_room(word)
        elif n is None and (n := _count(word)) is not None:
            pass
        else:
            raise usage
    target = named if named is not None else _need_room(room)
    return m.History(target, before=before, limit=min(n or 20, const.HISTORY_PAGE_MAX))


def parse_command(line: str, room: str | None, joined: Collection[str] = ()) -> m.Request | LocalCommand | None:
    """What a person typed -> a request (or a local command, or None for an empty line). ``joined``: the
    rooms we are in, which tell `/part dev bye` (leave #dev) from `/part see you later` (leave this room).

    Raises RemoteProtocolError with a readable message for unknown commands and bad arguments.
    """
    line = line.rstrip("\r\n")
    if not line.strip():
        return None
    if _QUIT.match(line):  # (never refused: an undecodable byte in its reason is dropped with the reason's
        return m.Quit(m.quit_reason(line.partition(" ")[2].strip()))  # control characters; a review)
    if _UNDECODED.search(line):  # Python's escapes for input bytes the locale's encoding did not decode
        raise RemoteProtocolError(
            m.Err.BAD_TEXT, "this line is not valid text in the terminal's encoding (is the locale UTF-8?)"
        )
    if not line.startswith("/") or line.startswith("//"):
        text = line[1:] if line.startswith("//") else line
        return m.Msg(_need_room(room), m.check_text(text))
    cmd, _, rest = line.partition(" ")
    cmd = cmd.lower()
    rest = rest.strip()
    if cmd == "/me":
        if not rest:
            raise RemoteProtocolError(m.Err.BAD_FIELD, "usage: /me ACTION")
        return m.Action(_need_room(room), m.check_text(rest))
    if cmd in ("/msg", "/query"):
        to, _, text = rest.partition(" ")
        if not to or not text.strip():
            raise RemoteProtocolError(m.Err.BAD_FIELD, "usage: /msg NICK TEXT")
        return m.PrivMsg(m.check_nick(to), m.check_text(text.lstrip()))  # ("/msg ann   hi": the blanks part it)
    if cmd == "/join":
        if not rest or len(rest.split()) > 1:  # "/join my room" meant something; #my is not it
            raise RemoteProtocolError(m.Err.BAD_FIELD, "usage: /join ROOM (a room name is one word)")
        return m.Join(m.check_room(rest))
    if cmd in ("/part", "/leave"):
        target, _, reason = rest.partition(" ")
        if target.startswith("#") or target.lower() in joined or (target and not reason and _looks_like_room(target)):
            return m.Part(
                m.check_room(target), m.check_text(reason.strip(), limit=const.REASON_MAX, what="reason", empty=True)
            )
        return m.Part(_need_room(room), m.check_text(rest, limit=const.REASON_MAX, what="reason", empty=True))
    if cmd == "/nick":
        if not rest:
            raise RemoteProtocolError(m.Err.BAD_FIELD, "usage: /nick NAME")
        return m.Nick(m.check_nick(rest))
    if cmd == "/topic":  # /topic #ROOM [TEXT] as IRC has it: a first word that is a #room names the room (a
        target, _, text = rest.partition(" ")  # typo of one is refused, not made the current room's topic)
        if target.startswith("#") and _looks_like_room(target[1:].lower()):
            return m.Topic(
                m.check_room(target),
                m.check_text(text.strip(), limit=const.TOPIC_MAX, what="topic", empty=True) or None,
            )
        return m.Topic(
            _need_room(room), m.check_text(rest, limit=const.TOPIC_MAX, what="topic", empty=True) if rest else None
        )
    if cmd in ("/who", "/names"):
        return m.Who(m.check_room(rest) if rest else _need_room(room))
    if cmd in ("/rooms", "/list"):
        return m.Rooms()
    if cmd == "/history":
        return _history(rest.split(), room)
    if cmd in ("/status", "/stats"):
        return m.Stats()
    if cmd in ("/help", "/?"):
        return LocalCommand("help")
    if cmd == "/switch":
        return LocalCommand("switch", m.check_room(rest) if rest else "")
    raise RemoteProtocolError(m.Err.UNKNOWN_TYPE, f"unknown command {cmd[:30]}; /help lists them")


_ROOM_WORD: Final = re.compile(rf"[a-z0-9][a-z0-9_.\-]{{0,{const.ROOM_MAX - 1}}}")  # a room name as check_room takes it


def _looks_like_room(word: str) -> bool:
    return bool(_ROOM_WORD.fullmatch(word))


def _need_room(room: str | None) -> str:
    if room is None:
        raise RemoteProtocolError(m.Err.NOT_IN_ROOM, "you are in no room: /join ROOM first")
    return room


# --- rendering --------------------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def clean(text: object) -> str:
    """Neutralise control characters and bidi overrides: shown as U+FFFD, never sent to a terminal raw. A tab
    (allowed in a message) becomes a space: it is harmless but would break a line's columns."""
    return _UNSAFE.sub("\ufffd", str(text).replace("\t", " "))


def count_of(value: object, word: str) -> str:
    """``1 user``, ``2 users``; a value that is not a count (from a broken server) is shown cleaned."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value} {word}{'' if value == 1 else 's'}"
    return f"{clean(value)} {word}s"


def clock(ts: object) -> str:
    try:
        return time.strftime("%H:%M", time.localtime(float(ts)))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, OSError):
        return "--:--"


def sent_by_me(frame: dict[str, Any], me: str, had: Mapping[str, int] | None = None, session: str = "") -> bool:
    """Whether a private message is one this client sent. ``session``: the client's session id (its welcome's);
    a message that names its sender's session is ours if that is it. One that does not (stored by an older
    server) is judged by nicks. ``had``: the nicks the client has had (nick_key -> the seq from which it had
    each, the latest time): a replay after an expiry or a rename carries messages from and to nicks it had
    then, which others may hold now. From a nick it had, to one it never had: sent. From and to two it had:
    sent if the sender is the one it held at the message's seq (had since, and later)."""
    sender_session = frame.get("session")
    if session and isinstance(sender_session, str):
        return sender_session == session
    if not me:
        return False
    sender, to = m.nick_key(str(frame.get("from", ""))), m.nick_key(str(frame.get("to", "")))
    held = dict(had or {})
    held.setdefault(m.nick_key(me), -1)
    if sender not in held:
        return False
    if to not in held or to == sender:
        return True
    seq, since_from, since_to = frame.get("seq"), held[sender], held[to]
    if isinstance(seq, int) and (since_from <= seq) != (since_to <= seq):
        return since_from <= seq  # only one of them was ours by then
    return since_from >= since_to  # both were: the later one was held then


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(slots=True)
class NicksHad:
    """The nicks a client has had (nick_key -> the seq from which it had each, the latest time), for
    sent_by_me's messages without a ``session`` (an older server's), kept from its welcomes and its own
    ``nick`` events. A resume's welcome names the nick the session has now; its own renames that the client
    had not read come after it in the replay, from the nick it had before (``_chain``), numbered up to the
    welcome's ``nick_since`` (``_chain_upto``: one later is someone else's), and are its own all the same.
    A rename away from the client's nick numbered before the welcome says it had the nick (again) is its
    own from before, and the client came back since: the rename back may be missing (made in no room).
    (If the client's own rename is missing from the replay, a gap's or one in no room, a rename of the old
    nick by someone who took it before the next is taken for the client's: docs/security.md, items 38, 39
    and 42.)"""

    had: dict[str, int] = field(default_factory=dict)
    _chain: str = ""
    _chain_upto: int = -1
    _before: tuple[str, int] | None = None  # a resume's nick, and from which seq the client had it before
    _told: tuple[str, int] | None = None  # a resume's nick and its nick_since (a chain may lower had's)

    def welcome(self, frame: dict[str, Any], before: str) -> None:
        key = m.nick_key(str(frame.get("nick", "")))
        told = _int(frame.get("nick_since"))
        since = told if told is not None else _int(frame.get("seq")) or 0
        if frame.get("resumed") is True and not frame.get("resume_failed"):  # the client's own session
            self._chain = m.nick_key(before) if m.nick_key(before) != key else ""
            self._chain_upto = told if told is not None else since  # (an older server's: the welcome's seq)
            prev = self.had.get(key)  # (renamed away and back, unread: its replay starts from the first time)
            if told is not None or key not in self.had:
                self.had[key] = since
            self._before = (key, prev) if prev is not None and prev < self.had[key] else None
            self._told = (key, told) if told is not None else None
            return
        self._before = None
        self._told = None
        self._chain = ""  # a session the client had not seen: its nick from nick_since (a catch-up may replay
        if self.had and since < max(self.had.values()):  # others' use of it before); numbers below those had:
            self.had.clear()  # the server's numbering went back (a new data directory)
        self.had[key] = since

    def nick(self, frame: dict[str, Any], me: str) -> bool:
        """A ``nick`` event: True if it renames the client (``me`` its nick now); a rename of its own that a
        resume's welcome already named is recorded too (False: the nick is already the new one)."""
        old, new = m.nick_key(str(frame.get("old", ""))), m.nick_key(str(frame.get("new", "")))
        seq = _int(frame.get("seq"))
        if self._chain and (seq is None or seq > self._chain_upto):  # past the renames the welcome named
            self._chain = ""
        ours = old == m.nick_key(me) and self.mine(old, seq)
        back = self.had.get(old, -1)  # from when the client has ``old`` (again): the welcome's nick_since,
        if self._told is not None and self._told[0] == old:  # though a replayed rename to it lowered had
            back = max(back, self._told[1])
        if ours and seq is not None and seq < back:  # a rename away before that: its own, and it came back
            if new != old:  # since (the rename back may be missing from the replay: made in no room)
                self.had[new] = max(self.had.get(new, -1), seq)
            return False
        if not ours and not (self._chain and old == self._chain):
            return False
        if new != old:  # (a change of case only: held all along)
            self.had[new] = seq or 0
        if not ours:
            self._chain = "" if new == m.nick_key(me) else new
        return ours

    def mine(self, key: str, number: object) -> bool:
        """Whether an event of ``key``, the client's nick now, numbered ``number``, is the client's: not one
        numbered before it had the nick (a resume's replay: someone else held it then, and has left it)."""
        seq = _int(number)
        if seq is None or seq >= self.had.get(key, -1):
            return True
        return self._before is not None and self._before[0] == key and seq >= self._before[1]


def render(frame: dict[str, Any], me: str = "", had: Mapping[str, int] | None = None, session: str = "") -> str | None:
    """One server frame as one human line (None for frames a person need not see, like acks). ``me``,
    ``had`` and ``session``: whose client it is (sent_by_me).

    Total: a frame with fields of the wrong type (a broken or hostile server) renders as a notice.
    """
    try:
        return _render(frame, me, had, session)
    except (TypeError, ValueError, AttributeError, KeyError, OverflowError, RecursionError):
        return f"! unreadable {clean(frame.get('type'))[:20]} frame from the server"


def _more(frame: dict[str, Any], count_field: str, shown: int) -> str:
    """', and 12 more' when a listing was cut to fit the server's reply size (``more``)."""
    if not frame.get("more"):
        return ""
    total = frame.get(count_field)
    if isinstance(total, int) and not isinstance(total, bool) and total > shown:
        return f", and {total - shown} more"
    return ", and more"


def _items(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def more_before(more: object, events: list[dict[str, Any]], room: object) -> str:
    """What a history page's head says of older events (``more``, the reply's): ", more before: " and the
    command that shows the page before ``events`` (oldest first) in ``room`` (named unless empty: the current
    one); with no events (a hello's rooms past their budget), the newest page. Just ", more before" if the
    oldest has no number; nothing if there are no more."""
    if not more:
        return ""
    where = f" #{clean(room)}" if room else ""
    seq = events[0].get("seq") if events else None
    if events and type(seq) is not int:
        return ", more before"
    return f", more before: /history {HISTORY_MORE}{where}" + (f" before {seq}" if events else "")


def held_note(privmsg: dict[str, Any]) -> str:
    """What a private message's ``held`` says to its sender: the recipient's client had lost its connection
    (a crash, a laptop asleep), and gets the message when it reconnects (its session is held that many
    seconds; a client back later gets it too: docs/protocol.md), but not a new `lanchat join`: a suffix for
    the line that shows it, empty if not."""
    held = privmsg.get("held")
    if type(held) is not int:
        return ""
    to = clean(privmsg.get("to"))
    return f"  ({to} is disconnected: they get it when their client reconnects; their session is held {held} s more)"


def _render(frame: dict[str, Any], me: str, had: Mapping[str, int] | None, session: str) -> str | None:
    c = clean
    kind = frame.get("type")
    room = f"#{c(frame.get('room', ''))}"
    at = f"[{clock(frame.get('ts'))}]"
    if kind == "msg":
        return f"{at} {room} <{c(frame.get('from'))}> {c(frame.get('text'))}"
    if kind == "action":
        return f"{at} {room} * {c(frame.get('from'))} {c(frame.get('text'))}"
    if kind == "privmsg":
        if sent_by_me(frame, me, had, session):
            return f"{at} -> *{c(frame.get('to'))}* {c(frame.get('text'))}{held_note(frame)}"
        return f"{at} *{c(frame.get('from'))}* {c(frame.get('text'))}"
    if kind == "join":
        return f"{at} {room} -- {c(frame.get('nick'))} joined"
    if kind == "part":
        why = f" ({c(frame['reason'])})" if frame.get("reason") else ""
        return f"{at} {room} -- {c(frame.get('nick'))} left{why}"
    if kind == "quit":
        why = f" ({c(frame['reason'])})" if frame.get("reason") else ""
        return f"{at} -- {c(frame.get('nick'))} quit{why}"
    if kind == "nick":
        return f"{at} -- {c(frame.get('old'))} is now known as {c(frame.get('new'))}"  # as the terminal UI says
    if kind == "topic":
        if "seq" in frame:
            return f"{at} {room} -- {c(frame.get('nick'))} set the topic: {c(frame.get('topic'))}"
        return f"* {room} topic: {c(frame.get('topic')) or '(none)'}"
    if kind == "welcome":
        rooms = " ".join("#" + c(r) for r in _items(frame.get("rooms")))
        again = "Resumed: you are" if frame.get("resumed") else "Welcome! You are"
        line = f"* {again} {c(frame.get('nick'))} in {rooms or 'no room'}. /help lists commands."
        if frame.get("resume_failed"):  # a client's reconnect came too late: a new session, maybe a gap
            return f"* {not_resumed(frame['resume_failed'])}\n{line}"
        return line
    if kind == "room":
        names = _items(frame.get("nicks"))[:JOIN_NICKS_SHOWN]
        topic = f" topic: {c(frame['topic'])};" if frame.get("topic") else ""
        users = frame.get("users")
        here = users if isinstance(users, int) and not isinstance(users, bool) else len(_items(frame.get("nicks")))
        more = f", and {here - len(names)} more (/who {room})" if here > len(names) else ""
        return f"* {room}:{topic} {here} here: " + ", ".join(c(n) for n in names) + more
    if kind == "who":
        nicks = [c(n) for n in _items(frame.get("nicks"))]
        return f"* {room}: " + (", ".join(nicks) or "nobody is here") + _more(frame, "users", len(nicks))
    if kind == "rooms":
        parts = [
            f"#{c(r.get('name'))} ({c(r.get('users'))})" for r in _items(frame.get("rooms")) if isinstance(r, dict)
        ]
        return "* rooms: " + (", ".join(parts) or "none") + _more(frame, "total", len(parts))
    if kind == "history":
        events = [e for e in _items(frame.get("events")) if isinstance(e, dict)]
        lines = [render(e, me) for e in events]
        body = "\n".join(f"  {line}" for line in lines if line)
        more = more_before(frame.get("more"), events, frame.get("room"))
        head = f"* history of {room} ({count_of(len(lines), 'event')}{more})"
        return head + ("\n" + body if body else "")
    if kind == "error":
        return f"! {c(frame.get('message'))} [{c(frame.get('code'))}]"
    if kind == "gap":
        return f"! some events could not be recovered ({c(frame.get('reason', 'history too short'))})"
    if kind == "bye":
        return f"* server: {c(frame.get('reason'))}"
    if kind == "stats":
        rows = [
            f"  {c(p.get('role'))} pid {c(p.get('pid'))}: {count_of(p.get('connections'), 'connection')}, "
            f"cpu {c(p.get('cpu_percent'))}%, rss {int(p.get('rss') or 0) // 1024} KiB"
            for p in _items(frame.get("processes"))
            if isinstance(p, dict)
        ]
        return "* server stats:\n" + "\n".join(rows)
    if kind == "server":
        return f"* {c(frame.get('hint'))}"
    return None  # ack, ping, pong and unknown frames are not for humans
