"""The interactive face of `lanchat join` (stdin and stdout are a terminal), and the server chooser.

Owns two layers:

* ``ChatView``: the model, with no terminal and no socket. It turns server frames and connection states
  into styled lines (timestamps, a stable colour per nick, own messages in bold, mentions highlighted with
  a bell, system events in their own colours), turns what the person typed into requests (command
  dispatch, the current room), and answers the prompt, the status line and Tab completion. Tests drive
  it with dicts and strings.
* The glue (``run_app`` and its ``_ChatApp``, ``Printer``, ``ViewCompleter``): a prompt_toolkit
  ``PromptSession`` and a ``ChatClient`` (connection.py: reconnect, resume and the outbox live there, not here).

Why ``PromptSession.prompt_async`` in a loop and not a full-screen ``Application``: chat lines are printed
*above* the prompt into the terminal's own scrollback (prompt_toolkit erases the input line and the
status line, prints, then redraws them with the half-typed text and the cursor where they were), so the
terminal keeps doing what it does best: scrolling back, searching, selecting and copying text, and the
conversation stays on screen after /quit. A full-screen layout would have to re-implement scrollback,
selection and resizing, for no gain in a line-oriented chat. The prompt gives us the rest for free: a
bottom toolbar (the status line), completion, history (up/down) and emacs editing keys.

It must never write a string from the network to the terminal raw: every such string goes through
``plain.clean`` (control characters, escape sequences and bidi overrides become U+FFFD) and is printed as
prompt_toolkit formatted text, whose output layer escapes ESC once more. It never touches a socket itself
and never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import signal
import sys
import termios
import time
import unicodedata
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TextIO, TypeVar

import prompt_toolkit.utils
from prompt_toolkit import PromptSession
from prompt_toolkit.application import Application, get_app
from prompt_toolkit.buffer import Buffer
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.formatted_text import StyleAndTextTuples, fragment_list_width
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyBindingsBase, KeyPressEvent, merge_key_bindings
from prompt_toolkit.keys import Keys
from prompt_toolkit.layout.dimension import Dimension
from prompt_toolkit.output import ColorDepth, Output, create_output
from prompt_toolkit.output.vt100 import Vt100_Output
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.renderer import Renderer, print_formatted_text
from prompt_toolkit.styles import BaseStyle, Style, merge_styles
from prompt_toolkit.utils import get_bell_environment_variable, get_cwidth, get_term_environment_variable
from prompt_toolkit.validation import ValidationError, Validator

from lanchat import const
from lanchat.client.connection import (
    EXIT_ERROR,
    EXIT_OK,
    GOODBYE_LOST_NOTE,
    ChatClient,
    Relocator,
    handle_signals,
    on_hangup,
)
from lanchat.client.current import CurrentRoom
from lanchat.client.saved import RESTORED_ATTEMPT_GAP, Saved, SessionFile, entry_key
from lanchat.config import host_port
from lanchat.errors import ConnectError, RemoteProtocolError
from lanchat.protocol import messages as m
from lanchat.protocol.client_conn import ClientState
from lanchat.protocol.plain import (
    CLIENT_HELP,
    COMMANDS,
    LocalCommand,
    NicksHad,
    clean,
    clock,
    count_of,
    held_note,
    more_before,
    not_resumed,
    parse_command,
    render,
    sent_by_me,
)

if TYPE_CHECKING:
    from lanchat.discovery.browser import ServerRecord

Fragments = list[tuple[str, str]]

# Nick colours: ANSI colours every terminal has; red is kept for errors, grey for system lines.
PALETTE: Final = (
    "ansigreen", "ansiblue", "ansimagenta", "ansicyan", "ansiyellow",
    "ansibrightgreen", "ansibrightblue", "ansibrightmagenta", "ansibrightcyan", "ansibrightyellow",
)  # fmt: skip

STYLE: Final = Style.from_dict(
    {
        "time": "ansibrightblack",
        "room": "ansibrightblack",
        "own": "bold",
        "mention": "bg:ansiyellow fg:ansiblack bold",
        "action": "italic",
        "privmsg": "italic",
        "event": "ansibrightblack",
        "info": "ansicyan",
        "state": "ansiyellow bold",
        "error": "ansired bold",
        "history": "ansibrightblack",
        "prompt": "bold",
        "prompt.room": "ansicyan bold",
        "bottom-toolbar": "noreverse bg:ansiblue fg:ansiwhite",
        "bottom-toolbar.key": "bold",
        "bottom-toolbar.connected": "bg:ansigreen fg:ansiblack bold",
        "bottom-toolbar.reconnecting": "bg:ansiyellow fg:ansiblack bold",
        "bottom-toolbar.closed": "bg:ansired fg:ansiwhite bold",
        "bottom-toolbar.unsent": "bg:ansiyellow fg:ansiblack",
    }
)

# Without colours (NO_COLOR, a 1-bit terminal) the status line would read as one more line of chat: it is
# drawn in reverse video then, its state and unsent counts not (they stand out of it as the colours do).
# A line's time and its events are dim and nicks bold, as they are grey and coloured otherwise: a message
# padded to the terminal's width shows its tail on a row of its own, and what a line's text says is plain,
# so a tail like "12:03 <alice> hi" cannot pass for a line (wrapped rows are the terminal's own: a hanging
# indent would mean breaking lines ourselves, and a long link copied from the scrollback would break too).
MONO_STYLE: Final = Style.from_dict(
    {
        **dict.fromkeys(("time", "room", "event", "history"), "dim"),
        "nick": "bold",
        "bottom-toolbar": "reverse",
        **{f"bottom-toolbar.{k}": "noreverse bold" for k in ("connected", "reconnecting", "closed", "unsent")},
    }
)


def style_for(output: Output) -> BaseStyle:
    """The chat's style as ``output`` can show it."""
    if output.get_default_color_depth() == ColorDepth.DEPTH_1_BIT:
        return merge_styles([STYLE, MONO_STYLE])
    return STYLE


KEYS: Final = """\
Keys:
  Enter                send the line
  Tab                  complete a command, a nick or a #room (again: the next candidate)
  Up / Down            earlier input
  F2                   next joined room (as /switch without a room)
  Ctrl-C               clear the line; on an empty line: quit
  Ctrl-D               quit (on an empty line)
  Ctrl-Z               stop the client (fg brings it back)
  Ctrl-L               clear the screen"""

EXIT_INTERRUPTED: Final = 130  # Ctrl-C while connecting (the shell's convention for SIGINT)
TRANSCRIPT_MAX: Final = 2000  # lines of plain text the view remembers (tests, /status); the terminal keeps the rest
RECENT_SPEAKERS_MAX: Final = 200  # nicks remembered for completion beyond the rooms' member lists
KNOWN_ROOMS_MAX: Final = 1000  # room names remembered for completion (a /rooms reply can be long)
INPUT_ROWS_SPARED: Final = 2  # rows of the window the input never takes: the status line's and one of chat
TOOLBAR_NAME_MIN: Final = 8  # columns a room or nick keeps at least when a narrow status line shortens it
_NO_ARG_COMMANDS: Final = frozenset({"/rooms", "/status", "/help"})
_ROOM_ARG_COMMANDS: Final = frozenset({"/join", "/switch", "/part", "/leave", "/who", "/names"})
_NICK_ARG_COMMANDS: Final = frozenset({"/msg", "/query"})
_OWN_ROOM_COMMANDS: Final = frozenset({"/switch", "/part", "/leave"})


_T = TypeVar("_T")


def _resolve(future: asyncio.Future[_T], value: _T) -> None:
    """``future`` given ``value``, unless it has one: a signal (a key) may come again before it is seen."""
    if not future.done():
        future.set_result(value)


def _shortened(text: str, columns: int) -> str:
    """``text`` cut to ``columns`` terminal columns, its last one an ellipsis (a wide character counts twice)."""
    out, used = [], 0
    for char in text:
        used += get_cwidth(char)
        if used > columns - 1:
            break
        out.append(char)
    return "".join(out) + "…"


def _list(frame: dict[str, Any], key: str) -> list[Any]:
    value = frame.get(key)
    return value if isinstance(value, list) else []


_LINE_ENDS: Final = re.compile(r"\r\n|\r|\n")


@functools.lru_cache(maxsize=8)
def _mention_rx(nick: str) -> re.Pattern[str]:
    """The own nick as a word of its own (not inside a longer nick), any case."""
    edge = r"\w\-\[\]{}|^`"
    return re.compile(rf"(?<![{edge}]){re.escape(nick)}(?![{edge}])", re.IGNORECASE)


def nick_colour(nick: str) -> str:
    """A stable colour per nick (the same in every run and on every machine: crc32, not hash())."""
    return PALETTE[zlib.crc32(m.nick_key(nick).encode("utf-8", "replace")) % len(PALETTE)]


@dataclass(frozen=True, slots=True)
class Line:
    """One line to print above the prompt: styled fragments, and whether it rings the terminal bell."""

    fragments: tuple[tuple[str, str], ...]
    bell: bool = False

    @property
    def text(self) -> str:
        return "".join(text for _, text in self.fragments)


@dataclass(slots=True)
class Submitted:
    """What one line of input amounts to: requests to send, lines to show, or the wish to quit.

    ``queued`` is, for a request typed while the connection is down, the line that says it waits for the
    reconnect: shown (View.taken) only once the client took it, so a request the client refuses (too many
    waiting, too long) gets its refusal, not both."""

    requests: list[m.Request] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    quit: m.Quit | None = None
    queued: Line | None = None
    refused: bool = False  # the line was not taken (a bad command, text too long): it is given back to edit


