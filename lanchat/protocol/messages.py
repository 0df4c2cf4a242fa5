"""Client requests and server frames of the chat protocol (docs/protocol.md), sans-IO.

Requests are frozen, slotted dataclasses; ``parse_line`` (through ``parse_obj``, which does the checks)
turns one frame into one request or raises ``RemoteProtocolError`` with a wire error code, and
``parse_post`` takes the common shape of a chat message apart without decoding it. Server frames are plain
dicts encoded once by ``encode`` (events are encoded once by the hub and fanned out as the same bytes).
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field, fields
from json.encoder import encode_basestring  # what json.dumps(ensure_ascii=False) escapes strings with
from typing import Any, ClassVar, Final, NoReturn

from lanchat import const
from lanchat.errors import RemoteProtocolError


class Err:
    """Wire error codes (the ``code`` of an error frame)."""

    BAD_UTF8: Final = "bad_utf8"
    BAD_JSON: Final = "bad_json"
    FRAME_TOO_LONG: Final = "frame_too_long"
    UNKNOWN_TYPE: Final = "unknown_type"
    BAD_FIELD: Final = "bad_field"
    BAD_NICK: Final = "bad_nick"
    NICK_TAKEN: Final = "nick_taken"
    BAD_ROOM: Final = "bad_room"
    BAD_TEXT: Final = "bad_text"
    NOT_IN_ROOM: Final = "not_in_room"
    NO_SUCH_NICK: Final = "no_such_nick"
    NOT_REGISTERED: Final = "not_registered"
    ALREADY_REGISTERED: Final = "already_registered"
    PROTO_VERSION: Final = "proto_version"
    TOO_MANY_ROOMS: Final = "too_many_rooms"
    HANDSHAKE_TIMEOUT: Final = "handshake_timeout"
    IDLE_TIMEOUT: Final = "idle_timeout"
    SERVER_FULL: Final = "server_full"
    TOO_MANY_FROM_IP: Final = "too_many_connections"
    SHUTTING_DOWN: Final = "shutting_down"
    BUSY: Final = "busy"  # a listing asked while the server is behind with its replies: ask again soon
    TOO_FAST: Final = "too_fast"  # a nick change before the session's renames have paid for their events
    INCOMPLETE_LINE: Final = "incomplete_line"  # plain text: a last line without its newline, not sent
    INTERNAL: Final = "internal"
    # The client's own (never on the wire): a change the server refused while its error was lost with the
    # connection (a resume's welcome lists the ids); the reason is not known.
    NOT_DONE: Final = "not_done"


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")  # C0 (tab allowed), DEL, C1, surrogates
_ROOM = re.compile(r"[a-z0-9][a-z0-9_.\-]*")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_NICK_EXTRA = frozenset("_-.[]{}|^`")
MAX_ID: Final = 2**53  # ids stay exact in every JSON implementation


def _bad(code: str, message: str) -> RemoteProtocolError:
    return RemoteProtocolError(code, message)


# Letters to Unicode (category Lo) that draw as nothing: a nick of them was invisible, or looked like
# another with a blank after it (an adversarial review). All the letters or digits named FILLER or BLANK.
_BLANK_LETTERS: Final = frozenset("\u115f\u1160\u3164\uffa0")
# A character that shows something: not a blank, not the Braille blank, not one of Unicode's default
# ignorable code points (DerivedCoreProperties: zero-width space and joiners, soft hyphen, bidi marks, the
# Hangul fillers, variation selectors, tags ... which draw as nothing), checked by one regular expression:
# a character at a time in Python took 0.7 ms for a text of 4,000 (a review).
_SHOWS_SOMETHING: Final = re.compile(
    "[^\\s\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f"
    "\u2800\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0000-\U000e0fff]"
)


def is_blank(text: str) -> bool:
    """True if ``text`` would show as an empty line: only blanks and characters that draw as nothing
    (U+200B, U+2800, U+3164 ...). Inside a text those stay; a text of them alone is refused as blank."""
    return _SHOWS_SOMETHING.search(text) is None


# Combining signs: the vowel signs and viramas of Indic, Khmer, Myanmar ... names (राम, தமிழ், ស៊ីម; a review found
# them refused), and the accents NFC does not compose. Enclosing ones (a keycap, a circle around a letter) and
# those that draw as nothing (the grapheme joiner, variation selectors) stay out; a run of them sits on a letter
# or digit, at most NICK_SIGNS_MAX deep (Tibetan stacks 3 or 4), so that a nick cannot be a tower of accents.
NICK_SIGNS_MAX: Final = 4


def _is_sign(c: str) -> bool:
    """Not an overlay (combining class 1): a stroke or slash through a letter made `Bjo̸rn` beside `Bjørn`, whose
    ø does not decompose (a review of these signs); names write such letters precomposed. Bassa Vah's tones
    are the one class-1 sign of a living script's names (another review)."""
    return (
        unicodedata.category(c) in ("Mn", "Mc")
        and (unicodedata.combining(c) != 1 or "\U00016af0" <= c <= "\U00016af4")
        and _SHOWS_SOMETHING.match(c) is not None
    )


