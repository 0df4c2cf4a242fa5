"""Fuzzing every parser of untrusted bytes, fed whole and in pieces (issue 7, "Hardening").

What the per-module tests (test_messages, test_control, test_beacon, test_server_conn, test_client_conn,
test_plain) do not already cover is added here:

- client frames: structure-aware hostile frames (deep nesting, huge numbers, NaN/Infinity, lone surrogates
  escaped and raw, wrong types, fake ``from``/``seq``/``ts``) through ``parse_line``; whole streams through
  ``ServerConnection.receive_data`` fed whole, byte by byte and in random chunks with the same actions;
- control frames: valid frames followed by garbage, fed whole and byte by byte with the same outcome;
- beacon codec: datagrams built field by field (random INFO, name bytes, length bytes), canonical or refused;
- server frames on the client: arbitrary JSON objects with every field of every type through
  ``ClientState.receive_data`` (whole = byte by byte, never raises) and ``plain.render`` (total, safe).

Every input either parses or raises the protocol's own ``RemoteProtocolError``, never anything else.

Example counts add up to a few thousand per CI run (well under 20 s). A nightly run multiplies them:
``HYPOTHESIS_PROFILE=nightly pytest tests/unit/test_fuzz_parsers.py --timeout=0`` (100,000 examples per
test, about an hour on 2 cores; see docs/security.md).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import struct
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lanchat.errors import ProtocolError, RemoteProtocolError
from lanchat.protocol import beacon as b
from lanchat.protocol import control as c
from lanchat.protocol import messages as m
from lanchat.protocol.client_conn import ClientState
from lanchat.protocol.plain import render
from lanchat.protocol.server_conn import Close, Forward, Mode, Reply, ServerConnection

settings.register_profile(
    "nightly", max_examples=100_000, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
NIGHTLY = os.environ.get("HYPOTHESIS_PROFILE") == "nightly"
if NIGHTLY:
    settings.load_profile("nightly")


def fuzz(examples: int) -> settings:
    """CI: ``examples``; nightly (HYPOTHESIS_PROFILE=nightly): 100,000."""
    return settings(
        max_examples=100_000 if NIGHTLY else examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


ERR_CODES = {v for k, v in vars(m.Err).items() if not k.startswith("_")}
UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

# --- hostile JSON building blocks ------------------------------------------------------------------------------

INTERESTING_INTS = [0, -1, 1, m.MAX_ID, m.MAX_ID + 1, 2**63, 2**64 + 1, -(2**63) - 1, 10**30]
INTERESTING_FLOATS = [math.nan, math.inf, -math.inf, 1e308, -0.0, 0.5, 1.0]
INTERESTING_TEXT = [
    "lobby", "#Lobby", "ann", "bob", "a\nb", "a\r\nb", "\u2028", "\u2029", "\x85", "\x00", "\x1b[2J", "\ud800",
    "\udfff", "\ufeff", "\u202e", "x" * 4001, "\t", "", " ", '"},{"type":"msg"', "\\n", "é", "ſam", "Åsa",
    "\x00\x00\x00\x10\x01", "\x7f",
]  # fmt: skip
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from(INTERESTING_INTS)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(INTERESTING_FLOATS)
    | st.text(max_size=12)
    | st.sampled_from(INTERESTING_TEXT)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)

CLIENT_TYPES = ["hello", "join", "part", "msg", "action", "privmsg", "nick", "topic", "who", "rooms", "history",
                "ping", "pong", "stats", "quit", "welcome", "ack", "Msg", "", "msg\x00"]  # fmt: skip
CLIENT_KEYS = ["type", "id", "room", "rooms", "text", "to", "nick", "topic", "reason", "before", "after", "limit",
               "proto", "token", "last_seq", "plain", "from", "seq", "ts"]  # fmt: skip


def dumps(obj: Any, ascii_only: bool) -> bytes:
    """JSON as a client might send it; with raw UTF-8, a lone surrogate becomes invalid UTF-8 bytes."""
    text = json.dumps(obj, ensure_ascii=ascii_only, allow_nan=True)
    return text.encode("utf-8", "surrogatepass")


@st.composite
def client_objects(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)  # not even an object
    obj: dict[str, Any] = draw(st.dictionaries(st.sampled_from(CLIENT_KEYS), json_values, max_size=6))
    if draw(st.integers(0, 3)):
        obj["type"] = draw(st.sampled_from(CLIENT_TYPES))
    if draw(st.booleans()):  # often well-formed apart from one field, so validation goes deep
        kind = obj.get("type")
        if kind in ("msg", "action"):
            obj.setdefault("room", "lobby")
            obj.setdefault("text", draw(st.text(max_size=20) | st.sampled_from(INTERESTING_TEXT)))
        elif kind == "hello":
            obj.setdefault("nick", draw(st.sampled_from(["ann", "ſam", "Åsa", "A\u030asa", "x" * 25, "1x"])))
    return obj


DEEP = [b"[" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000, b"[" * 900 + b"]" * 900]
RAW_LINES = [
    *DEEP,
    b'{"type":"msg","room":"lobby","text":"a\x00b"}',  # raw NUL inside a JSON string
    b'{"type":"msg","room":"lobby","text":"\xc0\xaf"}',  # overlong UTF-8
    b'{"type":"msg","room":"lobby","text":"\xed\xa0\x80"}',  # a surrogate encoded in UTF-8 (CESU)
    b'\xef\xbb\xbf{"type":"ping"}',  # UTF-8 BOM
    b'{"type":"msg","room":"lobby","text":"x","id":1' + b"0" * 5000 + b"}",
    b'{"type":"msg","room":"lobby","text":"x","id":1e999999}',
    b'{"type":"msg","room":"lobby","text":"x","id":NaN}',
    b'{"type":"msg","room":"lobby","text":"x","text":"y"}',  # duplicate key: the last one wins
    b'{"type":"ping"}{"type":"ping"}',
    b"GET / HTTP/1.1",
    b"/nick ann",
    b"/quit",
    b"",
    b"\r",
]


@st.composite
def client_lines(draw: st.DrawFn) -> bytes:
    pick = draw(st.integers(0, 9))
    if pick == 0:
        return draw(st.sampled_from(RAW_LINES))
    if pick == 1:
        return draw(st.binary(max_size=40))
    return dumps(draw(client_objects()), draw(st.booleans()))


# --- client frames: parse_line -----------------------------------------------------------------------------------


def parse_or_code(line: bytes) -> m.Request | str:
    try:
        return m.parse_line(line)
    except RemoteProtocolError as exc:
        assert exc.code in ERR_CODES, exc.code
        assert isinstance(exc.message, str) and len(exc.message) < 300
        return exc.code


@fuzz(600)
@given(client_lines())
@example(b"[" * 100_000)
@example(b'{"type":"msg","room":"lobby","text":"x","id":1e999999}')
@example(dumps({"type": "msg", "room": "lobby", "text": "\ud800"}, ascii_only=False))
def test_any_client_line_parses_or_raises_remote_protocol_error(line: bytes) -> None:
    got = parse_or_code(line.split(b"\n")[0])
    if isinstance(got, str):
        return
    # What passed the worker passes the hub again, and carries nothing a client may not choose.
    assert m.parse_obj(got.to_obj(), allow_plain=True) == got
    assert not {"from", "seq", "ts"} & set(got.to_obj())
    if isinstance(got, m.Msg | m.Action | m.PrivMsg):
        # The event the hub makes of it is exactly one line, and reads back as the same text.
        event = {"type": got.TYPE, "seq": 1, "ts": 0.0, "from": "ann", "text": got.text}
        out = m.encode(event)
        assert out.count(b"\n") == 1 and out.endswith(b"\n")
        assert json.loads(out)["text"] == got.text


# --- client frames: ServerConnection, whole = byte by byte = chunks ----------------------------------------------


def conn(max_frame: int, rate: float, burst: int) -> ServerConnection:
    return ServerConnection(1, max_frame=max_frame, rate=rate, burst=burst, now=0.0)


def run_connection(pieces: list[bytes], max_frame: int, rate: float, burst: int) -> tuple[list[Any], Mode]:
    s = conn(max_frame, rate, burst)
    actions: list[Any] = []
    for piece in pieces:
        assert piece, "b'' means EOF"
        actions += s.receive_data(piece, 1.0)
    now = 1.0
    for _ in range(1000):  # whatever the bucket held back comes out as tokens come back (burst at a time)
        if not s.pending or s.closed:
            break
        now += 1000.0
        actions += s.process(now)
    assert s.pending == 0 or s.closed
    return actions, s.mode


@st.composite
def client_streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    lines = draw(st.lists(client_lines(), max_size=6))
    if draw(st.booleans()):  # often a hello first, so requests get past not_registered
        lines.insert(0, b'{"type":"hello","nick":"ann"}')
    data = b"".join(line[:120] + draw(st.sampled_from([b"\n", b"\r\n", b"\n\n"])) for line in lines)
    if draw(st.booleans()):
        data += draw(st.binary(max_size=20))  # an unfinished last line
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=8))))
    return data, cuts


def check_actions(actions: list[Any], mode: Mode) -> None:
    for action in actions:
        assert isinstance(action, Forward | m.Post | Reply | Close)
        if isinstance(action, Forward):
            assert m.parse_obj(action.request.to_obj(), allow_plain=True) == action.request
        elif isinstance(action, m.Post):  # forwarded undecoded: must still be what the hub would accept
            text = json.loads(action.text)
            req = m.parse_obj({"type": action.kind, "room": action.to, "text": text, "id": action.id})
            assert m.json_str(text) == action.text and req.id == action.id
        elif isinstance(action, Reply) and mode is Mode.JSON:
            assert action.data.endswith(b"\n") and action.data.count(b"\n") == 1
            reply = json.loads(action.data)
            assert reply["type"] in ("error", "pong")
            if reply["type"] == "error":
                assert reply["code"] in ERR_CODES
        elif isinstance(action, Reply) and action.data.startswith(b"! "):  # a plain-mode error line
            assert action.data.count(b"\n") == 1
            assert not UNSAFE.search(action.data.decode()[:-1])


@fuzz(250)
@given(client_streams(), st.sampled_from([24, 64, 16384]), st.sampled_from([(5.0, 2), (1000.0, 1000)]))
def test_server_connection_whole_bytewise_and_chunked_agree(
    case: tuple[bytes, list[int]], max_frame: int, bucket: tuple[float, int]
) -> None:
    data, cuts = case
    rate, burst = bucket
    whole, mode = run_connection([data] if data else [], max_frame, rate, burst)
    check_actions(whole, mode)
    bounds = [0, *cuts, len(data)]
    pieces = [data[a:z] for a, z in itertools.pairwise(bounds)]
    chunked, _ = run_connection([p for p in pieces if p], max_frame, rate, burst)
    assert chunked == whole
    bytewise, _ = run_connection([data[i : i + 1] for i in range(len(data))], max_frame, rate, burst)
    assert bytewise == whole


# --- control frames: whole = byte by byte, frames or RemoteProtocolError -----------------------------------------

room_names = st.text(max_size=12).map(lambda s: s.encode("utf-8", "replace").decode())
control_frames = st.one_of(
    st.builds(c.RoomFrame, room_names, st.binary(max_size=30)),
    st.builds(c.ConnsFrame, st.lists(st.integers(0, 2**64 - 1), max_size=4).map(tuple), st.binary(max_size=30)),
    st.builds(c.JsonFrame, st.lists(json_values.filter(lambda v: _json_ok(v)), max_size=3)),
)


def _json_ok(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        return False
    return True


def encode_control(frame: c.ControlFrame) -> bytes:
    if isinstance(frame, c.RoomFrame):
        return c.room_frame(frame.room, frame.payload)
    if isinstance(frame, c.ConnsFrame):
        return c.conns_frame(frame.conns, frame.payload)
    assert isinstance(frame, c.JsonFrame)  # the hub never sends a POST
    return c.json_frame(frame.records)


@st.composite
def control_garbage(draw: st.DrawFn) -> bytes:
    pick = draw(st.integers(0, 5))
    if pick == 0:
        return draw(st.binary(max_size=40))
    if pick == 1:  # a header announcing more than the limit: refused before any body arrives
        return c.HEADER.pack(draw(st.integers(c.MAX_CONTROL_FRAME + 1, 2**32 - 1)), draw(st.integers(0, 255)))
    if pick == 2:  # an unknown kind
        body = draw(st.binary(max_size=10))
        return c.HEADER.pack(len(body), draw(st.integers(4, 255) | st.just(0))) + body
    if pick == 3:  # a ROOM whose name length runs past the body, or a name that is not UTF-8
        name = draw(st.binary(max_size=6))
        n = draw(st.integers(0, 0xFFFF))
        body = struct.pack("!H", n) + name
        return c.HEADER.pack(len(body), c.ROOM) + body
    if pick == 4:  # CONNS claiming more ids than it holds (up to 2^32 - 1: must not allocate them)
        body = struct.pack("!I", draw(st.integers(0, 2**32 - 1))) + draw(st.binary(max_size=16))
        return c.HEADER.pack(len(body), c.CONNS) + body
    body = draw(st.sampled_from([b"[" * 1500, b"{}", b'"x"', b"\xff", b"[1,", b"[" + b"9" * 5000 + b"]", b"[NaN]"]))
    return c.HEADER.pack(len(body), c.JSON) + body


def decode_pieces(pieces: list[bytes]) -> tuple[list[c.ControlFrame], str | None]:
    dec = c.ControlDecoder()
    frames: list[c.ControlFrame] = []
    try:
        for piece in pieces:
            frames += dec.feed(piece)
    except RemoteProtocolError as exc:
        assert exc.code == "bad_control"
        return frames, exc.code
    return frames, None


@fuzz(400)
@given(st.lists(control_frames, max_size=4), st.none() | control_garbage())
def test_control_decoder_whole_and_bytewise_agree(frames: list[c.ControlFrame], garbage: bytes | None) -> None:
    valid = b"".join(encode_control(f) for f in frames)
    data = valid + (garbage or b"")
    whole, whole_err = decode_pieces([data])
    bytewise, byte_err = decode_pieces([data[i : i + 1] for i in range(len(data))])
    assert whole_err == byte_err
    if whole_err is None:
        assert bytewise == whole
        assert whole[: len(frames)] == frames
    else:  # the frames before the broken one came out as they arrived, then the same error
        assert bytewise[: len(frames)] == frames


# --- beacon codec: datagrams built field by field ------------------------------------------------------------------

INFO = struct.Struct("!16s4sHHIIIHd")


@st.composite
def info_datagrams(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from([b.Kind.BEACON, b.Kind.REPLY]))
    info = INFO.pack(
        draw(st.binary(min_size=16, max_size=16)),
        draw(st.binary(min_size=4, max_size=4)),
        draw(st.integers(0, 0xFFFF)),
        draw(st.integers(0, 0xFFFF)),
        draw(st.integers(0, 2**32 - 1)),
        draw(st.integers(0, 2**32 - 1)),
        draw(st.integers(0, 2**32 - 1)),
        draw(st.integers(0, 0xFFFF)),
        draw(st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([-0.0, 1e300, 2.0**1023, 5e-324])),
    )
    name = draw(
        st.binary(max_size=70)
        | st.text(max_size=30).map(lambda t: t.encode("utf-8", "surrogatepass"))
        | st.sampled_from([b"\xe2\x80\xae", b"\xe2\x80\xa8", b"a\x00", b"\xc0\x80", b"x" * 64, b"x" * 65])
    )
    n = len(name) if draw(st.integers(0, 4)) else draw(st.integers(0, 255))
    nonce = draw(st.binary(min_size=8, max_size=8)) if kind is b.Kind.REPLY else b""
    tail = draw(st.binary(max_size=3)) if draw(st.integers(0, 5)) == 0 else b""
    return b.MAGIC + bytes([b.DISCOVERY_VERSION, kind]) + nonce + info + bytes([n]) + name + tail


@fuzz(800)
@given(info_datagrams())
def test_structured_beacons_are_canonical_or_refused(data: bytes) -> None:
    try:
        message = b.decode(data)
    except RemoteProtocolError as exc:
        assert exc.code in ("bad_beacon", "oversized")
        return
    assert isinstance(message, b.Beacon | b.Reply)
    assert b.encode(message) == data  # whatever decodes is canonical: one encoding per message
    assert b.name_problem(message.name) is None  # the name is safe to print
    assert math.isfinite(message.load) and message.load >= 0


# --- server frames on the client: ClientState and render -----------------------------------------------------------

SERVER_TYPES = ["welcome", "msg", "action", "privmsg", "join", "part", "quit", "nick", "topic", "ack", "error",
                "room", "who", "rooms", "history", "gap", "bye", "ping", "pong", "stats", "server",
                "other"]  # fmt: skip
SERVER_KEYS = ["type", "seq", "ts", "room", "from", "to", "text", "nick", "old", "new", "reason", "topic", "id",
               "code", "message", "fatal", "session", "token", "resumed", "rooms", "nicks", "events", "more",
               "processes", "name", "hint", "after", "users", "rss", "pid", "role"]  # fmt: skip


@st.composite
def server_objects(draw: st.DrawFn) -> dict[str, Any]:
    """A server frame with any field of any type (what a broken or hostile server may send)."""

    def value(key: str) -> Any:
        if key == "processes" and draw(st.booleans()):
            return draw(st.lists(st.dictionaries(st.sampled_from(SERVER_KEYS), json_values, max_size=4), max_size=2))
        if key == "events" and draw(st.booleans()):
            return draw(st.lists(st.dictionaries(st.sampled_from(SERVER_KEYS), json_values, max_size=4), max_size=3))
        if key == "seq" and draw(st.booleans()):
            return draw(st.integers(-2, 40))
        if key == "nick" and draw(st.booleans()):
            return "ann"
        return draw(json_values)

    keys = draw(st.lists(st.sampled_from(SERVER_KEYS), max_size=7, unique=True))
    frame = {k: value(k) for k in keys}
    frame["type"] = draw(st.sampled_from(SERVER_TYPES) | json_values)
    return frame


@st.composite
def server_streams(draw: st.DrawFn) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 5))):
        pick = draw(st.integers(0, 9))
        if pick == 0:
            lines.append(draw(st.binary(max_size=30)))
        elif pick == 1:
            lines.append(draw(st.sampled_from([b"[" * 1200, b"null", b"[1,2]", b'"s"', b"\xff\xfe", b"{"])))
        else:
            lines.append(dumps(draw(server_objects()), draw(st.booleans())))
    return b"".join(line.replace(b"\n", b" ") + b"\n" for line in lines) + draw(st.binary(max_size=10))


def client_run(pieces: list[bytes]) -> tuple[list[dict[str, Any]], tuple[Any, ...]]:
    state = ClientState("ann", ["lobby"])
    state.hello()
    state.post(m.Msg("lobby", "one"))
    state.post(m.Msg("lobby", "two"))
    # The server's greeting first: a connection whose first line is not a frame is refused (NotLanchat, its
    # own tests); from the second line on, anything at all must be taken without an exception.
    frames = state.receive_data(m.encode({"type": "server", "name": "fuzz", "proto": 1}))
    for piece in pieces:
        frames += state.receive_data(piece)
    for frame in frames:
        out = render(frame, state.info.nick)  # what piped mode and the terminal UI do with each frame
        assert out is None or isinstance(out, str)
    snapshot = (state.last_seq, list(state.rooms), state.info.nick, state.info.token, list(state.outbox))
    return frames, snapshot


def _same(a: Any, b_: Any) -> bool:
    """Equality in which NaN equals NaN (a frame may carry NaN; it is the same frame)."""
    return json.dumps(a, sort_keys=True, allow_nan=True) == json.dumps(b_, sort_keys=True, allow_nan=True)


RESUMED_WITHOUT_ROOMS = b'{"type":"welcome","nick":"ann","session":"s","token":"t","resumed":true,"rooms":null}\n'
UNHASHABLE_TYPE = b'{"type":[],"seq":1}\n'
UNHASHABLE_TS = (  # an event's identity is (seq, ts): a list as ts was a TypeError (fixed)
    b'{"type":"welcome","nick":"ann","token":"t","resume_failed":"x"}\n{"type":"msg","seq":1,"ts":[1]}\n'
    b'{"type":"history","events":[{"seq":2,"ts":{}},{"seq":1,"ts":[1]}]}\n'
)
HUGE_TS = b'{"type":"msg","seq":1,"ts":1' + b"0" * 400 + b"}\n"  # float() overflowed: the read task died (fixed)
STATS_WITH_INFINITE_RSS = {"type": "stats", "processes": [{"role": "main", "pid": 1, "rss": math.inf}]}


@fuzz(400)
@given(server_streams())
@example(RESUMED_WITHOUT_ROOMS)  # was a TypeError out of receive_data (fixed)
@example(UNHASHABLE_TYPE)  # was a TypeError out of receive_data (fixed)
@example(UNHASHABLE_TS)
@example(HUGE_TS)
def test_client_state_never_raises_and_whole_equals_bytewise(data: bytes) -> None:
    whole, whole_state = client_run([data])
    bytewise, byte_state = client_run([data[i : i + 1] for i in range(len(data))])
    assert _same(whole, bytewise) and _same(whole_state, byte_state)
    seqs = [f["seq"] for f in whole if f.get("type") in m.EVENT_TYPES and type(f.get("seq")) is int]
    assert seqs == sorted(set(seqs))  # events come out once each, in increasing order


def assert_render_safe(frame: dict[str, Any], out: str | None) -> None:
    assert out is None or isinstance(out, str)
    if out is None:
        return
    multiline = frame.get("type") in ("history", "stats")
    for line in out.split("\n") if multiline else [out]:
        assert not UNSAFE.search(line), repr(line)


@fuzz(600)
@given(server_objects(), st.sampled_from(["", "ann", "Ann"]))
@example(STATS_WITH_INFINITE_RSS, "ann")  # was an OverflowError out of render (fixed)
def test_render_of_any_json_object_is_total_and_safe(frame: dict[str, Any], me: str) -> None:
    assert_render_safe(frame, render(frame, me))


def nested_history(depth: int) -> dict[str, Any]:
    text = '{"type":"history","events":[' * depth + '{"type":"msg","text":"x"}' + "]}" * depth
    frame = json.loads(text)  # parses: well within json's own nesting limit
    assert isinstance(frame, dict)
    return frame


def test_render_of_deeply_nested_history_does_not_raise() -> None:
    """History events that are history frames, 400 levels deep (800 JSON levels: json.loads accepts them)."""
    frame = nested_history(400)
    out = render(frame, "ann")  # was a RecursionError out of render (fixed)
    assert isinstance(out, str)
    assert_render_safe(frame, out)


def test_deep_nesting_is_bad_json_not_a_recursion_error() -> None:
    """Nesting far past the recursion limit (100,000 levels) is the protocol's error, as is one just under it."""
    assert issubclass(RemoteProtocolError, ProtocolError)
    for line in DEEP:
        assert parse_or_code(line) == m.Err.BAD_JSON
