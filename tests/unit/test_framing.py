"""Line framing: limits at the exact edge, CRLF, every split position, bounded buffering, chunking invariance."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lanchat.protocol.framing import FRAME_TOO_LONG, Frame, LineFramer


def feed_all(framer: LineFramer, chunks: list[bytes]) -> list[Frame]:
    out: list[Frame] = []
    for chunk in chunks:
        out += framer.feed(chunk)
        assert framer.buffered <= framer.max_frame
    return out


def test_max_frame_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LineFramer(0)
    with pytest.raises(ValueError):
        LineFramer(-5)
    assert LineFramer(1).max_frame == 1


def test_simple_lines_and_partial_tail() -> None:
    f = LineFramer(100)
    assert f.feed(b"one\ntwo\nthr") == [b"one", b"two"]
    assert f.buffered == 3
    assert f.feed(b"ee\n") == [b"three"]
    assert f.buffered == 0


def test_empty_lines_are_frames() -> None:
    f = LineFramer(10)
    assert f.feed(b"\n\n\r\n") == [b"", b"", b""]


def test_feed_nothing() -> None:
    f = LineFramer(10)
    assert f.feed(b"") == []
    f.feed(b"abc")
    assert f.feed(b"") == []
    assert f.buffered == 3


def test_line_exactly_at_the_limit_passes() -> None:
    f = LineFramer(8)
    assert f.feed(b"x" * 8 + b"\n") == [b"x" * 8]


def test_line_one_over_the_limit_is_too_long_once_and_framing_continues() -> None:
    f = LineFramer(8)
    assert f.feed(b"x" * 9 + b"\nok\n") == [FRAME_TOO_LONG, b"ok"]
    assert f.buffered == 0


def test_partial_line_exactly_at_the_limit_is_buffered() -> None:
    f = LineFramer(8)
    assert f.feed(b"x" * 8) == []
    assert f.buffered == 8
    assert f.feed(b"\n") == [b"x" * 8]


def test_partial_line_one_over_is_cut_off_at_once() -> None:
    f = LineFramer(8)
    assert f.feed(b"x" * 9) == [FRAME_TOO_LONG]
    assert f.buffered == 0
    # the rest of that line is skipped without being stored, and reported no second time
    assert f.feed(b"y" * 1000) == []
    assert f.buffered == 0
    assert f.feed(b"zzz\nnext\n") == [b"next"]


def test_partial_line_growing_past_the_limit() -> None:
    f = LineFramer(8)
    assert f.feed(b"x" * 5) == []
    assert f.feed(b"x" * 3) == []
    assert f.buffered == 8
    assert f.feed(b"x") == [FRAME_TOO_LONG]
    assert f.buffered == 0
    assert f.feed(b"xx\nab") == []
    assert f.feed(b"\n") == [b"ab"]


def test_crlf_is_stripped_and_the_cr_counts_against_the_limit() -> None:
    f = LineFramer(8)
    assert f.feed(b"hello\r\n") == [b"hello"]
    assert f.feed(b"x" * 7 + b"\r\n") == [b"x" * 7]
    assert f.feed(b"x" * 8 + b"\r\n") == [FRAME_TOO_LONG]


def test_only_one_trailing_cr_is_stripped_and_inner_cr_kept() -> None:
    f = LineFramer(100)
    assert f.feed(b"a\rb\r\r\n") == [b"a\rb\r"]
    assert f.feed(b"\r\n") == [b""]


def test_crlf_split_between_feeds() -> None:
    f = LineFramer(100)
    assert f.feed(b"abc\r") == []
    assert f.feed(b"\ndef\n") == [b"abc", b"def"]


def test_no_newline_flood_never_buffers_more_than_max_frame() -> None:
    f = LineFramer(64)
    reports = 0
    for _ in range(200):
        out = f.feed(b"A" * 37)
        reports += out.count(FRAME_TOO_LONG)
        assert f.buffered <= 64
    assert reports == 1


def test_many_lines_in_one_chunk_each_checked_against_limit() -> None:
    f = LineFramer(4)
    data = b"abcd\nabcde\n\nab\nabcdefghij\nxy"
    assert f.feed(data) == [b"abcd", FRAME_TOO_LONG, b"", b"ab", FRAME_TOO_LONG]
    assert f.buffered == 2


@pytest.mark.parametrize("limit", [1, 5, 12])
def test_split_at_every_byte_position(limit: int) -> None:
    data = b"hi\r\nworld\n\nthis-is-long\nxy\r\nz"
    whole = LineFramer(limit).feed(data)
    for i in range(len(data) + 1):
        f = LineFramer(limit)
        got = feed_all(f, [data[:i], data[i:]])
        assert got == whole, i
    for j in range(len(data) + 1):
        for i in range(j + 1):
            f = LineFramer(limit)
            assert feed_all(f, [data[:i], data[i:j], data[j:]]) == whole, (i, j)


def test_byte_by_byte() -> None:
    data = b'{"type":"ping"}\r\n{"type":"msg"}\nxyz'
    f = LineFramer(1000)
    got = feed_all(f, [data[i : i + 1] for i in range(len(data))])
    assert got == [b'{"type":"ping"}', b'{"type":"msg"}']
    assert f.buffered == 3


def test_repr_of_sentinel() -> None:
    assert repr(FRAME_TOO_LONG) == "FRAME_TOO_LONG"


@st.composite
def data_and_chunks(draw: st.DrawFn) -> tuple[bytes, list[bytes], int]:
    alphabet = st.sampled_from([b"a", b"b", b"\n", b"\r", b"\x00", b"\xff"])
    data = b"".join(draw(st.lists(alphabet, max_size=80)))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=10)))
    bounds = [0, *cuts, len(data)]
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    return data, chunks, draw(st.integers(1, 12))


@settings(max_examples=600, deadline=None)
@given(data_and_chunks())
def test_whole_and_chunked_give_the_same_frames(case: tuple[bytes, list[bytes], int]) -> None:
    data, chunks, limit = case
    whole = LineFramer(limit)
    expected = whole.feed(data)
    assert whole.buffered <= limit
    chunked = LineFramer(limit)
    assert feed_all(chunked, chunks) == expected
    assert chunked.buffered == whole.buffered


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(1, 30))
def test_frames_are_the_lines_of_the_input(data: bytes, limit: int) -> None:
    expected: list[Frame] = []
    for line in data.split(b"\n")[:-1]:  # complete lines only
        expected.append(FRAME_TOO_LONG if len(line) > limit else line.removesuffix(b"\r"))
    if len(data) - (data.rfind(b"\n") + 1) > limit:
        expected.append(FRAME_TOO_LONG)  # an unfinished line over the limit is reported at once
    f = LineFramer(limit)
    assert f.feed(data) == expected
    tail = len(data) - (data.rfind(b"\n") + 1)
    assert f.buffered == (tail if tail <= limit else 0)