def _script(c: str) -> str:
    """A character's script as Unicode names it (LATIN SMALL LETTER A, DEVANAGARI VOWEL SIGN AA); COMBINING
    for the signs any script may take (the accents of U+0300 ...)."""
    return unicodedata.name(c, "").partition(" ")[0]


_SIGNS_RUN: Final = re.compile(r"[^\w\-.\[\]{}|^`]+")  # the runs of signs, once a nick holds nothing else
# Hangul's conjoining letters: NFC makes a syllable of those that form one, and one left over draws inside the
# syllable before it (`김ᆫ` beside `김`, a review); a nick writes syllables.
_JAMO: Final = re.compile("[\u1100-\u11ff\ua960-\ua97f\ud7b0-\ud7ff]")


def check_nick(nick: object) -> str:
    """A nick: 1..NICK_MAX letters, digits or _-.[]{}|^` (a letter with its signs: see NICK_SIGNS_MAX), starting
    with a letter or _. Returns it NFC."""
    if not isinstance(nick, str):
        raise _bad(Err.BAD_NICK, "nick must be a string")
    # Bounded before NFC: its canonical reordering of combining marks is quadratic (a 16 KB line of alternating
    # marks took 57 ms of a worker, 20 such lines a second per connection: an adversarial review). NFC makes a
    # character of at most 4 (Greek ᾆ: α and three marks), so a longer nick cannot be 24 characters after it.
    if len(nick) > 4 * const.NICK_MAX:
        raise _bad(Err.BAD_NICK, f"nick must be 1 to {const.NICK_MAX} characters")
    nick = unicodedata.normalize("NFC", nick)
    if not 1 <= len(nick) <= const.NICK_MAX:
        raise _bad(Err.BAD_NICK, f"nick must be 1 to {const.NICK_MAX} characters")
    if not (nick[0].isalpha() or nick[0] == "_"):
        raise _bad(Err.BAD_NICK, "nick must start with a letter or _")
    if not all(c.isalnum() or c in _NICK_EXTRA or _is_sign(c) for c in nick):
        raise _bad(Err.BAD_NICK, "nick may contain only letters, digits and _-.[]{}|^`")
    for signs in _SIGNS_RUN.finditer(nick):  # (none in most nicks: one search)
        base = nick[signs.start() - 1]
        if not base.isalnum() or len(signs.group()) > NICK_SIGNS_MAX:
            raise _bad(Err.BAD_NICK, f"nick may have at most {NICK_SIGNS_MAX} combining signs on a letter or digit")
        # A sign of another script drawn like an accent (Devanagari's acute ॔ on Jose॔ beside José, Lao's tone
        # on a Thai letter, a nukta under a Latin e: a review): signs of the letter's own script, or accents.
        script = _script(base)
        if any(_script(c) not in ("COMBINING", script) for c in signs.group()):
            raise _bad(Err.BAD_NICK, "nick may put on a letter only signs of its own script, or accents")
    if _JAMO.search(nick):
        raise _bad(Err.BAD_NICK, "nick may not contain Hangul letters that join a syllable (type the syllable)")
    if any(c in _BLANK_LETTERS for c in nick):
        raise _bad(Err.BAD_NICK, "nick may not contain characters that show as blanks (Hangul fillers)")
    return nick


