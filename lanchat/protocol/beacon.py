"""The discovery datagram codec: BEACON, PROBE, REPLY and GOODBYE as bytes and back.

Owns the wire format of UDP discovery (documented in docs/discovery.md) and every limit a datagram must
respect. Pure: it never imports socket, os or a clock, never sends or receives; the announcer and the
browser wrap it at the I/O edge. Messages are frozen, slotted dataclasses that validate in their
constructors (raising ``LocalProtocolError``: we built a bad one); ``decode`` turns anything malformed,
truncated, oversized, foreign or of another version into ``RemoteProtocolError`` (the peer sent it).

Layout (network byte order). Every datagram starts with a 6-byte header::

    magic    4  b"\\x89LCD"   high bit first (like PNG) so text protocols never match by accident
    version  1  DISCOVERY_VERSION
    kind     1  1 BEACON, 2 PROBE, 3 REPLY, 4 GOODBYE

    BEACON   = header + INFO + name
    REPLY    = header + nonce(8) + INFO + name
    PROBE    = header + nonce(8) + zero padding (the client pads to PROBE_SIZE: a reply never exceeds it)
    GOODBYE  = header + server_id(16) + address(4) + port(2)

    INFO     = server_id(16) address(4) port(2) proto(2) interval_ms(4)
               users(4) rooms(4) workers(2) load(8, IEEE double)
    name     = length(1) + UTF-8 bytes (at most NAME_MAX_BYTES, no control or bidi-override characters)

Nothing may follow the last field: a datagram of the wrong length for its kind is malformed.
"""

from __future__ import annotations

import ipaddress
import math
import re
import struct
import unicodedata
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Final

from lanchat.errors import LocalProtocolError, RemoteProtocolError

MAGIC: Final = b"\x89LCD"  # 4 bytes; a datagram without it is not ours and is dropped before parsing
DISCOVERY_VERSION: Final = 1  # of this datagram format (the chat protocol's version travels as `proto`)
MAX_DATAGRAM: Final = 1200  # bytes: QUIC's minimum path MTU, never fragmented; anything larger is dropped
NAME_MAX_BYTES: Final = 64  # bytes of UTF-8 server name: fits one table column, bounds a reply's size
NONCE_SIZE: Final = 8  # bytes: random per probe, echoed by the reply (match + latency, blocks blind spoofing)
SERVER_ID_BYTES: Final = 16  # bytes on the wire; a 32-character lowercase hex string in Python
MAX_INTERVAL_MS: Final = 86_400_000  # one day: a larger beacon interval is nonsense, not a configuration
MAX_LOAD: Final = 1e9  # a load figure beyond this is garbage (the field is a float)

U16: Final = 0xFFFF  # the largest value of a field of 2 and of 4 bytes
U32: Final = 0xFFFF_FFFF

_HEADER: Final = struct.Struct("!4sBB")
_INFO: Final = struct.Struct(f"!{SERVER_ID_BYTES}s4sHHIIIHd")
_GOODBYE: Final = struct.Struct(f"!{SERVER_ID_BYTES}s4sH")

HEADER_SIZE: Final = _HEADER.size
PROBE_MIN_SIZE: Final = _HEADER.size + NONCE_SIZE  # an unpadded probe: earns no reply (every reply is larger)
REPLY_MAX_SIZE: Final = _HEADER.size + NONCE_SIZE + _INFO.size + 1 + NAME_MAX_BYTES
PROBE_SIZE: Final = REPLY_MAX_SIZE  # what clients pad probes to: any reply, even with the longest name, fits

_SERVER_ID_RE: Final = re.compile(r"[0-9a-f]{32}")
# Characters that could rewrite a terminal or reorder what it shows: a name from the LAN is printed as is.
_BIDI_CONTROLS: Final = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_BAD_CATEGORIES: Final = frozenset({"Cc", "Cs", "Zl", "Zp"})


class Kind(IntEnum):
    BEACON = 1
    PROBE = 2
    REPLY = 3
    GOODBYE = 4


def _local(message: str) -> LocalProtocolError:
    return LocalProtocolError("bad_beacon", message)


