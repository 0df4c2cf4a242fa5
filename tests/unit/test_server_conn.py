"""The server's side of one connection: mode detection, handshake, local replies, rate limit, plain mode."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lanchat import const
from lanchat.protocol import messages as m
from lanchat.protocol.bucket import TokenBucket
from lanchat.protocol.framing import Frame, LineFramer
from lanchat.protocol.plain import HELP
from lanchat.protocol.server_conn import (
    FRAME_CHUNK,
    MAX_MOVES,
    Action,
    Close,
    Forward,
    Mode,
    Reply,
    ServerConnection,
    render_for_plain,
)


def conn(*, rate: float = 1000.0, burst: int = 1000, max_frame: int = 1024, conn_id: int = 7) -> ServerConnection:
    return ServerConnection(conn_id, max_frame=max_frame, rate=rate, burst=burst, now=0.0)


def mode_of(c: ServerConnection) -> Mode:
    return c.mode  # read through a call: mypy would keep an earlier narrowing of the attribute


def line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def reply_obj(action: object) -> dict[str, Any]:
    assert isinstance(action, Reply)
    assert action.data.endswith(b"\n") and action.data.count(b"\n") == 1
    obj = json.loads(action.data)
    assert isinstance(obj, dict)
    return obj


def registered_json(c: ServerConnection) -> None:
    assert c.receive_data(line({"type": "hello", "nick": "al"}), 0.0) == [Forward(m.Hello("al"))]
    c.bound("al")


def registered_plain(c: ServerConnection, nick: str = "bob") -> None:
    """A plain /nick, and the hub's answer: the session bound, in #lobby."""
    assert c.receive_data(f"/nick {nick}\n".encode(), 0.0) == [Forward(m.Hello(nick, plain=True))]
    c.bound(nick)
    granted(c, const.DEFAULT_ROOM)


def granted(c: ServerConnection, room: str) -> None:
    """The hub's answer to a plain /join (or /nick) it granted: the member record, then the answer."""
    c.joined(room)
    c.answered(room, True)


def left(c: ServerConnection, room: str) -> None:
    """The hub's answer to a plain /part of a room the session was in."""
    c.parted(room)
    c.answered(room, False)


def plain_in_lobby() -> ServerConnection:
    """A plain-text connection registered as bob, in #lobby as the hub's member record said."""
    c = conn()
    registered_plain(c)
    return c


# --- mode detection -------------------------------------------------------------------------------------------


def test_first_line_json_selects_json_mode() -> None:
    c = conn()
    assert c.mode is Mode.UNKNOWN
    c.receive_data(b'{"type":"ping"}\n', 0.0)
    assert mode_of(c) is Mode.JSON


def test_leading_whitespace_before_brace_is_json() -> None:
    c = conn()
    c.receive_data(b'   {"type":"ping"}\r\n', 0.0)
    assert c.mode is Mode.JSON


@pytest.mark.parametrize(("first", "mode"), [(b'{"type":"hello","nick":"al"}', Mode.JSON), (b"/nick al", Mode.PLAIN)])
def test_a_byte_order_mark_before_the_first_line_is_ignored(first: bytes, mode: Mode) -> None:
    """A bot review: a hello after a UTF-8 byte-order mark (Windows PowerShell writes one) chose plain mode,
    and the JSON was refused as a plain-text line."""
    c = conn()
    assert c.receive_data(b"\xef\xbb\xbf\r\n", 0.0) == [] and c.mode is Mode.UNKNOWN  # alone: a blank line
    out = c.receive_data(b"\xef\xbb\xbf" + first + b"\n", 0.0)
    assert c.mode is mode
    assert [a.request.nick for a in out if isinstance(a, Forward) and isinstance(a.request, m.Hello)] == ["al"]


def test_first_line_text_selects_plain_mode() -> None:
    c = conn()
    c.receive_data(b"hello\n", 0.0)
    assert c.mode is Mode.PLAIN


def test_blank_lines_and_too_long_lines_do_not_decide_the_mode() -> None:
    c = conn(max_frame=10)
    assert c.receive_data(b"\n  \r\n\t\n", 0.0) == []
    assert c.mode is Mode.UNKNOWN
    out = c.receive_data(b"x" * 11 + b"\n", 0.0)
    assert reply_obj(out[0])["code"] == m.Err.FRAME_TOO_LONG  # JSON until the client shows otherwise
    assert c.mode is Mode.UNKNOWN
    c.receive_data(b"/nick al\n", 0.0)
    assert mode_of(c) is Mode.PLAIN


def test_mode_sticks_once_chosen() -> None:
    c = conn()
    c.receive_data(b'{"type":"ping"}\n', 0.0)
    out = c.receive_data(b"/nick al\n", 0.0)
    assert reply_obj(out[0])["code"] == m.Err.BAD_JSON
    assert c.mode is Mode.JSON


# --- JSON mode ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "obj",
    [{"type": "join", "room": "dev", "id": 4}, {"type": "msg", "room": "lobby", "text": "hi", "id": 4},
     {"type": "who", "room": "lobby", "id": 4}, {"type": "nick", "nick": "x", "id": 4}],
)  # fmt: skip
def test_requests_before_hello_are_not_registered(obj: dict[str, Any]) -> None:
    c = conn()
    (action,) = c.receive_data(line(obj), 0.0)
    err = reply_obj(action)
    assert err == {"type": "error", "code": m.Err.NOT_REGISTERED, "message": "send a hello first", "id": 4}


def test_stats_and_rooms_before_hello_are_forwarded() -> None:
    c = conn()
    assert c.receive_data(line({"type": "stats", "id": 1}), 0.0) == [Forward(m.Stats(id=1))]
    assert c.receive_data(line({"type": "rooms", "id": 2}), 0.0) == [Forward(m.Rooms(id=2))]


