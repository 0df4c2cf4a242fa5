"""Requests and server frames: every type valid and invalid, hostile input, names, encoding, fuzzing."""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lanchat import const
from lanchat.errors import RemoteProtocolError
from lanchat.protocol import messages as m
from lanchat.protocol import plain

ERR_CODES = {v for k, v in vars(m.Err).items() if not k.startswith("_")}


def parse(obj: Any) -> m.Request:
    return m.parse_line(json.dumps(obj).encode())


def code_of(line: bytes) -> str:
    with pytest.raises(RemoteProtocolError) as info:
        m.parse_line(line)
    assert info.value.code in ERR_CODES
    return info.value.code


def obj_code(obj: Any, **kw: Any) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        m.parse_obj(obj, **kw)
    return info.value


# --- every request type, valid --------------------------------------------------------------------------------

VALID: list[tuple[dict[str, Any], m.Request]] = [
    ({"type": "hello", "nick": "alice"}, m.Hello("alice")),
    (
        {"type": "hello", "nick": "alice", "rooms": ["a", "#B"], "proto": 1, "token": "t" * 64, "last_seq": 9, "id": 1},
        m.Hello("alice", ("a", "b"), 1, "t" * 64, 9, id=1),
    ),
    ({"type": "hello", "nick": "al", "room": "#Dev"}, m.Hello("al", ("dev",))),
    ({"type": "hello", "nick": "al", "rooms": []}, m.Hello("al", ())),
    ({"type": "join", "room": "#Games", "id": 3}, m.Join("games", id=3)),
    ({"type": "part", "room": "games"}, m.Part("games", "")),
    ({"type": "part", "room": "games", "reason": "bye"}, m.Part("games", "bye")),
    ({"type": "part", "room": "games", "reason": None}, m.Part("games", "")),
    ({"type": "msg", "room": "lobby", "text": "hi\tthere", "id": 7}, m.Msg("lobby", "hi\tthere", id=7)),
    ({"type": "action", "room": "lobby", "text": "waves"}, m.Action("lobby", "waves")),
    ({"type": "privmsg", "to": "Bob", "text": "psst"}, m.PrivMsg("Bob", "psst")),
    ({"type": "nick", "nick": "carol"}, m.Nick("carol")),
    ({"type": "topic", "room": "lobby"}, m.Topic("lobby", None)),
    ({"type": "topic", "room": "lobby", "topic": ""}, m.Topic("lobby", "")),
    ({"type": "topic", "room": "lobby", "topic": "news"}, m.Topic("lobby", "news")),
    ({"type": "who", "room": "lobby"}, m.Who("lobby")),
    ({"type": "rooms"}, m.Rooms()),
    ({"type": "history", "room": "lobby"}, m.History("lobby", limit=const.HISTORY_ON_JOIN)),
    (
        {"type": "history", "room": "lobby", "before": 10, "after": 2, "limit": 500},
        m.History("lobby", before=10, after=2, limit=500),
    ),
    ({"type": "ping", "id": 0}, m.Ping(id=0)),
    ({"type": "pong"}, m.Pong()),
    ({"type": "stats"}, m.Stats()),
    ({"type": "quit"}, m.Quit("")),
    ({"type": "quit", "reason": "later"}, m.Quit("later")),
    ({"type": "msg", "room": "lobby", "text": "x", "id": m.MAX_ID}, m.Msg("lobby", "x", id=m.MAX_ID)),
    ({"type": "msg", "room": "lobby", "text": "x", "id": None}, m.Msg("lobby", "x")),
    ({"type": "msg", "room": "lobby", "text": "x", "extra": [1, {"a": 2}]}, m.Msg("lobby", "x")),
]


@pytest.mark.parametrize(("obj", "expected"), VALID)
def test_valid_requests(obj: dict[str, Any], expected: m.Request) -> None:
    req = parse(obj)
    assert req == expected
    assert type(req) is type(expected)
    assert obj["type"] == req.TYPE


@pytest.mark.parametrize(("obj", "expected"), VALID)
def test_to_obj_round_trips(obj: dict[str, Any], expected: m.Request) -> None:
    wire = expected.to_obj()
    assert wire["type"] == expected.TYPE
    assert all(v is not None for v in wire.values())
    assert m.parse_obj(json.loads(json.dumps(wire))) == expected


def test_every_request_type_is_covered() -> None:
    kinds = {obj["type"] for obj, _ in VALID}
    assert kinds == {c.TYPE for c in m.Request.__subclasses__()}


def test_requests_are_frozen() -> None:
    req = m.Msg("lobby", "hi")
    with pytest.raises(AttributeError):
        req.text = "other"  # type: ignore[misc]


# --- every request type, invalid ------------------------------------------------------------------------------