# Letters of other scripts drawn like Latin ones (Unicode's confusables, TR39, for the Cyrillic, Greek and
# Latin letters a nick may hold): a classroom walkthrough took "tеасhеr" (Cyrillic е, а, с) beside the
# teacher, and its lines read as the teacher's. Capitals and small letters each as drawn: Cyrillic Н is
# Latin H, while its small н is not h.
# Then TR39's г as r, ү y, ѵ v, ѡ w, Ь b, ҽ e, Greek γ y, σ o, yot ϳ j; lunate sigmas as c, Latin small capitals
# as small letters, the dental click as l; and signs drawn as others (a review): the Greek perispomeni as a
# tilde, an overline as a macron, Hebrew's holam haser as its holam.
_LOOKALIKES: Final = str.maketrans(
    "аеһіјӏорԛѕԝхуԁɡɑɩıʋАВЕНІЈКМОРЅТХҮУԚԜСсҺӀΑΒΕΖΗΙΚΜΝΟΡΤΥΧοαιρυνгѵѴүҽѡԌЬγσϳͿϲϹᴄᴏᴜᴠᴡᴢꜱɪʏǀȷ\u0342\u0305\u05ba",
    "aehijlopqswxydgaiivABEHIJKMOPSTXYYQWCcHIABEZHIKMNOPTYXoaipuvrvVyewGbyojJcCcouvwzsiylj\u0303\u0304\u05b9",
)
# Not I as l (TR39 does): the skeleton is case folded, so "Ian" would be "lan" and "Lan", three people's names
# one nick; a terminal's fixed-width font draws I and l apart. Palochka Ӏ and Greek Ι read as I, as drawn.


def nick_key(nick: str) -> str:
    """Nicks are unique case-insensitively: a nick's identity (who a private message goes to, whose events
    are one's own). See nick_skeleton for the nicks refused beside it."""
    return nick.casefold()


def nick_skeleton(nick: str) -> str:
    """What a nick reads as: compatibility forms (full-width ｔｅａｃｈｅｒ, mathematical 𝐭𝐞𝐚𝐜𝐡𝐞𝐫) as
    their letters, accents apart, and letters of other scripts drawn like Latin ones as those, then case
    folded. A nick whose skeleton another session's nick has is refused as taken, so nobody can take a
    nick that reads as another's (a key of its own: capital Н reads as H, small н does not, so this cannot
    also be the case-insensitive identity, nick_key)."""
    if nick.isascii():  # (the common case)
        return nick.casefold()
    # The table before the compatibility forms too: NFKD makes the lunate sigma ϲ, drawn as c, a final sigma ς
    folded = unicodedata.normalize("NFKD", nick.translate(_LOOKALIKES)).translate(_LOOKALIKES).casefold()
    # Signs that draw nothing more (a review of them): a dot above on i or j, which have one (`bı̇ll`: a dotless
    # ı read as i, with a dot; İ folded), and a non-spacing sign again on its letter (`José́`, `Trầ̂n`: drawn
    # over the first). A spacing one takes a column of its own each time (रााम is not राम).
    kept: list[str] = []
    base, on_base = "", ""  # the letter, and the non-spacing signs kept on it
    for c in folded:
        kind = unicodedata.category(c)
        if kind[0] != "M":
            base, on_base = c, ""
        elif (c == "\u0307" and base in ("i", "j")) or c in on_base:
            continue
        elif kind == "Mn":
            on_base += c
        kept.append(c)
    return "".join(kept)


def check_room(room: object) -> str:
    """A room: 1..ROOM_MAX of a-z 0-9 _ . - (case-folded; a leading # is accepted and dropped)."""
    if not isinstance(room, str):
        raise _bad(Err.BAD_ROOM, "room must be a string")
    name = room.removeprefix("#").lower()
    if not 1 <= len(name) <= const.ROOM_MAX or not _ROOM.fullmatch(name):
        given = room if len(room) <= 40 else room[:40] + "…"  # as typed: quoting it lowered would misquote
        raise _bad(
            Err.BAD_ROOM,
            f"room names are 1 to {const.ROOM_MAX} of a-z 0-9 _ . -, starting with a letter or digit (not {given!r})",
        )
    return name


def check_text(text: object, *, limit: int = const.MAX_TEXT, what: str = "text", empty: bool = False) -> str:
    if not isinstance(text, str):
        raise _bad(Err.BAD_FIELD, f"{what} must be a string")
    if not empty and not text:
        raise _bad(Err.BAD_TEXT, f"{what} is empty")
    if len(text) > limit:
        raise _bad(Err.BAD_TEXT, f"{what} is longer than {limit} characters ({len(text) - limit} too many)")
    if not empty and is_blank(text):  # (blank lines are skipped in plain mode: the same here)
        raise _bad(Err.BAD_TEXT, f"{what} is blank")
    if (bad := _CONTROL.search(text)) is not None:
        if "\ud800" <= bad.group() <= "\udfff":  # a lone surrogate (JSON's \ud800): no character at all
            raise _bad(Err.BAD_TEXT, f"{what} is not valid Unicode (a lone surrogate)")
        raise _bad(Err.BAD_TEXT, f"{what} contains control characters")
    return text


