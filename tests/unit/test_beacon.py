"""The discovery codec: round trips, strictness, limits, and fuzzing (any bytes decode or raise)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lanchat.errors import LocalProtocolError, RemoteProtocolError
from lanchat.protocol import beacon as b

SID = "0123456789abcdef0123456789abcdef"
NONCE = b"\x01\x02\x03\x04\x05\x06\x07\x08"


def make_beacon(**over: object) -> b.Beacon:
    fields: dict[str, object] = {
        "server_id": SID,
        "address": "198.51.100.7",
        "port": 7272,
        "proto": 1,
        "interval_ms": 5000,
        "users": 3,
        "rooms": 2,
        "workers": 4,
        "load": 0.25,
        "name": "kitchen",
    }
    fields.update(over)
    return b.Beacon(**fields)  # type: ignore[arg-type]


def make_reply(**over: object) -> b.Reply:
    base = make_beacon()
    fields = {f: getattr(base, f) for f in b.Beacon.__dataclass_fields__}
    fields["nonce"] = NONCE
    fields.update(over)
    return b.Reply(**fields)


ALL_KINDS = [
    make_beacon(),
    make_reply(),
    b.Probe(NONCE),
    b.Probe(NONCE, size=b.PROBE_MIN_SIZE),
    b.Goodbye(SID, "127.0.0.1", 7272),
]


@pytest.mark.parametrize("message", ALL_KINDS, ids=lambda m: type(m).__name__)
def test_round_trip(message: b.Message) -> None:
    data = b.encode(message)
    assert data.startswith(b.MAGIC)
    assert len(data) <= b.MAX_DATAGRAM
    assert b.decode(data) == message


@pytest.mark.parametrize("message", ALL_KINDS, ids=lambda m: type(m).__name__)
def test_every_truncation_and_any_trailing_byte_is_rejected(message: b.Message) -> None:
    data = b.encode(message)
    for cut in range(len(data)):
        if isinstance(message, b.Probe) and cut >= b.PROBE_MIN_SIZE:
            assert b.decode(data[:cut]) == b.Probe(NONCE, size=cut)  # less padding: a smaller, valid probe
            continue
        with pytest.raises(RemoteProtocolError):
            b.decode(data[:cut])
    if not isinstance(message, b.Probe):  # a probe's padding is all zeros, so one more zero is more padding
        with pytest.raises(RemoteProtocolError):
            b.decode(data + b"\0")


def test_error_codes() -> None:
    good = b.encode(make_beacon())
    with pytest.raises(RemoteProtocolError) as exc:
        b.decode(b"GET / HTTP/1.1\r\n")
    assert exc.value.code == "not_discovery"
    with pytest.raises(RemoteProtocolError) as exc:
        b.decode(good[:4] + bytes([b.DISCOVERY_VERSION + 1]) + good[5:])
    assert exc.value.code == "unsupported_version"
    with pytest.raises(RemoteProtocolError) as exc:
        b.decode(good + b"x" * b.MAX_DATAGRAM)
    assert exc.value.code == "oversized"
    with pytest.raises(RemoteProtocolError) as exc:
        b.decode(good[:5] + b"\x09" + good[6:])
    assert exc.value.code == "bad_beacon"


def test_probe_padding_must_be_zero() -> None:
    data = bytearray(b.encode(b.Probe(NONCE)))
    data[-1] = 1
    with pytest.raises(RemoteProtocolError, match="padding"):
        b.decode(bytes(data))


def test_probe_size_covers_the_largest_reply() -> None:
    longest = make_reply(name="é" * (b.NAME_MAX_BYTES // 2))
    assert len(b.encode(longest)) == b.REPLY_MAX_SIZE == b.PROBE_SIZE
    assert len(b.encode(b.Probe(NONCE))) == b.PROBE_SIZE
    assert b.REPLY_MAX_SIZE < b.MAX_DATAGRAM


@pytest.mark.parametrize(
    "bad",
    [
        {"server_id": "XYZ"},
        {"server_id": SID.upper()},
        {"address": "300.1.1.1"},
        {"address": "::1"},
        {"port": 70000},
        {"port": -1},
        {"users": 2**32},
        {"workers": True},
        {"load": float("nan")},
        {"load": -0.5},
        {"interval_ms": b.MAX_INTERVAL_MS + 1},
        {"name": "x" * (b.NAME_MAX_BYTES + 1)},
        {"name": "evil\x1b[2J"},
        {"name": "line\nbreak"},
        {"name": "\u202egnp.exe"},
    ],
)
def test_constructors_validate(bad: dict[str, object]) -> None:
    with pytest.raises(LocalProtocolError):
        make_beacon(**bad)


def test_decoded_invalid_field_is_the_peers_fault() -> None:
    data = bytearray(b.encode(make_beacon(name="abc")))
    data[-1] = 0x07  # BEL: a control character in the name
    with pytest.raises(RemoteProtocolError) as exc:
        b.decode(bytes(data))
    assert exc.value.code == "bad_beacon"
    data[-1] = 0xFF  # not UTF-8
    with pytest.raises(RemoteProtocolError, match="UTF-8"):
        b.decode(bytes(data))


def test_clean_name() -> None:
    assert b.clean_name("ok name") == "ok name"
    assert b.clean_name("a\x1bb\u202ec") == "a?b?c"
    long = b.clean_name("ü" * 100)
    assert len(long.encode()) <= b.NAME_MAX_BYTES
    assert b.name_problem(long) is None


def test_reply_within_limit_cuts_the_name_only() -> None:
    reply = make_reply(name="ü" * 20)
    full = b.encode(reply)
    assert b.encode_reply_within(reply, len(full)) == full
    cut = b.encode_reply_within(reply, len(full) - 3)
    assert cut is not None and len(cut) <= len(full) - 3
    decoded = b.decode(cut)
    assert isinstance(decoded, b.Reply)
    assert decoded.name == "ü" * 18 and decoded.nonce == NONCE and decoded.port == reply.port
    assert b.encode_reply_within(reply, b.PROBE_MIN_SIZE) is None


# --- properties ----------------------------------------------------------------------------------------

names = st.text(max_size=b.NAME_MAX_BYTES).map(b.clean_name)
infos = st.fixed_dictionaries(
    {
        "server_id": st.binary(min_size=16, max_size=16).map(bytes.hex),
        "address": st.integers(0, 2**32 - 1).map(lambda n: ".".join(str((n >> s) & 255) for s in (24, 16, 8, 0))),
        "port": st.integers(0, 65535),
        "proto": st.integers(0, 65535),
        "interval_ms": st.integers(0, b.MAX_INTERVAL_MS),
        "users": st.integers(0, 2**32 - 1),
        "rooms": st.integers(0, 2**32 - 1),
        "workers": st.integers(0, 65535),
        "load": st.floats(0, b.MAX_LOAD, allow_nan=False),
        "name": names,
    }
)


@given(infos, st.binary(min_size=8, max_size=8))
def test_property_round_trip(fields: dict[str, object], nonce: bytes) -> None:
    beacon = b.Beacon(**fields)  # type: ignore[arg-type]
    assert b.decode(b.encode(beacon)) == beacon
    reply = b.Reply(**fields, nonce=nonce)  # type: ignore[arg-type]
    assert b.decode(b.encode(reply)) == reply


@given(infos, st.integers(0, b.MAX_DATAGRAM))
def test_property_reply_never_larger_than_limit(fields: dict[str, object], limit: int) -> None:
    reply = b.Reply(**fields, nonce=NONCE)  # type: ignore[arg-type]
    out = b.encode_reply_within(reply, limit)
    if limit >= b.PROBE_SIZE:
        assert out is not None  # a padded probe always earns a full reply
    if out is not None:
        assert len(out) <= limit
        decoded = b.decode(out)
        assert isinstance(decoded, b.Reply) and reply.name.startswith(decoded.name)


@settings(max_examples=500)
@given(st.binary(max_size=b.MAX_DATAGRAM + 50))
def test_fuzz_any_bytes_decode_or_raise(data: bytes) -> None:
    try:
        message = b.decode(data)
    except RemoteProtocolError:
        return
    assert b.encode(message) == data  # whatever decodes is canonical


@settings(max_examples=1000)
@given(st.sampled_from(list(b.Kind)), st.binary(max_size=200))
def test_fuzz_behind_a_valid_header(kind: b.Kind, body: bytes) -> None:
    data = b.MAGIC + bytes([b.DISCOVERY_VERSION, kind]) + body
    try:
        message = b.decode(data)
    except RemoteProtocolError:
        return
    assert b.encode(message) == data


@settings(max_examples=300)
@given(st.sampled_from(ALL_KINDS), st.data())
def test_fuzz_mutated_valid_datagrams(message: b.Message, data: st.DataObject) -> None:
    raw = bytearray(b.encode(message))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    try:
        decoded = b.decode(bytes(raw))
    except RemoteProtocolError:
        return
    assert b.encode(decoded) == bytes(raw)