def test_hello_then_requests_are_forwarded_in_order() -> None:
    c = conn()
    data = line({"type": "hello", "nick": "al", "id": 1}) + line({"type": "msg", "room": "lobby", "text": "x", "id": 2})
    assert c.receive_data(data, 0.0) == [Forward(m.Hello("al", id=1)), Forward(m.Msg("lobby", "x", id=2))]
    assert c.hello_sent and not c.registered
    c.bound("al")
    assert c.registered and c.nick == "al"


def test_ping_is_answered_locally() -> None:
    c = conn()
    (a,) = c.receive_data(b'{"type":"ping","id":9}\n', 0.0)
    assert reply_obj(a) == {"type": "pong", "id": 9}
    (a,) = c.receive_data(b'{"type":"ping"}\n', 1.0)
    assert reply_obj(a) == {"type": "pong"}
    assert c.receive_data(b'{"type":"pong"}\n', 2.0) == []
    assert c.last_seen == 2.0


def test_a_history_page_costs_history_cost_lines_of_the_rate() -> None:
    """A small request for up to 256 KiB read from disk and sent back: at the line rate a few connections
    held the main process for seconds. Each costs LISTING_COST lines; what follows waits until it is paid."""
    c = conn(rate=20.0, burst=50)
    registered_json(c)
    ask = line({"type": "history", "room": "lobby"})
    out = c.receive_data(ask * 6 + line({"type": "ping"}), 0.0)
    assert len(out) == 5 and all(isinstance(a, Forward) for a in out)  # 50 tokens: five pages
    assert c.throttled_until is not None and c.pending == 2
    t = c.throttled_until
    assert len(c.process(t)) == 1  # the sixth, once one token is back...
    assert c.process(t + 0.4) == [] and c.throttled_until == pytest.approx(t + 0.5)  # ...the ping waits for
    assert len(c.process(t + 0.5)) == 1  # the other nine tokens (and one of its own): half a second
    plain = conn(rate=20.0, burst=50)
    registered_plain(plain)
    assert len(plain.receive_data(b"/history 5\n" * 6, 0.0)) == 5  # the same in plain text


def test_a_nick_change_costs_a_line_per_room_it_is_told_in() -> None:
    """An adversarial review: a rename is an event stored in each of the session's rooms (up to 50) for one
    line of the rate, so 200 renames in 10 s wore 50 rooms' histories out 50 times as fast as posts. It
    costs a line per room now (paid after it, as a listing's): in 50 rooms, one each 2.5 s at 20 lines a second."""
    c = conn(rate=20.0, burst=50)
    registered_json(c)
    for i in range(50):
        c.joined(f"r{i}")  # (as the hub's member frames say)
    renames = b"".join(line({"type": "nick", "nick": f"al{i}"}) for i in range(3))
    assert c.receive_data(renames, 0.0) == [Forward(m.Nick("al0"))]  # the burst's 50 lines: spent
    second = c.throttled_until or 0.0
    assert c.process(second) == [Forward(m.Nick("al1"))]  # (with the one line it needs)
    assert c.throttled_until == pytest.approx(second + 50 / 20)  # the next waits for 50 lines more
    same = conn(rate=20.0, burst=50)
    registered_json(same)
    for i in range(50):
        same.joined(f"r{i}")
    assert len(same.receive_data(line({"type": "nick", "nick": "al"}) * 40, 0.0)) == 40  # its own: no event
    lone = conn(rate=20.0, burst=50)
    registered_json(lone)  # in one room: a line, as before
    assert len(lone.receive_data(line({"type": "nick", "nick": "x1"}) * 40, 0.0)) == 40


def test_lines_held_by_the_rate_limit_are_kept_unframed() -> None:
    """64 KiB of 3-byte lines framed at once held 21,800 bytes objects (1.2 MiB a connection) for the
    18 minutes the rate limit took to let them through. Bytes are framed FRAME_CHUNK at a time instead;
    nothing is lost or reordered."""
    c = conn(rate=1000.0, burst=1000)
    registered_json(c)
    data = b"".join(line({"type": "ping", "id": i}) for i in range(3000))  # about 80 KiB
    got = c.receive_data(data, 0.0)
    assert len(got) == 999 and c.throttled_until is not None  # the hello took one token
    assert len(c._pending) <= FRAME_CHUNK // len(line({"type": "ping", "id": 1})) + 1  # not 2,000 lines
    t = 0.0
    while c.pending:
        t += 1.0
        got += c.process(t)
    assert [json.loads(r.data)["id"] for r in got if isinstance(r, Reply)] == list(range(3000))


def test_a_long_line_is_framed_in_one_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    """A review: framing FRAME_CHUNK bytes at a time rebuilt a long line's buffer on every chunk (a 1 MiB
    line: 512 copies of up to 1 MiB). A chunk runs on to the next newline."""
    c = conn(max_frame=1 << 20)
    registered_plain(c)
    fed: list[int] = []
    feed = LineFramer.feed

    def counted(self: LineFramer, data: bytes) -> list[Frame]:
        fed.append(len(data))
        return feed(self, data)

    monkeypatch.setattr(LineFramer, "feed", counted)
    text = b"x" * (200 * FRAME_CHUNK)
    out = c.receive_data(text + b"\nshort\n", 0.0)
    assert fed[0] == len(text) + 1 and len(fed) <= 2
    assert len(out) == 2 and c.frames_in == 3  # the /nick, the long line (refused: too long a text), "short"


def test_silence_counts_from_the_last_line_not_from_bytes_of_an_unfinished_one() -> None:
    """A review: one byte every half second, never a newline, kept a connection alive for ever (never
    pinged, never dropped) while it held up to --max-frame bytes, where the docs say silence counts from
    the last line handled."""
    c = conn()
    c.receive_data(b'{"type":"hello","nick":"al"}\n', 5.0)
    assert c.last_seen == 5.0
    for i in range(20):
        assert c.receive_data(b" ", 10.0 + i) == []
    assert c.last_seen == 5.0
    c.receive_data(b"\n", 40.0)  # the line ends (blank): heard
    assert c.last_seen == 40.0