INVALID: list[tuple[Any, str]] = [
    ([], m.Err.BAD_JSON),
    ("hello", m.Err.BAD_JSON),
    (None, m.Err.BAD_JSON),
    (42, m.Err.BAD_JSON),
    ({}, m.Err.BAD_FIELD),
    ({"type": 5}, m.Err.BAD_FIELD),
    ({"type": None}, m.Err.BAD_FIELD),
    ({"type": ["msg"]}, m.Err.BAD_FIELD),
    ({"type": "launch"}, m.Err.UNKNOWN_TYPE),
    ({"type": "MSG", "room": "a", "text": "b"}, m.Err.UNKNOWN_TYPE),
    ({"type": ""}, m.Err.UNKNOWN_TYPE),
    # ids
    ({"type": "ping", "id": True}, m.Err.BAD_FIELD),
    ({"type": "ping", "id": False}, m.Err.BAD_FIELD),
    ({"type": "ping", "id": -1}, m.Err.BAD_FIELD),
    ({"type": "ping", "id": 1.0}, m.Err.BAD_FIELD),
    ({"type": "ping", "id": "1"}, m.Err.BAD_FIELD),
    ({"type": "ping", "id": m.MAX_ID + 1}, m.Err.BAD_FIELD),
    ({"type": "ping", "id": 10**40}, m.Err.BAD_FIELD),
    # msg / action
    ({"type": "msg", "text": "x"}, m.Err.BAD_ROOM),
    ({"type": "msg", "room": "lobby"}, m.Err.BAD_FIELD),
    ({"type": "msg", "room": "lobby", "text": ""}, m.Err.BAD_TEXT),
    ({"type": "msg", "room": "lobby", "text": 5}, m.Err.BAD_FIELD),
    ({"type": "msg", "room": "lobby", "text": ["x"]}, m.Err.BAD_FIELD),
    ({"type": "msg", "room": 5, "text": "x"}, m.Err.BAD_ROOM),
    ({"type": "msg", "room": "lobby", "text": "x" * (const.MAX_TEXT + 1)}, m.Err.BAD_TEXT),
    ({"type": "action", "room": "lobby", "text": ""}, m.Err.BAD_TEXT),
    ({"type": "action", "room": "bad room", "text": "x"}, m.Err.BAD_ROOM),
    # privmsg
    ({"type": "privmsg", "text": "x"}, m.Err.BAD_NICK),
    ({"type": "privmsg", "to": "9lives", "text": "x"}, m.Err.BAD_NICK),
    ({"type": "privmsg", "to": "bob", "text": ""}, m.Err.BAD_TEXT),
    ({"type": "privmsg", "to": "bob"}, m.Err.BAD_FIELD),
    # join / part / who
    ({"type": "join"}, m.Err.BAD_ROOM),
    ({"type": "join", "room": ""}, m.Err.BAD_ROOM),
    ({"type": "join", "room": "#"}, m.Err.BAD_ROOM),
    ({"type": "part"}, m.Err.BAD_ROOM),
    ({"type": "part", "room": "a", "reason": 3}, m.Err.BAD_FIELD),
    ({"type": "part", "room": "a", "reason": "r" * (const.REASON_MAX + 1)}, m.Err.BAD_TEXT),
    ({"type": "part", "room": "a", "reason": "a\x1bb"}, m.Err.BAD_TEXT),
    ({"type": "who"}, m.Err.BAD_ROOM),
    # nick
    ({"type": "nick"}, m.Err.BAD_NICK),
    ({"type": "nick", "nick": ""}, m.Err.BAD_NICK),
    ({"type": "nick", "nick": 7}, m.Err.BAD_NICK),
    ({"type": "nick", "nick": "\u3164"}, m.Err.BAD_NICK),  # a Hangul filler: a letter that shows as nothing
    ({"type": "nick", "nick": "ann\uffa0"}, m.Err.BAD_NICK),  # "ann" and a blank
    ({"type": "nick", "nick": "\u115fx"}, m.Err.BAD_NICK),
    ({"type": "nick", "nick": "x\u1160"}, m.Err.BAD_NICK),
    # topic
    ({"type": "topic"}, m.Err.BAD_ROOM),
    ({"type": "topic", "room": "a", "topic": 5}, m.Err.BAD_FIELD),
    ({"type": "topic", "room": "a", "topic": "t" * (const.TOPIC_MAX + 1)}, m.Err.BAD_TEXT),
    ({"type": "topic", "room": "a", "topic": "\x07"}, m.Err.BAD_TEXT),
    # history
    ({"type": "history"}, m.Err.BAD_ROOM),
    ({"type": "history", "room": "a", "limit": 0}, m.Err.BAD_FIELD),
    ({"type": "history", "room": "a", "limit": const.HISTORY_PAGE_MAX + 1}, m.Err.BAD_FIELD),
    ({"type": "history", "room": "a", "limit": True}, m.Err.BAD_FIELD),
    ({"type": "history", "room": "a", "before": -1}, m.Err.BAD_FIELD),
    ({"type": "history", "room": "a", "after": "3"}, m.Err.BAD_FIELD),
    # hello
    ({"type": "hello"}, m.Err.BAD_NICK),
    ({"type": "hello", "nick": "a b"}, m.Err.BAD_NICK),
    ({"type": "hello", "nick": "al", "proto": 2}, m.Err.PROTO_VERSION),
    ({"type": "hello", "nick": "al", "proto": 0}, m.Err.BAD_FIELD),
    ({"type": "hello", "nick": "al", "proto": True}, m.Err.BAD_FIELD),
    ({"type": "hello", "nick": "al", "proto": "1"}, m.Err.BAD_FIELD),
    ({"type": "hello", "nick": "al", "rooms": "lobby"}, m.Err.BAD_FIELD),
    ({"type": "hello", "nick": "al", "rooms": {"lobby": 1}}, m.Err.BAD_FIELD),
    ({"type": "hello", "nick": "al", "rooms": [f"r{i}" for i in range(const.MAX_ROOMS_PER_SESSION + 1)]}, "bad_field"),
    ({"type": "hello", "nick": "al", "rooms": ["ok", 5]}, m.Err.BAD_ROOM),
    ({"type": "hello", "nick": "al", "rooms": ["ok", "not ok"]}, m.Err.BAD_ROOM),
    ({"type": "hello", "nick": "al", "room": "!"}, m.Err.BAD_ROOM),
    ({"type": "hello", "nick": "al", "token": ""}, m.Err.BAD_FIELD),
    ({"type": "hello", "nick": "al", "token": "t" * 65}, m.Err.BAD_FIELD),
    ({"type": "hello", "nick": "al", "token": 12}, m.Err.BAD_FIELD),
    ({"type": "hello", "nick": "al", "token": "t", "last_seq": -3}, m.Err.BAD_FIELD),
    ({"type": "hello", "nick": "al", "token": "t", "last_seq": True}, m.Err.BAD_FIELD),
]


