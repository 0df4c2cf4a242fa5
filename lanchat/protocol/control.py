"""Frames on the socketpair between the main process (hub) and a worker, sans-IO.

Every frame is ``!IB`` (body length, kind) + body. Kinds:

- ``ROOM``  hub -> worker: fan ``payload`` (one or more ready-made client lines) out to the room's local members.
- ``CONNS`` hub -> worker: send ``payload`` to the listed connections (replies, private messages, replay).
- ``JSON``  either way: a list of control records, each a JSON array made by one of the builders below
  (``req``, ``member``, ...): its kind, then its fields in order. Receivers take them apart with ``match``
  on these shapes; a record of another shape is the sender's bug, logged and skipped.
- ``POST``  worker -> hub: one chat message the worker has validated (msg, action or privmsg), binary,
  with its text already JSON-encoded, so the hub splices it into the event line: no JSON parse, no
  second validation, no per-message objects on the hottest path (docs/architecture.md, "Where we differ").

The hub encodes each event line once; workers copy the same bytes to every member. A peer that sends a
frame of an unknown kind or over ``MAX_CONTROL_FRAME`` is broken: decoding raises RemoteProtocolError.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, Final

from lanchat.errors import RemoteProtocolError

HEADER: Final = struct.Struct("!IB")
ROOM: Final = 1
CONNS: Final = 2
JSON: Final = 3
POST: Final = 4
POST_KINDS: Final = ("msg", "action", "privmsg")  # a POST frame's kind byte indexes this
MAX_CONTROL_FRAME: Final = 64 * 1024 * 1024  # bytes: a batch of one tick; larger means a broken peer
# A tick's JSON records go in frames of about this many bytes: a worker reading hundreds of clients' bursts
# in one tick (a topic of 300 emoji is 3.6 KB escaped) would otherwise pass MAX_CONTROL_FRAME in one frame.
JSON_FRAME_TARGET: Final = 1024 * 1024
_ROOM_HEAD: Final = struct.Struct("!H")
_COUNT: Final = struct.Struct("!I")
_POST_HEAD: Final = struct.Struct("!QqBB")  # conn, request id (-1: none), kind, target length

Record = list[Any]  # a JSON record, [kind, field, ...]: made by the builders below (req, member, ...)


@dataclass(frozen=True, slots=True)
class RoomFrame:
    room: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class ConnsFrame:
    conns: tuple[int, ...]
    payload: bytes


@dataclass(frozen=True, slots=True)
class JsonFrame:
    records: list[Record]


@dataclass(slots=True)  # not frozen, unlike the others: one per message, and a frozen __init__ costs twice
class PostFrame:
    """A validated chat message: ``text`` is the JSON string literal (quotes included), ``to`` the room
    (msg, action) or nick (privmsg), ``id`` the client's request id or None."""

    conn: int
    kind: str
    to: str
    text: bytes
    id: int | None = None


ControlFrame = RoomFrame | ConnsFrame | JsonFrame | PostFrame


def room_frame(room: str, payload: bytes) -> bytes:
    name = room.encode()
    return HEADER.pack(_ROOM_HEAD.size + len(name) + len(payload), ROOM) + _ROOM_HEAD.pack(len(name)) + name + payload


def conns_frame(conns: list[int] | tuple[int, ...], payload: bytes) -> bytes:
    ids = struct.pack(f"!{len(conns)}Q", *conns)
    return HEADER.pack(_COUNT.size + len(ids) + len(payload), CONNS) + _COUNT.pack(len(conns)) + ids + payload


def json_frame(records: list[Record]) -> bytes:
    body = json.dumps(records, separators=(",", ":")).encode()
    return HEADER.pack(len(body), JSON) + body


def json_frames(records: list[Record]) -> list[bytes]:
    """``records`` in order, in JSON frames of at most JSON_FRAME_TARGET bytes each (a record larger than
    that alone in its own: one client line, ``--max-frame`` at most, escaped)."""
    whole = json_frame(records)
    if len(whole) <= HEADER.size + JSON_FRAME_TARGET:  # the common case: one encode, one frame
        return [whole]
    frames: list[bytes] = []
    part: list[bytes] = []
    size = 2  # the brackets
    for record in records:
        encoded = json.dumps(record, separators=(",", ":")).encode()
        if part and size + 1 + len(encoded) > JSON_FRAME_TARGET:
            frames.append(_json_parts(part))
            part, size = [], 2
        part.append(encoded)
        size += 1 + len(encoded)
    frames.append(_json_parts(part))
    return frames