def test_quit_before_hello_closes_without_forwarding() -> None:
    c = conn()
    assert c.receive_data(b'{"type":"quit"}\n', 0.0) == [Close("quit", clean=True)]
    assert c.closed


def test_quit_after_hello_is_forwarded_then_closes_clean() -> None:
    c = conn()
    registered_json(c)
    out = c.receive_data(line({"type": "quit", "reason": "bye"}) + line({"type": "ping"}), 0.0)
    # the worker keeps the connection open until the hub's close: what came before the quit still arrives
    assert out == [Forward(m.Quit("bye")), Close("bye", clean=True, after_hub=True)]
    assert c.closed
    assert c.receive_data(line({"type": "ping"}), 1.0) == []  # nothing after the close


def test_eof_is_an_unclean_close() -> None:
    c = conn()
    registered_json(c)
    # a half-close ends the input only: the hub answers what came before it (welcome, acks), then closes
    assert c.receive_data(b"", 3.0) == [Close("connection closed by peer", clean=False, after_hub=True)]
    assert c.closed
    assert c.receive_data(b"", 4.0) == []


def test_a_last_line_without_its_newline_at_the_end_of_input_is_said_not_dropped() -> None:
    """A bot author's walkthrough: `printf '/nick bot\\nalert: disk full' | nc -N` posted nothing, without a
    word. A JSON object is whole or no object: handled (once, past the rate). Plain text is said not sent:
    the server cannot tell a script's half-close from a character-at-a-time client that died mid-line (a
    review: its half-typed `/msg ann my password is hunter` went out), and a cut line can say the opposite."""
    plain = conn(rate=1.0, burst=1)
    registered_plain(plain)
    assert plain.receive_data(b"/msg ann my password is hunter", 5.0) == []
    assert plain.receive_data(b"", 5.0) == [
        Reply(b"! the last line had no newline at the end of the input: not sent [incomplete_line]\n"),
        Close("connection closed by peer", clean=False, after_hub=True),
    ]
    js = conn(rate=1.0, burst=1)
    registered_json(js)
    js.receive_data(b'{"type":"msg","room":"lobby","text":"hi","id":1}', 5.0)
    assert js.receive_data(b"", 5.0) == [  # (past the rate: the bucket was empty)
        m.Post("msg", "lobby", b'"hi"', 1), Close("connection closed by peer", clean=False, after_hub=True),
    ]  # fmt: skip
    quits = conn()
    registered_json(quits)
    quits.receive_data(b'{"type":"quit","reason":"done"}', 0.0)
    assert quits.receive_data(b"", 0.0) == [Forward(m.Quit("done")), Close("done", clean=True, after_hub=True)]
    held = conn(rate=1.0, burst=1)  # lines the rate still holds come first (the worker reads no EOF then)
    registered_json(held)
    held.receive_data(line({"type": "ping"}) * 2 + b'{"type":"ping"}', 5.0)
    assert held.throttled_until is not None  # (the last line is not handled ahead of the one the rate holds)
    assert held.receive_data(b"", 5.0) == [Close("connection closed by peer", clean=False, after_hub=True)]
    long = conn(max_frame=256)
    registered_json(long)
    (refused,) = long.receive_data(b"x" * 300, 0.0)  # over the limit: refused as it passes it, and skipped
    assert isinstance(refused, Reply) and b"frame_too_long" in refused.data
    assert long.receive_data(b"", 0.0) == [Close("connection closed by peer", clean=False, after_hub=True)]
    first = conn()  # the connection's first line: it decides the mode (an adversarial review: `/nick ghost`
    assert first.receive_data(b"/nick ghost", 0.0) == []  # without a newline made a session, join and quit)
    assert first.receive_data(b"", 0.0) == [
        Reply(b"! the last line had no newline at the end of the input: not sent [incomplete_line]\n"),
        Close("connection closed by peer", clean=False, after_hub=False),
    ]
    first_json = conn()
    first_json.receive_data(b'\xef\xbb\xbf {"type":"hello","nick":"bot"}', 0.0)
    assert [type(a) for a in first_json.receive_data(b"", 0.0)] == [Forward, Close]  # (a JSON one is whole)


def test_eof_before_anything_went_to_the_hub_closes_at_once() -> None:
    c = conn()
    assert c.receive_data(line({"type": "ping"}), 1.0) == [Reply(b'{"type":"pong"}\n')]
    assert c.receive_data(b"", 3.0) == [Close("connection closed by peer", clean=False)]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"{not json}\n", m.Err.BAD_JSON),
        (b'{"type":"fly"}\n', m.Err.UNKNOWN_TYPE),
        (b'{"type":"msg"}\n', m.Err.BAD_ROOM),
        (b'{"\xff":1}\n', m.Err.BAD_UTF8),
        (b"{" * 100_000 + b"\n", m.Err.BAD_JSON),
    ],
)
def test_bad_lines_get_an_error_and_the_connection_continues(data: bytes, code: str) -> None:
    c = conn(max_frame=200_000)
    registered_json(c)
    (a,) = c.receive_data(data, 0.0)
    assert reply_obj(a)["code"] == code
    assert not c.closed
    (a,) = c.receive_data(b'{"type":"ping"}\n', 0.0)
    assert reply_obj(a)["type"] == "pong"


def test_bad_field_error_echoes_the_id() -> None:
    c = conn()
    registered_json(c)
    (a,) = c.receive_data(line({"type": "msg", "room": "lobby", "text": "", "id": 77}), 0.0)
    assert reply_obj(a) == {"type": "error", "code": m.Err.BAD_TEXT, "message": "text is empty", "id": 77}