@pytest.mark.parametrize(("obj", "code"), INVALID)
def test_invalid_requests(obj: Any, code: str) -> None:
    assert code_of(json.dumps(obj).encode()) == code
    assert obj_code(obj).code == code


def test_error_carries_the_request_id() -> None:
    exc = obj_code({"type": "msg", "room": "no room", "text": "x", "id": 42})
    assert exc.code == m.Err.BAD_ROOM
    assert exc.request_id == 42
    exc = obj_code({"type": "hello", "nick": "!", "id": 5})
    assert exc.request_id == 5
    for bad_type in ({"id": 6}, {"type": 5, "id": 6}):  # whatever else is wrong, a valid id is echoed
        exc = obj_code(bad_type)
        assert (exc.code, exc.request_id) == (m.Err.BAD_FIELD, 6)
    unknown = obj_code({"type": "launch", "id": 3})
    assert unknown.code == m.Err.UNKNOWN_TYPE and unknown.request_id == 3


def test_unknown_type_message_is_bounded() -> None:
    exc = obj_code({"type": "x" * 10_000})
    assert len(exc.message) < 200


# --- hostile bytes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"\xff\xfe", m.Err.BAD_UTF8),
        (b'{"type":"msg","room":"a","text":"\xc3"}', m.Err.BAD_UTF8),
        (b"\xed\xa0\x80", m.Err.BAD_UTF8),  # an encoded surrogate is not UTF-8
        (b"", m.Err.BAD_JSON),
        (b"hello there", m.Err.BAD_JSON),
        (b'{"type":"ping"', m.Err.BAD_JSON),
        (b'{"type":"ping"} {}', m.Err.BAD_JSON),
        (b"{'type':'ping'}", m.Err.BAD_JSON),
        (b"[" * 100_000, m.Err.BAD_JSON),
        (b"[" * 100_000 + b"]" * 100_000, m.Err.BAD_JSON),
        (b'{"a":' * 100_000, m.Err.BAD_JSON),
        (b'{"type":"msg","room":' + b"[" * 50_000 + b"]" * 50_000 + b',"text":"x"}', m.Err.BAD_JSON),
        (b"1" * 5000, m.Err.BAD_JSON),
        (b'{"type":"ping","id":' + b"1" * 5000 + b"}", m.Err.BAD_JSON),
        (b'{"type":"ping","id":1' + b"0" * 400 + b"}", m.Err.BAD_FIELD),
        (b'{"type":"ping","id":1e999}', m.Err.BAD_FIELD),
        (b'{"type":"ping","id":NaN}', m.Err.BAD_JSON),  # Python's json reads NaN and Infinity: JSON has neither
        (b'{"type":"ping","id":-Infinity}', m.Err.BAD_JSON),
        (b"null", m.Err.BAD_JSON),
        (b'"just a string"', m.Err.BAD_JSON),
    ],
)
def test_hostile_lines(line: bytes, code: str) -> None:
    assert code_of(line) == code


@pytest.mark.parametrize(
    "text",
    ["\x00", "a\x1b[31mred", "\x07", "\n", "\r", "a\x7f", "\x85", "\x9b31m", "\ud800", "x\udfffy", "\x1f"],
)
def test_control_characters_in_text_are_refused(text: str) -> None:
    for obj in (
        {"type": "msg", "room": "lobby", "text": text},
        {"type": "action", "room": "lobby", "text": text},
        {"type": "privmsg", "to": "bob", "text": text},
        {"type": "topic", "room": "lobby", "topic": text},
        {"type": "part", "room": "lobby", "reason": text},
    ):
        # json.dumps escapes them (\\u001b, \\ud800): the parser sees the real character after decoding
        assert code_of(json.dumps(obj).encode()) == m.Err.BAD_TEXT
    quit = parse({"type": "quit", "reason": text})  # never refused: they are dropped
    assert isinstance(quit, m.Quit) and not m._CONTROL.search(quit.reason), quit


@pytest.mark.parametrize(
    ("reason", "kept"),
    [
        ("r" * const.REASON_MAX, "r" * const.REASON_MAX),  # the edge: kept whole
        ("r" * (const.REASON_MAX + 1), "r" * (const.REASON_MAX - 1) + "…"),
        ("bye\x1b[31m now\x00", "bye[31m now"),
        ({}, ""),
        (7, ""),
        (None, ""),
    ],
)
def test_a_quit_is_never_refused_for_its_reason(reason: object, kept: str) -> None:
    """A user who asked to leave with a reason over 200 characters was refused and stayed in every room (a
    review): a quit's reason is cut and cleaned, in JSON and in plain text (/quit)."""
    assert parse({"type": "quit", "reason": reason}) == m.Quit(kept)
    if isinstance(reason, str):
        assert plain.parse_command(f"/quit {reason}", "lobby") == m.Quit(kept.strip())


def test_a_lone_surrogate_is_named_as_such_not_as_control_characters() -> None:
    with pytest.raises(RemoteProtocolError, match="not valid Unicode"):
        m.check_text("caf\ud800")
    with pytest.raises(RemoteProtocolError, match="control characters"):
        m.check_text("caf\x1b")


def test_surrogate_escape_on_the_wire() -> None:
    line = b'{"type":"msg","room":"lobby","text":"\\ud800"}'
    assert code_of(line) == m.Err.BAD_TEXT
    assert code_of(b'{"type":"nick","nick":"a\\udc00"}') == m.Err.BAD_NICK
    assert code_of(b'{"type":"join","room":"\\ud83d"}') == m.Err.BAD_ROOM
    # a correctly paired escape is a real character and fine
    assert m.parse_line(b'{"type":"msg","room":"lobby","text":"\\ud83d\\ude00"}') == m.Msg("lobby", "\U0001f600")