def _opt_int(obj: dict[str, Any], key: str, *, lo: int = 0, hi: int = MAX_ID) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is not int or not lo <= value <= hi:  # bool is not an int here
        raise _bad(Err.BAD_FIELD, f"{key} must be an integer from {lo} to {hi}")
    return value


# --- requests ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    TYPE: ClassVar[str] = ""
    id: int | None = field(default=None, kw_only=True)  # echoed in replies; for messages also the ack/dedup key

    def to_obj(self) -> dict[str, Any]:
        """The normalized wire object (what a worker forwards to the hub)."""
        obj: dict[str, Any] = {"type": self.TYPE}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                obj[f.name] = list(value) if isinstance(value, tuple) else value
        return obj


@dataclass(frozen=True, slots=True)
class Hello(Request):
    TYPE: ClassVar[str] = "hello"
    nick: str
    rooms: tuple[str, ...] = (const.DEFAULT_ROOM,)
    proto: int = const.PROTOCOL_VERSION
    token: str | None = None  # resume token from an earlier welcome
    last_seq: int | None = None  # last event sequence seen, with token
    attempt: int | None = None  # with token: the client's count of its connection attempts (a stale one is refused)
    plain: bool = False  # set by the server for plain-text sessions, never by a client


@dataclass(frozen=True, slots=True)
class Join(Request):
    TYPE: ClassVar[str] = "join"
    room: str


@dataclass(frozen=True, slots=True)
class Part(Request):
    TYPE: ClassVar[str] = "part"
    room: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Msg(Request):
    TYPE: ClassVar[str] = "msg"
    room: str
    text: str


@dataclass(frozen=True, slots=True)
class Action(Request):
    TYPE: ClassVar[str] = "action"
    room: str
    text: str


@dataclass(frozen=True, slots=True)
class PrivMsg(Request):
    TYPE: ClassVar[str] = "privmsg"
    to: str
    text: str


@dataclass(frozen=True, slots=True)
class Nick(Request):
    TYPE: ClassVar[str] = "nick"
    nick: str


@dataclass(frozen=True, slots=True)
class Topic(Request):
    TYPE: ClassVar[str] = "topic"
    room: str
    topic: str | None = None  # None asks for the topic


@dataclass(frozen=True, slots=True)
class Who(Request):
    TYPE: ClassVar[str] = "who"
    room: str


@dataclass(frozen=True, slots=True)
class Rooms(Request):
    TYPE: ClassVar[str] = "rooms"


@dataclass(frozen=True, slots=True)
class History(Request):
    TYPE: ClassVar[str] = "history"
    room: str
    before: int | None = None
    after: int | None = None
    limit: int = const.HISTORY_ON_JOIN


@dataclass(frozen=True, slots=True)
class Ping(Request):
    TYPE: ClassVar[str] = "ping"


@dataclass(frozen=True, slots=True)
class Pong(Request):
    TYPE: ClassVar[str] = "pong"


@dataclass(frozen=True, slots=True)
class Stats(Request):
    TYPE: ClassVar[str] = "stats"


@dataclass(frozen=True, slots=True)
class Quit(Request):
    TYPE: ClassVar[str] = "quit"
    reason: str = ""


# Server frames that are events: they carry a global ``seq`` and ``ts``, are kept in history and
# replayed on resume. Every other frame (welcome, ack, error, replies) is a reply to one client.
EVENT_TYPES: Final = frozenset({"msg", "action", "privmsg", "join", "part", "quit", "nick", "topic"})
# Requests the server answers before a hello (status tools need no nick).
PRE_HELLO: Final = frozenset({"hello", "ping", "pong", "stats", "quit", "rooms"})  # rooms: look before choosing a nick


def is_change(req: Request) -> bool:
    """A join, a part, a nick change or a topic set: with an id, the server acks it once done and counts it
    in a resume's ``last_id``; the client keeps it until then and sends it again after a drop if not."""
    return isinstance(req, Join | Part | Nick) or (isinstance(req, Topic) and req.topic is not None)