def test_frame_too_long_reply_and_the_connection_continues() -> None:
    c = conn(max_frame=32)
    registered_json(c)
    out = c.receive_data(b"{" + b"x" * 100, 0.0)
    assert len(out) == 1 and reply_obj(out[0])["code"] == m.Err.FRAME_TOO_LONG
    assert "32" in reply_obj(out[0])["message"]
    assert c.receive_data(b"x" * 1000, 0.0) == []  # the rest of the long line is skipped silently
    out = c.receive_data(b'xx\n{"type":"ping"}\n', 0.0)
    assert [reply_obj(a)["type"] for a in out] == ["pong"]
    assert not c.closed


def test_lines_split_across_reads() -> None:
    c = conn()
    data = line({"type": "hello", "nick": "al"}) + line({"type": "join", "room": "dev"})
    out = []
    for i in range(len(data)):
        out += c.receive_data(data[i : i + 1], float(i))
    assert out == [Forward(m.Hello("al")), Forward(m.Join("dev"))]
    assert c.last_seen == float(len(data) - 1)


def test_error_bytes_in_json_mode() -> None:
    c = conn()
    c.receive_data(b'{"type":"ping"}\n', 0.0)
    data = c.error_bytes(m.Err.IDLE_TIMEOUT, "gone quiet", fatal=True)
    assert json.loads(data) == {"type": "error", "code": "idle_timeout", "message": "gone quiet", "fatal": True}


# --- token bucket ---------------------------------------------------------------------------------------------