def test_text_limits_and_allowed_characters() -> None:
    assert parse({"type": "msg", "room": "a", "text": "x" * const.MAX_TEXT}) == m.Msg("a", "x" * const.MAX_TEXT)
    assert parse({"type": "msg", "room": "a", "text": "tab\tok"}) == m.Msg("a", "tab\tok")
    assert parse({"type": "msg", "room": "a", "text": "héllo 漢字 🎉"}) == m.Msg("a", "héllo 漢字 🎉")
    assert parse({"type": "topic", "room": "a", "topic": "t" * const.TOPIC_MAX}) == m.Topic("a", "t" * const.TOPIC_MAX)
    assert m.check_text(" x", limit=2) == " x"
    for blank in (" ", "   ", "\t", "\u3000"):  # (a bot review: posted as lines that show nothing)
        with pytest.raises(RemoteProtocolError, match=r"^text is blank$"):
            parse({"type": "msg", "room": "a", "text": blank})
        assert m.parse_post(b'{"type":"msg","room":"a","text":"%s"}' % blank.encode("unicode_escape")) is None
    # Characters that draw as nothing are blanks too, alone or with spaces (zero-width space, Braille blank,
    # Hangul filler, word joiner, soft hyphen, a variation selector, a tag, the bidi marks) ...
    blanks = (
        "\u200b",
        "\u2800",
        "\u3164",
        " \u2060 ",
        "\u00ad\ufe0f",
        "\U000e0041",
        "\u200e\u200f\u061c",
        "\u17b4\u180b\ufff0",
    )
    for blank in blanks:
        with pytest.raises(RemoteProtocolError, match=r"^text is blank$"):
            parse({"type": "privmsg", "to": "ann", "text": blank})
    # ... and stay inside a text that shows something (a joiner in an emoji, a bidi mark beside a word).
    for shown in ("👩\u200d💻", "\u200fשלום", "a\u200b", "\u2800x", "\u0301"):
        assert parse({"type": "msg", "room": "a", "text": shown}) == m.Msg("a", shown)
    assert m.check_text("  ", what="topic", empty=True) == "  "
    with pytest.raises(RemoteProtocolError, match=r"^text is longer than 4000 characters \(100 too many\)$"):
        m.check_text("x" * (const.MAX_TEXT + 100))  # how much to cut (a user pasted 4,100 characters)
    assert m.check_text("", empty=True) == ""


# --- names ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "nick",
    ["a", "Bob", "_", "_x9", "a-b.c[]{}|^`", "Zoë", "Ωmega", "名前", "x" * const.NICK_MAX, "A1234"],
)
def test_good_nicks(nick: str) -> None:
    assert m.check_nick(nick) == nick
    assert parse({"type": "nick", "nick": nick}) == m.Nick(nick)


@pytest.mark.parametrize(
    "nick",
    ["", "1abc", "-x", ".x", "[x]", "a b", "a\tb", "a@b", "a#b", "a/b", "x" * (const.NICK_MAX + 1), "a\u200bb",
     "\x1b", None, 5, ["bob"]],
)  # fmt: skip
def test_bad_nicks(nick: object) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        m.check_nick(nick)
    assert info.value.code == m.Err.BAD_NICK


@pytest.mark.parametrize(
    "nick",
    [
        "राम",
        "प्रिया",
        "தமிழ்",
        "অমিত",
        "ಕನ್ನಡ",
        "ស៊ីម",
        "မြန်မာ",
        "བསྒྲུབས",
        "Adébáyọ̀",
        "é\u0301\u0301",
        "x1\u0301-y",
        "Nguyễn",
        "שָׁלוֹם",
        "مُحَمَّد",
        "ปิ่น",
        "ສົມ",
        "ਸਿੰਘ",
        "മലയാളം",
        "తెలుగు",
        "ꦗꦮ",
        "김민수",
        "Йо́сиф",
        "ܫܠܡܐ",
        "\U00016ad0\U00016af0",
    ],  # (the last: Bassa Vah, its tone a sign of combining class 1)
)
def test_nicks_with_combining_signs(nick: str) -> None:
    """The vowel signs and viramas of Indic, Khmer, Myanmar and Tibetan names, and accents NFC does not compose
    (Yoruba's ọ̀), are part of a letter: such names were refused as holding something not a letter (a review)."""
    assert m.check_nick(nick) == unicodedata.normalize("NFC", nick)
    assert plain.parse_command(f"/nick {nick}", None) == m.Nick(unicodedata.normalize("NFC", nick))


@pytest.mark.parametrize(
    ("nick", "why"),
    [
        ("q" + "\u0301\u0302\u0303\u0304\u0306", "at most 4 combining signs on a letter or digit"),  # a tower
        ("a_\u0301", "at most 4 combining signs on a letter or digit"),  # on no letter
        ("a-\u0901", "at most 4 combining signs on a letter or digit"),
        ("\u0901a", "must start with a letter or _"),
        ("a\u20dd", "only letters, digits"),  # enclosing: a circle around the letter
        ("a\u034f", "only letters, digits"),  # the grapheme joiner, which draws as nothing
        ("a\ufe0f", "only letters, digits"),  # a variation selector
        ("a\u17b4", "only letters, digits"),  # a Khmer sign that draws as nothing
        # A later review: signs of another script drawn like accents, and a jamo inside a syllable
        ("Jose\u0954", "only signs of its own script, or accents"),  # Devanagari's acute beside José
        ("Hie\u0302\u093cp", "only signs of its own script, or accents"),  # a nukta as Vietnamese's dot below
        ("b\u0131\u0902ll", "only signs of its own script, or accents"),  # an anusvara as i's dot
        ("\u0e1b\u0e34\u0ec8\u0e19", "only signs of its own script, or accents"),  # Lao's tone on Thai
        ("\uae40\u11ab", "Hangul letters that join a syllable"),  # 김ᆫ beside 김
        ("Bjo\U0001d167rn", "only letters, digits"),  # a musical tremolo: an overlay all the same
    ],
)
def test_nick_signs_beyond_the_edges(nick: str, why: str) -> None:
    with pytest.raises(RemoteProtocolError, match=re.escape(why)) as info:
        m.check_nick(nick)
    assert info.value.code == m.Err.BAD_NICK