def parse_obj(obj: object, *, allow_plain: bool = False) -> Request:
    """Validate one decoded JSON value as a request. Raises RemoteProtocolError."""
    if not isinstance(obj, dict):
        raise _bad(Err.BAD_JSON, "a frame must be a JSON object")
    kind = obj.get("type")
    rid = _opt_int(obj, "id")
    if not isinstance(kind, str):
        missing = _bad(Err.BAD_FIELD, "missing 'type'" if kind is None else "'type' must be a string")
        missing.request_id = rid  # a valid id is echoed whatever else is wrong, so the sender can match it
        raise missing
    try:
        if kind == "msg":
            return Msg(check_room(obj.get("room")), check_text(obj.get("text")), id=rid)
        if kind == "action":
            return Action(check_room(obj.get("room")), check_text(obj.get("text")), id=rid)
        if kind == "privmsg":
            return PrivMsg(check_nick(obj.get("to")), check_text(obj.get("text")), id=rid)
        if kind == "ping":
            return Ping(id=rid)
        if kind == "pong":
            return Pong(id=rid)
        if kind == "join":
            return Join(check_room(obj.get("room")), id=rid)
        if kind == "part":
            return Part(check_room(obj.get("room")), _reason(obj), id=rid)
        if kind == "hello":
            return _hello(obj, rid, allow_plain)
        if kind == "nick":
            return Nick(check_nick(obj.get("nick")), id=rid)
        if kind == "topic":
            raw = obj.get("topic")
            topic = None if raw is None else check_text(raw, limit=const.TOPIC_MAX, what="topic", empty=True)
            return Topic(check_room(obj.get("room")), topic, id=rid)
        if kind == "who":
            return Who(check_room(obj.get("room")), id=rid)
        if kind == "rooms":
            return Rooms(id=rid)
        if kind == "history":
            limit = _opt_int(obj, "limit", lo=1, hi=const.HISTORY_PAGE_MAX)
            return History(
                check_room(obj.get("room")),
                before=_opt_int(obj, "before"),
                after=_opt_int(obj, "after"),
                limit=const.HISTORY_ON_JOIN if limit is None else limit,
                id=rid,
            )
        if kind == "stats":
            return Stats(id=rid)
        if kind == "quit":
            return Quit(quit_reason(obj.get("reason")), id=rid)
    except RemoteProtocolError as exc:
        exc.request_id = rid
        raise
    unknown = _bad(Err.UNKNOWN_TYPE, f"unknown request type {kind[:40]!r}")
    unknown.request_id = rid  # as for every other error about a request
    raise unknown


def _reason(obj: dict[str, Any]) -> str:
    raw = obj.get("reason", "")
    return "" if raw is None else check_text(raw, limit=const.REASON_MAX, what="reason", empty=True)


def quit_reason(raw: object) -> str:
    """A quit's reason as far as it can be kept: a quit is never refused (a user who asked to leave stayed in
    every room when the reason was too long: a review). Control characters (lone surrogates too) dropped, cut
    to REASON_MAX, and a reason that is not a text ignored."""
    if not isinstance(raw, str):
        return ""
    text = _CONTROL.sub("", raw)
    return text if len(text) <= const.REASON_MAX else text[: const.REASON_MAX - 1] + "…"