def _json_parts(encoded: list[bytes]) -> bytes:
    body = b"[" + b",".join(encoded) + b"]"
    return HEADER.pack(len(body), JSON) + body


# --- JSON records: one builder per kind, the one place each shape is written -----------------------------

# worker -> hub


def req(conn: int, obj: dict[str, Any]) -> Record:
    """A validated request other than a message (hello, join, nick, ...), as its normalized wire object."""
    return ["req", conn, obj]


def eof(conn: int) -> Record:
    """The client's input ended: close once what it sent before is answered."""
    return ["eof", conn]


def adopted(conn: int) -> Record:
    """The worker holds the handed-over socket: the main process may close its copy."""
    return ["adopted", conn]


def refused(conn: int, why: str) -> Record:
    """The worker could not take the handed-over socket; the main process tells the client."""
    return ["refused", conn, why]


def closed(conn: int, clean: bool, reason: str) -> Record:
    """The connection is gone; ``clean``: its session ends (a quit or a refusal), else it waits for a resume."""
    return ["closed", conn, clean, reason]


def pong(seq: int, figures: dict[str, int]) -> Record:
    return ["pong", seq, figures]


def ready(pid: int) -> Record:
    return ["ready", pid]


# hub -> worker


def member(conn: int, room: str, joined: bool) -> Record:
    """The connection's session is in ``room`` now, or not: for the fan-out."""
    return ["member", conn, room, joined]


def answer(conn: int, room: str, joined: bool | None) -> Record:
    """A plain-text connection's /nick, /join or /part, answered in order: whether its session is in ``room``
    now (None: a /nick that renamed a session)."""
    return ["answer", conn, room, joined]


def bind(conn: int, nick: str) -> Record:
    """The connection has a session, under ``nick``."""
    return ["bind", conn, nick]


def close(conn: int, reason: str) -> Record:
    return ["close", conn, reason]


def ping(seq: int) -> Record:
    return ["ping", seq]


def shutdown(reason: str) -> Record:
    return ["shutdown", reason]


def post_frame(conn: int, kind: str, to: str, text_json: bytes, rid: int | None = None) -> bytes:
    target = to.encode()
    head = _POST_HEAD.pack(conn, -1 if rid is None else rid, POST_KINDS.index(kind), len(target))
    return HEADER.pack(len(head) + len(target) + len(text_json), POST) + head + target + text_json


class ControlDecoder:
    """Feed bytes from the pipe, get whole frames."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[ControlFrame]:
        buf = self._buf
        buf += data
        out: list[ControlFrame] = []
        pos = 0
        end = len(buf)
        hsize = HEADER.size
        while end - pos >= hsize:
            length, kind = HEADER.unpack_from(buf, pos)
            if length > MAX_CONTROL_FRAME:
                raise RemoteProtocolError("bad_control", f"control frame of {length} bytes")
            if end - pos - hsize < length:
                break
            body = bytes(buf[pos + hsize : pos + hsize + length])
            pos += hsize + length
            out.append(_decode(kind, body))
        del buf[:pos]
        return out


def _decode(kind: int, body: bytes) -> ControlFrame:
    try:
        if kind == ROOM:
            (n,) = _ROOM_HEAD.unpack_from(body)
            start = _ROOM_HEAD.size
            if start + n > len(body):
                raise ValueError("room name longer than the frame")
            return RoomFrame(body[start : start + n].decode(), body[start + n :])
        if kind == CONNS:
            (count,) = _COUNT.unpack_from(body)
            start = _COUNT.size
            ids = struct.unpack_from(f"!{count}Q", body, start)
            return ConnsFrame(ids, body[start + 8 * count :])
        if kind == POST:
            conn, rid, k, n = _POST_HEAD.unpack_from(body)
            start = _POST_HEAD.size
            if start + n > len(body) or k >= len(POST_KINDS):
                raise ValueError("bad post header")
            to = body[start : start + n].decode()
            return PostFrame(conn, POST_KINDS[k], to, body[start + n :], None if rid < 0 else rid)
        if kind == JSON:
            records = json.loads(body)
            if not isinstance(records, list):
                raise ValueError("records must be a list")
            return JsonFrame(records)
    except (struct.error, ValueError, RecursionError) as exc:
        raise RemoteProtocolError("bad_control", f"malformed control frame: {exc}") from None
    raise RemoteProtocolError("bad_control", f"unknown control frame kind {kind}")
