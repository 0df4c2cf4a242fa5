"""The terminal UI without a terminal: the ChatView model with frames and typed lines, then the whole app
(prompt_toolkit with a pipe input and a DummyOutput) against a real server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prompt_toolkit.application.current import get_app_or_none
from prompt_toolkit.data_structures import Size
from prompt_toolkit.formatted_text import fragment_list_width
from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output import ColorDepth, DummyOutput, Output
from prompt_toolkit.output.vt100 import Vt100_Output
from prompt_toolkit.renderer import CPR_Support, Renderer, print_formatted_text
from prompt_toolkit.utils import get_cwidth

from lanchat.client import tui
from lanchat.client.connection import EXIT_LOST, EXIT_NICK, EXIT_OK, EXIT_UNREACHABLE
from lanchat.client.saved import RESTORED_ATTEMPT_GAP, Saved, SessionFile, entry_key
from lanchat.client.tui import (
    PALETTE,
    ChatView,
    Line,
    Printer,
    choose_server,
    nick_colour,
    pick_problem,
    pick_server,
    run_app,
    server_lines,
    typed_lines,
)
from lanchat.discovery.browser import ServerRecord
from lanchat.protocol import messages as m
from lanchat.protocol.beacon import clean_name
from lanchat.protocol.plain import clock

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from support import ServerProcess, free_port

T = TypeVar("T")
Frame = dict[str, Any]
TS = 1_700_000_000.0
UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def ev(kind: str, seq: int = 1, /, **fields: Any) -> Frame:
    return {"type": kind, "seq": seq, "ts": TS, **fields}


def joined_view(nick: str = "alice", others: tuple[str, ...] = ("bob",)) -> ChatView:
    """A view as after connecting: welcome, own join, the room reply."""
    view = ChatView(nick, "lobby", server="office", address="127.0.0.1:7272")
    view.on_status("connected")
    view.on_frame({"type": "welcome", "nick": nick, "rooms": ["lobby"], "resumed": False, "seq": 0})
    view.on_frame(ev("join", room="lobby", nick=nick))
    view.on_frame({"type": "room", "room": "lobby", "topic": "", "nicks": [*others, nick]})
    return view


def styles(line: Line) -> list[str]:
    return [style for style, _ in line.fragments]


def toolbar(view: ChatView) -> str:
    return "".join(frag[1] for frag in view.toolbar())


# --- formatting --------------------------------------------------------------------------------------------


def test_a_message_has_a_timestamp_and_the_sender_in_a_stable_colour() -> None:
    view = joined_view()
    [line] = view.on_frame(ev("msg", room="lobby", **{"from": "bob"}, text="hello"))
    assert line.text == f"{clock(TS)} <bob> hello"
    assert ("class:nick fg:ansiyellow", "<bob>") in line.fragments
    assert not line.bell
    # crc32 of the case-folded nick: the same colour in every run, for every spelling of the nick
    assert nick_colour("bob") == nick_colour("BOB") == "ansiyellow"
    assert nick_colour("alice") == "ansibrightgreen"
    assert len({nick_colour(f"user{i}") for i in range(40)}) >= len(PALETTE) - 2  # nicks spread over the palette


def test_a_nick_with_signs_is_mentioned_as_a_word_of_its_own() -> None:
    """राम is a word in "राम, look" but not in रामा, nor in ग्राम (a sign beside it: \\w holds no signs)."""
    view = joined_view("राम")
    [line] = view.on_frame(ev("msg", room="lobby", **{"from": "bob"}, text="राम, look"))
    assert line.bell and ("class:mention", "राम") in line.fragments
    for seq, text in enumerate(("रामा and रामु", "मेरे ग्राम में", "थोड़ा विश्राम करो"), 2):  # (village, rest: a sign before)
        [other] = view.on_frame(ev("msg", seq, room="lobby", **{"from": "bob"}, text=text))
        assert not other.bell and "class:mention" not in styles(other), text


def test_own_messages_are_distinguishable_and_never_ring() -> None:
    view = joined_view()
    [own] = view.on_frame(ev("msg", room="lobby", **{"from": "alice"}, text="I am alice"))
    [other] = view.on_frame(ev("msg", 2, room="lobby", **{"from": "bob"}, text="I am bob"))
    assert ("class:own", "<alice>") in own.fragments
    assert "class:own" not in styles(other)
    assert not own.bell  # a mention of oneself by oneself
    assert "class:mention" not in styles(own)


def test_a_mention_is_highlighted_and_rings_but_not_a_word_that_contains_the_nick() -> None:
    view = joined_view()
    [line] = view.on_frame(ev("msg", room="lobby", **{"from": "bob"}, text="hey ALICE, look"))
    assert line.bell
    assert ("class:mention", "ALICE") in line.fragments
    assert line.text.endswith("<bob> hey ALICE, look")
    [action] = view.on_frame(ev("action", 2, room="lobby", **{"from": "bob"}, text="pokes alice"))
    assert action.bell and any("class:mention" in s for s in styles(action))
    [plain] = view.on_frame(ev("msg", 3, room="lobby", **{"from": "bob"}, text="malice and alices"))
    assert not plain.bell and "class:mention" not in styles(plain)
    [private] = view.on_frame(ev("privmsg", 4, **{"from": "bob"}, to="alice", text="psst"))
    assert private.bell and "(private)" in private.text
    [sent] = view.on_frame(ev("privmsg", 5, **{"from": "alice"}, to="bob", text="psst back"))
    assert not sent.bell and sent.text.endswith("-> *bob* psst back")
    [away] = view.on_frame(ev("privmsg", 6, **{"from": "alice"}, to="bob", text="there?", held=30))
    assert away.text.endswith("-> *bob* there?  (bob is disconnected: they get it when their client reconnects"
                              "; their session is held 30 s more)")  # fmt: skip


def test_system_events_look_different_from_chat() -> None:
    view = joined_view()
    chat = view.on_frame(ev("msg", room="lobby", **{"from": "bob"}, text="x"))[0]
    events = [
        ev("join", 2, room="lobby", nick="carol"),
        ev("part", 3, room="lobby", nick="carol", reason="lunch"),
        ev("quit", 4, nick="bob", reason="gone"),
        ev("nick", 5, old="dave", new="david"),
        ev("topic", 6, room="lobby", nick="alice", topic="plans"),
    ]
    lines = [view.on_frame(e)[0] for e in events]
    assert [line.text.split(" ", 1)[1] for line in lines] == [
        "-- carol joined #lobby",
        "-- carol left #lobby (lunch)",
        "-- bob quit (gone)",
        "-- dave is now known as david",
        "-- alice set the topic of #lobby: plans",
    ]
    assert all("class:event" in styles(line) for line in lines)
    assert "class:event" not in styles(chat)
    [error] = view.on_frame({"type": "error", "code": "no_such_nick", "message": "no one is called zed"})
    assert "class:error" in styles(error) and "no one is called zed" in error.text
    [state] = view.on_status("reconnecting", "connection reset")
    assert "class:state" in styles(state) and "class:error" not in styles(state)


def test_network_strings_are_neutralised_everywhere() -> None:
    evil = "\x1b[2J\x1b]0;pwned\x07\u202eevil\u2066\x9b31m\r\n"
    view = ChatView("alice", "lobby", server=f"srv{evil}", address="127.0.0.1:1")
    frames: list[Frame] = [
        {"type": "welcome", "nick": "alice", "rooms": ["lobby"], "resumed": False},
        ev("join", room="lobby", nick="alice"),
        {"type": "room", "room": "lobby", "topic": evil, "nicks": [f"m{evil}", "alice"]},
        ev("msg", 2, room="lobby", **{"from": f"m{evil}"}, text=f"alice {evil}"),
        ev("action", 3, room="lobby", **{"from": f"m{evil}"}, text=evil),
        ev("privmsg", 4, **{"from": f"m{evil}"}, to="alice", text=evil),
        ev("topic", 5, room="lobby", nick=f"m{evil}", topic=evil),
        ev("part", 6, room="lobby", nick=f"m{evil}", reason=evil),
        ev("nick", 7, old=f"m{evil}", new=f"n{evil}"),
        ev("quit", 8, nick=f"n{evil}", reason=evil),
        {"type": "error", "code": evil, "message": evil},
        {"type": "bye", "reason": evil},
        {"type": "history", "room": "lobby", "more": False, "events": [ev("msg", 1, room="lobby", text=evil)]},
        {"type": "rooms", "rooms": [{"name": evil, "users": evil}]},
        {"type": "stats", "name": evil, "users": 1, "rooms": 1, "processes": [{"role": evil, "pid": 1}]},
    ]
    texts = [line.text for frame in frames for line in view.on_frame(frame)]
    texts += [line.text for line in view.on_status("reconnecting", evil)]
    texts.append(toolbar(view))
    assert len(texts) > 15
    for text in texts:
        assert not UNSAFE.search(text), repr(text)
    assert any("\ufffd[2J" in t for t in texts)  # shown, but harmless
    assert all("\x1b" not in t and "\u202e" not in t for t in view.transcript)


def test_a_history_page_is_dimmed_never_rings_and_changes_no_membership() -> None:
    view = joined_view()
    page = {
        "type": "history",
        "room": "lobby",
        "more": True,
        "events": [
            ev("join", 1, room="lobby", nick="zoe"),
            ev("msg", 2, room="lobby", **{"from": "zoe"}, text="alice?"),
        ],
    }
    lines = view.on_frame(page)
    assert "2 events" in lines[0].text  # and the hint asks for more than this page:
    assert "more before: /history 100 before 1" in lines[0].text  # the page before its oldest event
    assert len(lines) == 4 and "end of history" in lines[-1].text
    assert all(all("class:history" in s for s in styles(line)) for line in lines[1:-1])  # every fragment dimmed
    assert "class:history" in styles(lines[0])
    assert not any(line.bell for line in lines)
    assert "zoe" not in view.members["lobby"]  # the past is not the present
    assert view.nick_candidates()[0] == "zoe"  # but a recent speaker is worth completing
    assert view.on_frame({"type": "history", "room": "lobby", "more": False, "events": []}) == []  # on join: silent
    view.submit("/history 5")
    assert view.on_frame({"type": "history", "room": "lobby", "more": False, "events": []}) == []  # a join's: no id
    [none] = view.on_frame({"type": "history", "room": "lobby", "more": False, "events": [], "id": 7})
    assert "no earlier events" in none.text


def test_the_history_hint_names_the_page_before_by_its_first_event() -> None:
    """The hint said "/history N+200 shows up to 200 more": after a page cut short by size (71 long lines
    for /history 100) that showed the same 71 again, and past 500 events it offered nothing (a user's
    walkthrough). It names the next page by the number of this one's oldest event, and the room if not
    the current one."""
    view = joined_view()

    def head(n: int, room: str = "lobby") -> str:
        page = [ev("msg", i, room=room, **{"from": "zoe"}, text="x") for i in range(40, n + 40)]
        return view.on_frame({"type": "history", "room": room, "more": True, "events": page})[0].text

    assert head(71).endswith("history of #lobby: 71 events, more before: /history 100 before 40")
    assert head(500).endswith("500 events, more before: /history 100 before 40")
    assert head(3, "dev").endswith("history of #dev: 3 events, more before: /history 100 #dev before 40")
    assert view.submit("/history 100 #dev before 40").requests == [m.History("dev", before=40, limit=100)]
    # a room of a hello past the budget its rooms share: no events sent, but there are some
    [none] = view.on_frame({"type": "history", "room": "lobby", "more": True, "events": []})
    assert none.text.endswith("history of #lobby: 0 events, more before: /history 100")


SGR = re.compile(r"\x1b\[[0-9;]*m|\x1b\[\?7h")  # colours/attributes and autowrap: what the client itself emits


def test_what_reaches_the_terminal_holds_no_escape_but_the_clients_own_colours() -> None:
    buf = io.StringIO()
    output = Vt100_Output(buf, lambda: Size(24, 80), term="xterm-256color")
    view = joined_view()
    frames = [
        ev("msg", room="lobby", **{"from": "bob"}, text="hi alice \x1b[2J\x1b]0;PWNED\x07 \u202eevil"),
        ev("topic", 2, room="lobby", nick="m\x1b[5m", topic="\x9b31m\r"),
    ]
    Printer(output).write([line for f in frames for line in view.on_frame(f)])
    written = buf.getvalue()
    assert "hi " in written and "PWNED" in written  # shown, as text
    assert "\x1b" not in SGR.sub("", written), repr(written)
    assert written.count("\x07") == 1  # one bell (for the mention), the hostile BEL became U+FFFD
    assert not UNSAFE.search(SGR.sub("", written).replace("\x07", "").replace("\r\n", ""))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
KINDS = sorted(m.EVENT_TYPES | {"welcome", "room", "who", "rooms", "topic", "stats", "error", "gap", "bye", "history",
                                "server", "ack", "ping", "x"})  # fmt: skip
FIELDS = ["room", "from", "to", "text", "nick", "old", "new", "topic", "reason", "rooms", "nicks", "events", "ts",
          "seq", "resumed", "resume_failed", "name", "message", "code", "more", "users", "processes"]  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(KINDS), fields=st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=8))
def test_any_frame_a_server_may_send_is_shown_safely_and_never_raises(kind: str, fields: Frame) -> None:
    view = joined_view()
    lines = view.on_frame({**fields, "type": kind})
    for text in [line.text for line in lines] + [toolbar(view), "".join(f[1] for f in view.prompt())]:
        assert not UNSAFE.search(text), repr(text)
    view.complete("/msg ")
    view.complete("#")


# --- status line and states --------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [ColorDepth.DEPTH_1_BIT, ColorDepth.DEPTH_8_BIT])
def test_without_colours_the_status_line_is_drawn_in_reverse_video(depth: ColorDepth) -> None:
    """A terminal walkthrough: with NO_COLOR the status line (white on blue) was plain text, one more line
    of chat to look at. In reverse video then, its state not, as it stands out in colour."""
    buf = io.StringIO()
    out = Vt100_Output(buf, lambda: Size(24, 80), term="xterm", default_color_depth=depth)
    print_formatted_text(out, joined_view().toolbar(80), tui.style_for(out), color_depth=depth)
    out.flush()
    drawn = buf.getvalue()
    assert ("\x1b[0;7m | alice" in drawn) is (depth == ColorDepth.DEPTH_1_BIT)
    if depth == ColorDepth.DEPTH_1_BIT:
        assert "\x1b[0;1m connected " in drawn  # (bold, not reversed)
    else:
        assert "\x1b[0;97;44m | alice" in drawn  # the colours, as they were


@pytest.mark.parametrize("depth", [ColorDepth.DEPTH_1_BIT, ColorDepth.DEPTH_8_BIT])
def test_a_line_padded_to_wrap_cannot_pass_for_a_line_without_colours_either(depth: ColorDepth) -> None:
    """A message padded to the terminal's width shows its tail on a row of its own; in colour a real line's
    time is grey and its nick coloured, where the tail's are plain. Without colours nothing told them
    apart: the time is dim and the nick bold then."""
    view = joined_view(others=("bob",))
    forged = "lol" + " " * 70 + "12:03 <carol> meet me in #secret"
    buf = io.StringIO()
    out = Vt100_Output(buf, lambda: Size(24, 80), term="xterm", default_color_depth=depth)
    tui.Printer(out).write(view.on_frame(ev("msg", 9, room="lobby", text=forged, **{"from": "bob"})))  # as run_app
    drawn = buf.getvalue()
    mono = depth == ColorDepth.DEPTH_1_BIT
    time_style, nick_style = ("\x1b[0;2m", "\x1b[0;1m") if mono else ("\x1b[0;90m", "\x1b[0;33m")
    assert re.search(re.escape(time_style) + r"\d\d:\d\d " + re.escape(nick_style) + "<bob>", drawn)
    assert "\x1b[0m lol" + " " * 70 + "12:03 <carol> meet me in #secret\r\n" in drawn  # the text: plain


def test_the_status_line_follows_rooms_members_nick_and_state() -> None:
    unsent = [0]
    view = joined_view(others=("bob", "carol"))
    view.unsent = lambda: unsent[0]
    bar = toolbar(view)
    for part in ("office", "127.0.0.1:7272", "#lobby", "alice", "3 users", "connected"):
        assert part in bar
    view.on_frame(ev("join", 2, room="lobby", nick="dave"))
    view.on_frame(ev("part", 3, room="lobby", nick="bob"))
    view.on_frame(ev("quit", 4, nick="carol"))
    assert "2 users" in toolbar(view)  # alice, dave
    view.on_frame(ev("nick", 5, old="alice", new="alicia"))
    assert view.nick == "alicia" and "alicia" in toolbar(view)
    assert sorted(view.members["lobby"]) == ["alicia", "dave"]
    view.on_status("reconnecting", "server shutting down")
    unsent[0] = 2
    bar = toolbar(view)
    assert "reconnecting" in bar and "2 unsent" in bar
    assert ("class:bottom-toolbar.reconnecting", " reconnecting ") in view.toolbar()
    wide, middle, narrow = ("".join(f[1] for f in view.toolbar(width)) for width in (120, 85, 60))
    assert wide == bar and wide.startswith(" office (127.0.0.1:7272) | #lobby") and wide.endswith("/help")
    assert middle.startswith(" office") and "/help" not in middle and len(middle) <= 85
    # narrower: the terminal cut the state and the unsent count off the end; the server goes instead
    assert "office" not in narrow and narrow.rstrip().endswith("reconnecting   2 unsent") and len(narrow) <= 60
    view.on_frame(ev("nick", 6, old="alicia", new="漢字漢字漢字"))  # each character two columns wide
    cjk = view.toolbar(85)  # 81 characters with the server, but 87 columns
    assert fragment_list_width(cjk) <= 85 and "office" not in "".join(f[1] for f in cjk)


def test_the_catch_up_after_an_expiry_names_each_lines_room() -> None:
    """In two rooms every message shows its room. After an expiry the new session's welcome names them, and
    what was missed is replayed before their joins: with no room joined yet, its lines showed none (a user's
    walkthrough)."""
    view = joined_view()
    view.on_frame(ev("join", 3, room="dev", nick="alice"))
    view.room = "lobby"
    welcome = {"type": "welcome", "nick": "alice", "rooms": ["lobby", "dev"], "resumed": False, "seq": 3,
               "resume_failed": "session expired"}  # fmt: skip
    view.on_frame(welcome)
    assert view.joined == []  # the joins come after the catch-up
    [line] = view.on_frame(ev("msg", 4, room="lobby", **{"from": "bob"}, text="said meanwhile"))
    assert line.text.endswith("#lobby <bob> said meanwhile")


def test_a_server_back_under_another_name_is_called_by_it() -> None:
    """Restarted with another --name (or another server on the port): the status line, /status and "connected
    again" kept the name discovery gave at the start (a user's walkthrough). The greeting's name wins."""
    view = joined_view()
    view.on_status("reconnecting", "server shutting down")
    assert [line.text for line in view.on_frame({"type": "server", "name": "office"})] == []  # the same: nothing
    said = [line.text for line in view.on_frame({"type": "server", "name": "renamed"})]
    assert [x.split(" ", 1)[1] for x in said] == ["* the server at 127.0.0.1:7272 is called renamed now"]
    again = [line.text.split(" ", 1)[1] for line in view.on_status("connected")]
    assert again == ["* connected again to renamed"]
    assert toolbar(view).startswith(" renamed (127.0.0.1:7272) |") and "to renamed (" in view.describe_session()
    fresh = ChatView("al", "lobby", address="127.0.0.1:7272")  # joined by address: named by its greeting
    assert fresh.on_frame({"type": "server", "name": "lab"}) == [] and fresh.server == "lab"
    long_name = "a lab with a name longer than the sixty-four bytes a beacon carries of it"
    assert clean_name(long_name) != long_name
    found = ChatView("al", "lobby", server=clean_name(long_name), address="127.0.0.1:7272")  # discovery's copy
    assert found.on_frame({"type": "server", "name": long_name}) == [] and found.server == long_name  # not "now"