def test_four_signs_on_a_letter_are_the_edge() -> None:
    tower = "q\u0301\u0302\u0303\u0304b"  # (q composes with none of them: an á would take one in)
    assert m.check_nick(tower) == tower


@pytest.mark.parametrize(
    ("taken", "lookalike"),
    [
        ("bill", "b\u0131\u0307ll"),  # a dotless ı with a dot above: drawn as i (bıll alone was refused)
        ("jan", "\u0237\u0307an"),  # a dotless ȷ with a dot above: drawn as j
        ("José", "Jose\u0301\u0301"),  # the same accent twice: a terminal draws it over itself
        ("inan", "\u0130nan"),  # İ: folded, an i with a dot above
        ("Zoë", "Zoe\u0308\u0308"),
        ("Trần", "Tra\u0302\u0300\u0302n"),  # the same sign twice with another between (a later review)
        ("ปิ่น", "ปิ่ิ่น"),  # Thai: a vowel and a tone mark written twice
        ("Muñoz", "Mun\u0342oz"),  # the Greek perispomeni drawn as a tilde (a later review)
        ("Ōno", "O\u0305no"),  # an overline as a macron
        ("\u05e9\u05dc\u05d5\u05b9\u05dd", "\u05e9\u05dc\u05d5\u05ba\u05dd"),  # Hebrew's holam haser as holam
    ],
)
def test_signs_that_draw_nothing_more_read_as_the_nick_without_them(taken: str, lookalike: str) -> None:
    """A review of the signs let in: these were welcomed beside the nick they read as."""
    assert m.nick_skeleton(m.check_nick(lookalike)) == m.nick_skeleton(m.check_nick(taken))
    assert m.nick_skeleton("Jos\u00e9\u0301\u0323") != m.nick_skeleton("José")  # a dot below: another nick
    assert m.nick_skeleton("रााम") != m.nick_skeleton("राम")  # a spacing sign twice takes two columns: drawn


def test_overlay_signs_are_not_part_of_a_nick() -> None:
    """A stroke or slash through a letter made `Bjo̸rn` beside `Bjørn` (ø does not decompose): overlays
    (combining class 1) are refused; names write such letters precomposed, which stay."""
    for overlay in ("\u0334", "\u0335", "\u0336", "\u0337", "\u0338", "\u20d2"):
        with pytest.raises(RemoteProtocolError, match="only letters, digits"):
            m.check_nick(f"Bjo{overlay}rn")
    assert m.check_nick("Bjørn") == "Bjørn"
    assert m.check_nick("\U00016ad0\U00016af0") == "\U00016ad0\U00016af0"  # Bassa Vah's tone: class 1, no overlay


def test_nick_is_normalised_to_nfc_before_the_length_check() -> None:
    decomposed = "Zoe\u0308"  # e + combining diaeresis
    assert m.check_nick(decomposed) == "Zoë"
    assert m.check_nick("e\u0301" * const.NICK_MAX) == "é" * const.NICK_MAX


def test_nick_keys_are_case_insensitive() -> None:
    assert m.nick_key("Alice") == m.nick_key("aLICE") == m.nick_key("ALICE")
    assert m.nick_key("Straße") == m.nick_key("STRASSE")
    assert m.nick_key("bob") != m.nick_key("bob_")


@pytest.mark.parametrize(
    "lookalike",
    [
        "t\u0435\u0430\u0441h\u0435r",  # Cyrillic е, а, с (a classroom walkthrough: the teacher's lines)
        "\uff54\uff45\uff41\uff43\uff48\uff45\uff52",  # full-width
        "\U0001d42d\U0001d41e\U0001d41a\U0001d41c\U0001d421\U0001d41e\U0001d42b",  # mathematical bold
        "\u0422\u0415\u0410\u0421\u041dER",  # Cyrillic capitals Т Е А С Н
        "TEAC\u0397ER",  # Greek capital eta
    ],
)
def test_look_alike_nicks_read_as_one(lookalike: str) -> None:
    assert m.check_nick(lookalike)  # a valid nick of its own...
    assert m.nick_skeleton(lookalike) == m.nick_skeleton("teacher")  # ... that reads as "teacher"
    assert m.nick_key(lookalike) != m.nick_key("teacher")  # (its identity is its own: see the hub's test)


