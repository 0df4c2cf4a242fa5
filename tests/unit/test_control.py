"""Hub <-> worker control frames: round trips, whole and byte-by-byte decoding, garbage, size limits."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lanchat.errors import RemoteProtocolError
from lanchat.protocol import control as c


def decode_whole(data: bytes) -> list[c.ControlFrame]:
    return c.ControlDecoder().feed(data)


def decode_bytewise(data: bytes) -> list[c.ControlFrame]:
    dec = c.ControlDecoder()
    out: list[c.ControlFrame] = []
    for i in range(len(data)):
        out += dec.feed(data[i : i + 1])
    return out


def bad(data: bytes) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        c.ControlDecoder().feed(data)
    assert info.value.code == "bad_control"
    return info.value


SAMPLE: list[tuple[bytes, c.ControlFrame]] = [
    (c.room_frame("lobby", b'{"type":"msg"}\n'), c.RoomFrame("lobby", b'{"type":"msg"}\n')),
    (c.room_frame("r", b""), c.RoomFrame("r", b"")),
    (c.room_frame("", b"x"), c.RoomFrame("", b"x")),
    (c.room_frame("ünï", b"\x00\xff\n" * 3), c.RoomFrame("ünï", b"\x00\xff\n" * 3)),
    (c.conns_frame([1], b"hi\n"), c.ConnsFrame((1,), b"hi\n")),
    (c.conns_frame((3, 2**64 - 1, 0), b"a\nb\n"), c.ConnsFrame((3, 2**64 - 1, 0), b"a\nb\n")),
    (c.conns_frame([], b"nobody"), c.ConnsFrame((), b"nobody")),
    (c.json_frame([["req", 5, {"type": "msg", "text": "é\n"}]]),
     c.JsonFrame([["req", 5, {"type": "msg", "text": "é\n"}]])),
    (c.json_frame([]), c.JsonFrame([])),
    (c.json_frame([["member", 1, "lobby", True], ["bind", 1, "al"]]),
     c.JsonFrame([["member", 1, "lobby", True], ["bind", 1, "al"]])),
    (c.post_frame(7, "msg", "lobby", b'"hi \\"there\\""', 12), c.PostFrame(7, "msg", "lobby", b'"hi \\"there\\""', 12)),
    (c.post_frame(2**64 - 1, "action", "r", b'""'), c.PostFrame(2**64 - 1, "action", "r", b'""', None)),
    (c.post_frame(0, "privmsg", "Zoë", '"é"'.encode(), 0), c.PostFrame(0, "privmsg", "Zoë", '"é"'.encode(), 0)),
]  # fmt: skip


@pytest.mark.parametrize(("data", "frame"), SAMPLE)
def test_round_trip(data: bytes, frame: c.ControlFrame) -> None:
    assert decode_whole(data) == [frame]
    assert decode_bytewise(data) == [frame]


def test_header_layout() -> None:
    data = c.json_frame([c.ping(1)])
    length, kind = c.HEADER.unpack_from(data)
    assert kind == c.JSON and length == len(data) - c.HEADER.size == len(b'[["ping",1]]')
    assert c.HEADER.size == 5


def test_many_frames_whole_and_bytewise() -> None:
    data = b"".join(d for d, _ in SAMPLE)
    expected = [f for _, f in SAMPLE]
    assert decode_whole(data) == expected
    assert decode_bytewise(data) == expected


def test_every_split_point_of_a_stream() -> None:
    data = b"".join(d for d, _ in SAMPLE[:5])
    expected = [f for _, f in SAMPLE[:5]]
    for i in range(len(data) + 1):
        dec = c.ControlDecoder()
        assert dec.feed(data[:i]) + dec.feed(data[i:]) == expected, i


def test_partial_frame_waits() -> None:
    data = c.conns_frame([7], b"payload")
    dec = c.ControlDecoder()
    assert dec.feed(data[:3]) == []  # not even a header
    assert dec.feed(data[3:-1]) == []
    assert dec.feed(data[-1:] + data[:2]) == [c.ConnsFrame((7,), b"payload")]
    assert dec.feed(data[2:]) == [c.ConnsFrame((7,), b"payload")]


def test_unknown_kind() -> None:
    for kind in (0, 5, 255):
        assert "kind" in bad(c.HEADER.pack(2, kind) + b"{}").message


def test_oversized_length_header_is_rejected_before_the_body() -> None:
    dec = c.ControlDecoder()
    with pytest.raises(RemoteProtocolError):
        dec.feed(c.HEADER.pack(c.MAX_CONTROL_FRAME + 1, c.JSON))
    bad(c.HEADER.pack(2**32 - 1, c.ROOM) + b"xx")


def test_length_exactly_at_the_limit_is_waited_for() -> None:
    dec = c.ControlDecoder()
    assert dec.feed(c.HEADER.pack(c.MAX_CONTROL_FRAME, c.CONNS) + b"\x00" * 10) == []


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[1,", b"{}", b'"x"', b"1", b"\xff\xfe", b"[" * 100_000, b"[" * 50_000 + b"]" * 50_000],
)
def test_bad_json_bodies(body: bytes) -> None:
    bad(c.HEADER.pack(len(body), c.JSON) + body)


def test_bad_room_bodies() -> None:
    bad(c.HEADER.pack(1, c.ROOM) + b"\x00")  # shorter than the name length
    body = struct.pack("!H", 2) + b"\xff\xfe" + b"payload"  # name not UTF-8
    bad(c.HEADER.pack(len(body), c.ROOM) + body)


def test_room_name_length_past_the_body_is_malformed() -> None:
    body = struct.pack("!H", 100) + b"ab"
    bad(c.HEADER.pack(len(body), c.ROOM) + body)


def test_bad_conns_bodies() -> None:
    bad(c.HEADER.pack(2, c.CONNS) + b"\x00\x00")  # count truncated
    body = struct.pack("!I", 3) + struct.pack("!Q", 1)  # says 3 ids, holds 1
    bad(c.HEADER.pack(len(body), c.CONNS) + body)
    body = struct.pack("!I", 2**32 - 1)  # a huge count must not allocate or hang
    bad(c.HEADER.pack(len(body), c.CONNS) + body)


def test_garbage_after_good_frames_raises() -> None:
    dec = c.ControlDecoder()
    good = c.json_frame([c.ping(1)])
    assert dec.feed(good) == [c.JsonFrame([["ping", 1]])]
    with pytest.raises(RemoteProtocolError):
        dec.feed(good + c.HEADER.pack(1, 9) + b"x")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise(data: bytes) -> None:
    dec = c.ControlDecoder()
    try:
        frames = dec.feed(data)
    except RemoteProtocolError as exc:
        assert exc.code == "bad_control"
    else:
        assert all(isinstance(f, c.RoomFrame | c.ConnsFrame | c.JsonFrame | c.PostFrame) for f in frames)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 9), st.binary(max_size=60))
def test_any_body_of_any_kind_decodes_or_raises(kind: int, body: bytes) -> None:
    try:
        c.ControlDecoder().feed(c.HEADER.pack(len(body), kind) + body)
    except RemoteProtocolError as exc:
        assert exc.code == "bad_control"


json_records = st.lists(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
        max_leaves=6,
    ),
    max_size=4,
)
room_names = st.text(max_size=20).map(lambda s: s.encode("utf-8", "replace").decode())
frames_st = st.one_of(
    st.builds(c.RoomFrame, room_names, st.binary(max_size=50)),
    st.builds(c.ConnsFrame, st.lists(st.integers(0, 2**64 - 1), max_size=5).map(tuple), st.binary(max_size=50)),
    st.builds(c.JsonFrame, json_records),
    st.builds(c.PostFrame, st.integers(0, 2**64 - 1), st.sampled_from(c.POST_KINDS), room_names,
              st.binary(max_size=50), st.none() | st.integers(0, 2**53)),
)  # fmt: skip


def encode(frame: Any) -> bytes:
    if isinstance(frame, c.RoomFrame):
        return c.room_frame(frame.room, frame.payload)
    if isinstance(frame, c.ConnsFrame):
        return c.conns_frame(frame.conns, frame.payload)
    if isinstance(frame, c.PostFrame):
        return c.post_frame(frame.conn, frame.kind, frame.to, frame.text, frame.id)
    return c.json_frame(frame.records)


def test_post_frame_bounds() -> None:
    frame = c.post_frame(1, "msg", "lobby", b'"x"')
    kind_at = c.HEADER.size + 16
    assert "post" in bad(frame[:kind_at] + bytes([len(c.POST_KINDS)]) + frame[kind_at + 1 :]).message
    body_len = len(frame) - c.HEADER.size
    long_target = frame[: kind_at + 1] + bytes([200]) + frame[kind_at + 2 :]
    assert "post" in bad(c.HEADER.pack(body_len, c.POST) + long_target[c.HEADER.size :]).message
    assert "malformed" in bad(c.HEADER.pack(5, c.POST) + b"short").message


@settings(max_examples=300, deadline=None)
@given(st.lists(frames_st, max_size=5), st.lists(st.integers(1, 40), max_size=20))
def test_round_trip_any_frames_in_any_chunks(frames: list[c.ControlFrame], sizes: list[int]) -> None:
    data = b"".join(encode(f) for f in frames)
    dec = c.ControlDecoder()
    out: list[c.ControlFrame] = []
    pos = 0
    for size in sizes:
        out += dec.feed(data[pos : pos + size])
        pos += size
    out += dec.feed(data[pos:])
    assert out == frames


def test_a_tick_of_records_past_the_frame_limit_is_split_in_order_and_every_frame_decodes() -> None:
    """A worker that read hundreds of clients' bursts in one tick (300 emoji topics: 3.6 KB each, escaped)
    made one JSON frame of over 64 MiB; the hub took it for a broken pipe and killed the worker."""
    topic = "\U0001f600" * 300
    records: list[Any] = [["req", i, {"type": "topic", "room": "lobby", "topic": topic}] for i in range(20_000)]
    assert len(c.json_frame(records)) > c.MAX_CONTROL_FRAME  # the old single frame
    frames = c.json_frames(records)
    assert all(len(f) <= c.HEADER.size + c.JSON_FRAME_TARGET for f in frames)
    decoded = c.ControlDecoder().feed(b"".join(frames))
    assert [r for f in decoded if isinstance(f, c.JsonFrame) for r in f.records] == records


def test_small_ticks_stay_one_frame_and_a_record_over_the_target_goes_alone() -> None:
    assert c.json_frames([["pong", 1]]) == [c.json_frame([["pong", 1]])]
    big = ["req", 1, {"type": "msg", "text": "x" * (c.JSON_FRAME_TARGET + 10)}]
    frames = c.json_frames([["a"], big, ["b"]])
    assert [f.records for f in c.ControlDecoder().feed(b"".join(frames))] == [[["a"]], [big], [["b"]]]  # type: ignore[union-attr]