def test_a_long_room_and_nick_are_shortened_so_that_the_state_shows() -> None:
    """A 32-character room and a 24-character nick at 80 columns: the line ended in "|  connec"; with short
    names at 32 columns in "|  co". The longer of the two is now shortened first, down to 8 columns."""
    view = joined_view(nick="n" * 24)
    view.on_frame(ev("join", room="r" * 32, nick="n" * 24))
    view.room = "r" * 32  # as /switch makes it
    for width in (80, 60, 53):
        bar = "".join(f[1] for f in view.toolbar(width))
        assert bar.endswith(" connected ") and fragment_list_width(view.toolbar(width)) <= width, (width, bar)
        assert "r…" in bar
    bar = "".join(f[1] for f in view.toolbar(50))
    assert bar == " #rrrrrr… | nnnnnnn… | 1 user |  connected "  # both at the floor of 8 columns, (+1 room) gone
    assert "".join(f[1] for f in view.toolbar(20)).startswith(" #rrrrrr… | nnnnnnn… |  co")  # the terminal cuts


def test_short_names_in_a_narrow_terminal_give_way_to_the_state() -> None:
    """Names already at 8 columns or less: at 45 columns the line ended in "|  conne", at 40 in "|" (a user's
    walkthrough). The count of the other rooms goes, then the user count, so that the state shows."""
    view = joined_view(nick="bobby_")
    view.on_frame(ev("join", room="dev", nick="bobby_"))
    view.room = "lobby"
    assert "".join(f[1] for f in view.toolbar(60)) == " #lobby (+1 room) | bobby_ | 2 users |  connected   /help"
    assert "".join(f[1] for f in view.toolbar(45)) == " #lobby | bobby_ | 2 users |  connected "
    assert "".join(f[1] for f in view.toolbar(30)) == " #lobby | bobby_ |  connected "