@pytest.mark.parametrize(
    ("lookalike", "latin"),
    [
        ("ga\u0433y", "gary"),
        ("\u0475ic", "vic"),
        ("m\u04afra", "myra"),
        ("p\u04bdte", "pete"),
        ("\u0461ill", "will"),
        ("\u050cus", "Gus"),
        ("\u042cob", "bob"),
        ("\u03b3ves", "yves"),
        ("b\u03c3b", "bob"),
        ("\u03f3o", "jo"),
        ("\u03f9at", "Cat"),  # lunate sigmas (NFKD made them sigmas, drawn otherwise)
        ("\u03f2at", "cat"),
        ("\u1d04at", "cat"),  # Latin small capitals (a protocol review: ᴄat, bᴏb)
        ("b\u1d0fb", "bob"),
        ("\u1d20\u1d1c\u1d22\ua731\u026a\u028f\u1d21", "vuzsiyw"),
        ("a\u01c0ice", "alice"),  # the dental click, a bar
        ("\u0237o", "jo"),
    ],
)
def test_look_alikes_of_unicodes_confusables_table(lookalike: str, latin: str) -> None:
    """Letters TR39 maps to Latin ones that the first table lacked (an adversarial review: gaгy beside gary)."""
    assert m.check_nick(lookalike)
    assert m.nick_skeleton(lookalike) == m.nick_skeleton(latin)


def test_capital_i_is_not_taken_for_a_small_l() -> None:
    """TR39 maps I to l; folded to one case, that would make Ian, lan and Lan one nick. A terminal draws I
    and l apart; a palochka Ӏ or a Greek Ι reads as the I it is drawn as."""
    assert len({m.nick_skeleton(n) for n in ("Ian", "lan", "Lan")}) == 2  # (lan and Lan: one nick by case)
    assert m.nick_skeleton("A\u04c0ice") == m.nick_skeleton("A\u0399ice") == m.nick_skeleton("AIice")


def test_nicks_of_other_scripts_stay_their_own() -> None:
    nicks = ("teacher", "учитель", "δάσκαλος", "先生", "тема", "Hana", "нана")
    assert len({m.nick_skeleton(n) for n in nicks}) == 7  # (Cyrillic small н is not h: it is drawn otherwise)
    assert m.nick_skeleton("\u0430nn") == m.nick_skeleton("ann") != m.nick_skeleton("\u043enn")  # а is a; о, o
    assert m.nick_skeleton("zo\u0451") == m.nick_skeleton("zo\u00eb")  # Cyrillic ё is Latin ë, accent and all


@settings(max_examples=300, deadline=None)
@given(st.text(st.sampled_from([chr(c) for c in (*range(0x391, 0x3AA), *range(0x3B1, 0x3CA), *range(0x410, 0x450))]
                               + list("AaBbHhKkMmPpTtXx")), min_size=1, max_size=24))  # fmt: skip
def test_nick_identity_is_case_insensitive_in_greek_and_cyrillic(nick: str) -> None:
    """A review: the look-alike table applied before case folding made Марина and марина two nicks (and
    let three sessions hold what was one nick). The identity is case folding alone."""
    assert m.nick_key(nick) == m.nick_key(nick.upper()) == m.nick_key(nick.lower()) == m.nick_key(nick.casefold())


@pytest.mark.parametrize(
    ("raw", "room"),
    [("lobby", "lobby"), ("#Lobby", "lobby"), ("DEV", "dev"), ("a.b-c_d", "a.b-c_d"), ("9", "9"),
     ("x" * const.ROOM_MAX, "x" * const.ROOM_MAX), ("#" + "y" * const.ROOM_MAX, "y" * const.ROOM_MAX)],
)  # fmt: skip
def test_room_normalisation(raw: str, room: str) -> None:
    assert m.check_room(raw) == room


@pytest.mark.parametrize(
    "raw",
    ["", "#", "##a", "a b", "-a", ".a", "_a", "é", "a/b", "a\x00", "x" * (const.ROOM_MAX + 1), "@sid", None, 3],
)
def test_bad_rooms(raw: object) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        m.check_room(raw)
    assert info.value.code == m.Err.BAD_ROOM


def test_bad_room_message_is_bounded_and_escaped() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        m.check_room("\x1b" * 1000)
    assert "\x1b" not in info.value.message
    assert len(info.value.message) < 300  # 40 characters quoted


@pytest.mark.parametrize(
    ("raw", "quoted"), [("Ünïcødé", "'Ünïcødé'"), ("#My Room", "'#My Room'"), ("a" * 48, "'" + "a" * 40 + "…'")]
)
def test_bad_room_message_quotes_the_name_as_given(raw: str, quoted: str) -> None:
    """Not lowered (the user would read back a name they never typed) and cut visibly, not silently."""
    with pytest.raises(RemoteProtocolError) as info:
        m.check_room(raw)
    assert info.value.message.endswith(f"(not {quoted})")


# --- hello details --------------------------------------------------------------------------------------------


def test_hello_rooms_deduplicated_in_order() -> None:
    req = parse({"type": "hello", "nick": "al", "rooms": ["b", "#A", "b", "a", "c"]})
    assert isinstance(req, m.Hello)
    assert req.rooms == ("b", "a", "c")


def test_hello_room_limit_exactly() -> None:
    rooms = [f"r{i}" for i in range(const.MAX_ROOMS_PER_SESSION)]
    req = parse({"type": "hello", "nick": "al", "rooms": rooms})
    assert isinstance(req, m.Hello)
    assert len(req.rooms) == const.MAX_ROOMS_PER_SESSION


def test_plain_flag_only_from_the_hub_side() -> None:
    obj = {"type": "hello", "nick": "al", "plain": True}
    assert parse(obj) == m.Hello("al", plain=False)
    assert m.parse_obj(obj, allow_plain=True) == m.Hello("al", plain=True)
    assert m.parse_obj({**obj, "plain": 1}, allow_plain=True) == m.Hello("al", plain=False)


def test_hello_proto_defaults_and_last_seq() -> None:
    req = parse({"type": "hello", "nick": "al", "token": "abc", "last_seq": 0})
    assert isinstance(req, m.Hello)
    assert (req.proto, req.token, req.last_seq) == (const.PROTOCOL_VERSION, "abc", 0)