def _check_uint(name: str, value: int, limit: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise _local(f"{name} must be an integer in 0..{limit}, not {value!r}")


def _check_server_id(server_id: str) -> None:
    if not isinstance(server_id, str) or not _SERVER_ID_RE.fullmatch(server_id):
        raise _local(f"server_id must be 32 lowercase hex characters, not {server_id!r}")


def _check_address(address: str) -> None:
    try:
        ipaddress.IPv4Address(address)
    except (ValueError, TypeError):
        raise _local(f"address must be a dotted IPv4 address, not {address!r}") from None


def _check_nonce(nonce: bytes) -> None:
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
        raise _local(f"nonce must be {NONCE_SIZE} bytes")


def _bad_char(ch: str) -> bool:
    return ch in _BIDI_CONTROLS or unicodedata.category(ch) in _BAD_CATEGORIES


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a server name, or None if it can."""
    if not isinstance(name, str):
        return "not a string"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "not encodable as UTF-8"
    if size > NAME_MAX_BYTES:
        return f"{size} bytes of UTF-8 (max {NAME_MAX_BYTES})"
    for ch in name:
        if _bad_char(ch):
            return f"contains the control character U+{ord(ch):04X}"
    return None


def clean_name(name: str) -> str:
    """``name`` made valid: bad characters replaced by '?', cut to NAME_MAX_BYTES on a character boundary."""
    chars = ["?" if _bad_char(ch) else ch for ch in name]
    return truncate_utf8("".join(chars), NAME_MAX_BYTES)


def truncate_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding has at most ``max_bytes`` bytes."""
    return text.encode("utf-8", "replace")[: max(max_bytes, 0)].decode("utf-8", "ignore")


@dataclass(frozen=True, slots=True)
class _Info:
    """The fields shared by BEACON and REPLY: who the server is and how busy."""

    server_id: str
    address: str  # our IPv4 address on the sending interface, or the chat's bind address; 0.0.0.0: unknown
    port: int  # TCP chat port
    proto: int  # chat protocol version
    interval_ms: int  # beacon interval; 0: this server does not beacon (expire it by probing)
    users: int
    rooms: int
    workers: int
    load: float  # non-negative; the server decides what it measures (documented in docs/discovery.md)
    name: str

    def __post_init__(self) -> None:
        _check_server_id(self.server_id)
        _check_address(self.address)
        _check_uint("port", self.port, U16)
        _check_uint("proto", self.proto, U16)
        _check_uint("interval_ms", self.interval_ms, MAX_INTERVAL_MS)
        _check_uint("users", self.users, U32)
        _check_uint("rooms", self.rooms, U32)
        _check_uint("workers", self.workers, U16)
        if (
            isinstance(self.load, bool)
            or not isinstance(self.load, int | float)
            or not math.isfinite(self.load)
            or not 0 <= self.load <= MAX_LOAD
        ):
            raise _local(f"load must be a finite number in 0..{MAX_LOAD:g}, not {self.load!r}")
        problem = name_problem(self.name)
        if problem:
            raise _local(f"bad server name {self.name!r}: {problem}")

    @property
    def interval(self) -> float:
        """The beacon interval in seconds (0.0: the server does not beacon)."""
        return self.interval_ms / 1000.0


@dataclass(frozen=True, slots=True)
class Beacon(_Info):
    """Sent by a server at start and every beacon interval to each interface's broadcast address."""


@dataclass(frozen=True, slots=True)
class Reply(_Info):
    """A server's unicast answer to a probe; ``nonce`` echoes the probe's."""

    nonce: bytes

    def __post_init__(self) -> None:
        _Info.__post_init__(self)
        _check_nonce(self.nonce)


@dataclass(frozen=True, slots=True)
class Probe:
    """A client asking every server that hears it to reply. ``size`` is the whole datagram's length."""

    nonce: bytes
    size: int = PROBE_SIZE

    def __post_init__(self) -> None:
        _check_nonce(self.nonce)
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise _local("probe size must be an integer")
        if not PROBE_MIN_SIZE <= self.size <= MAX_DATAGRAM:
            raise _local(f"probe size must be in {PROBE_MIN_SIZE}..{MAX_DATAGRAM}, not {self.size}")


@dataclass(frozen=True, slots=True)
class Goodbye:
    """Sent by a server on clean shutdown: browsers drop it at once."""

    server_id: str
    address: str
    port: int

    def __post_init__(self) -> None:
        _check_server_id(self.server_id)
        _check_address(self.address)
        _check_uint("port", self.port, U16)


Message = Beacon | Probe | Reply | Goodbye


def _header(kind: Kind) -> bytes:
    return _HEADER.pack(MAGIC, DISCOVERY_VERSION, kind)


def _pack_info(info: _Info) -> bytes:
    name = info.name.encode("utf-8")
    return (
        _INFO.pack(
            bytes.fromhex(info.server_id),
            ipaddress.IPv4Address(info.address).packed,
            info.port,
            info.proto,
            info.interval_ms,
            info.users,
            info.rooms,
            info.workers,
            float(info.load),
        )
        + bytes((len(name),))
        + name
    )


def encode(message: Message) -> bytes:
    """The datagram for ``message`` (never longer than MAX_DATAGRAM)."""
    if isinstance(message, Beacon):
        return _header(Kind.BEACON) + _pack_info(message)
    if isinstance(message, Reply):
        return _header(Kind.REPLY) + message.nonce + _pack_info(message)
    if isinstance(message, Probe):
        head = _header(Kind.PROBE) + message.nonce
        return head + b"\0" * (message.size - len(head))
    if isinstance(message, Goodbye):
        return _header(Kind.GOODBYE) + _GOODBYE.pack(
            bytes.fromhex(message.server_id), ipaddress.IPv4Address(message.address).packed, message.port
        )
    raise _local(f"not a discovery message: {message!r}")


def encode_reply_within(reply: Reply, max_size: int) -> bytes | None:
    """``reply`` encoded in at most ``max_size`` bytes, its name cut if needed; None if even no name fits.

    This is the anti-amplification rule: a server answers a probe of N bytes with at most N bytes.
    """
    data = encode(reply)
    if len(data) <= max_size:
        return data
    excess = len(data) - max_size
    name_bytes = len(reply.name.encode("utf-8"))
    if excess > name_bytes:
        return None
    return encode(replace(reply, name=truncate_utf8(reply.name, name_bytes - excess)))


def _bad(message: str) -> RemoteProtocolError:
    return RemoteProtocolError("bad_beacon", message)


def is_discovery(data: bytes) -> bool:
    """Cheap pre-check: does ``data`` start with our magic? (decode checks it again)."""
    return data[: len(MAGIC)] == MAGIC


def _unpack_info(body: bytes, kind: Kind, nonce: bytes | None) -> Beacon | Reply:
    if len(body) < _INFO.size + 1:
        raise _bad(f"truncated {kind.name}: {len(body)} bytes of body")
    sid, addr, port, proto, interval_ms, users, rooms, workers, load = _INFO.unpack_from(body)
    name_len = body[_INFO.size]
    name_bytes = body[_INFO.size + 1 :]
    if len(name_bytes) != name_len:
        raise _bad(f"{kind.name} name of {len(name_bytes)} bytes, length field says {name_len}")
    try:
        name = name_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(f"{kind.name} name is not UTF-8") from None
    server_id, address = sid.hex(), str(ipaddress.IPv4Address(addr))
    if nonce is None:
        return Beacon(server_id, address, port, proto, interval_ms, users, rooms, workers, load, name)
    return Reply(server_id, address, port, proto, interval_ms, users, rooms, workers, load, name, nonce)


def decode(data: bytes) -> Message:
    """The message in ``data``; RemoteProtocolError for anything else.

    Codes: ``not_discovery`` (no magic: a foreign packet), ``unsupported_version``, ``oversized`` and
    ``bad_beacon`` (truncated, trailing bytes, unknown kind, invalid field).
    """
    if len(data) > MAX_DATAGRAM:
        raise RemoteProtocolError("oversized", f"datagram of {len(data)} bytes (max {MAX_DATAGRAM})")
    if not is_discovery(data):
        raise RemoteProtocolError("not_discovery", "no lanchat discovery magic")
    if len(data) < HEADER_SIZE:
        raise _bad(f"truncated header: {len(data)} bytes")
    _, version, kind_byte = _HEADER.unpack_from(data)
    if version != DISCOVERY_VERSION:
        raise RemoteProtocolError("unsupported_version", f"discovery version {version}, we speak {DISCOVERY_VERSION}")
    try:
        kind = Kind(kind_byte)
    except ValueError:
        raise _bad(f"unknown kind {kind_byte}") from None
    body = bytes(data[HEADER_SIZE:])
    try:
        if kind is Kind.BEACON:
            return _unpack_info(body, kind, None)
        if kind is Kind.REPLY:
            if len(body) < NONCE_SIZE:
                raise _bad("truncated REPLY nonce")
            return _unpack_info(body[NONCE_SIZE:], kind, body[:NONCE_SIZE])
        if kind is Kind.PROBE:
            if len(body) < NONCE_SIZE:
                raise _bad("truncated PROBE nonce")
            if body.count(0, NONCE_SIZE) != len(body) - NONCE_SIZE:
                raise _bad("PROBE padding is not zero bytes")
            return Probe(nonce=body[:NONCE_SIZE], size=len(data))
        if len(body) != _GOODBYE.size:
            raise _bad(f"GOODBYE of {len(body)} bytes of body, expected {_GOODBYE.size}")
        sid, addr, port = _GOODBYE.unpack(body)
        return Goodbye(server_id=sid.hex(), address=str(ipaddress.IPv4Address(addr)), port=port)
    except LocalProtocolError as exc:  # a field failed validation: the peer's fault, not ours
        raise _bad(f"invalid {kind.name}: {exc.message}") from None