def test_the_user_count_of_a_big_room_comes_from_the_reply_not_the_capped_nick_list() -> None:
    view = joined_view()
    view.on_frame({"type": "room", "room": "lobby", "topic": "", "users": 1200, "nicks": [f"u{i}" for i in range(500)]})
    assert "1200 users" in toolbar(view)
    view.on_frame(ev("join", 2, room="lobby", nick="late"))
    view.on_frame(ev("part", 3, room="lobby", nick="u7"))
    view.on_frame(ev("part", 4, room="lobby", nick="unlisted"))
    view.on_frame(ev("quit", 5, nick="someone"))  # a quit names no room: no guess
    assert "1199 users" in toolbar(view)
    view.on_frame({"type": "who", "room": "lobby", "nicks": ["alice", "bob"]})  # /who lists everyone
    assert "2 users" in toolbar(view)


def test_reconnecting_is_a_state_and_typing_goes_on() -> None:
    view = joined_view()
    [lost] = view.on_status("reconnecting", "server shutting down")
    assert "reconnecting" in lost.text and "server shutting down" in lost.text
    typed = view.submit("sent later")
    assert typed.requests == [m.Msg("lobby", "sent later")]
    assert typed.lines == [] and typed.queued is not None
    assert "queued until reconnected: sent later" in typed.queued.text
    assert view.taken(typed) == [typed.queued] and "queued until reconnected" in view.transcript[-1]
    for command in ("/nick annie", "/topic offline", "/who", "/msg bob psst"):  # commands too: said, not silent
        queued = view.submit(command).queued
        assert queued is not None
        assert "queued until reconnected: " + ("-> *bob* psst" if "msg" in command else command) in queued.text
    [resumed] = view.on_frame({"type": "welcome", "nick": "alice", "rooms": ["lobby"], "resumed": True})
    assert "resumed" in resumed.text
    [again] = view.on_status("connected")
    assert "connected again to office" in again.text
    assert view.submit("now").lines == []  # connected: the echo from the server shows it
    assert view.on_status("connected") == []