# --- server frames --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["plain", "line\nbreak", "cr\rlf\r\n", "ls\u2028ps\u2029", "nel\x85", "vt\x0bff\x0c", "\x1c\x1d\x1e", ""]
)
def test_encode_is_one_line(text: str) -> None:
    frame = {"type": "msg", "seq": 1, "from": "al", "text": text}
    out = m.encode(frame)
    assert out.endswith(b"\n")
    assert out.count(b"\n") == 1
    assert b"\r" not in out
    assert json.loads(out) == frame
    assert out.splitlines() == [out[:-1]]  # bytes.splitlines: what the worker's plain mode splits on


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=5), st.text() | st.integers() | st.booleans(), max_size=5))
def test_encode_any_frame_is_one_line(frame: dict[str, Any]) -> None:
    frame = {k.encode("utf-8", "replace").decode(): v for k, v in frame.items()}
    frame = {k: v.encode("utf-8", "replace").decode() if isinstance(v, str) else v for k, v in frame.items()}
    out = m.encode(frame)
    assert out.count(b"\n") == 1 and out.endswith(b"\n")
    assert json.loads(out) == frame


def test_error_frames() -> None:
    assert m.error_frame("bad_json", "oops") == {"type": "error", "code": "bad_json", "message": "oops"}
    assert m.error_frame("x", "y", id=0, fatal=True) == {
        "type": "error",
        "code": "x",
        "message": "y",
        "id": 0,
        "fatal": True,
    }
    exc = RemoteProtocolError(m.Err.BAD_TEXT, "no", request_id=9, fatal=True)
    assert json.loads(m.error_line(exc)) == {
        "type": "error",
        "code": "bad_text",
        "message": "no",
        "id": 9,
        "fatal": True,
    }


def test_server_hello() -> None:
    frame = m.server_hello("kitchen")
    assert frame["type"] == "server" and frame["name"] == "kitchen"
    assert frame["proto"] == const.PROTOCOL_VERSION
    assert "/nick" in frame["hint"]
    assert m.encode(frame).count(b"\n") == 1


# --- fuzzing --------------------------------------------------------------------------------------------------

TYPES = ["hello", "join", "part", "msg", "action", "privmsg", "nick", "topic", "who", "rooms", "history", "ping",
         "pong", "stats", "quit", "other"]  # fmt: skip
KEYS = ["type", "id", "room", "rooms", "text", "to", "nick", "topic", "reason", "before", "after", "limit", "proto",
        "token", "last_seq", "plain"]  # fmt: skip
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**60), 2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=4,
)


@st.composite
def request_like(draw: st.DrawFn) -> dict[str, Any]:
    obj = draw(st.dictionaries(st.sampled_from(KEYS), json_values | st.sampled_from(["lobby", "#A", "bob", "hi"])))
    if draw(st.booleans()):
        obj["type"] = draw(st.sampled_from(TYPES))
    return obj


@settings(max_examples=400, deadline=None)
@given(request_like(), st.booleans())
def test_any_request_like_object_parses_or_raises_remote_protocol_error(obj: dict[str, Any], plain: bool) -> None:
    try:
        req = m.parse_obj(obj, allow_plain=plain)
    except RemoteProtocolError as exc:
        assert exc.code in ERR_CODES
        with pytest.raises(RemoteProtocolError) as again:  # the same object as a line fails the same way
            m.parse_line(json.dumps(obj).encode())
        assert again.value.code == exc.code or plain
        return
    assert isinstance(req, m.Request)
    assert m.parse_obj(req.to_obj(), allow_plain=True) == req  # what passed validation passes again at the hub
    if not plain:
        assert m.parse_line(json.dumps(obj).encode()) == req


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_remote_protocol_error(data: bytes) -> None:
    try:
        req = m.parse_line(data)
    except RemoteProtocolError as exc:
        assert exc.code in ERR_CODES
    else:
        assert isinstance(req, m.Request)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=60))
def test_any_text_is_accepted_only_without_control_characters(text: str) -> None:  # (and not blank)
    try:
        got = m.check_text(text)
    except RemoteProtocolError as exc:
        assert exc.code in (m.Err.BAD_TEXT, m.Err.BAD_FIELD)
        assert (
            not text
            or m.is_blank(text)
            or any((ord(c) < 0x20 and c != "\t") or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xDFFF for c in text)
        )
    else:
        assert got == text
        m.encode({"text": got})  # accepted text always encodes


# --- the hot path: parse_post must agree with parse_line on every line it accepts ---------------------------


def _slow(line: bytes) -> m.Request | str:
    try:
        return m.parse_line(line)
    except RemoteProtocolError as exc:
        return exc.code


def _agrees(line: bytes) -> m.Post | None:
    """parse_post's answer, after checking it is what the full parser says about the same line."""
    post = m.parse_post(line)
    if post is not None:
        req = m.parse_line(line)  # must not raise: the fast path never accepts what the parser refuses
        assert isinstance(req, m.Msg | m.Action) and post.kind == req.TYPE
        assert (req.room, req.id) == (post.to, post.id)
        assert m.json_str(req.text) == post.text  # the literal spliced into the event is the canonical one
    return post