def _hello(obj: dict[str, Any], rid: int | None, allow_plain: bool) -> Hello:
    proto = _opt_int(obj, "proto", lo=1, hi=1000)
    if proto is not None and proto != const.PROTOCOL_VERSION:
        raise _bad(Err.PROTO_VERSION, f"this server speaks protocol {const.PROTOCOL_VERSION}, not {proto}")
    rooms_raw = obj.get("rooms")
    rooms: tuple[str, ...]
    if rooms_raw is None:
        room = obj.get("room")
        rooms = (const.DEFAULT_ROOM,) if room is None else (check_room(room),)
    elif isinstance(rooms_raw, list) and len(rooms_raw) <= const.MAX_ROOMS_PER_SESSION:
        rooms = tuple(dict.fromkeys(check_room(r) for r in rooms_raw))
    else:
        raise _bad(Err.BAD_FIELD, f"rooms must be a list of at most {const.MAX_ROOMS_PER_SESSION} room names")
    token = obj.get("token")
    if token is not None and (not isinstance(token, str) or not 1 <= len(token) <= 64 or _SURROGATE.search(token)):
        # (a lone surrogate, JSON's "\ud800", is no character: the hub hashes the token as UTF-8, and failed)
        raise _bad(Err.BAD_FIELD, "token must be a string of 1 to 64 characters")
    plain = obj.get("plain", False) is True and allow_plain
    nick = obj.get("nick")
    try:
        nick = check_nick(nick)
    except RemoteProtocolError:
        # A resume ignores the nick: one an earlier version took, and this one refuses, must not stop its
        # session's resume after an upgrade (a review). The hub checks it if a new session is made of it.
        if token is None or not isinstance(nick, str) or len(nick) > 4 * const.NICK_MAX or _CONTROL.search(nick):
            raise
    return Hello(
        nick,
        rooms,
        const.PROTOCOL_VERSION,
        token,
        _opt_int(obj, "last_seq"),
        _opt_int(obj, "attempt"),
        plain,
        id=rid,
    )


@dataclass(frozen=True, slots=True)
class Post:
    """A chat message as it travels to the hub: from ``parse_post`` (a msg or action line in its common
    shape, never decoded) or from a decoded Msg, Action or PrivMsg."""

    kind: str  # "msg", "action" or "privmsg" (control.POST_KINDS)
    to: str  # the room, or the nick of a privmsg
    text: bytes  # the text as a JSON string literal, exactly as json_str() writes it
    id: int | None = None


# The shape lanchat's client (and most scripts) write: {"type":"msg"|"action","room":R,"text":T} with an
# optional ,"id":N, R canonical, T printable ASCII without " or \, not only spaces. Such a text literal is byte for byte
# what json_str() writes for it and needs no check beyond this pattern, so it is forwarded as it came.
_POST = re.compile(
    rb'\{"type":"(msg|action)","room":"([a-z0-9][a-z0-9_.\-]{0,%d})","text":("(?! *")[ !#-\[\]-~]{1,%d}")'
    rb'(?:,"id":(0|[1-9][0-9]{0,15}))?\}' % (const.ROOM_MAX - 1, const.MAX_TEXT)
)


def parse_post(line: bytes) -> Post | None:
    """The hot path of the parser: a line in the common shape of a msg or action, else None (then
    ``parse_line`` decides, and answers exactly what it would have answered for this line)."""
    match = _POST.fullmatch(line)
    if match is None:
        return None
    kind, room, text, rid = match.groups()
    if rid is None:
        return Post(kind.decode(), room.decode(), text)
    if int(rid) > MAX_ID:
        return None
    return Post(kind.decode(), room.decode(), text, int(rid))


def _not_json(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


_DECODER: Final = json.JSONDecoder(parse_constant=_not_json)  # NaN and Infinity are Python's, not JSON's


def parse_line(line: bytes) -> Request:
    """One frame (a line without its newline) to a request. Raises RemoteProtocolError."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(Err.BAD_UTF8, "frame is not valid UTF-8") from None
    try:
        obj = _DECODER.decode(text)
    except (ValueError, RecursionError):  # RecursionError: deeply nested arrays; ValueError: huge ints too
        raise _bad(Err.BAD_JSON, "frame is not valid JSON") from None
    return parse_obj(obj)


# --- server frames ----------------------------------------------------------------------------------------


def json_str(text: str) -> bytes:
    """``text`` as a JSON string literal, exactly as ``encode`` writes it (the same C escaper)."""
    return encode_basestring(text).encode("utf-8")


def encode(frame: dict[str, Any]) -> bytes:
    """One server frame as one line. Strings were validated (no surrogates), so UTF-8 is safe."""
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def error_frame(code: str, message: str, *, id: int | None = None, fatal: bool = False) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if id is not None:
        frame["id"] = id
    if fatal:
        frame["fatal"] = True
    return frame


def error_line(exc: RemoteProtocolError) -> bytes:
    return encode(error_frame(exc.code, exc.message, id=exc.request_id, fatal=exc.fatal))


def server_hello(name: str) -> dict[str, Any]:
    """The first line a server sends: readable by a person on nc/telnet, parsed by clients."""
    return {
        "type": "server",
        "proto": const.PROTOCOL_VERSION,
        "name": name,
        "hint": "lanchat server. Plain text: type /nick YOURNAME then chat; /help lists commands.",
    }