def test_a_failed_resume_says_so() -> None:
    view = joined_view()
    view.on_status("reconnecting")
    lines = view.on_frame(
        {"type": "welcome", "nick": "alice", "rooms": ["lobby"], "resumed": False, "resume_failed": "expired"}
    )
    assert "could not be resumed (expired)" in lines[0].text and "class:error" in styles(lines[0])
    assert view.joined == []  # the join events that follow fill it again
    # what was missed comes replayed before the room's join (numbered after it): shown as it comes
    [missed] = view.on_frame(ev("msg", 38, room="lobby", **{"from": "bob"}, text="said while you were away"))
    assert missed.text.endswith("<bob> said while you were away")  # (#lobby: still the current room)


# --- commands ----------------------------------------------------------------------------------------------


def test_commands_become_requests_and_the_current_room_follows() -> None:
    view = joined_view()
    assert view.submit("hello").requests == [m.Msg("lobby", "hello")]
    assert view.submit("//slash").requests == [m.Msg("lobby", "/slash")]
    assert view.submit("/me waves").requests == [m.Action("lobby", "waves")]
    assert view.submit("/msg bob psst").requests == [m.PrivMsg("bob", "psst")]
    assert view.submit("/who").requests == [m.Who("lobby")]
    assert view.submit("/rooms").requests == [m.Rooms()]
    assert view.submit("/topic plans").requests == [m.Topic("lobby", "plans")]
    assert view.submit("/nick alicia").requests == [m.Nick("alicia")]
    assert view.submit("/history 5").requests == [m.History("lobby", limit=5)]
    status = view.submit("/status")
    assert status.requests == [m.Stats()] and "connected to office" in status.lines[0].text
    assert view.submit("/join Dev").requests == [m.Join("dev")]
    assert view.room == "dev"  # like piped mode: the room is current at once
    view.on_frame(ev("join", 2, room="dev", nick="alice"))
    assert view.submit("in dev").requests == [m.Msg("dev", "in dev")]
    assert "#dev" in toolbar(view) and "(+1 room)" in toolbar(view)
    switched = view.submit("/switch lobby")
    assert view.room == "lobby" and switched.requests == [] and "now talking in #lobby" in switched.lines[0].text
    assert not switched.refused
    assert "next" not in view.submit("/switch").lines[0].text and view.room == "dev"  # cycles
    refused = view.submit("/switch kitchen")
    assert view.room == "dev" and "not in #kitchen" in refused.lines[0].text
    assert refused.refused  # given back to the input, to be mended, as any line the client refuses
    assert view.submit("/mgs bob hi").refused and not view.submit("/help").refused
    assert view.submit("/part").requests == [m.Part("dev")]
    assert view.room == "lobby"
    assert view.submit("/nick alice").requests == [m.Nick("alice")]  # the /nick alicia above is not done yet
    view.on_frame(ev("nick", 9, old="alice", new="alicia"))  # now it is
    same = view.submit(f"/nick {view.nick}")  # nothing to change: said here (the server says nothing)
    assert same.requests == [] and "already" in same.lines[0].text
    assert view.submit(f"/nick {view.nick.upper()}").requests == [m.Nick(view.nick.upper())]  # a case change goes
    back = view.submit(f"/nick {view.nick}")  # the rename above is not done yet: going back is not a no-op
    assert back.requests == [m.Nick(view.nick)]
    assert view.submit("/quit see you").quit == m.Quit("see you")
    assert view.submit("   ").requests == []


def test_own_nick_after_a_refused_rename_is_said_at_once_again() -> None:
    """After a refused /nick, `/nick` of the own nick was sent, and the server, changing nothing, said nothing
    (a review): the refusal undoes the rename asked."""
    view = joined_view("ann")
    assert view.submit("/nick bob").requests == [m.Nick("bob")]
    view.on_frame({"type": "error", "code": "nick_taken", "message": "nick bob is taken", "id": 1})
    again = view.submit("/nick ann")
    assert again.requests == [] and "you are ann already" in again.lines[0].text
    assert view.submit("/nick bob").requests == [m.Nick("bob")]
    view.on_frame({"type": "error", "code": "too_fast", "message": "slow down", "id": 2})  # not the rename's
    assert view.submit("/nick ann").requests == [m.Nick("ann")]
    view.on_frame({"type": "error", "code": "too_fast", "message": "nick changes too fast for 3 rooms", "id": 3})
    assert view.submit("/nick ann").requests == []


def test_bad_input_is_explained_and_nothing_is_sent() -> None:
    view = joined_view()
    for typed, why in [("/bogus", "unknown command"), ("/msg bob", "usage: /msg"), ("/join", "usage: /join")]:
        result = view.submit(typed)
        assert result.requests == [] and result.quit is None
        assert why in result.lines[0].text and "class:error" in styles(result.lines[0])
    view.on_frame(ev("part", 2, room="lobby", nick="alice"))
    assert view.room is None and "(no room)" in "".join(frag[1] for frag in view.prompt())
    assert "/join ROOM first" in view.submit("hello?").lines[0].text


def test_a_frame_that_breaks_rendering_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    """on_frame runs inside the connection's read loop: an exception there would end the connection."""
    view = joined_view()

    def broken(frame: Frame, me: str = "") -> str:
        raise RecursionError("a history nested 400 deep")

    monkeypatch.setattr(tui, "render", broken)
    [line] = view.on_frame({"type": "who", "room": "lobby", "nicks": ["bob"]})
    assert "ignored a malformed who frame" in line.text and "class:error" in styles(line)
    [line] = view.on_frame(ev("msg", 9, room="lobby", **{"from": "bob"}, text="still fine"))
    assert line.text.endswith("<bob> still fine")


def test_a_pasted_block_is_a_line_each() -> None:
    assert typed_lines("one\n/me two\n\nthree\r\n/quit bye\nnever") == [
        "one", "/me two", "", "three", "/quit bye", "never"]  # fmt: skip
    assert typed_lines("just one") == ["just one"] and typed_lines("") == [""]
    # only CR and LF end a line (a review: a form feed or U+2028 inside a pasted line made two messages)
    assert typed_lines("alpha\x0cbeta\ngamma\u2028delta\x85\n") == ["alpha\x0cbeta", "gamma\u2028delta\x85"]
    assert typed_lines("one\n\n") == ["one", ""] and typed_lines("one\r") == ["one"]
    view = joined_view()
    results = [view.submit(line) for line in typed_lines("one\n/me two\n\n/quit bye")]
    assert [r.requests for r in results] == [[m.Msg("lobby", "one")], [m.Action("lobby", "two")], [], []]
    assert results[-1].quit == m.Quit("bye")


def test_a_refused_join_goes_back_to_a_joined_room() -> None:
    view = joined_view()
    view.submit("/join toomany")
    assert view.room == "toomany"
    view.on_frame({"type": "error", "code": "too_many_rooms", "message": "at most 50 rooms per session"})
    assert view.room == "lobby"


def test_a_refused_join_goes_back_to_the_room_we_were_in_not_the_last_joined() -> None:
    view = joined_view()
    view.submit("/join dev")
    view.on_frame(ev("join", room="dev", nick="alice"))
    view.submit("/switch lobby")
    view.submit("/join ops")
    view.on_frame({"type": "error", "code": "too_many_rooms", "message": "at most 50 rooms per session"})
    assert view.room == "lobby"


def test_room_names_from_the_server_never_reach_the_terminal_raw() -> None:
    """Room names come from the server's frames; the prompt, the status line, F2 and completion show them
    cleaned like any other text from the network (a newline could forge a line, a bidi override reorder it)."""
    view = joined_view()
    evil = "dev\n00:00 <admin> trust me\u202e"
    view.on_frame(ev("join", room=evil, nick="alice"))
    view.room = evil
    shown = [frag[1] for frag in [*view.prompt(), *view.toolbar()]]
    shown.append(view.next_room())
    shown += [text for text, _ in view.complete("#de")]
    assert shown and not any(ch in text for text in shown for ch in "\n\u202e")