def typed_lines(text: str) -> list[str]:
    """What the prompt returned, one entry per line: a paste may hold several, each a line of its own
    (submitted, sent and answered in turn, up to a /quit). Only CR and LF end a line: str.splitlines() also
    split at a form feed, U+2028 ..., which the input line shows inside a line (a review)."""
    return _LINE_ENDS.split(text.removesuffix("\r\n").removesuffix("\n").removesuffix("\r"))


class ChatView:
    """The terminal UI's model: frames in, styled lines out; typed lines in, requests out. No I/O."""

    def __init__(
        self,
        nick: str,
        room: str | None,
        *,
        server: str = "",
        address: str = "",
        unsent: Callable[[], int] = lambda: 0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.nick = nick
        self._asked_nick = nick  # the last /nick sent (a rename queued or in flight is not the nick yet)
        self._nicks = NicksHad()  # the nicks we have had, from which seq: see plain.sent_by_me
        self._session = ""  # the session's id, from the last welcome: see plain.sent_by_me
        self.current = CurrentRoom(room)  # where plain text goes
        self.server = clean(server)
        self._greeted = False  # a server's greeting came: a name in the next is a new one
        self.address = clean(address)
        self.status = "connecting"
        self.joined: list[str] = []  # rooms we are in, in join order
        self._coming: list[str] = []  # rooms a new session's welcome named whose joins have not come yet
        self._resumed_at = -1  # a resume's welcome's seq: its rooms have the replay's own joins and parts
        self.members: dict[str, list[str]] = {}  # room -> nicks, for the rooms we are in (maybe the first 500)
        self.counts: dict[str, int] = {}  # room -> member count (the room reply's ``users``, then events)
        self.known_rooms: dict[str, None] = {}  # insertion-ordered set, for completion
        self.speakers: dict[str, str] = {}  # nick_key -> nick, most recent last, for completion
        self.transcript: deque[str] = deque(maxlen=TRANSCRIPT_MAX)
        self.unsent = unsent
        self._now = now
        self._history_asked: set[str] = set()
        self._quiet: dict[int, str] = {}  # id -> room of the client's own questions (who), answered quietly
        self.asked_who: set[str] = set()  # rooms whose members this run asked for (refused: asked again)
        self._room_said: dict[str, str] = {}  # room -> the words of its last room reply shown (see _on_room)
        self._reconnecting = False
        self._replies: dict[str, Callable[[dict[str, Any]], list[Line]]] = {
            "server": self._on_server, "welcome": self._on_welcome, "room": self._on_room, "who": self._on_room,
            "rooms": self._on_rooms, "topic": self._on_topic, "stats": self._on_stats, "error": self._on_error,
            "gap": self._on_gap, "bye": self._on_bye, "history": self._on_history,
        }  # fmt: skip
        if room:
            self._know_room(room)

    # --- server frames -------------------------------------------------------------------------------------

    def on_frame(self, frame: dict[str, Any]) -> list[Line]:
        """Update the model from one server frame; return the lines to show (often one, maybe none).

        A malformed frame (a field of the wrong type) is reported in one line, never raised: it would
        otherwise end the connection's read loop.
        """
        try:
            return self._frame(frame)
        except (TypeError, ValueError, AttributeError, KeyError, OverflowError, RecursionError):
            what = clean(frame.get("type"))[:30] if isinstance(frame, dict) else "?"
            return self._out([self._system(f"ignored a malformed {what} frame from the server", "error")])

    def _frame(self, frame: dict[str, Any]) -> list[Line]:
        kind = frame.get("type")
        if kind in m.EVENT_TYPES and "seq" in frame:  # a reply may share an event's type (topic): no seq
            self._absorb_event(frame)
            line = self._event_line(frame, historic=False)
            return self._out([line] if line else [])
        handler = self._replies.get(kind) if isinstance(kind, str) else None
        if handler is None:
            return []  # ack, ping, pong and frames of a newer protocol
        return self._out(handler(frame))

    def _on_server(self, frame: dict[str, Any]) -> list[Line]:
        """The greeting, at each connect: its name is the server's own (discovery's may be older, and a
        server restarted with another --name, or another server on the same port, is named anew)."""
        name, greeted = clean(frame.get("name", "")), self._greeted
        self._greeted = True
        if not name or name == self.server:
            return []  # its hint is for people on nc/telnet
        self.server = name  # (discovery's copy of the first greeting's name is cut to 64 bytes: not said)
        return [self._system(f"the server at {self.address} is called {name} now", "state")] if greeted else []

    def _on_welcome(self, frame: dict[str, Any]) -> list[Line]:
        self._nicks.welcome(frame, self.nick)
        self._session = str(frame.get("session", ""))
        self.nick = self._asked_nick = str(frame.get("nick", self.nick))
        rooms = [str(r) for r in _list(frame, "rooms") if isinstance(r, str)]
        for r in rooms:
            self._know_room(r)
        where = " ".join("#" + clean(r) for r in rooms) or "no room"
        self._coming = [] if frame.get("resumed") else rooms
        seq = frame.get("seq")
        self._resumed_at = seq if frame.get("resumed") and type(seq) is int else -1
        if frame.get("resumed") and not frame.get("resume_failed"):
            self.joined = rooms
            self.members = {r: ns for r, ns in self.members.items() if r in rooms}
            self.counts = {r: n for r, n in self.counts.items() if r in rooms}
            if self.room not in self.current.rooms(rooms):  # (a run started again: its --room, which the
                self.room = rooms[-1] if rooms else None  # session may have left; the last joined, as /part)
            return [self._system(f"session resumed: you are {clean(self.nick)} in {where}", "state")]
        if frame.get("resumed"):  # the new session made after an expiry, whose welcome was lost: resumed
            self.joined, self.members, self.counts, self._room_said = rooms, {}, {}, {}  # through the old token
            return [
                self._system(not_resumed(frame["resume_failed"]), "error"),
                self._system(f"you are {clean(self.nick)} in {where}", "state"),
            ]
        self.joined, self.members, self.counts, self._room_said = [], {}, {}, {}
        if rooms and self.room not in rooms:  # (a run started again: the rooms of the session it restored)
            self.room = rooms[-1]
        lines = []
        if frame.get("resume_failed"):
            lines.append(self._system(not_resumed(frame["resume_failed"]), "error"))
        lines.append(
            self._system(f"welcome! You are {clean(self.nick)}, joining {where}. /help lists commands.", "info")
        )
        return lines

    def asked_quietly(self, rid: int, room: str) -> None:
        """The answer to the question ``rid`` the client asked of itself (who is in ``room``: a run started
        again knows no member) updates the view and shows nothing, a refusal (busy) neither; a refused one is
        asked again when the room next becomes current."""
        self._quiet[rid] = room
        self.asked_who.add(room)

    def _on_room(self, frame: dict[str, Any]) -> list[Line]:
        room = str(frame.get("room", ""))
        nicks = [str(n) for n in _list(frame, "nicks") if isinstance(n, str)]
        if frame.get("type") == "who" and _quiet_one(frame, self._quiet):
            del self._quiet[frame["id"]]
            if room in self.joined:
                self.members[room] = nicks
                users = frame.get("users")
                self.counts[room] = users if type(users) is int and users >= len(nicks) else len(nicks)
            return []
        if room in self.joined:
            self.members[room] = nicks
            users = frame.get("users")  # a join reply lists the first nicks only, with the full count
            self.counts[room] = users if type(users) is int and users >= len(nicks) else len(nicks)
        self._know_room(room)
        if room not in self.joined:  # a joined room's members are completed after those who spoke, from members
            self._know_nicks(nicks)
        lines = self._rendered(frame, "info")
        if frame.get("type") == "room" and "id" not in frame:  # (a /who's answer, type "who", is always shown)
            # A resume resends a room's reply the client may have lost: the same words again say nothing new
            text = "\n".join(line.text.partition(" ")[2] for line in lines)  # (without the time)
            if self._room_said.get(room) == text:
                return []
            self._room_said[room] = text
        return lines

    def _on_rooms(self, frame: dict[str, Any]) -> list[Line]:
        for r in _list(frame, "rooms"):
            if isinstance(r, dict) and isinstance(r.get("name"), str):
                self._know_room(r["name"])
        return self._rendered(frame, "info")

    def _on_topic(self, frame: dict[str, Any]) -> list[Line]:  # the reply (the event has a seq)
        return self._rendered(frame, "info")

    @property
    def room(self) -> str | None:
        """The current room (where plain text goes)."""
        return self.current.room

    @room.setter
    def room(self, room: str | None) -> None:
        self.current.room = room

    def _on_stats(self, frame: dict[str, Any]) -> list[Line]:
        name = clean(frame.get("name", self.server))
        head = (
            f"server {name}: {count_of(frame.get('users', '?'), 'user')}, {count_of(frame.get('rooms', '?'), 'room')}"
        )
        return [self._system(head, "info"), *self._rendered(frame, "info")]

    def _rooms_counted(self) -> list[str]:
        """The rooms we are in, and those a new session's welcome named whose joins have not come yet: a
        change not done told right after that welcome must not leave the current room for want of rooms to
        go back to, and the catch-up replayed before the joins names each line's room as in two rooms."""
        return [*self.joined, *(r for r in self._coming if r not in self.joined)]

    def _on_error(self, frame: dict[str, Any]) -> list[Line]:
        if _quiet_one(frame, self._quiet):  # (the client's own question: nobody asked for its answer)
            self.asked_who.discard(self._quiet.pop(frame["id"]))
            return []
        self.current.refused(frame.get("code"), self._rooms_counted(), frame.get("request"))
        code, why = frame.get("code"), str(frame.get("message", ""))
        if code in (m.Err.NICK_TAKEN, m.Err.BAD_NICK) or (code == m.Err.TOO_FAST and why.startswith("nick changes")):
            self._asked_nick = self.nick  # a rename refused: `/nick` of the own nick is said at once again (a review)
        return self._rendered(frame, "error")

    def _on_gap(self, frame: dict[str, Any]) -> list[Line]:
        return self._rendered(frame, "error")

    def _on_bye(self, frame: dict[str, Any]) -> list[Line]:
        return self._rendered(frame, "state")

    def _on_history(self, frame: dict[str, Any]) -> list[Line]:
        room = str(frame.get("room", ""))
        events = [e for e in _list(frame, "events") if isinstance(e, dict)]
        asked = "id" in frame and room in self._history_asked  # a join's history (no id) answers no /history
        if asked:
            self._history_asked.discard(room)
        if not events and (asked or not frame.get("more")):  # (a hello's rooms past its budget: none sent)
            return [self._system(f"no earlier events in #{clean(room)}", "info")] if asked else []
        # The hint names the next page by its first event's number: a page cut short by size (long lines) or
        # at 500 events is followed all the same
        n = len(events)
        more = more_before(frame.get("more"), events, "" if room == self.room else room)
        lines = [self._system(f"history of #{clean(room)}: {n} event{'' if n == 1 else 's'}{more}", "history")]
        for e in events:
            sender = e.get("from")
            if isinstance(sender, str):
                self._know_speaker(sender)
            line = self._event_line(e, historic=True)
            if line is not None:
                lines.append(line)
        if events:
            lines.append(self._system(f"end of history of #{clean(room)}", "history"))
        return lines

    def _absorb_event(self, frame: dict[str, Any]) -> None:
        """Keep rooms, members and the own nick current (events in a history page never come here)."""
        kind = frame.get("type")
        room = str(frame.get("room", ""))
        me = m.nick_key(self.nick)
        if kind in ("msg", "action", "privmsg"):
            sender = frame.get("from")
            if isinstance(sender, str) and m.nick_key(sender) != me:
                self._know_speaker(sender)
            to = frame.get("to")
            if kind == "privmsg" and isinstance(to, str) and m.nick_key(to) != me:
                self._know_speaker(to)
        elif kind == "join":
            nick = str(frame.get("nick", ""))
            self._know_room(room)
            if m.nick_key(nick) == me and self._nicks.mine(me, frame.get("seq")) and not self._replayed(frame):
                if room in self._coming:
                    self._coming.remove(room)
                if room not in self.joined:
                    self.joined.append(room)
                self.members.setdefault(room, [])
                if self.room is None:
                    self.room = room
            if room in self.members and nick not in self.members[room]:
                self.members[room].append(nick)
                self.counts[room] = self.counts.get(room, 0) + 1
        elif kind == "part":
            nick = str(frame.get("nick", ""))
            if m.nick_key(nick) == me and self._nicks.mine(me, frame.get("seq")) and not self._replayed(frame):
                if room in self._coming:
                    self._coming.remove(room)
                if room in self.joined:
                    self.joined.remove(room)
                self.members.pop(room, None)
                if self.room == room:
                    self.room = self.joined[-1] if self.joined else None
                self.counts.pop(room, None)
            elif room in self.members:
                self._drop_member(room, nick, left_this_room=True)
        elif kind == "quit":
            nick = str(frame.get("nick", ""))
            for r in list(self.members):
                self._drop_member(r, nick, left_this_room=False)  # a quit names no room
            key = m.nick_key(nick)
            self.speakers.pop(key, None)
        elif kind == "nick":
            old, new = str(frame.get("old", "")), str(frame.get("new", ""))
            if self._nicks.nick(frame, self.nick):
                self.nick = self._asked_nick = new
            for r, nicks in self.members.items():
                self.members[r] = [new if m.nick_key(n) == m.nick_key(old) else n for n in nicks]
            if self.speakers.pop(m.nick_key(old), None) is not None:
                self._know_speaker(new)

    def _replayed(self, event: dict[str, Any]) -> bool:
        """An event a resume replayed: the welcome's rooms already have what it did (ClientState alike)."""
        seq = event.get("seq")
        return type(seq) is int and seq <= self._resumed_at

    def _drop_member(self, room: str, nick: str, *, left_this_room: bool) -> None:
        """``nick`` is no longer in ``room`` (if it was): the member list and the count follow. A nick missing
        from a capped member list (the first 500 of a big room) still counts if it surely left this room."""
        key = m.nick_key(nick)
        nicks = self.members[room]
        kept = [n for n in nicks if m.nick_key(n) != key]
        count = self.counts.get(room, len(nicks))
        if len(kept) < len(nicks) or (left_this_room and count > len(nicks)):
            self.counts[room] = max(len(kept), count - 1)
        self.members[room] = kept

    def _event_line(self, frame: dict[str, Any], *, historic: bool) -> Line | None:
        """One event as a styled line. ``historic``: from a history page, dimmed and never ringing."""
        kind = frame.get("type")
        c = clean
        me = m.nick_key(self.nick)
        frags: Fragments = [("class:time", f"{clock(frame.get('ts'))} ")]
        room = str(frame.get("room", ""))
        if kind in ("msg", "action") and room and (room != self.room or len(self._rooms_counted()) > 1):
            frags.append(("class:room", f"#{c(room)} "))  # (other events name their room in their words)
        bell = False
        if kind in ("msg", "action"):
            sender = str(frame.get("from", ""))
            mine = m.nick_key(sender) == me
            text, mentioned = self._text(str(frame.get("text", "")), highlight=not mine)
            bell = mentioned and not historic
            if kind == "msg":
                frags += [(self._nick_style(sender), f"<{c(sender)}>"), ("", " "), *text]
            else:
                frags += [("class:action", "* "), (self._nick_style(sender), c(sender)), ("", " ")]
                frags += [(f"class:action {s}".strip(), t) for s, t in text]
        elif kind == "privmsg":
            sender, to = str(frame.get("from", "")), str(frame.get("to", ""))
            text, _ = self._text(str(frame.get("text", "")), highlight=False)
            mine = sent_by_me(frame, self.nick, self._nicks.had, self._session)
            if mine:
                frags += [("class:privmsg", "-> "), (self._nick_style(to), f"*{c(to)}*"), ("", " ")]
            else:
                frags += [(self._nick_style(sender), f"*{c(sender)}*"), ("class:privmsg", " (private) ")]
                bell = not historic
            frags += [(f"class:privmsg {s}".strip(), t) for s, t in text]
            if mine and (note := held_note(frame)):
                frags.append(("class:event", note))
        else:
            described = self._describe(frame)
            if described is None:
                return None
            frags.append(("class:event", f"-- {described}"))
        if historic:
            frags = [(f"{s} class:history".strip(), t) for s, t in frags]
        return Line(tuple(frags), bell=bell)

    def _describe(self, frame: dict[str, Any]) -> str | None:
        c = clean
        kind = frame.get("type")
        who = c(frame.get("nick", ""))
        room = f"#{c(frame.get('room', ''))}"
        why = f" ({c(frame['reason'])})" if frame.get("reason") else ""
        if kind == "join":
            return f"{who} joined {room}"
        if kind == "part":
            return f"{who} left {room}{why}"
        if kind == "quit":
            return f"{who} quit{why}"
        if kind == "nick":
            return f"{c(frame.get('old', ''))} is now known as {c(frame.get('new', ''))}"
        if kind == "topic":
            return f"{who} set the topic of {room}: {c(frame.get('topic', '')) or '(none)'}"
        return None

    def _text(self, raw: str, *, highlight: bool) -> tuple[Fragments, bool]:
        """Message text, cleaned; with ``highlight``, mentions of the own nick marked. -> (fragments, mentioned)."""
        text = clean(raw)
        if not highlight or not self.nick:
            return [("", text)], False
        rx = _mention_rx(self.nick)
        frags: Fragments = []
        pos = 0
        for hit in rx.finditer(text):
            if any(
                0 <= i < len(text) and unicodedata.category(text[i])[0] == "M" for i in (hit.start() - 1, hit.end())
            ):
                continue  # (राम in रामा or ग्राम: a sign beside it joins it to another word; \w has no signs)
            if hit.start() > pos:
                frags.append(("", text[pos : hit.start()]))
            frags.append(("class:mention", hit.group()))
            pos = hit.end()
        if pos < len(text):
            frags.append(("", text[pos:]))
        return frags or [("", "")], pos > 0

    def _nick_style(self, nick: str) -> str:
        if m.nick_key(nick) == m.nick_key(self.nick):
            return "class:own"
        return f"class:nick fg:{nick_colour(nick)}"

    # --- connection states ---------------------------------------------------------------------------------

    def on_status(self, status: str, reason: str = "") -> list[Line]:
        """A ChatClient state change. Reconnecting is a state, shown as such: typing goes on meanwhile."""
        self.status = status
        if status == "reconnecting":
            self._reconnecting = True
            why = f" ({clean(reason)})" if reason else ""
            line = self._system(f"connection lost{why}: reconnecting; keep typing, it is sent after", "state")
            return self._out([line])
        if status == "connected" and self._reconnecting:
            self._reconnecting = False
            return self._out([self._system(f"connected again to {self.server or self.address}", "state")])
        return []

    def lost(self, reason: str) -> list[Line]:
        """The client gave up reconnecting."""
        self.status = "closed"
        why = f": {clean(reason)}" if reason else ""
        unsent = self.unsent()
        left = f"; {count_of(unsent, 'message')} not sent" if unsent else ""
        return self._out([self._system(f"connection lost for good{why}{left}", "error")])

    def note(self, text: str, kind: str = "info") -> list[Line]:
        """A line of the client's own (connecting..., errors of the glue)."""
        return self._out([self._system(text, kind)])

    # --- input ---------------------------------------------------------------------------------------------

    def submit(self, text: str) -> Submitted:
        """One line the person typed (see typed_lines) -> what to send and what to show. Updates the
        current room."""
        try:
            cmd = parse_command(text, self.room, self.current.rooms(self.joined))
        except RemoteProtocolError as exc:
            return Submitted(lines=self._out([self._system(exc.message, "error")]), refused=True)
        if cmd is None:
            return Submitted()
        if isinstance(cmd, LocalCommand):
            said, refused = self._local(cmd)
            return Submitted(lines=self._out(said), refused=refused)
        if isinstance(cmd, m.Quit):
            return Submitted(quit=cmd)
        if isinstance(cmd, m.Nick):
            if cmd.nick == self.nick == self._asked_nick:  # the server would change nothing, and say nothing
                return Submitted(lines=self._out([self._system(f"you are {clean(self.nick)} already", "info")]))
            self._asked_nick = cmd.nick
        lines: list[Line] = []
        self.current.typed(cmd, self.joined)
        if isinstance(cmd, m.Join):
            self._know_room(cmd.room)
        elif isinstance(cmd, m.History):
            self._history_asked.add(cmd.room)
        elif isinstance(cmd, m.Stats):
            lines.append(self._system(self.describe_session(), "info"))
        queued = None
        if self.status != "connected":  # said at once: else a command typed offline seems ignored until then
            if isinstance(cmd, m.PrivMsg):
                what = f"-> *{cmd.to}* {cmd.text}"
            else:
                what = cmd.text if isinstance(cmd, m.Msg | m.Action) else text.strip()
            queued = self._system(f"queued until reconnected: {clean(what)}", "state")
        return Submitted(requests=[cmd], lines=self._out(lines), queued=queued)

    def taken(self, submitted: Submitted) -> list[Line]:
        """The client took the request of ``submitted``: what to show for it now."""
        return self._out([submitted.queued]) if submitted.queued is not None else []

    def _local(self, cmd: LocalCommand) -> tuple[list[Line], bool]:
        """What a command of the client's own shows, and whether it was refused (the line is given back)."""
        if cmd.name == "switch":
            if not cmd.arg:
                return [self._system(self.next_room(), "info")], False
            refused = self.current.switch(cmd.arg, self.joined)
            if refused:
                return [self._system(refused, "error")], True
            return [self._system(f"now talking in #{cmd.arg}", "info")], False
        return [Line((("class:info", line),)) for line in (CLIENT_HELP + "\n" + KEYS).splitlines()], False

    def next_room(self) -> str:
        """Make the next joined room current (F2, /switch without a room); returns what to tell."""
        refused = self.current.switch("", self.joined)
        if refused:
            return refused
        return f"now talking in #{clean(self.room)} (rooms: {' '.join('#' + clean(r) for r in self.joined)})"

    def describe_session(self) -> str:
        rooms = " ".join("#" + clean(r) for r in self.joined) or "no room"
        unsent = self.unsent()
        return f"{self.status} to {self.server or '?'} ({self.address}) as {clean(self.nick)}; in {rooms}" + (
            f"; {count_of(unsent, 'message')} not yet acknowledged" if unsent else ""
        )

    # --- prompt, status line, completion -------------------------------------------------------------------

    def prompt(self) -> StyleAndTextTuples:
        room = f"#{clean(self.room)}" if self.room else "(no room)"
        return [("class:prompt.room", room), ("class:prompt", "> ")]

    def toolbar(self, width: int | None = None) -> StyleAndTextTuples:
        """The status line: server, room, nick, users in the room, connection state (and unsent posts).
        The server and then the /help hint are left out where they would not fit in ``width`` columns,
        then the longer of the room and the nick is shortened (to TOOLBAR_NAME_MIN columns at least), then
        the count of the other rooms and then of the users go: the terminal cuts the line's end, and the
        state matters more than where."""
        users = self.counts.get(self.room, len(self.members.get(self.room, []))) if self.room else 0
        others = len([r for r in self.current.rooms(self.joined) if r != self.room])  # (not those being left:
        # `no room (+1 room)` while the /part of the only room waited for a reconnect, a walkthrough)
        room, nick = f"#{clean(self.room)}" if self.room else "no room", clean(self.nick)
        server: StyleAndTextTuples = [
            ("class:bottom-toolbar.key", self.server or self.address),
            ("class:bottom-toolbar", f" ({self.address}) | " if self.server and self.address else " | "),
        ]
        unsent = self.unsent()
        tail: StyleAndTextTuples = [(f"class:bottom-toolbar.{self.status}", f" {self.status} ")]
        if unsent:
            tail += [("class:bottom-toolbar", " "), ("class:bottom-toolbar.unsent", f" {unsent} unsent ")]

        shown = {"others": bool(others), "users": True}

        def line(room: str, nick: str) -> StyleAndTextTuples:
            return [
                ("class:bottom-toolbar", " "),
                ("class:bottom-toolbar.key", room),
                ("class:bottom-toolbar", f" (+{count_of(others, 'room')})" if shown["others"] else ""),
                ("class:bottom-toolbar", f" | {nick} | {count_of(users, 'user') + ' | ' if shown['users'] else ''}"),
                *tail,
            ]

        frags = line(room, nick)
        hint: StyleAndTextTuples = [("class:bottom-toolbar", "  /help")]

        def fits(extra: StyleAndTextTuples) -> bool:
            return width is None or fragment_list_width(frags + extra) <= width  # columns: a CJK nick counts twice

        if fits(server):
            frags[1:1] = server
        if fits(hint):
            frags += hint
        while not fits([]):  # a long room or nick (both are up to 32 characters) in a narrow terminal
            if get_cwidth(room) >= get_cwidth(nick) and get_cwidth(room) > TOOLBAR_NAME_MIN:
                room = _shortened(room, get_cwidth(room) - 1)
            elif get_cwidth(nick) > TOOLBAR_NAME_MIN:
                nick = _shortened(nick, get_cwidth(nick) - 1)
            elif gone := next((k for k, v in shown.items() if v), None):  # (+1 room), then 3 users
                shown[gone] = False
            else:
                break  # the terminal cuts what is left
            frags = line(room, nick)
        return frags

    def complete(self, before: str) -> list[tuple[str, int]]:
        """Completions for the text before the cursor: (text to insert, start position relative to the cursor).

        The first word of a line that starts with / is a command; after /join /switch /part /who a room;
        after /msg a nick; elsewhere a word starting with # is a room and any other word a nick (the
        first word of a message gets ``: `` after it, as people address each other on IRC).
        """
        word = before.rsplit(" ", 1)[-1]
        head = before[: len(before) - len(word)]
        if before.startswith("/") and not head:
            commands = [c for c in sorted(COMMANDS) if c.startswith(word.lower())]
            return [(c if c in _NO_ARG_COMMANDS else c + " ", -len(word)) for c in commands]
        command = before.split(" ", 1)[0].lower() if before.startswith("/") else ""
        arg_index = len(head.split())
        if word.startswith("#") or (command in _ROOM_ARG_COMMANDS and arg_index == 1):
            prefix = "#" if word.startswith("#") else ""
            stem = word.removeprefix("#").lower()
            # /switch and /part name one's own rooms (a walkthrough: Tab offered rooms left, then refused them)
            own = command in _OWN_ROOM_COMMANDS and arg_index == 1
            known = self.current.rooms(self.joined) if own else self.known_rooms
            rooms = [r for r in known if r.startswith(stem)]
            return [(prefix + clean(r) + " ", -len(word)) for r in rooms]
        if not word and not (command in _NICK_ARG_COMMANDS and arg_index == 1):  # (/msg and Tab: every nick)
            return []
        suffix = ": " if not head and not before.startswith("/") else " "
        if command in _NICK_ARG_COMMANDS and arg_index != 1:
            suffix = " "
        return [(n + suffix, -len(word)) for n in self.nick_candidates() if n.casefold().startswith(word.casefold())]

    def nick_candidates(self) -> list[str]:
        """Nicks to complete: recent speakers first (latest first), then the current room, then other rooms."""
        me = m.nick_key(self.nick)
        seen: dict[str, str] = {}
        for nick in reversed(self.speakers.values()):
            seen.setdefault(m.nick_key(nick), nick)
        rooms = [self.room] if self.room else []
        rooms += [r for r in self.joined if r != self.room]
        for r in rooms:
            for nick in sorted(self.members.get(r, []), key=str.casefold):
                seen.setdefault(m.nick_key(nick), nick)
        seen.pop(me, None)
        return [clean(n) for n in seen.values()]

    # --- helpers -------------------------------------------------------------------------------------------

    def _know_room(self, room: str) -> None:
        if room and room not in self.known_rooms:
            self.known_rooms[room] = None
            while len(self.known_rooms) > KNOWN_ROOMS_MAX:
                del self.known_rooms[next(iter(self.known_rooms))]

    def _know_nicks(self, nicks: Iterable[str]) -> None:
        for nick in nicks:
            if m.nick_key(nick) not in self.speakers and m.nick_key(nick) != m.nick_key(self.nick):
                self.speakers[m.nick_key(nick)] = nick
        self._trim_speakers()

    def _know_speaker(self, nick: str) -> None:
        key = m.nick_key(nick)
        self.speakers.pop(key, None)
        self.speakers[key] = nick  # most recent last
        self._trim_speakers()

    def _trim_speakers(self) -> None:
        while len(self.speakers) > RECENT_SPEAKERS_MAX:
            del self.speakers[next(iter(self.speakers))]

    def _system(self, text: str, kind: str) -> Line:
        return Line((("class:time", f"{clock(self._now())} "), (f"class:{kind}", f"* {text}")))

    def _rendered(self, frame: dict[str, Any], kind: str) -> list[Line]:
        """A reply as plain.render words it (the same words as piped mode), in the view's style."""
        text = render(frame, self.nick)
        if not text:
            return []
        return [self._system(line.removeprefix("* ").removeprefix("! "), kind) for line in text.splitlines()]

    def _out(self, lines: list[Line]) -> list[Line]:
        self.transcript.extend(line.text for line in lines)
        return lines


# --- prompt_toolkit glue -----------------------------------------------------------------------------------


class ViewCompleter(Completer):
    """Tab completion from the view's commands, nicks and rooms."""

    def __init__(self, view: ChatView) -> None:
        self.view = view

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        for text, start in self.view.complete(document.text_before_cursor):
            yield Completion(text, start_position=start, display=text.strip())


class Printer:
    """Prints lines above the prompt: batched, in order, one erase-and-redraw of the prompt per batch.

    Not through prompt_toolkit's in_terminal(): it switches the terminal to cooked mode for the print, and
    a key typed in that moment was echoed by the terminal itself (a stray character in the chat, a blank
    line), a Ctrl-C became a SIGINT (the client ended with a traceback). At a thousand messages a second
    that was one Ctrl-C in forty. The terminal stays raw here; only the prompt is erased and redrawn."""

    def __init__(self, output: Output, style: BaseStyle | None = None, app: Application[Any] | None = None) -> None:
        self.output = output
        self.style = style or style_for(output)  # (without colours: dim times and bold nicks, as on the prompt)
        self.app = app
        self._pending: list[Line] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reports = _CursorReports(app.renderer) if app is not None else None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tui-printer")

    def show(self, lines: Sequence[Line]) -> None:
        if lines:
            self._pending.extend(lines)
            self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            app = self.app
            if app is None or not app.is_running:
                self.write(batch)
                continue
            if app.is_done:  # a prompt ending (Enter): its last render and its erase are still to come, from
                self._pending[:0] = batch  # where it left the cursor; a line printed now was glued to it
                continue  # (`#lobby> fast 312:06 <ann> fast 2`; a review): printed once it is gone
            app.renderer.erase()  # the prompt and the status line; the cursor where they began
            # erase() turned bracketed paste off until the next render: a paste meanwhile would come
            # unbracketed, each of its lines sent on its own (1 paste in 5 in a busy room)
            app.output.enable_bracketed_paste()
            if self._reports is not None:
                self._reports.printing()
            self.write(batch)
            if not app.key_processor.input_queue:  # as in_terminal: where the prompt may draw now
                app.renderer.request_absolute_cursor_position()
            app.invalidate()  # the prompt and the status line again, below what was printed

    def prompt_ended(self) -> None:
        """The prompt has gone (its erase done): what waited for that is printed now."""
        if self._pending:
            self._wake.set()

    def write(self, lines: Sequence[Line]) -> None:
        bell = False
        for line in lines:
            print_formatted_text(self.output, [*line.fragments, ("", "\n")], self.style)
            bell = bell or line.bell
        if bell:
            self.output.bell()
        self.output.flush()

    async def close(self) -> None:
        """Stop and print whatever is still pending (the prompt is gone by now)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await self._task
            self._task = None
        batch, self._pending = self._pending, []
        with contextlib.suppress(OSError):  # the terminal is gone
            self.write(batch)


def _key_bindings(
    view: ChatView, invalidate: Callable[[], None], show: Callable[[list[Line]], None], moved: Callable[[], None]
) -> KeyBindingsBase:
    """Ctrl-C (clear the line, or quit on an empty one) and F2 (the next room; ``moved`` when it changed)."""
    kb = KeyBindings()

    @kb.add("c-c")
    def _clear_or_quit(event: KeyPressEvent) -> None:
        buffer = event.current_buffer
        if buffer.text:
            buffer.reset()
        else:
            event.app.exit(exception=EOFError())

    @kb.add("f2")
    def _next_room(event: KeyPressEvent) -> None:
        before = view.room
        show(view.note(view.next_room()))
        if view.room != before:
            moved()
        invalidate()

    return merge_key_bindings([kb, _no_mouse()])


def _no_mouse() -> KeyBindings:
    """Mouse reports are never asked for. Bytes that look like one (`ESC [ 31 m`: coloured text pasted where
    the terminal has no bracketed paste) crashed prompt_toolkit's handler, which wants x;y: ignored."""
    kb = KeyBindings()
    kb.add(Keys.Vt100MouseEvent)(lambda event: None)
    return kb


class _ChatApp:
    """One run of the interactive client, for ``run_app``: the view, the prompt, the printer and the
    connection wired together, and what they share (the saved session, the signals, the quit's wait) as
    attributes. Built inside the running loop, before anything is shown or connected; ``run`` then goes
    until /quit, Ctrl-D, a signal or a lost connection, and returns the exit code of `lanchat join`."""

    def __init__(
        self,
        host: str,
        port: int,
        nick: str,
        room: str,
        *,
        server_name: str,
        view: ChatView | None,
        input: Input | None,
        output: Output | None,
        give_up_after: float,
        relocate: Relocator | None,
        sessions: SessionFile | None,
        server_id: str,
    ) -> None:
        self.nick = nick  # as given, for the first notes (the view and the client follow renames)
        self.asked_room, room = room, room or const.DEFAULT_ROOM  # ("": --room not given)
        self.view = view or ChatView(nick, room, server=server_name, address=host_port(host, port))
        self.history = _History()
        self.session = self._prompt_session(input, output)
        self.printer = Printer(self.session.app.output, app=self.session.app)
        # F2 saves at once, as /switch does (a kill before the next event came back in the room before)
        self.session.key_bindings = _key_bindings(
            self.view, self.session.app.invalidate, self.printer.show, self._moved_to
        )

        self.sessions = sessions or SessionFile()
        # The server as a later run finds it: by its id and name if discovery found it (it may move: a restart
        # on another port, a new DHCP address), else by the address it was joined at (moved: where it is now)
        self.server = f"id {server_id} {server_name}" if server_id else host_port(host, port)
        self.saved_as = entry_key(self.server, nick)  # the file of the session, by its nick as it is now
        self.unsaved = False  # a save failed: said once
        self.welcomed = False  # till the first welcome, a save keeps the restored file's time ("left at"; its age)
        self.earlier: Saved | None = None  # the session of a run killed before its goodbye (see _restore)

        self.offline = asyncio.Event()  # set while not connected: /quit then sends nothing first
        self.client = ChatClient(
            host, port, nick, [room], on_frame=self._on_frame, on_status=self._on_status,
            give_up_after=give_up_after, relocate=relocate, saver=self._save,
        )  # fmt: skip
        self.view.unsent = self._unsent

        self.loop = asyncio.get_running_loop()
        self.signalled: asyncio.Future[int] = self.loop.create_future()  # SIGTERM, SIGHUP: quit as /quit does
        self.quit_wait: asyncio.Future[None] | None = None  # _send_before_quitting's Ctrl-C, while it waits
        self.unhooks: list[Callable[[], None]] = []  # the signal handlers and the raw mode, undone at the end
        self.closed: asyncio.Task[None] | None = None  # the client giving up reconnecting (once connected)
        self.again = ""  # a line refused as typed, back in the input to be mended instead of typed anew

    def _prompt_session(self, input: Input | None, output: Output | None) -> _ChatSession:
        session = _ChatSession(
            message=self.view.prompt,
            bottom_toolbar=lambda: self.view.toolbar(_columns()),
            completer=ViewCompleter(self.view),
            complete_while_typing=False,
            history=self.history,
            style=STYLE,
            include_default_pygments_style=False,
            erase_when_done=True,  # the server's echo shows what was said; the typed line would be a duplicate
            enable_suspend=True,  # Ctrl-Z stops the client as it stops any program (else it types a ^Z)
            input=input,
            output=output,
        )
        session.style = style_for(session.app.output)
        _keep_scrollback_clean(session.app.renderer)
        return session

    # --- the run ---------------------------------------------------------------------------------------------

    async def run(self) -> int:
        """The whole run: connect, chat, quit; the exit code. Once connecting started, whatever ends the run
        closes the connection and gives the signals and the terminal back (``_close``)."""
        self._restore()
        self._greet()
        try:
            if (failed := await self._connect()) is not None:
                return failed
            self._catch_up()
            self.closed = asyncio.create_task(self.client.wait_closed(), name="tui-closed")
            self._hook_signals()
            self._hold_raw()
            return await self._chat(self.closed)
        finally:
            await self._close()

    def _restore(self) -> None:
        """The session a run killed before it could say goodbye left, taken (marked as this run's: a second
        run started with it gets none)."""
        self.earlier = earlier = self.sessions.take(self.saved_as)
        if earlier is None:
            return
        attempts = earlier.attempts + RESTORED_ATTEMPT_GAP
        self.client.state.restore(earlier.token, earlier.last_seq, attempts, earlier.next_id, earlier.rooms)
        if earlier.room and not self.asked_room:
            self.view.room = earlier.room  # where the killed run's lines went (the welcome moves it if left)

    def _greet(self) -> None:
        """The printer started, with the first lines: where we connect, and the session we resume."""
        self.printer.start()
        view, earlier, nick = self.view, self.earlier, clean(self.nick)
        where = f"{view.server} ({view.address})" if view.server else view.address
        self.printer.show(view.note(f"connecting to {where} as {nick}"))
        if earlier is not None:
            day = "%H:%M" if time.localtime(earlier.saved_at)[:3] == time.localtime()[:3] else "%Y-%m-%d %H:%M"
            since = time.strftime(day, time.localtime(earlier.saved_at))
            self.printer.show(view.note(f"resuming your session as {nick}, left at {since} without a goodbye"))

    async def _connect(self) -> int | None:
        """The first connection: None once welcomed, else the exit code (and why, shown)."""
        try:
            await self.client.connect()
        except ConnectError as exc:
            self.printer.show(self.view.note(f"lanchat: {clean(str(exc))}", "error"))  # may quote the server's words
            # A restored session is left as it was (held, to be resumed by a later run): the close must not say
            # goodbye for it; unless the server refused it for good (a bad field: it would again, at every start)
            self.client.state.info.token = None
            if self.earlier is not None and exc.exit_code == EXIT_ERROR:
                self.sessions.forget(self.saved_as)
            return exc.exit_code
        return None

    def _catch_up(self) -> None:
        """A run started again, its session restored: who is in the current room, and a --room it is not in."""
        state = self.client.state
        if self.earlier is not None and state.resumed:
            self._know_who_is_here()
        if self.earlier is not None and self.asked_room and self.asked_room not in state.rooms:
            self._join_asked_room()

    def _know_who_is_here(self) -> None:
        """The current room's members, if this run has seen no reply for it (a restored session's rooms, as
        a /part, /switch or F2 makes each current): asked quietly, once a room, for the status line's count
        (it said `0 users` in a room with others, a docs audit). The current room only: a listing costs 10
        lines of the rate, and the session's 50 rooms at once would hold its first lines."""
        room, state = self.view.room, self.client.state
        if room is None or room in self.view.counts or room in self.view.asked_who or room not in state.rooms:
            return
        try:
            self.client.send(m.Who(room))
        except RemoteProtocolError:  # the queue is full while offline: asked when the room next becomes current
            return
        if (asked := state.last_question_id) is not None:
            self.view.asked_quietly(asked, room)

    def _moved_to(self) -> None:
        """The current room changed by the user (/switch, /part's answer, F2): saved at once (a kill before the
        next event came back in the room before), and its members asked for if not known."""
        self.client.save()
        self._know_who_is_here()

    def _join_asked_room(self) -> None:
        """A --room the restored session is not in: joined as if typed (it was ignored)."""
        submitted = self.view.submit(f"/join {self.asked_room}")
        self.printer.show(submitted.lines)
        for req in submitted.requests:
            self.client.send(req)
            self.printer.show(self.view.taken(submitted))

    def _hook_signals(self) -> None:
        """SIGTERM and SIGHUP quit as /quit does, a SIGINT too (_interrupted); a SIGCONT takes the terminal back."""
        self.unhooks.append(on_hangup(self.loop, lambda sig: _resolve(self.signalled, sig)))
        # Not prompt_toolkit's SIGINT handler (handle_sigint=False in _prompt): it turned a `kill -INT` into a
        # KeyboardInterrupt in the prompt's task, which asyncio raises out of the loop (a traceback over the
        # screen, no goodbye).
        self.unhooks.append(handle_signals(self.loop, [signal.SIGINT], self._interrupted))
        self.unhooks.append(handle_signals(self.loop, [signal.SIGCONT], lambda _: _continued(self.session.app)))

    def _hold_raw(self) -> None:
        """Raw for the whole chat, not only while a prompt runs: prompt_toolkit leaves raw mode at the end of
        each prompt_async, and a key typed between Enter and the next prompt was echoed by the terminal
        itself (a stray "s" glued to the next line printed, `s12:03 <ann> ...`), a Ctrl-C there a SIGINT.
        The prompt's own raw mode nests inside this one (it restores what it found: raw)."""
        held_raw = contextlib.ExitStack()
        held_raw.enter_context(self.session.input.raw_mode())
        self.unhooks.append(held_raw.close)

    async def _chat(self, closed: asyncio.Task[None]) -> int:
        """Prompt after prompt until the chat ends: its exit code. ``closed``: the client gave up."""
        while True:
            code = await self._turn(closed)
            if code is not None:
                return code

    async def _turn(self, closed: asyncio.Task[None]) -> int | None:
        """One prompt, until it returns a line, a signal comes or the client gives up, and that answered:
        None to prompt again, else the exit code."""
        had = len(self.history.get_strings())
        prompt = self._prompt()
        waits: set[asyncio.Future[Any]] = {prompt, closed, self.signalled}
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        self.printer.prompt_ended()
        if self.signalled.done():
            await _stop_prompt(self.session, prompt)
            # The same goodbye as /quit, and the same note if it found no server, but at once: lines not
            # acknowledged yet may be dropped (docs/client.md)
            await self._quit(send_first=False)
            return self._quit_code()
        if not prompt.done():  # the client gave up reconnecting
            await _stop_prompt(self.session, prompt)
            self.printer.show(self.view.lost(self.client.lost_reason))
            return self.client.lost_exit
        try:
            text = prompt.result()
        except (EOFError, KeyboardInterrupt):
            await self._quit()
            return self._quit_code()
        return await self._submit(text, had)

    def _prompt(self) -> asyncio.Task[str]:
        """The next prompt, with the line given back to mend (if any), its cursor at the end of the first line."""
        again, self.again = self.again, ""
        at_first_line = functools.partial(_cursor_to, self.session.default_buffer, len(again.split("\n", 1)[0]))
        return asyncio.create_task(
            self.session.prompt_async(default=again, pre_run=at_first_line, handle_sigint=False), name="tui-prompt"
        )

    async def _submit(self, text: str, had: int) -> int | None:
        """What one prompt returned, each of its lines answered before the next (a paste in order): the exit
        code if a /quit ended it, else None. ``had``: how many lines Up had before that prompt."""
        lines = typed_lines(text)
        room_before = self.view.room
        for at, line in enumerate(lines):
            submitted = self.view.submit(line)
            self.printer.show(submitted.lines)
            if submitted.quit is not None:  # the lines before it are sent: the quit follows them
                await self._quit(submitted.quit.reason)
                return self._quit_code()
            taken = self._send(submitted)
            if submitted.refused or not taken:
                # In the input again, with the rest of its paste (those before it are sent: Up bringing the
                # whole paste back sent them twice)
                self.again = "\n".join(lines[at:])
                self.history.take_back(text, had)  # (Up's first entry would be the same line)
                break
        if self.view.room != room_before:  # (/switch sends nothing: saved now, not at the next event)
            self._moved_to()
        return None

    def _send(self, submitted: Submitted) -> bool:
        """The requests of one line, handed to the client: False if it refused one (and why, shown)."""
        taken = True
        for req in submitted.requests:
            try:
                self.client.send(req)
            except RemoteProtocolError as exc:  # the outbox is full, or the line too long for this server
                self.view.current.not_sent(req)
                self.printer.show(self.view.note(exc.message, "error"))
                taken = False
            else:
                self.printer.show(self.view.taken(submitted))
        return taken

    async def _close(self) -> None:
        """The end of every run, however it ends: the signals and the terminal given back, the connection
        closed (if no quit closed it), what is still to print printed."""
        for unhook in self.unhooks:
            unhook()
        if self.closed is not None:
            self.closed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.closed
        if self.client.status != "closed":
            await self.client.close()
        await self.printer.close()

    # --- the client's callbacks ------------------------------------------------------------------------------

    def _unsent(self) -> int:
        """Posts the server has not acknowledged yet (the view's status line and /status)."""
        return self.client.state.unacked

    def _on_frame(self, frame: dict[str, Any]) -> None:
        """A frame from the server: shown (or the status line redrawn), the session's file renamed with us."""
        kind = frame.get("type")
        self.welcomed = self.welcomed or kind == "welcome"
        room = self.view.room
        lines = self.view.on_frame(frame)
        if self.view.room != room and kind != "welcome":  # (a /part's event; the welcome's is _catch_up's)
            self._know_who_is_here()
        renamed = kind in ("nick", "welcome") and entry_key(self.server, self.client.nick) != self.saved_as
        if renamed and self.client.state.registered:  # (only these frames change our nick)
            self.client.save()  # our nick changed: the file follows it now, not a second later (a kill then)
        if lines:
            self.printer.show(lines)  # which redraws the prompt and the status line once for the batch
        else:
            self.session.app.invalidate()  # the status line may have changed (a count of users, an ack)

    def _on_status(self, status: str) -> None:
        """The connection's state changed: said, the status line redrawn, /quit's wait told if offline."""
        if status == "moved":
            self._moved()
            return
        self.printer.show(self.view.on_status(status, self.client.lost_reason))
        self.session.app.invalidate()
        if status == "connected":
            self.offline.clear()
        else:
            self.offline.set()

    def _moved(self) -> None:
        """Still reconnecting: to the address discovery found the server at now (the saved session is under
        the server's id, found there by a later run too)."""
        self.view.address = host_port(self.client.host, self.client.port)
        where = f"{self.view.server or 'the server'} is at {self.view.address} now"
        self.printer.show(self.view.note(f"{where}: connecting there", "state"))
        self.session.app.invalidate()

    def _save(self, state: ClientState) -> None:
        """What a later run needs to resume the session, kept in its file (the client's saver)."""
        if (kept := state.saved_view()) is None:
            return
        key = entry_key(self.server, state.info.nick)
        if key != self.saved_as:  # renamed: `lanchat join --nick NEW` resumes it now (two runs that began as
            self.sessions.forget(self.saved_as)  # one nick, one since renamed, do not share a file)
            self.saved_as = key
        at = self.earlier.saved_at if self.earlier is not None and not self.welcomed else None
        if not self.sessions.save(key, Saved(*kept, room=self.view.room or ""), now=at) and not self.unsaved:
            self.unsaved = True
            where = self.sessions.directory
            self.printer.show(self.view.note(f"cannot keep the session for a restart in {where}", "error"))

    # --- quitting --------------------------------------------------------------------------------------------

    async def _quit(self, reason: str = "", *, send_first: bool = True) -> None:
        """The goodbye (with ``send_first``, after what was typed is sent), the saved session kept for the
        next run or forgotten, and what may not have reached the server, said."""
        client = self.client
        if send_first and client.state.unacked and client.status == "connected":
            await self._send_before_quitting()
        never = client.never_sent  # typed while disconnected: close() does not send them
        await client.close(reason)
        if client.goodbye_lost:  # the server may hold the session: the next run resumes it
            client.save()
        else:  # ended: nothing to resume
            self.sessions.forget(self.saved_as)
        self._say_what_was_lost(never)

    def _say_what_was_lost(self, never: int) -> None:
        """After the goodbye: ``never`` posts typed while disconnected, and those maybe not sent."""
        note = self.view.note
        if never:
            self.printer.show(note(f"{count_of(never, 'message')} not sent (typed while disconnected)", "error"))
        if (maybe := self.client.state.unacked - never) > 0:
            # Those before the quit reach the server if it reads them within GOODBYE_LINGER, but the quit
            # ends the connection before their acks: "may", not "were not"
            left = count_of(maybe, "message")
            self.printer.show(note(f"{left} may not have been sent (no acknowledgement)", "error"))
        if self.client.goodbye_lost:  # (kept for the next run: _quit saved it)
            self.printer.show(note(f"{GOODBYE_LOST_NOTE}; `lanchat join` here again resumes it", "error"))

    async def _send_before_quitting(self) -> None:
        """/quit and Ctrl-D first send what was typed (a paste ending in /quit: its lines at the server's
        rate), unless Ctrl-C, a signal or a lost connection says otherwise (what is left is then dropped,
        and the goodbye says how many)."""
        left = count_of(self.client.state.unacked, "message")
        self.printer.show(self.view.note(f"sending {left} before quitting (Ctrl-C: quit now)"))
        skip: asyncio.Future[None] = self.loop.create_future()
        waits: set[asyncio.Future[Any]] = {
            asyncio.ensure_future(self.client.wait_acked()),
            asyncio.ensure_future(self.offline.wait()),
            skip,
        }
        # The prompt is gone: Ctrl-C is a SIGINT now (interrupted), Ctrl-\ a SIGQUIT, which would have ended
        # the client with a core and no goodbye, the terminal left unechoed: both quit now. What else is typed
        # is neither shown nor kept.
        self.quit_wait = skip
        unhook_quit = handle_signals(self.loop, [signal.SIGQUIT], lambda _: _resolve(skip, None))
        try:
            with _signals_only(self.session.input):
                await asyncio.wait({*waits, self.signalled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.quit_wait = None
            unhook_quit()
            for w in waits:
                w.cancel()

    def _quit_code(self) -> int:
        """After a quit: a signal during its wait (_send_before_quitting) ends the client as a signal does."""
        return 128 + self.signalled.result() if self.signalled.done() else EXIT_OK  # the shell's "killed by signal N"

    def _interrupted(self, signum: int) -> None:
        """SIGINT: Ctrl-C during /quit's wait for unsent lines (quit now, as /quit); else a `kill -INT` from
        outside (the keyboard's Ctrl-C is a key, the terminal being raw), which quits as SIGTERM does."""
        if self.quit_wait is not None:
            _resolve(self.quit_wait, None)
        else:
            _resolve(self.signalled, signum)


async def run_app(
    host: str,
    port: int,
    nick: str,
    room: str,
    *,
    server_name: str = "",
    view: ChatView | None = None,
    input: Input | None = None,
    output: Output | None = None,
    give_up_after: float = const.RECONNECT_GIVE_UP,
    relocate: Relocator | None = None,
    sessions: SessionFile | None = None,
    server_id: str = "",
) -> int:
    """The interactive client until /quit, Ctrl-D or a lost connection. Returns the exit code of `lanchat join`.

    ``input``/``output`` default to the terminal; tests pass a pipe input and a DummyOutput. ``sessions``:
    where the session is kept for a later run to resume (saved.py; default: the user's state directory),
    under ``server_id`` and the server's name if discovery found it (a later run finds it there wherever it
    moved), else under its address.
    """
    app = _ChatApp(
        host, port, nick, room, server_name=server_name, view=view, input=input, output=output,
        give_up_after=give_up_after, relocate=relocate, sessions=sessions, server_id=server_id,
    )  # fmt: skip
    return await app.run()


class _CursorReports:
    """A cursor position report answers its request, not the present. One asked for before lines were printed
    above the prompt (prompt_toolkit asks as a prompt starts, the printer after each batch) comes back with a
    row those lines have since moved the cursor past, and the prompt, its status line at the bottom, then took
    rows that were not free: the terminal scrolled, and what had been printed since went into the scrollback
    (seen under load: the lines before a message gone from the screen). Such a report is taken as "no row free
    below" (the prompt draws at its own height) until a fresh one comes."""

    def __init__(self, renderer: Renderer) -> None:
        self.stale = 0  # reports still to come for requests made before the last print
        real = renderer.report_absolute_cursor_row

        def report(row: int) -> None:
            if self.stale:
                self.stale -= 1
                row = renderer.output.get_size().rows  # (the last row: one row below, its own height)
            real(row)

        renderer.report_absolute_cursor_row = report  # type: ignore[method-assign]
        self._renderer = renderer

    def printing(self) -> None:
        """Lines are about to be printed above the prompt: the reports asked for until now are stale."""
        self.stale = len(self._renderer._waiting_for_cpr_futures)


def _keep_scrollback_clean(renderer: Renderer) -> None:
    """The prompt's erase, without an erase-below from the screen's top left. tmux (3.2 and later, its
    scroll-on-clear on by default) takes that for a clear of the whole screen and keeps what it erases in
    its scrollback: after Ctrl-L, with the prompt at the top, every message arriving and every line sent
    left a copy of the input and the status line there (a classroom walkthrough: a pasted poem, twice).
    The prompt's first row is erased alone, the rows below it from the second, and the cursor is put back
    where it was saved, not moved up: on the screen's last row the move down does nothing, and a move up
    put the next line over the last line of chat (a review: one line in 20 lost in a burst)."""

    def erase(leave_alternate_screen: bool = True) -> None:
        out, at = renderer.output, renderer._cursor_pos
        out.cursor_backward(at.x)
        out.cursor_up(at.y)
        out.erase_end_of_line()  # (from column 0: the whole row)
        out.write_raw("\x1b7")  # DECSC: save the cursor
        out.cursor_down(1)
        out.erase_down()
        out.write_raw("\x1b8")  # DECRC: back to the prompt's first row
        out.reset_attributes()
        out.enable_autowrap()
        out.flush()
        renderer.reset(leave_alternate_screen=leave_alternate_screen)

    renderer.erase = erase  # type: ignore[method-assign]


def _quiet_one(frame: dict[str, Any], quiet: Mapping[int, str]) -> bool:
    """The answer to one of the client's own questions (``ChatView.asked_quietly``)."""
    rid = frame.get("id")
    return type(rid) is int and rid in quiet


def _cursor_to(buffer: Buffer, position: int) -> None:
    """A refused line back in the input with the rest of its paste: the cursor at its end, not the paste's."""
    buffer.cursor_position = position


class _History(InMemoryHistory):
    """Up's lines, of which a refused one, given back to the input, is taken back."""

    def take_back(self, line: str, before: int) -> None:
        """``before``: how many lines it had before the prompt that took ``line`` (prompt_toolkit adds no
        line equal to the newest: then the newest is an earlier one, and stays)."""
        if len(self._loaded_strings) > before and self._loaded_strings[0] == line and self._storage[-1:] == [line]:
            del self._loaded_strings[0], self._storage[-1]


class _ChatSession(PromptSession[str]):
    """prompt_toolkit's session, its input fitted to the window at each redraw (a window made short while a
    prompt is open included)."""

    def _get_default_buffer_control_height(self) -> Dimension:
        """The input's rows, fewer than the window's. A paste taller than the window was drawn past its top,
        and those rows were left in the scrollback (twice, with a status line) when it was sent or a
        message came: the input scrolls within them instead, the cursor's line in view. The rows kept for
        the completion menu (prompt_toolkit's 8) are fitted alike: in a window of 7, Tab said "Window too
        small..." in place of the whole screen."""
        wanted = super()._get_default_buffer_control_height()
        most = max(1, self.app.output.get_size().rows - INPUT_ROWS_SPARED)
        return Dimension(  # (what it left unspecified stays so: the window's content decides it)
            min=min(wanted.min, most) if wanted.min_specified else None,
            max=min(wanted.max, most),
            preferred=min(wanted.preferred, most) if wanted.preferred_specified else None,
        )


def _continued(app: Application[Any]) -> None:
    """SIGCONT: back from a stop. After a `kill -TSTP` and `fg` the shell hands the terminal back in its own
    mode, not ours: without raw mode again, keys would echo and Ctrl-C would be a SIGINT. (Ctrl-Z goes
    through prompt_toolkit, which takes the terminal back and redraws itself: drawing again would show
    the prompt twice.)

    Continued in the background (a `kill -STOP`, then a `kill -CONT`), it stops itself again, as a program
    that needs its terminal is stopped when it touches it (SIGTTOU): running there, the shell's `fg` would
    send it no SIGCONT (only the terminal, in the shell's mode: keys were echoed until Enter sent the line),
    and its redraws and cursor-position queries would land in the shell's input line. Stopped, `fg`
    continues it, here again, in the foreground."""
    if not app.is_running:
        return
    try:
        fd = app.input.fileno()
        if os.tcgetpgrp(fd) != os.getpgrp():
            os.kill(os.getpid(), signal.SIGTTOU)
            return
        lflag = termios.tcgetattr(fd)[3]
    except (termios.error, OSError, ValueError, NotImplementedError):  # not a terminal (tests: a pipe)
        return
    if lflag & (termios.ICANON | termios.ECHO):
        app.input.raw_mode().__enter__()  # no exit: the app's own raw mode restores the terminal at its end
        app.renderer.reset()  # the screen was the shell's meanwhile: draw the prompt anew
        if not app.key_processor.input_queue:  # where the prompt is now (else no room for the status line
            app.renderer.request_absolute_cursor_position()  # at the bottom row), as the Printer asks it
        app.invalidate()


@contextlib.contextmanager
def _signals_only(terminal: Input) -> Iterator[None]:
    """The terminal while /quit waits for unsent lines, with no prompt: Ctrl-C a SIGINT (quit now), keys not
    echoed (a walkthrough: typed there, they were glued to the chat's lines, `see you02:56 <carol> …`),
    and what was typed dropped at the end (it reached the shell after the exit, `hello: command not
    found`). Not a terminal (tests: a pipe): nothing to do."""
    before: list[Any] | None = None
    try:
        fd = terminal.fileno()
        before = termios.tcgetattr(fd)
        mode = [*before[:3], (before[3] | termios.ISIG) & ~(termios.ECHO | termios.ICANON), *before[4:6]]
        # Ctrl-Z no signal: stopped there, the client came back after `fg` in the shell's mode, keys echoed
        off = bytes([os.fpathconf(fd, "PC_VDISABLE")])  # (0 on Linux, 0xff on the BSDs)
        mode.append([off if i == termios.VSUSP else c for i, c in enumerate(before[6])])
        termios.tcsetattr(fd, termios.TCSANOW, mode)
    except (termios.error, OSError, ValueError, NotImplementedError):
        before = None
    try:
        yield
    finally:
        if before is not None:
            with contextlib.suppress(termios.error, OSError):
                termios.tcflush(fd, termios.TCIFLUSH)
                termios.tcsetattr(fd, termios.TCSANOW, before)


async def _stop_prompt(session: PromptSession[str], prompt: asyncio.Task[str]) -> None:
    app = session.app
    if app.is_running and not app.is_done:
        app.exit(exception=EOFError())
    else:
        prompt.cancel()
    with contextlib.suppress(EOFError, KeyboardInterrupt, asyncio.CancelledError):
        await prompt


class HungUpOutput(Vt100_Output):
    """The terminal's output, quiet once the terminal is gone. A closed window or a dropped ssh session
    hangs the terminal up: every write then fails (EIO), and prompt_toolkit would raise from the redraw
    that ends the prompt, before the goodbye is sent (the nick held for --resume-grace, a traceback, exit
    1), and from any print above the prompt (with in_terminal(), which the printer once used, a client that
    never exited). The SIGHUP that comes with the hang-up ends the client as /quit does."""

    def flush(self) -> None:
        with contextlib.suppress(OSError):  # EINTR is handled inside; what is left means no terminal
            super().flush()


_SizesCache: Any = getattr(prompt_toolkit.utils, "_CharSizesCache", dict)  # (private: see _count_spacing_signs)


class _TerminalWidths(_SizesCache):  # type: ignore[misc]
    def __missing__(self, string: str) -> int:
        if len(string) == 1 and unicodedata.category(string) == "Mc":
            self[string] = 1
            return 1
        return int(super().__missing__(string))


def _count_spacing_signs() -> None:
    """prompt_toolkit takes a character's width from the wcwidth package, which counts a spacing sign (Unicode
    Mc: the vowel signs of प्रिया, कैसी) as 0 columns, where terminals count 1 (glibc's wcwidth, and with it
    tmux, xterm, VTE): with Hindi in the input line, a line printed above it got the prompt's first letters
    glued before it and the cursor sat short of the text (a review). Its cache of widths, from which every
    string's is summed, answers 1 for them instead (a private class: if it is gone, nothing changes)."""
    utils = prompt_toolkit.utils
    if _SizesCache is not dict and not isinstance(utils._CHAR_SIZES_CACHE, _TerminalWidths):
        utils._CHAR_SIZES_CACHE = _TerminalWidths()


def terminal_output() -> Output:
    """The output prompt_toolkit would pick for stdout (create_output), hang-up-safe on a terminal."""
    _count_spacing_signs()
    if not sys.stdout.isatty():
        return create_output()
    return HungUpOutput.from_pty(
        sys.stdout,
        term=get_term_environment_variable(),
        default_color_depth=ColorDepth.from_env(),
        enable_bell=get_bell_environment_variable(),
    )


def _columns() -> int | None:
    """The terminal's width, as prompt_toolkit last measured it (the status line is drawn only while the
    prompt runs; None if the output cannot tell)."""
    try:
        columns: int = get_app().output.get_size().columns
    except Exception:  # no app, or an output that cannot tell: the full line
        return None
    return columns


def run_tui(
    host: str,
    port: int,
    nick: str,
    room: str,
    *,
    server_name: str = "",
    relocate: Relocator | None = None,
    server_id: str = "",
) -> int:
    """`lanchat join` on a terminal. Stray writes to stdout/stderr (a warning, a log line) are printed
    above the prompt by patch_stdout instead of through it."""
    output = terminal_output()  # before patch_stdout replaces sys.stdout
    try:
        with patch_stdout():
            return asyncio.run(
                run_app(
                    host,
                    port,
                    nick,
                    room,
                    server_name=server_name,
                    output=output,
                    relocate=relocate,
                    server_id=server_id,
                )
            )
    except KeyboardInterrupt:  # Ctrl-C before the prompt took the keyboard (while connecting): the terminal
        with contextlib.suppress(OSError):  # echoed ^C, and the shell's prompt would follow it on its row
            sys.stderr.write("\n")
            sys.stderr.flush()
        return EXIT_INTERRUPTED


# --- choosing among several servers ------------------------------------------------------------------------


def server_lines(found: Sequence[ServerRecord]) -> list[Line]:
    """The numbered list of servers discovery found (names come from the LAN: cleaned)."""
    lines = [Line((("class:info", "Several lanchat servers answered:"),))]
    names = [clean(s.name)[:40] for s in found]
    addresses = [f"{clean(s.host)}:{s.port}" for s in found]
    # In columns whatever the lengths (a review: `10.73.0.22:47102` beside `10.73.0.1:47120` shifted them)
    name_width = max([24, *(get_cwidth(n) for n in names)])
    address_width = max(len(a) for a in addresses) if addresses else 0
    for i, (s, name, address) in enumerate(zip(found, names, addresses, strict=True), 1):
        latency = f"{s.latency_ms:.1f} ms" if s.latency_ms is not None else "-"
        pad = " " * (name_width - get_cwidth(name))  # (by the columns drawn: a wide character takes two)
        counts = f"{count_of(s.users, 'user')}, {count_of(s.rooms, 'room')}, {latency}"
        lines.append(
            Line(
                (
                    ("class:prompt", f"  {i:>2}  "),
                    ("class:nick", name + pad),
                    ("", f" {address:<{address_width}}  {counts}"),
                )
            )
        )
    return lines


def _in_order(found: Sequence[ServerRecord]) -> list[ServerRecord]:
    """The order the chooser lists servers in (documented): by name, then address."""
    return sorted(found, key=lambda s: (s.name.casefold(), s.host, s.port))


def pick_server(found: Sequence[ServerRecord], answer: str) -> ServerRecord | None:
    """An answer (a number or a server name) -> the server; None if it names none."""
    answer = answer.strip()
    if answer.isascii() and answer.isdigit() and len(answer) <= 6 and 1 <= int(answer) <= len(found):
        return found[int(answer) - 1]
    named = [s for s in found if s.name.casefold() == answer.casefold()]
    return named[0] if len(named) == 1 else None


def pick_problem(found: Sequence[ServerRecord], answer: str) -> str | None:
    """Why ``answer`` picks no server (None: it picks one, or cancels)."""
    if answer.strip().lower() in ("", "q") or pick_server(found, answer) is not None:
        return None
    named = [s for s in found if s.name.casefold() == answer.strip().casefold()]
    if named:  # two servers may share a name (two labs both called "lab"): only their numbers tell them apart
        return f"{len(named)} servers are named {clean(answer.strip())}: type the number of one"
    return f"a number from 1 to {len(found)}, a name, or q"


async def choose_server(
    found: list[ServerRecord], *, input: Input | None = None, output: Output | None = None
) -> ServerRecord | None:
    """Ask which of several discovered servers to join (a number or a name; empty, q, Ctrl-C: none)."""
    found = _in_order(found)

    class Answer(Validator):
        def validate(self, document: Document) -> None:
            why = pick_problem(found, document.text)
            if why:
                raise ValidationError(len(document.text), why + " (edit the line)")

    session: PromptSession[str] = PromptSession(
        input=input, output=output or terminal_output(), style=STYLE, key_bindings=_no_mouse()
    )
    Printer(session.app.output).write(server_lines(found))
    validator = Answer()
    try:
        answer = await session.prompt_async(
            f"Join which one? [1-{len(found)}, q to cancel] ", validator=validator, validate_while_typing=False
        )
    except (EOFError, KeyboardInterrupt):
        return None
    return pick_server(found, answer)


def choose_server_by_line(
    found: list[ServerRecord], *, read: Callable[[str], str] | None = None, write: TextIO | None = None
) -> ServerRecord | None:
    """choose_server for a terminal that cannot move its cursor (TERM=dumb): the list and the question as
    plain lines, asked again until answered (end of input: none)."""
    found = _in_order(found)
    read, write = read or input, write or sys.stderr
    for line in server_lines(found):
        print(line.text, file=write, flush=True)
    while True:
        try:
            answer = read(f"Join which one? [1-{len(found)}, q to cancel] ")
        except (EOFError, KeyboardInterrupt):
            return None
        why = pick_problem(found, answer)
        if why is None:
            return pick_server(found, answer)  # (None: cancelled)
        print(why, file=write, flush=True)


__all__ = [
    "STYLE",
    "ChatView",
    "Line",
    "Printer",
    "Submitted",
    "ViewCompleter",
    "choose_server",
    "choose_server_by_line",
    "nick_colour",
    "run_app",
    "run_tui",
    "typed_lines",
]