def test_token_bucket_unit() -> None:
    b = TokenBucket(2.0, 3, now=0.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.ready_at(0.0) == 0.5
    assert not b.take(0.25)
    assert b.ready_at(0.25) == 0.5
    assert b.take(0.5)
    assert not b.take(0.5)
    assert b.take(100.0)  # refilled, but never above burst
    assert b.take(100.0) and b.take(100.0)
    assert not b.take(100.0)


def test_fourth_frame_is_held_and_released_later() -> None:
    c = conn(rate=2.0, burst=3)
    pings = b"".join(line({"type": "ping", "id": i}) for i in range(4))
    out = c.receive_data(pings, 0.0)
    assert [reply_obj(a)["id"] for a in out] == [0, 1, 2]
    assert c.throttled_until == 0.5
    assert c.pending == 1
    assert c.process(0.4) == []
    assert c.throttled_until == 0.5  # still waiting; nothing lost
    assert c.pending == 1
    out = c.process(0.5)
    assert [reply_obj(a)["id"] for a in out] == [3]
    assert c.throttled_until is None
    assert c.pending == 0
    assert c.frames_in == 4


def test_throttled_lines_keep_their_order_with_new_input() -> None:
    c = conn(rate=1.0, burst=1)
    out = c.receive_data(line({"type": "ping", "id": 1}) + line({"type": "ping", "id": 2}), 0.0)
    assert [reply_obj(a)["id"] for a in out] == [1]
    out = c.receive_data(line({"type": "ping", "id": 3}), 0.2)  # more arrives while throttled
    assert out == []
    assert c.pending == 2
    assert c.throttled_until == pytest.approx(1.0)
    assert [reply_obj(a)["id"] for a in c.process(1.0)] == [2]
    assert [reply_obj(a)["id"] for a in c.process(2.0)] == [3]
    assert c.throttled_until is None


def test_bucket_refill_is_capped_at_burst() -> None:
    c = conn(rate=2.0, burst=3)
    c.receive_data(line({"type": "ping"}), 0.0)
    out = c.receive_data(b"".join(line({"type": "ping", "id": i}) for i in range(5)), 1000.0)
    assert len(out) == 3
    assert c.throttled_until == 1000.5


def test_process_at_throttled_until_releases_the_held_line() -> None:
    c = conn(rate=5.0, burst=4)
    now = 0.0
    answered: list[int] = []
    for i in range(12):  # one line every 0.1 s at 5/s: the bucket drains by half a token each time
        now += 0.1
        answered += [reply_obj(a)["id"] for a in c.receive_data(line({"type": "ping", "id": i}), now)]
        while c.throttled_until is not None:  # the I/O edge wakes up exactly when told: never a stall
            until = c.throttled_until
            assert until > now or c.pending == 0
            released = [reply_obj(a)["id"] for a in c.process(until)]
            assert released, f"woke at {until} and nothing was released"
            answered += released
            now = max(now, until)
    assert answered == list(range(12))  # every line, in order, none dropped


def test_blank_lines_cost_tokens_like_any_line() -> None:
    """A flood of newlines is paused like any flood (it would keep the worker framing for nothing)."""
    c = conn(rate=1.0, burst=2)
    out = c.receive_data(b"\n\n\n\r\n" + line({"type": "ping"}), 0.0)
    assert out == [] and c.throttled_until == 1.0 and c.pending == 3
    assert c.process(3.0) == []  # two more blank lines go, each for a token
    assert [reply_obj(a)["type"] for a in c.process(4.0)] == ["pong"]  # and the ping is not lost


def test_throttled_quit_still_closes_when_released() -> None:
    c = conn(rate=1.0, burst=1)
    registered_json(c)
    out = c.receive_data(line({"type": "quit"}), 0.0)
    assert out == [] and c.throttled_until == 1.0 and not c.closed
    assert c.process(1.0) == [Forward(m.Quit("")), Close("quit", clean=True, after_hub=True)]


# --- plain mode -----------------------------------------------------------------------------------------------


def test_plain_first_line_nick() -> None:
    c = conn()
    assert c.receive_data(b"/nick bob\r\n", 0.0) == [Forward(m.Hello("bob", plain=True))]
    assert c.mode is Mode.PLAIN
    assert c.hello_sent and not c.registered
    assert c.rooms == [] and c.current == const.DEFAULT_ROOM  # (read ahead of the hub's answer)


def test_plain_first_line_text_is_refused_until_a_nick() -> None:
    c = conn(conn_id=42)
    assert c.receive_data(b"hi all\n", 0.0) == [Reply(b"! choose a nick first: /nick NAME [not_registered]\n")]
    assert c.mode is Mode.PLAIN
    assert not c.hello_sent and c.rooms == []
    assert c.receive_data(b"/nick al\n", 0.0) == [Forward(m.Hello("al", plain=True))]


@pytest.mark.parametrize(
    "banner", [b"SSH-2.0-OpenSSH_9.6\r\n", b"EHLO mail.example.com\r\n", b" /nick bob\n", b"/join lobby\n", b"/me x\n"]
)
def test_plain_stray_protocols_never_post(banner: bytes) -> None:
    c = conn()
    (a,) = c.receive_data(banner, 0.0)
    assert isinstance(a, Reply) and a.data.endswith(b"[not_registered]\n")
    assert not c.hello_sent


def test_plain_first_line_help_replies_without_a_session() -> None:
    c = conn(conn_id=3)
    assert c.receive_data(b"/help\n", 0.0) == [Reply(HELP.encode() + b"\n")]
    assert c.receive_data(b"/?\n", 0.0) == [Reply(HELP.encode() + b"\n")]
    assert not c.hello_sent


def test_plain_commands_allowed_before_the_nick() -> None:
    c = conn()
    assert c.receive_data(b"/STATUS\n", 0.0) == [Forward(m.Stats())]
    assert c.receive_data(b"/rooms\n", 0.0) == [Forward(m.Rooms())]
    assert not c.hello_sent
    (a,) = c.receive_data(b"/nick\n", 0.0)
    assert isinstance(a, Reply) and a.data == b"! usage: /nick NAME [bad_field]\n"
    # no session, but answers due (the status and the rooms): the hub says close after them
    assert c.receive_data(b"/quit\n", 0.0) == [
        Forward(m.Quit()),
        Close("quit", clean=True, final=b"* bye\n", after_hub=True),
    ]
    assert c.closed


def test_plain_http_request_is_answered_and_closed() -> None:
    c = conn()
    out = c.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    assert len(out) == 2
    reply, close = out
    assert isinstance(reply, Reply) and reply.data.startswith(b"HTTP/1.1 400 ")
    head, body = reply.data.split(b"\r\n\r\n", 1)
    assert f"Content-Length: {len(body)}".encode() in head
    assert close == Close("http request", clean=True)
    assert c.closed and not c.hello_sent


def test_plain_http_looking_text_after_the_nick_is_a_message() -> None:
    c = conn()
    registered_plain(c)
    assert c.receive_data(b"GET / HTTP/1.1\n", 0.0) == [Forward(m.Msg("lobby", "GET / HTTP/1.1"))]


def test_plain_lines_pipelined_after_the_nick_are_posted() -> None:
    c = conn()
    out = c.receive_data(b"/nick bob\nhello everyone\n", 0.0)
    assert out == [Forward(m.Hello("bob", plain=True)), Forward(m.Msg("lobby", "hello everyone"))]


def test_plain_nick_taken_may_be_retried() -> None:
    c = conn()
    c.receive_data(b"/nick bob\n", 0.0)
    c.answered("lobby", False)  # the hub answers nick_taken: no bind, no room
    assert c.current is None
    assert c.receive_data(b"/nick bob2\n", 2.0) == [Forward(m.Hello("bob2", plain=True))]
    assert c.current == "lobby"
    c.bound("bob2")
    assert c.receive_data(b"/nick bob3\n", 3.0) == [Forward(m.Nick("bob3"))]  # registered: a nick change


def test_plain_after_registration() -> None:
    c = conn()
    registered_plain(c)
    assert c.receive_data(b"hello\n", 0.0) == [Forward(m.Msg("lobby", "hello"))]
    assert c.receive_data(b"/me waves\n", 0.0) == [Forward(m.Action("lobby", "waves"))]
    assert c.receive_data(b"//etc/passwd\n", 0.0) == [Forward(m.Msg("lobby", "/etc/passwd"))]
    assert c.receive_data(b"/nick bobby\n", 0.0) == [Forward(m.Nick("bobby"))]
    assert c.receive_data(b"/join dev\n", 0.0) == [Forward(m.Join("dev"))]
    assert c.receive_data(b"/help\n", 0.0) == [Reply(HELP.encode() + b"\n")]


def test_a_plain_nick_of_ones_own_nick_is_said_not_sent() -> None:
    """An adversarial review: `/nick bob` as bob (or its other encoding) said nothing at all on nc; the terminal
    client says so itself. A /nick back to it while a rename is unanswered is sent, as it changes something."""
    c = conn()
    registered_plain(c, "éx")
    already = [Reply("* you are éx already\n".encode())]
    assert c.receive_data("/nick éx\n".encode(), 0.0) == already
    assert c.receive_data("/nick e\u0301x\n".encode(), 0.0) == already  # (a nick is NFC)
    assert c.receive_data(b"/nick ann\n", 0.0) == [Forward(m.Nick("ann"))]
    assert c.receive_data("/nick éx\n".encode(), 0.0) == [Forward(m.Nick("éx"))]  # (ann's answer not yet in)
    c.bound("éx")
    assert c.receive_data("/nick éx\n".encode(), 0.0) == already
    early = conn()  # a review: renames read before the welcome, then the first one bound
    assert [type(a) for a in early.receive_data(b"/nick bob\n/nick ann\n", 0.0)] == [Forward, Forward]
    early.bound("bob")
    assert early.receive_data(b"/nick bob\n", 0.0) == [Forward(m.Nick("bob"))]  # (ann's answer is to come)
    # After a refused rename the same: it was sent, and the hub said nothing (left by a review, then mended)
    assert c.receive_data(b"/nick bob\n", 0.0) == [Forward(m.Nick("bob"))]
    taken = m.encode(m.error_frame(m.Err.NICK_TAKEN, "nick bob is taken"))
    assert c.plain_text(taken.rstrip(b"\n")) == b"! nick bob is taken [nick_taken]\n"
    assert c.receive_data("/nick éx\n".encode(), 0.0) == already
    assert c.receive_data(b"/nick 1bad\n", 0.0)[0] == Reply(b"! nick must start with a letter or _ [bad_nick]\n")
    assert c.receive_data(b"/nick carl\n", 0.0) == [Forward(m.Nick("carl"))]
    c.plain_text(m.encode(m.error_frame(m.Err.TOO_FAST, "slow down")))  # not a rename's answer
    assert c.receive_data("/nick éx\n".encode(), 0.0) == [Forward(m.Nick("éx"))]
    assert c.receive_data(b"/nick dan\n", 0.0) == [Forward(m.Nick("dan"))]
    c.plain_text(m.encode(m.error_frame(m.Err.TOO_FAST, "nick changes too fast for 50 rooms (an event in each)")))
    assert c.receive_data("/nick éx\n".encode(), 0.0) == already


def test_plain_switch_between_joined_rooms() -> None:
    c = conn()
    registered_plain(c)
    assert c.receive_data(b"/join dev\n", 0.0) == [Forward(m.Join("dev"))]
    granted(c, "dev")
    assert c.current == "dev"
    assert c.receive_data(b"in dev\n", 0.0) == [Forward(m.Msg("dev", "in dev"))]
    assert c.receive_data(b"/switch #lobby\n", 0.0) == [Reply(b"* now talking in #lobby\n")]
    assert c.current == "lobby"
    assert c.receive_data(b"in lobby\n", 0.0) == [Forward(m.Msg("lobby", "in lobby"))]
    assert c.receive_data(b"/switch games\n", 0.0) == [
        Reply(b"! /switch ROOM needs a room you have joined [not_in_room]\n")
    ]
    assert c.receive_data(b"/switch\n", 0.0) == [Reply(b"! /switch ROOM needs a room you have joined [not_in_room]\n")]
    assert c.current == "lobby"


def test_plain_part_moves_the_current_room() -> None:
    c = conn()
    registered_plain(c)
    c.joined("dev")
    c.joined("games")
    c.joined("dev")  # no duplicate; the current room is the one typed (a /join line), not the hub's last
    assert c.rooms == ["lobby", "dev", "games"] and c.current == "lobby"
    c.receive_data(b"/switch dev\n", 0.0)
    c.parted("dev")  # (the hub's own doing: the session left it) the room joined last becomes current
    assert c.rooms == ["lobby", "games"] and c.current == "games"
    c.parted("lobby")
    assert c.current == "games"
    c.parted("games")
    assert c.rooms == [] and c.current is None
    c.parted("nowhere")
    (a,) = c.receive_data(b"anyone?\n", 0.0)
    assert isinstance(a, Reply) and a.data.endswith(b"[not_in_room]\n")


def test_plain_quit() -> None:
    c = conn()
    registered_plain(c)
    assert c.receive_data(b"/quit gotta go\n", 0.0) == [
        Forward(m.Quit("gotta go")), Close("gotta go", clean=True, final=b"* bye\n", after_hub=True),
    ]  # fmt: skip
    assert c.closed


def test_plain_errors_are_text() -> None:
    c = conn()
    registered_plain(c)
    (a,) = c.receive_data(b"/frob\n", 0.0)
    assert isinstance(a, Reply) and a.data == b"! unknown command /frob; /help lists them [unknown_type]\n"
    (a,) = c.receive_data(b"caf\xc3\n", 0.0)
    assert isinstance(a, Reply) and a.data == b"! that line is not valid UTF-8 [bad_utf8]\n"
    assert c.error_bytes("too_slow", "bye") == b"! bye [too_slow]\n"


def test_plain_frame_too_long_is_text() -> None:
    c = conn(max_frame=16)
    registered_plain(c)
    (a,) = c.receive_data(b"z" * 40 + b"\n", 0.0)
    assert isinstance(a, Reply) and a.data == b"! line longer than 16 bytes [frame_too_long]\n"


def test_plain_bad_utf8_first_line_sends_no_hello() -> None:
    c = conn()
    (a,) = c.receive_data(b"\xff\xfe\n", 0.0)
    assert isinstance(a, Reply) and b"[bad_utf8]" in a.data
    assert not c.hello_sent


def test_plain_error_replies_contain_no_control_characters() -> None:
    c = conn()
    registered_plain(c)
    (a,) = c.receive_data(b"/\x1b]0;pwned\x07\x1b[2J\n", 0.0)
    assert isinstance(a, Reply)
    assert b"\x1b" not in a.data and b"\x07" not in a.data


def test_plain_history_with_a_unicode_digit_does_not_raise() -> None:
    c = conn()
    registered_plain(c)
    out = c.receive_data("/history ²\n".encode(), 0.0)
    assert len(out) == 1


# --- render_for_plain -----------------------------------------------------------------------------------------


def test_render_for_plain() -> None:
    ev = m.encode({"type": "msg", "seq": 1, "ts": 0, "room": "lobby", "from": "al", "text": "hi \x1b"})
    out = render_for_plain(ev[:-1], "bob")
    assert out is not None and out.endswith(b"<al> hi \xef\xbf\xbd\n") and b"\x1b" not in out
    assert render_for_plain(m.encode({"type": "ack", "id": 1, "seq": 2}), "bob") is None
    assert render_for_plain(b"not json", "bob") is None
    assert render_for_plain(b"[1,2]", "bob") is None
    assert render_for_plain(b"\xff", "bob") is None
    pm = m.encode({"type": "privmsg", "seq": 1, "ts": 0, "from": "Bob", "to": "al", "text": "x"})
    assert b"-> *al*" in (render_for_plain(pm, "bob") or b"")
    refused = m.encode(m.error_frame(m.Err.NOT_REGISTERED, "send a hello first"))  # the hub's, after /nick failed
    assert render_for_plain(refused, "") == b"! choose a nick first: /nick NAME [not_registered]\n"


# --- fuzzing --------------------------------------------------------------------------------------------------

chunks = st.lists(
    st.binary(max_size=30) | st.sampled_from([b"\n", b'{"type":"hello","nick":"al"}\n', b"/nick x\n", b"/help\n",
                                              b'{"type":"ping"}\n', b"hi\n", b"/quit\n"]),
    max_size=12,
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(chunks, st.booleans())
@example([b"\n"] * 8 + [b"", b""], False)  # throttled, then EOF: a closed connection is not throttled
@example([b"\n\n\n\n", b"\n\n\n\n\n"], False)  # more left pending than one burst: drained over several calls
def test_any_input_gives_actions_never_an_exception(data: list[bytes], register: bool) -> None:
    c = conn(rate=5.0, burst=4, max_frame=40)
    now = 0.0
    for chunk in data:
        now += 0.1
        if register and c.hello_sent and not c.registered:
            c.bound("x")
        for a in c.receive_data(chunk, now):
            assert isinstance(a, Forward | m.Post | Reply | Close)
            if isinstance(a, Reply):
                assert a.data.endswith(b"\n")
            if isinstance(a, Forward):  # what a worker forwards always passes the hub's validation
                assert m.parse_obj(a.request.to_obj(), allow_plain=True) == a.request
        assert c.throttled_until is None or c.throttled_until >= now
    # Whatever is pending is handled in the end: a burst per call at most, then at the time the bucket gives
    now += 100.0
    for _ in range(c.pending + 1):
        c.process(now)
        if c.throttled_until is None:
            break
        assert c.throttled_until > now
        now = c.throttled_until
    assert c.pending == 0 or c.closed


def test_common_message_shape_is_forwarded_without_decoding() -> None:
    c = conn()
    fast = b'{"type":"msg","room":"lobby","text":"hi there","id":5}\n'
    (early,) = c.receive_data(fast, 0.0)  # before the hello: the same answer as the full parser gives
    assert reply_obj(early) == {"type": "error", "code": "not_registered", "message": "send a hello first", "id": 5}
    assert c.receive_data(line({"type": "hello", "nick": "al"}), 0.0) == [Forward(m.Hello("al"))]
    c.bound("al")
    assert c.receive_data(fast, 0.0) == [m.Post("msg", "lobby", b'"hi there"', 5)]
    assert c.receive_data(b'{"type":"action","room":"lobby","text":"waves"}\n', 0.0) == [
        m.Post("action", "lobby", b'"waves"')
    ]
    # Anything else takes the full parser, which normalises: the hub sees the same request either way.
    assert c.receive_data(b'{"type":"msg","room":"#Lobby","text":"hi"}\n', 0.0) == [Forward(m.Msg("lobby", "hi"))]


def test_plain_lines_after_a_join_go_to_its_room_before_the_hub_answers() -> None:
    """A protocol review: `printf '/nick bot\\n/join ops\\nalert: disk full\\n' | nc` posted the alert to
    #lobby (the current room moved only when the hub's member record came). It moves as the /join is read;
    a refused join comes back as a part and the current room with it; a /part of it moves it back at once."""
    c = conn()
    registered_plain(c)
    out = c.receive_data(b"/join ops\nalert: disk full\n/part\nback in the lobby\n", 0.0)
    assert out == [
        Forward(m.Join("ops")), Forward(m.Msg("ops", "alert: disk full")), Forward(m.Part("ops", "")),
        Forward(m.Msg("lobby", "back in the lobby")),
    ]  # fmt: skip
    granted(c, "ops")  # (the hub's answers, in order)
    left(c, "ops")
    assert c.receive_data(b"/join full\n", 0.0) == [Forward(m.Join("full"))]
    c.answered("full", False)  # refused
    assert c.current == "lobby" and c.receive_data(b"hi\n", 0.0) == [Forward(m.Msg("lobby", "hi"))]
    c.receive_data(b"/join dev\n/switch lobby\n", 0.0)
    granted(c, "dev")  # answered after the /switch: it stays
    assert c.current == "lobby" and c.rooms == ["lobby", "dev"]
    assert c.receive_data(b"/join dev\n", 0.0) == [Forward(m.Join("dev"))]  # joined already: current again
    assert c.current == "dev"


def test_plain_current_room_through_refusals_parts_and_switches_read_ahead_of_the_hub() -> None:
    """A review of the mend above: a /join refused while the nick was (no session) left #ops current for good; a
    refused join gave the current room to the room joined last, not to the one talked in; `/part dev` then
    `/part` made #dev current (being left); and /switch refused a room whose /join was read but not answered.
    A later review: a /part after a refused /nick waited for an answer for ever (every later line refused as
    sent in no room); the hub answers every plain /nick, /join and /part now, refused or not.
    (tests/unit/test_plain_rooms.py drives the same against the real hub.)"""
    for line, req in ((b"/join ops\n", m.Join("ops")), (b"/part\n", m.Part("lobby", ""))):
        a = conn()
        assert a.receive_data(b"/nick taken\n" + line, 0.0) == [Forward(m.Hello("taken", plain=True)), Forward(req)]
        a.answered("lobby", False)  # nick_taken
        a.answered(req.room, False)  # not_registered
        a.receive_data(b"/nick free\n", 0.0)
        a.bound("free")
        granted(a, "lobby")
        a.receive_data(b"/join dev\n/part dev\n", 0.0)
        granted(a, "dev")
        left(a, "dev")
        assert a._moves == () and a.receive_data(b"hello\n", 0.0) == [Forward(m.Msg("lobby", "hello"))]

    d = plain_in_lobby()
    d.receive_data(b"/join dev\n/switch lobby\n/join full\n", 0.0)
    granted(d, "dev")
    d.answered("full", False)  # refused (too_many_rooms): back to where the user was talking
    assert d.receive_data(b"for the lobby\n", 0.0) == [Forward(m.Msg("lobby", "for the lobby"))]

    b = plain_in_lobby()
    b.receive_data(b"/join dev\n/join ops\n", 0.0)
    granted(b, "dev")
    granted(b, "ops")
    out = b.receive_data(b"/part dev\n/part\nstill here\n", 0.0)
    assert out[-1] == Forward(m.Msg("lobby", "still here"))  # not #dev, whose /part came first
    left(b, "dev")
    left(b, "ops")
    assert b.current == "lobby" and b.rooms == ["lobby"] and b._moves == ()

    c = plain_in_lobby()
    out = c.receive_data(b"/join dev\n/join ops\n/switch dev\nfor dev\n/part ops\n/switch ops\n", 0.0)
    assert out[2:] == [
        Reply(b"* now talking in #dev\n"), Forward(m.Msg("dev", "for dev")), Forward(m.Part("ops", "")),
        Reply(b"! /switch ROOM needs a room you have joined [not_in_room]\n"),
    ]  # fmt: skip
    granted(c, "dev")
    assert c._moves == (("join", "ops"), ("switch", "dev"), ("part", "ops"))  # (an answered join is done)

    r = plain_in_lobby()  # a second review: "/part dev" then "/join dev" pasted; the part's answer came first
    r.receive_data(b"/join dev\n", 0.0)  # and took #dev away from the lines typed after the answers
    granted(r, "dev")
    r.receive_data(b"/part dev\n/join dev\n", 0.0)
    left(r, "dev")
    assert r.current == "dev" and r.receive_data(b"/switch dev\n", 0.0) == [Reply(b"* now talking in #dev\n")]
    granted(r, "dev")
    assert r.current == "dev" and r.rooms == ["lobby", "dev"] and r._moves == ()
    r.receive_data(b"/part dev\n/join dev\n", 0.0)
    left(r, "dev")  # the part, then the join refused: back where the user was before it
    r.answered("dev", False)
    assert r.current == "lobby"

    p = plain_in_lobby()  # a /part of a room not joined is answered too (member false), and forgotten
    for i in range(200):
        p.receive_data(f"/part #nowhere{i}\n".encode(), 0.0)
        p.answered(f"nowhere{i}", False)
    assert p._moves == () and p.current == "lobby"


def test_plain_moves_read_ahead_are_bounded() -> None:
    """At most MAX_MOVES /join, /part, /switch and /nick wait for the hub's answers: one more is refused, not
    sent (a review: a first version took the oldest as granted, and lost the rooms they made)."""
    c = plain_in_lobby()
    rooms = [f"r{i % 40}" for i in range(MAX_MOVES + 3)]
    out = c.receive_data(b"".join(f"/join {r}\n".encode() for r in rooms) + b"/switch lobby\nhi\n", 0.0)
    assert out[:MAX_MOVES] == [Forward(m.Join(r)) for r in rooms[:MAX_MOVES]]
    refused = [a for a in out[MAX_MOVES:-1] if isinstance(a, Reply)]
    assert len(refused) == 4 and all(a.data.endswith(b"[too_fast]\n") for a in refused)
    assert out[-1] == Forward(m.Msg(rooms[MAX_MOVES - 1], "hi"))  # (the /switch was refused too)
    for i, r in enumerate(rooms[:MAX_MOVES]):  # the hub's answers: a member record for each room's first join
        if r in rooms[:i]:
            c.answered(r, True)
        else:
            granted(c, r)
        assert c.current == rooms[MAX_MOVES - 1]
    assert c._moves == () and c.rooms == ["lobby", *dict.fromkeys(rooms)]
    assert c.receive_data(b"/switch lobby\n", 0.0) == [Reply(b"* now talking in #lobby\n")]


def test_plain_part_names_a_room_whose_join_the_hub_has_not_answered() -> None:
    """A pasted "/join dev" and "/part dev bye": the hub has not confirmed #dev when the second line is
    read, and "dev" was taken for the start of a reason (#lobby was left instead)."""
    c = conn()
    registered_plain(c)
    out = c.receive_data(b"/join dev\r\n/part dev bye\r\n/part see you later\r\n", 0.0)
    assert out == [Forward(m.Join("dev")), Forward(m.Part("dev", "bye")), Forward(m.Part("lobby", "see you later"))]


def test_bytes_of_a_line_over_the_limit_cost_the_rate() -> None:
    """Only lines paid the rate: a client streaming bytes without a newline was read at full speed (3 GB/s over
    loopback from two connections, 70 % of each worker's CPU: an adversarial review). Each --max-frame of skipped
    bytes costs a line now, so reading pauses as for a flood of lines of the largest size."""
    c = conn(rate=20.0, burst=50, max_frame=16384)
    registered_json(c)
    out: list[Action] = []
    reads = 0
    while c.throttled_until is None and reads < 40:  # 2.5 MiB at most: 160 lines' worth
        out += c.receive_data(b"x" * 65536, 0.0)
        reads += 1
    assert c.throttled_until is not None and reads * 4 <= 52  # paused within the burst's worth of bytes
    # Nothing of theirs is read until then: not their silence (an idle timeout dropped a client still posting)
    assert c.last_seen == c.throttled_until > 0.0
    out += c.process(100.0)
    out += c.receive_data(b"\n", 100.0)
    errors = [a.data for a in out if isinstance(a, Reply)]
    assert errors == [m.encode(m.error_frame("frame_too_long", "line longer than 16384 bytes"))]  # once


def test_a_quit_after_a_question_before_a_hello_waits_for_its_answer() -> None:
    """`{"type":"stats"}` then `{"type":"quit"}` before any hello (a script, `/rooms` then `/quit` on nc): the
    close came at once and the answer, still with the hub, was lost (an adversarial review)."""
    c = conn()
    out = c.receive_data(line({"type": "stats", "id": 1}) + line({"type": "quit"}), 0.0)
    assert out == [Forward(m.Stats(id=1)), Forward(m.Quit()), Close("quit", clean=True, after_hub=True)]
    c = conn()
    out = c.receive_data(line({"type": "quit"}), 0.0)  # nothing asked: closed at once, as before
    assert out == [Close("quit", clean=True)]