def test_the_server_chooser_takes_only_plain_numbers() -> None:
    found = [record("a", 7001), record("b", 7002)]
    assert pick_server(found, "2") is found[1]
    for answer in ("²", "9" * 5000, "0", "3"):
        assert pick_server(found, answer) is None  # no ValueError from int() either


def test_members_of_joined_rooms_do_not_outrank_those_who_spoke_in_completion() -> None:
    view = joined_view(others=("dora",))
    view.on_frame(ev("msg", room="lobby", **{"from": "dan"}, text="hi"))
    view.on_frame({"type": "who", "room": "lobby", "nicks": ["alice", "dora", "dan", "dex"]})  # dex: silent
    assert [text for text, _ in view.complete("d")] == ["dan: ", "dex: ", "dora: "]


def test_help_lists_every_command_and_the_keys() -> None:
    text = "\n".join(line.text for line in joined_view().submit("/help").lines)
    for word in ("/join", "/part", "/switch", "/rooms", "/who", "/msg", "/nick", "/me", "/topic", "/history"):
        assert word in text
    for word in ("/status", "/help", "/quit", "Tab", "Up / Down", "Ctrl-D", "Ctrl-Z"):
        assert word in text
    assert "/switch [ROOM]" in text  # alone it goes to the next room here (nc users' help says /switch ROOM)


# --- completion --------------------------------------------------------------------------------------------


def test_the_status_line_counts_no_room_whose_part_is_waiting() -> None:
    """A walkthrough: a /part of the only room typed while reconnecting left `no room (+1 room)`."""
    view = joined_view()
    view.on_status("reconnecting")
    view.submit("/part")
    assert " no room | alice |" in toolbar(view), toolbar(view)


def test_tab_completes_commands_nicks_and_rooms() -> None:
    view = joined_view(others=("bob", "bea", "carol"))
    view.on_frame({"type": "rooms", "rooms": [{"name": "lobby", "users": 4}, {"name": "dev", "users": 1}]})
    assert view.complete("/ms") == [("/msg ", -3)]
    assert view.complete("/ro") == [("/rooms", -3)]  # no argument: no space
    assert len(view.complete("/")) == len({"/me", "/msg", "/join", "/part", "/switch", "/nick", "/topic", "/who",
                                           "/rooms", "/history", "/status", "/help", "/quit"})  # fmt: skip
    assert view.complete("/msg b") == [("bea ", -1), ("bob ", -1)]
    view.on_frame(ev("msg", 2, room="lobby", **{"from": "bob"}, text="hi"))
    assert view.complete("/msg b") == [("bob ", -1), ("bea ", -1)]  # the last speaker first
    assert view.complete("/msg ") == [("bob ", 0), ("bea ", 0), ("carol ", 0)]  # nothing typed: every nick
    assert view.complete("/msg bob ") == []  # (the text: no nick)
    assert view.complete("Ca") == [("carol: ", -2)]  # addressing someone at the start of a line
    assert view.complete("hi ca") == [("carol ", -2)]
    assert view.complete("/join d") == [("dev ", -1)]
    assert view.complete("/switch d") == view.complete("/part #d") == []  # (a room one is not in: a walkthrough)
    assert view.complete("/switch l") == [("lobby ", -1)] and view.complete("/part #l") == [("#lobby ", -2)]
    assert view.complete("see #l") == [("#lobby ", -2)]
    assert view.complete("al") == []  # never oneself
    assert view.complete("hi ") == []
    view.on_frame(ev("quit", 3, nick="bob"))
    assert view.complete("/msg b") == [("bea ", -1)]


# --- choosing a server -------------------------------------------------------------------------------------


def record(name: str, port: int) -> ServerRecord:
    return ServerRecord("id" + name, name, "127.0.0.1", port, 1, 2, 3, 1, 0.0, 1.5)


def test_pick_server_by_number_or_name_and_names_are_cleaned() -> None:
    found = [record("alpha", 1), record("beta", 2)]
    assert pick_server(found, "2") == found[1]
    assert pick_server(found, " ALPHA ") == found[0]
    assert pick_server(found, "3") is None and pick_server(found, "gamma") is None
    assert pick_problem(found, "gamma") == "a number from 1 to 2, a name, or q"
    assert pick_problem(found, " q ") is None and pick_problem(found, "beta") is None
    twins = [*found, record("Beta", 3)]  # two servers both called beta: only a number picks one
    assert pick_server(twins, "beta") is None and pick_server(twins, "3") == twins[2]
    assert pick_problem(twins, "beta") == "2 servers are named beta: type the number of one"
    lines = server_lines([record("evil\x1b[2J\u202e", 3)])
    assert not any(UNSAFE.search(line.text) for line in lines)


def test_the_server_chooser_keeps_its_columns() -> None:
    """A review on a LAN: addresses of other lengths, or a name over 24 columns, shifted the columns."""
    found = [record("lab", 47102), record("a name longer than twenty-four", 1), record("教室", 7272)]
    found[0] = dataclasses.replace(found[0], host="192.0.2.220")  # (a documentation address: a string only)
    rows = [line.text for line in server_lines(found)[1:]]
    users = {get_cwidth(row[: row.index("2 users")]) for row in rows}  # where the figures begin, drawn
    assert len(users) == 1, rows