def _shape(kind: str, room: str, text: str, rid: int | None = None) -> bytes:
    line = b'{"type":"%s","room":"%s","text":"%s"' % (kind.encode(), room.encode(), text.encode())
    return line + (b"}" if rid is None else b',"id":%d}' % rid)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["msg", "action", "privmsg", "Msg"]),
    st.text(alphabet="abzAZ09_.-#\u00e9", min_size=0, max_size=34),
    st.text(min_size=0, max_size=30) | st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126)),
    st.none() | st.integers(min_value=-2, max_value=m.MAX_ID + 2),
)
def test_parse_post_agrees_with_the_full_parser(kind: str, room: str, text: str, rid: int | None) -> None:
    _agrees(_shape(kind, room, text, rid))  # raw text: quotes, backslashes, control characters included
    line = json.dumps({"type": kind, "room": room, "text": text, **({} if rid is None else {"id": rid})})
    compact = json.dumps(json.loads(line), ensure_ascii=False, separators=(",", ":")).encode()
    post = _agrees(compact)  # the client's encoding: taken by the fast path whenever its shape allows
    simple = (
        all(" " <= c <= "~" and c not in '"\\' for c in text)
        and 0 < len(text.strip(" ")) <= len(text) <= const.MAX_TEXT
    )
    canonical = m._ROOM.fullmatch(room) is not None and len(room) <= const.ROOM_MAX
    fast = kind in ("msg", "action") and simple and canonical and (rid is None or 0 <= rid <= m.MAX_ID)
    assert (post is not None) == fast


@settings(max_examples=200, deadline=None)
@given(st.from_regex(m._POST, fullmatch=True))
def test_every_line_of_the_fast_shape_is_taken_and_agrees(line: bytes) -> None:
    rid = line.rsplit(b'"id":', 1)[1][:-1] if line.endswith(b"}") and b',"id":' in line[-25:] else None
    post = _agrees(line)
    assert (post is not None) == (rid is None or int(rid) <= m.MAX_ID)  # only an id over MAX_ID falls through


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=80))
def test_parse_post_on_arbitrary_bytes(line: bytes) -> None:
    _agrees(b'{"type":"msg","room":"a","text":"' + line)
    _agrees(line)


def test_parse_post_limits_at_their_edges() -> None:
    room = "r" * const.ROOM_MAX
    assert _agrees(_shape("msg", room, "x" * const.MAX_TEXT, m.MAX_ID)) == m.Post(
        "msg", room, b'"' + b"x" * const.MAX_TEXT + b'"', m.MAX_ID
    )
    too_long = _shape("msg", "a", "x" * (const.MAX_TEXT + 1))
    assert m.parse_post(too_long) is None and _slow(too_long) == m.Err.BAD_TEXT
    long_room = _shape("msg", "r" * (const.ROOM_MAX + 1), "x")
    assert m.parse_post(long_room) is None and _slow(long_room) == m.Err.BAD_ROOM
    big_id = _shape("action", "a", "x", m.MAX_ID + 1)
    assert m.parse_post(big_id) is None and _slow(big_id) == m.Err.BAD_FIELD
    assert _agrees(_shape("action", "a", "x", 0)) == m.Post("action", "a", b'"x"', 0)


@pytest.mark.parametrize(
    "line",
    [
        b'{"type":"msg","room":"#a","text":"x"}',  # the full parser drops the '#'
        b'{"type":"msg","room":"Lobby","text":"x"}',  # and lowercases
        b'{"type":"msg","room":"a","text":"caf\xc3\xa9"}',  # non-ASCII text
        b'{"type":"msg","room":"a","text":"a\\"b"}',  # escapes
        b'{"type":"msg","room":"a","text":"a\tb"}',  # a raw tab: invalid JSON
        b'{"type":"msg","room":"a","text":""}',  # empty
        b'{"type": "msg", "room": "a", "text": "x"}',  # other spacing
        b'{"room":"a","type":"msg","text":"x"}',  # other key order
        b'{"type":"msg","room":"a","text":"x","id":01}',  # not JSON
        b'{"type":"msg","room":"a","text":"x","id":1.0}',
        b'{"type":"msg","room":"a","text":"x"} ',
    ],
)
def test_parse_post_leaves_other_shapes_to_the_full_parser(line: bytes) -> None:
    assert m.parse_post(line) is None


@pytest.mark.parametrize("token", ["\ud800", "ab\udfffcd", "\udc80" * 64])
def test_a_token_with_a_lone_surrogate_is_a_bad_field(token: str) -> None:
    """JSON's "\\ud800" decodes to a lone surrogate, which is no character: the hub's hash of the token
    (its UTF-8) raised, the main process logged the worker's record as bad, and the client got no answer at
    all (an adversarial review)."""
    line = json.dumps({"type": "hello", "nick": "al", "token": token, "id": 4}).encode()
    with pytest.raises(RemoteProtocolError) as info:
        m.parse_line(line)
    assert info.value.code == m.Err.BAD_FIELD and info.value.request_id == 4


def test_a_long_nick_is_refused_before_its_normalization(monkeypatch: pytest.MonkeyPatch) -> None:
    """NFC reorders combining marks with an insertion sort: a nick of 8,000 alternating marks (classes 230 and
    220, one 16 KB line) took 57 ms of the worker before the length check refused it (20 lines a second per
    connection: a worker's whole core, and others' delivery at a second; an adversarial review). A nick longer
    than 4 × NICK_MAX (NFC makes at most 4 code points one) is refused without being normalised."""
    normalised: list[int] = []
    normalize = unicodedata.normalize

    def counted(form: Any, text: str) -> str:
        normalised.append(len(text))
        return normalize(form, text)

    monkeypatch.setattr(unicodedata, "normalize", counted)
    line = json.dumps({"type": "nick", "nick": "a" + "\u0301\u0316" * 4080, "id": 2}, ensure_ascii=False).encode()
    with pytest.raises(RemoteProtocolError) as info:
        m.parse_line(line)
    assert info.value.code == m.Err.BAD_NICK and "1 to 24 characters" in info.value.message
    assert max(normalised, default=0) <= 4 * 24  # (the text of the line is not a nick: not normalised either)
    assert m.check_nick("\u03b1\u0313\u0342\u0345" * 24) == "\u1f86" * 24  # 96 before NFC, 24 after: still a nick