def run(coro: Awaitable[T], timeout: float = 30.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


@pytest.mark.parametrize(
    ("typed", "chosen"),
    [("2\r", "beta"), ("9\r\x7fbeta\r", "beta"), ("q\r", None), ("\x04", None),
     ("\x1b[31m2\x1b[0m\r", "beta")],  # bytes like a mouse report (a coloured paste): ignored, not a crash
)  # fmt: skip
def test_choose_server_asks_until_the_answer_is_valid(
    typed: str, chosen: str | None, capfd: pytest.CaptureFixture[str]
) -> None:
    found = [record("beta", 2), record("alpha", 1)]  # shown sorted: 1 alpha, 2 beta

    async def main() -> ServerRecord | None:
        with create_pipe_input() as inp:
            inp.send_text(typed)
            return await choose_server(found, input=inp, output=DummyOutput())

    result = run(main(), 10)
    assert (result.name if result else None) == chosen
    assert "Exception" not in "".join(capfd.readouterr())  # prompt_toolkit's report of a key handler's crash


# --- the whole app against a real server -------------------------------------------------------------------


async def until(cond: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Peer:
    """A raw JSON Lines client on asyncio streams (the app under test shares the loop)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.frames: list[Frame] = []
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, port: int, nick: str) -> Peer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        peer = cls(reader, writer)
        await peer.send({"type": "hello", "nick": nick, "rooms": ["lobby"]})
        await peer.expect(lambda f: f.get("type") == "room")
        return peer

    async def _read(self) -> None:
        while line := await self.reader.readline():
            self.frames.append(json.loads(line))

    async def send(self, obj: Frame) -> None:
        self.writer.write(json.dumps(obj).encode() + b"\n")
        await self.writer.drain()

    async def expect(self, pred: Callable[[Frame], bool], timeout: float = 10.0) -> Frame:
        await until(lambda: any(pred(f) for f in self.frames), "a frame", timeout)
        return next(f for f in self.frames if pred(f))

    async def close(self) -> None:
        self._task.cancel()
        self.writer.close()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        await self.writer.wait_closed()


@asynccontextmanager
async def app(
    port: int, nick: str = "alice", *, output: Output | None = None, **kw: Any
) -> AsyncIterator[tuple[asyncio.Task[int], PipeInput, ChatView]]:
    """The interactive client on a pipe input; the test types into the pipe and reads the view (or what
    reached ``output``)."""
    with create_pipe_input() as inp:
        view = ChatView(nick, "lobby", address=f"127.0.0.1:{port}")
        task = asyncio.create_task(
            run_app("127.0.0.1", port, nick, "lobby", view=view, input=inp, output=output or DummyOutput(), **kw)
        )
        try:
            yield task, inp, view
        finally:
            if not task.done():
                task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass


def shown(view: ChatView, text: str) -> Callable[[], bool]:
    return lambda: any(text in line for line in view.transcript)


def test_a_run_whose_first_connect_fails_leaves_the_restored_session_held() -> None:
    """A review: a run started again whose first connect failed (the server slow to welcome it, or its
    resume refused) closed as any run does, and the goodbye it sent on a connection of its own resumed
    the very session it meant to take back, and ended it (the nick, the private messages kept: gone).
    Against a server that greets and hangs up: nothing more may come to it after the failed hello."""
    hellos: list[bytes] = []
    keys: list[str] = []

    async def main() -> int:
        async def greet_and_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b'{"type":"server","proto":1,"name":"x"}\n')
            hellos.append(await reader.readline())
            writer.close()

        listener = await asyncio.start_server(greet_and_hang_up, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        keys.append(entry_key(f"127.0.0.1:{port}", "kim"))
        SessionFile().save(keys[0], Saved("tok", 7, 3, 5, ["lobby"]), now=time.time() - 3600)  # an hour ago
        try:
            async with app(port, "kim") as (task, _inp, view):
                code = await asyncio.wait_for(task, 20)
                assert shown(view, "resuming your session as kim")()
                return code
        finally:
            listener.close()
            await listener.wait_closed()

    assert run(main()) == EXIT_UNREACHABLE
    assert len(hellos) == 1  # the one hello, and no goodbye after it
    hello = json.loads(hellos[0])
    assert (hello["token"], hello["last_seq"], hello["rooms"]) == ("tok", 7, ["lobby"])
    assert hello["attempt"] == 3 + RESTORED_ATTEMPT_GAP + 1  # (a count a failed save left behind is passed)
    kept = SessionFile().load(keys[0])  # kept for the next run, as it was: "left at" an hour ago, not now
    assert kept is not None and kept.token == "tok" and time.time() - kept.saved_at > 3500
    assert kept.attempts == 3 + RESTORED_ATTEMPT_GAP + 1  # (and the attempt it sent, counted)


def test_the_saved_session_follows_a_rename_at_once_and_a_discovered_server_by_its_id(server: ServerProcess) -> None:
    """A review: a /nick followed by a kill within the second before the next save left the file under
    the old nick, and `join --nick NEW` was refused (held). And a server found by discovery is kept under
    its id and name: a later run finds it there after it moved (another port, a new DHCP address)."""
    files = SessionFile()

    async def main() -> None:
        async with app(server.port, "kim", server_id="abc123", server_name="lab") as (task, inp, view):
            await until(lambda: view.status == "connected", "connected")
            assert files.load(entry_key("id abc123 lab", "kim")) is not None
            inp.send_text("/nick kimmy\r")
            await until(shown(view, "kim is now known as kimmy"), "the rename")
            assert files.load(entry_key("id abc123 lab", "kimmy")) is not None  # at once, with the event
            assert not files.path(entry_key("id abc123 lab", "kim")).exists()
            assert not files.path(entry_key(f"127.0.0.1:{server.port}", "kimmy")).exists()
            inp.send_text("\x04")
            await asyncio.wait_for(task, 10)
        assert not files.path(entry_key("id abc123 lab", "kimmy")).exists()  # a clean quit: forgotten

    run(main())


def test_f2_saves_the_room_it_moves_to_at_once(server: ServerProcess) -> None:
    """As /switch does: F2 changed the current room and the file kept the one before until the next event (a
    review), so a kill in between came back in the old room."""
    files = SessionFile()

    async def main() -> None:
        async with app(server.port, "fay") as (task, inp, view):
            await until(lambda: view.status == "connected", "connected")
            inp.send_text("/join dev\r")
            await until(lambda: "dev" in view.joined and view.room == "dev", "joined dev")
            key = entry_key(f"127.0.0.1:{server.port}", "fay")
            await until(lambda: (saved := files.load(key)) is not None and saved.room == "dev", "saved in dev")
            inp.send_text("\x1bOQ")  # F2
            await until(lambda: view.room == "lobby", "F2")
            saved = files.load(key)
            assert saved is not None and saved.room == "lobby"  # at once, not a second later
            inp.send_text("\x04")
            await asyncio.wait_for(task, 10)

    run(main())


def test_the_clients_own_questions_are_answered_quietly() -> None:
    """A run started again asks who is in its room: the answer updates the member list and shows nothing,
    a refusal (busy) neither; the user's own /who, asked by id, is shown as ever (a review: keyed by room,
    a busy refusal left the user's next /who of that room swallowed)."""
    view = joined_view(others=("bob",))
    view.asked_quietly(7, "lobby")
    assert view.on_frame({"type": "error", "code": "busy", "message": "later", "id": 7}) == []
    assert "lobby" not in view.asked_who  # refused: asked again when it next becomes current (a review)
    view.asked_quietly(8, "lobby")
    assert view.on_frame({"type": "who", "room": "lobby", "users": 3, "nicks": ["alice", "bob", "cy"], "id": 8}) == []
    assert view.members["lobby"] == ["alice", "bob", "cy"] and view.counts["lobby"] == 3
    assert view.asked_who == {"lobby"}
    shown_now = view.on_frame({"type": "who", "room": "lobby", "users": 2, "nicks": ["alice", "bob"], "id": 9})
    assert shown_now and view.on_frame({"type": "error", "code": "busy", "message": "later", "id": 10})
    assert view.on_frame({"type": "who", "room": "lobby", "nicks": [], "id": [1]}) != []  # (no crash on a list)


def test_a_refused_line_equal_to_the_newest_of_ups_lines_leaves_that_line() -> None:
    """A review: prompt_toolkit adds no line equal to the newest, so taking the refused line back took the
    earlier one, which was sent, out of Up's lines."""
    history = tui._History()
    history.append_string("/who")  # sent
    had = len(history.get_strings())
    history.take_back("/who", had)  # refused when typed again: prompt_toolkit added nothing
    assert history.get_strings() == ["/who"]
    history.append_string("/nosuch")
    history.take_back("/nosuch", had)
    assert history.get_strings() == ["/who"]


def history_loaded() -> bool:
    """The running prompt has Up's lines: loaded in the background at its first draw (a key before that,
    too fast for a person, finds none)."""
    current = get_app_or_none()
    return current is not None and len(current.current_buffer._working_lines) > 1


def typed(text: str) -> Callable[[], bool]:
    """True when the running prompt's input line holds ``text``."""

    def check() -> bool:
        current = get_app_or_none()
        return current is not None and current.is_running and current.current_buffer.text == text

    return check


def test_typing_sends_and_events_are_shown(server: ServerProcess) -> None:
    async def main() -> None:
        bob = await Peer.open(server.port, "bob")
        try:
            async with app(server.port) as (task, inp, view):
                await until(lambda: "bob" in view.nick_candidates() and view.status == "connected", "bob in #lobby")
                inp.send_text("hello bob\r")
                msg = await bob.expect(lambda f: f.get("type") == "msg" and f.get("from") == "alice")
                assert msg["text"] == "hello bob"
                await until(shown(view, "<alice> hello bob"), "the echo")
                await bob.send({"type": "msg", "room": "lobby", "text": "hi alice", "id": 1})
                await until(shown(view, "<bob> hi alice"), "bob's message")
                # Tab: /ms -> /msg , b -> bob
                inp.send_text("/ms\t")
                await until(typed("/msg "), "/ms completed")
                inp.send_text("b\t")
                await until(typed("/msg bob "), "the nick completed")
                inp.send_text("how are you\r")
                pm = await bob.expect(lambda f: f.get("type") == "privmsg")
                assert (pm["from"], pm["text"]) == ("alice", "how are you")
                # Up recalls the last line; Ctrl-C clears a half-typed line instead of quitting
                inp.send_text("\x1b[A")
                await until(typed("/msg bob how are you"), "history recall")
                inp.send_text("\x03")
                await until(typed(""), "the line cleared")
                inp.send_text("oops")
                await until(typed("oops"), "typing")
                inp.send_text("\x03fine\r")
                await until(shown(view, "<alice> fine"), "the line after Ctrl-C")
                assert not shown(view, "oops")()
                # A refused line is given back to the input, not also kept as Up's first line
                inp.send_text("/nosuch\r")
                await until(typed("/nosuch"), "the refused line back in the input")
                await until(history_loaded, "Up's lines loaded (by the prompt's first draw)")
                inp.send_text("\x1b[A")
                await until(typed("fine"), "Up: the line before it")
                inp.send_text("\x03")
                assert "alice: 3 users" not in view.transcript  # sanity: transcript holds lines, not the bar
                inp.send_text("/quit see you\r")
                assert await asyncio.wait_for(task, 10) == EXIT_OK
                quit_ = await bob.expect(lambda f: f.get("type") == "quit")
                assert (quit_["nick"], quit_["reason"]) == ("alice", "see you")
        finally:
            await bob.close()

    run(main())


def test_what_is_typed_offline_is_answered_line_by_line_and_a_refusal_is_not_queued(tmp_path: Path) -> None:
    """A line too long for the server (its --max-frame, known from the welcome) is refused at once, not
    "queued"; a paste gets each line's answer (queued, refused by the client, unknown command) in order,
    and stops at a refused line: it comes back with the rest, to be mended and sent with them."""
    server = ServerProcess(tmp_path / "data", "--max-frame", "256", workers=1)
    server.start()

    async def main() -> None:
        async with app(server.port) as (task, inp, view):
            await until(lambda: view.status == "connected" and view.joined == ["lobby"], "connected")
            await asyncio.to_thread(server.stop)
            await until(lambda: "reconnecting" in toolbar(view), "reconnecting in the status line")
            inp.send_text("x" * 300 + "\r")
            await until(shown(view, "bytes too long for this server"), "the refusal")
            inp.send_text("\x15short one\r")  # Ctrl-U: the refused line is back in the input, to be mended
            await until(shown(view, "queued until reconnected: short one"), "the note of the one kept")
            assert not shown(view, "queued until reconnected: xxx")()
            start = len(view.transcript)
            inp.send_text("\x1b[200~one\n/nosuch\n" + "x" * 300 + "\ntwo\x1b[201~\r")  # a bracketed paste
            await until(typed("/nosuch\n" + "x" * 300 + "\ntwo"), "the refused line back, with the rest")
            inp.send_text("\x15\r")  # Ctrl-U: its line emptied (the cursor is at its end); the rest goes
            await until(typed("x" * 300 + "\ntwo"), "the next refused line back, with the rest")
            inp.send_text("\x15\r")
            await until(shown(view, "queued until reconnected: two"), "the last note")
            said = [line.split(" * ", 1)[-1] for line in list(view.transcript)[start:]]
            assert said[:2] == ["queued until reconnected: one", "unknown command /nosuch; /help lists them"]
            assert "too long for this server" in said[2] and said[3:] == ["queued until reconnected: two"]
            inp.send_text("\x04")
            await asyncio.wait_for(task, 10)

    try:
        run(main())
    finally:
        server.kill()


def test_messages_are_printed_above_the_prompt_without_leaving_raw_mode(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prompt_toolkit's in_terminal() prints in cooked mode: a key typed meanwhile was echoed by the
    terminal itself, a Ctrl-C became a SIGINT (in a busy room, one Ctrl-C in forty ended the client)."""
    cooked: list[object] = []

    def no_cooked_mode(self: object) -> object:
        cooked.append(self)
        return contextlib.nullcontext()

    async def main() -> None:
        bob = await Peer.open(server.port, "bob")
        try:
            async with app(server.port) as (_task, inp, view):
                await until(typed(""), "the prompt")
                monkeypatch.setattr(type(inp), "cooked_mode", no_cooked_mode)
                for i in range(20):
                    await bob.send({"type": "msg", "room": "lobby", "text": f"busy {i}"})
                await until(shown(view, "<bob> busy 19"), "the last message")
                inp.send_text("still typing")
                await until(typed("still typing"), "the typed line")
                assert cooked == []
        finally:
            await bob.close()

    run(main())


def test_bracketed_paste_stays_on_while_messages_are_printed(server: ServerProcess) -> None:
    """Erasing the prompt turns bracketed paste off until the prompt is drawn again; a paste in between
    came unbracketed, each of its lines sent on its own. It is turned on again at once."""
    buf = io.StringIO()
    output = Vt100_Output(buf, lambda: Size(24, 80), term="xterm-256color")

    async def main() -> None:
        bob = await Peer.open(server.port, "bob")
        try:
            async with app(server.port, output=output) as (_task, _inp, view):
                await until(typed(""), "the prompt")
                for i in range(20):
                    await bob.send({"type": "msg", "room": "lobby", "text": f"busy {i}"})
                await until(shown(view, "<bob> busy 19"), "the last message")
        finally:
            await bob.close()

    run(main())
    written = buf.getvalue()
    assert "busy 19" in written and "\x1b[?2004l" in written
    for after_off in written.split("\x1b[?2004l")[1:]:  # whatever is printed after paste was turned off...
        printed = after_off.find("busy")
        if printed >= 0:  # ... comes after it was turned on again
            assert "\x1b[?2004h" in after_off[:printed], after_off[:200]


def test_a_paste_ending_in_quit_sends_the_lines_before_it(server: ServerProcess) -> None:
    async def main() -> None:
        bob = await Peer.open(server.port, "bob")
        try:
            async with app(server.port) as (task, inp, view):
                await until(lambda: "bob" in view.nick_candidates() and view.status == "connected", "bob in #lobby")
                inp.send_text("\x1b[200~bye all\n/quit\x1b[201~\r")
                assert await asyncio.wait_for(task, 10) == EXIT_OK
                await bob.expect(lambda f: f.get("type") == "quit" and f.get("nick") == "alice")
                assert [f.get("text") for f in bob.frames if f.get("type") == "msg"] == ["bye all"]
        finally:
            await bob.close()

    run(main())


def test_quit_after_a_paste_waits_for_the_server_to_take_every_line(tmp_path: Path) -> None:
    """The server reads a paste at its rate limit: /quit (and Ctrl-D) wait for the acks, then say goodbye
    (docs/client.md). Quitting at once lost the lines still queued and, with them, the quit."""
    server = ServerProcess(tmp_path / "data", "--rate", "10", "--burst", "5", workers=1)
    server.start()

    async def main() -> None:
        bob = await Peer.open(server.port, "bob")
        try:
            async with app(server.port) as (task, inp, view):
                await until(lambda: "bob" in view.nick_candidates() and view.status == "connected", "bob in #lobby")
                lines = [f"line {i}" for i in range(25)]
                inp.send_text("\x1b[200~" + "\n".join([*lines, "/quit"]) + "\x1b[201~\r")
                assert await asyncio.wait_for(task, 15) == EXIT_OK
                await until(shown(view, "before quitting"), "the note")
                await bob.expect(lambda f: f.get("type") == "quit" and f.get("nick") == "alice")
                assert [f.get("text") for f in bob.frames if f.get("type") == "msg"] == lines
        finally:
            await bob.close()

    try:
        run(main(), 30)
    finally:
        server.kill()


def test_quit_stops_waiting_for_a_paste_when_the_connection_is_lost(tmp_path: Path) -> None:
    """The wait of /quit for the server to take a paste ends with the connection: the client quits,
    saying how many messages the server did not acknowledge (docs/client.md)."""
    server = ServerProcess(tmp_path / "data", "--rate", "2", "--burst", "2", workers=1)
    server.start()

    async def main() -> None:
        async with app(server.port) as (task, inp, view):
            await until(lambda: view.status == "connected", "connected")
            inp.send_text("\x1b[200~" + "\n".join([*(f"line {i}" for i in range(20)), "/quit"]) + "\x1b[201~\r")
            await until(shown(view, "before quitting"), "the note")
            await asyncio.to_thread(server.kill)
            assert await asyncio.wait_for(task, 15) == EXIT_OK
            assert shown(view, "messages may not have been sent")()

    try:
        run(main(), 30)
    finally:
        server.kill()


def test_bytes_that_look_like_a_mouse_report_are_ignored(server: ServerProcess) -> None:
    """`ESC [ 31 m` typed (coloured text pasted without bracketed paste) reached prompt_toolkit's mouse handler,
    which raised: a traceback and "Press ENTER to continue..." (a terminal-compatibility walkthrough)."""

    async def main() -> None:
        async with app(server.port) as (task, inp, view):
            await until(lambda: view.status == "connected", "connected")
            inp.send_text("\x1b[31mred\x1b[0m")
            await until(typed("red"), "the text, without the colour codes")
            inp.send_text("\r")
            await until(shown(view, "<alice> red"), "sent")
            assert not task.done()

    run(main())


def test_quit_while_disconnected_says_what_was_typed_meanwhile_was_not_sent(tmp_path: Path) -> None:
    """Lines typed while the server is down are surely not sent by a quit then; those sent before the drop
    may have been. It said "may not have been sent" of both (a user's walkthrough)."""
    server = ServerProcess(tmp_path / "data", workers=1)
    server.start()

    async def main() -> None:
        async with app(server.port) as (task, inp, view):
            await until(lambda: view.status == "connected", "connected")
            await asyncio.to_thread(server.kill)
            await until(lambda: view.status == "reconnecting", "reconnecting")
            inp.send_text("typed while down\r")
            inp.send_text("and again\r")
            await until(shown(view, "queued until reconnected: and again"), "both queued")
            inp.send_text("/quit\r")
            assert await asyncio.wait_for(task, 15) == EXIT_OK
            assert shown(view, "2 messages not sent (typed while disconnected)")()
            assert not shown(view, "may not have been sent")()

    try:
        run(main(), 30)
    finally:
        server.kill()


def test_a_server_restart_is_a_state_and_what_was_typed_is_sent_after(server: ServerProcess) -> None:
    async def main() -> None:
        async with app(server.port) as (task, inp, view):
            await until(lambda: view.status == "connected" and view.joined == ["lobby"], "connected")
            await asyncio.to_thread(server.stop)
            await until(lambda: "reconnecting" in toolbar(view), "reconnecting in the status line")
            inp.send_text("while away\r")
            await until(shown(view, "queued until reconnected: while away"), "the queued note")
            await asyncio.to_thread(server.start)
            await until(lambda: "connected" in toolbar(view) and "reconnecting" not in toolbar(view), "connected")
            await until(shown(view, "<alice> while away"), "the message sent after the resume", 15)
            assert shown(view, "connected again")()
            assert not any("error" in line.lower() for line in view.transcript if "reconnect" in line)
            carol = await Peer.open(server.port, "carol")
            try:
                page = await carol.expect(lambda f: f.get("type") == "history")
                assert [e.get("text") for e in page["events"] if e.get("type") == "msg"] == ["while away"]
            finally:
                await carol.close()
            inp.send_text("\x04")  # Ctrl-D on an empty line
            assert await asyncio.wait_for(task, 10) == EXIT_OK

    run(main(), 60)


def test_exit_codes_unreachable_nick_taken_and_lost(server: ServerProcess) -> None:
    async def main() -> None:
        async with app(free_port()) as (task, _, view):
            assert await asyncio.wait_for(task, 10) == EXIT_UNREACHABLE
            assert shown(view, "cannot reach")()
        bob = await Peer.open(server.port, "bob")
        try:
            async with app(server.port, "BOB") as (task, _, view):
                assert await asyncio.wait_for(task, 10) == EXIT_NICK
                assert shown(view, "taken")()
        finally:
            await bob.close()
        async with app(server.port) as (task, inp, view):
            await until(lambda: view.status == "connected", "connected")
            inp.send_text("\x03")  # Ctrl-C on an empty line quits
            assert await asyncio.wait_for(task, 10) == EXIT_OK
        async with app(server.port, give_up_after=0.3) as (task, _, view):
            await until(lambda: view.status == "connected", "connected")
            await asyncio.to_thread(server.kill)
            assert await asyncio.wait_for(task, 15) == EXIT_LOST
            assert shown(view, "connection lost for good")()

    run(main(), 60)


def test_the_reply_to_a_bare_topic_is_not_taken_for_a_topic_event() -> None:
    """`/topic` alone asks for the topic; the reply has the event's type but no seq (it was shown as a
    garbled "--:-- -- set the topic of #lobby: (none)")."""
    view = joined_view()
    (line,) = view.on_frame({"type": "topic", "room": "lobby", "topic": None})
    assert "--:--" not in line.text and "set the topic" not in line.text
    assert "lobby" in line.text
    (event,) = view.on_frame(ev("topic", 9, room="lobby", nick="bob", topic="plans"))
    assert "bob set the topic of #lobby: plans" in event.text


def test_help_lists_each_command_once() -> None:
    view = joined_view()
    text = "\n".join(line.text for line in view.submit("/help").lines)
    assert text.count("/help") == 1 and "Keys:" in text


def test_a_room_reply_a_resume_sends_again_is_shown_only_if_it_says_something_new() -> None:
    """A resume resends the room replies the client may have lost; the same words again say nothing, new
    members or a new topic do, and a /who (its answer has no id either) always shows them."""
    view = joined_view()
    same = {"type": "room", "room": "lobby", "topic": "", "nicks": ["bob", "alice"]}
    assert view.on_frame(same) == []
    [changed] = view.on_frame({**same, "nicks": ["bob", "carol", "alice"]})
    assert "carol" in changed.text
    assert "release friday" in "\n".join(x.text for x in view.on_frame({**same, "topic": "release friday"}))
    view.submit("/who")
    [who] = view.on_frame({**same, "type": "who", "nicks": ["bob", "carol", "alice"]})
    assert "carol" in who.text


def test_a_cursor_report_asked_for_before_lines_were_printed_frees_no_rows() -> None:
    """The report of a row the printed lines have moved past made the prompt take rows that were not free: the
    terminal scrolled, and the lines before a message left the screen (a flaky end-to-end test under load)."""

    async def main() -> None:  # (the requests wait on futures of a running loop)
        terminal = Vt100_Output(io.StringIO(), lambda: Size(rows=40, columns=80), term="xterm")  # (asks by CPR)
        renderer = Renderer(tui.STYLE, terminal, full_screen=False)
        renderer.cpr_support = CPR_Support.SUPPORTED
        reports = tui._CursorReports(renderer)
        renderer.request_absolute_cursor_position()
        reports.printing()  # lines printed above the prompt while the report is on its way
        renderer.report_absolute_cursor_row(3)
        assert renderer._min_available_height == 1 and not renderer.waiting_for_cpr  # its own height; answered
        renderer.request_absolute_cursor_position()
        renderer.report_absolute_cursor_row(10)
        assert renderer._min_available_height == 40 - 10 + 1  # a fresh one is taken as it is

    asyncio.run(main())


def test_spacing_signs_take_a_column_as_in_the_terminal() -> None:
    """prompt_toolkit (the wcwidth package) counted प्रिया as 3 columns, glibc and tmux as 5: the screen's
    lines slid (a review; tests/e2e has the screen)."""
    from prompt_toolkit.utils import get_cwidth

    from lanchat.client import tui

    tui._count_spacing_signs()
    tui._count_spacing_signs()  # (once is enough: the cache stays)
    assert [get_cwidth(c) for c in "प्रिया"] == [1, 0, 1, 1, 1, 1]  # the virama (Mn) takes none
    assert (get_cwidth("प्रिया"), get_cwidth("ab"), get_cwidth("日本"), get_cwidth("e\u0301")) == (5, 2, 4, 1)
