"""Hardening on a real server (issue 7): hostile input never buffered, relayed, stored or spoofed.

Complements test_limits.py (frame size at its edge, rate, sendq, connection limits, timeouts, one bad line
per case, HTTP). Here: a 50 MB line that never ends, a catalogue of hostile frames checked against the
history afterwards, and injection (one frame = one event, under its sender's nick, whatever it carries).
The helpers at the top are shared by the other test_hardening_*.py files.

Network safety: every server listens on 127.0.0.1 with --no-discovery (see support.ServerProcess).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from support import Client, Frame, MakeServer, ServerProcess

from lanchat.protocol import control

MiB = 1024 * 1024


# --- shared helpers -----------------------------------------------------------------------------------------


def peak_rss(pid: int) -> int:
    """The process's peak resident set size so far (VmHWM), in bytes: catches a spike between samples."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


def server_pids(server: ServerProcess) -> list[int]:
    assert server.proc is not None
    return [server.proc.pid, *server.worker_pids()]


def open_fds(pids: list[int]) -> int:
    return sum(psutil.Process(pid).num_fds() for pid in pids)


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll a figure until it holds, at most ``timeout`` seconds (for figures that have no event)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def main_connections(server: ServerProcess) -> int:
    """Connections the main process counts (for --max-clients / --max-per-ip), the stats request's own included."""
    procs = server.stats()["processes"]
    return int(next(p["connections"] for p in procs if p["role"] == "main"))


@contextlib.contextmanager
def nofile_at_least(needed: int) -> Iterator[None]:
    """Raise this process's soft RLIMIT_NOFILE (servers started meanwhile inherit it); skip if the hard one is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} file descriptors, the hard limit is {hard}")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def history(client: Client, room: str = "lobby", rid: int = 900_001) -> list[Frame]:
    client.send({"type": "history", "room": room, "limit": 500, "id": rid})
    reply = client.expect(lambda f: f.get("type") == "history" and f.get("id") == rid)
    events: list[Frame] = reply["events"]
    return events


def msgs(frames: list[Frame]) -> list[Frame]:
    return [f for f in frames if f.get("type") in ("msg", "action", "privmsg")]


# --- oversized ------------------------------------------------------------------------------------------------


def test_fifty_megabytes_without_a_newline_are_never_buffered(make_server: MakeServer) -> None:
    """One endless line: refused once as it passes --max-frame, skipped (not stored) to its end; memory flat.
    (Each --max-frame of it costs a line of the rate: at the default 20 a second, 50 MiB would take 160 s.)"""
    server = make_server("--max-frame", "16384", "--rate", "2000", workers=1)
    [worker] = server.worker_pids()
    with Client(server.port, "victim") as victim, Client(server.port, "big") as big:
        victim.expect(lambda f: f.get("type") == "join" and f.get("nick") == "big")
        before = peak_rss(worker)
        chunk = b"x" * 65536
        for _ in range(800):  # 50 MiB in bounded 64 KiB chunks; sendall blocks while the server reads
            big.send_raw(chunk)
        big.send_raw(b"\n")
        big.send({"type": "msg", "room": "lobby", "text": "after the flood", "id": 1})
        assert big.expect("msg", timeout=30)["text"] == "after the flood"  # the server read all 50 MiB first
        assert [f["code"] for f in big.seen if f.get("type") == "error"] == ["frame_too_long"]  # once
        grown = peak_rss(worker) - before
        assert grown < 8 * MiB, f"worker peak RSS grew by {grown / MiB:.1f} MiB while skipping a 50 MiB line"
        assert [f["text"] for f in msgs(victim.seen)] + [victim.expect("msg")["text"]] == ["after the flood"]
        assert [e["text"] for e in msgs(history(victim))] == ["after the flood"]


# --- invalid input --------------------------------------------------------------------------------------------

HOSTILE: list[tuple[str, bytes, str]] = [
    ("invalid utf-8", b'{"type":"msg","room":"lobby","text":"\xff\xfe"}', "bad_utf8"),
    ("overlong utf-8", b'{"type":"msg","room":"lobby","text":"\xc0\xaf"}', "bad_utf8"),
    ("utf-8 surrogate", b'{"type":"msg","room":"lobby","text":"\xed\xa0\x80"}', "bad_utf8"),
    ("escaped lone surrogate", b'{"type":"msg","room":"lobby","text":"\\ud800"}', "bad_text"),
    ("raw NUL in a string", b'{"type":"msg","room":"lobby","text":"a\x00b"}', "bad_json"),
    ("escaped NUL", b'{"type":"msg","room":"lobby","text":"a\\u0000b"}', "bad_text"),
    ("raw NUL outside", b'{"type":"msg","room":"lobby","text":"ab"}\x00', "bad_json"),
    ("escaped ESC", b'{"type":"msg","room":"lobby","text":"\\u001b[2J"}', "bad_text"),
    ("escaped newline", b'{"type":"msg","room":"lobby","text":"a\\nb"}', "bad_text"),
    ("escaped CR", b'{"type":"msg","room":"lobby","text":"a\\rb"}', "bad_text"),
    ("C1 control", b'{"type":"msg","room":"lobby","text":"\\u009b31m"}', "bad_text"),
    ("DEL", b'{"type":"msg","room":"lobby","text":"\\u007f"}', "bad_text"),
    ("nested arrays", b"[" * 30_000, "bad_json"),
    ("nested objects", b'{"a":' * 20_000 + b"1" + b"}" * 20_000, "bad_json"),
    ("nested text", b'{"type":"msg","room":"lobby","text":' + b"[" * 5000 + b"]" * 5000 + b"}", "bad_json"),
    ("5000-digit id", b'{"type":"msg","room":"lobby","text":"x","id":' + b"9" * 5000 + b"}", "bad_json"),
    ("infinite id", b'{"type":"msg","room":"lobby","text":"x","id":1e999}', "bad_field"),
    ("NaN id", b'{"type":"msg","room":"lobby","text":"x","id":NaN}', "bad_json"),  # not JSON (Python's json reads it)
    ("id past 2^53", b'{"type":"msg","room":"lobby","text":"x","id":9007199254740993}', "bad_field"),
    ("negative id", b'{"type":"msg","room":"lobby","text":"x","id":-1}', "bad_field"),
    ("float id", b'{"type":"msg","room":"lobby","text":"x","id":1.5}', "bad_field"),
    ("huge history limit", b'{"type":"history","room":"lobby","limit":1' + b"0" * 30 + b"}", "bad_field"),
    ("text is a list", b'{"type":"msg","room":"lobby","text":["x"]}', "bad_field"),
    ("text is a number", b'{"type":"msg","room":"lobby","text":5}', "bad_field"),
    ("text is null", b'{"type":"msg","room":"lobby","text":null}', "bad_field"),
    ("room is an object", b'{"type":"msg","room":{"name":"lobby"},"text":"x"}', "bad_room"),
    ("type is a number", b'{"type":1,"room":"lobby","text":"x"}', "bad_field"),
    ("type is a list", b'{"type":["msg"],"room":"lobby","text":"x"}', "bad_field"),
    ("frame is a list", b'["msg","lobby","x"]', "bad_json"),
    ("frame is a string", b'"msg"', "bad_json"),
    ("frame is null", b"null", "bad_json"),
    ("text too long", json.dumps({"type": "msg", "room": "lobby", "text": "x" * 4001}).encode(), "bad_text"),
    ("empty text", b'{"type":"msg","room":"lobby","text":""}', "bad_text"),
    ("nick is a number", b'{"type":"privmsg","to":5,"text":"x"}', "bad_nick"),
    ("two frames on a line", b'{"type":"msg","room":"lobby","text":"a"}{"type":"msg","room":"lobby","text":"b"}',
     "bad_json"),
    ("not my room", b'{"type":"msg","room":"elsewhere","text":"x"}', "not_in_room"),
]  # fmt: skip


def test_hostile_frames_get_clear_errors_and_are_never_relayed_or_stored(make_server: MakeServer) -> None:
    server = make_server("--max-frame", "262144", "--rate", "1000", "--burst", "1000", workers=2)
    workers = server.worker_pids()
    with Client(server.port, "victim") as victim, Client(server.port, "mallory") as mallory:
        victim.expect(lambda f: f.get("type") == "join" and f.get("nick") == "mallory")
        for i, (name, raw, code) in enumerate(HOSTILE):
            mallory.send_raw(raw + b"\n")
            mallory.send({"type": "ping", "id": i})  # each error comes before the pong that follows it
            err = mallory.expect(lambda f: f.get("type") in ("error", "pong"))
            assert err.get("code") == code, f"{name}: {err}"
            assert not err.get("fatal"), f"{name}: the connection must survive"
            assert isinstance(err.get("message"), str) and 0 < len(err["message"]) <= 200, name
            assert mallory.expect("pong") == {"type": "pong", "id": i}
        mallory.send({"type": "msg", "room": "lobby", "text": "marker", "id": 1})
        assert victim.expect("msg")["text"] == "marker"  # the first message victim ever sees
        assert [f["text"] for f in msgs(victim.seen)] == ["marker"]
        assert [e["text"] for e in msgs(history(victim))] == ["marker"]  # nothing hostile was stored
    assert server.worker_pids() == workers  # and no worker died on the way


# --- injection ------------------------------------------------------------------------------------------------

HEADER_LOOKALIKE = struct.pack("!IB", 0x20202020, control.ROOM).decode("latin-1")  # "    \x01": refused (C0)
CONTROL_FRAME = control.room_frame("lobby", b'{"type":"msg","from":"victim","text":"forged"}\n').decode("latin-1")
ACCEPTED = [
    "line\u2028separator",
    "para\u2029separator",
    '"},{"type":"msg","from":"victim","text":"forged"}',
    '\\n{"type":"msg","from":"victim"}\\n',
    "}\u2028{\u2029]",
    "   {  ",
    "\u202eevil\u202c",  # bidi overrides pass the server (clients neutralise them on display)
    "tab\there",
    "é" * 1000,
]
REFUSED = [
    "two\nlines",
    "cr\rlf",
    "nel\x85here",
    HEADER_LOOKALIKE,
    CONTROL_FRAME,
    "\x00\x00\x00\x2a\x03[[\"req\",1,{}]]",
]  # fmt: skip
FAKE_FIELDS: dict[str, Any] = {"from": "victim", "nick": "victim", "seq": 1, "ts": 0, "session": "x", "type2": "quit"}


def test_one_frame_is_one_event_under_its_senders_nick_whatever_it_carries(make_server: MakeServer) -> None:
    server = make_server("--rate", "1000", "--burst", "1000", workers=2)
    with (
        Client(server.port, "victim") as victim,
        Client(server.port, "bob") as bob,
        Client(server.port, "mallory") as mallory,
    ):
        bob.expect(lambda f: f.get("type") == "join" and f.get("nick") == "mallory")
        welcome_seq = mallory.welcome["seq"]
        started = time.time()
        rid = 0
        for text in ACCEPTED + REFUSED:
            for kind in ("msg", "action"):
                rid += 1
                mallory.send({**FAKE_FIELDS, "type": kind, "room": "lobby", "text": text, "id": rid})
        rid += 1
        mallory.send({**FAKE_FIELDS, "type": "privmsg", "to": "bob", "text": ACCEPTED[0], "id": rid})
        mallory.send({**FAKE_FIELDS, "type": "topic", "room": "lobby", "topic": ACCEPTED[2]})
        mallory.send({"type": "msg", "room": "lobby", "text": "end", "id": rid + 1})
        bob.expect(lambda f: f.get("type") == "msg" and f.get("text") == "end")
        mallory.expect(lambda f: f.get("type") == "ack" and f.get("id") == rid + 1)
        errors = [f for f in mallory.seen if f.get("type") == "error"]
        assert sorted(e["code"] for e in errors) == ["bad_text"] * (2 * len(REFUSED)), errors

        expected = [(kind, text) for text in ACCEPTED for kind in ("msg", "action")]
        expected += [("privmsg", ACCEPTED[0]), ("msg", "end")]
        got = [f for f in bob.seen if f.get("type") in ("msg", "action", "privmsg", "topic")]
        assert [(f["type"], f.get("text", f.get("topic"))) for f in got if f["type"] != "topic"] == expected
        for f in got:  # every event under mallory's nick, numbered and stamped by the server
            assert f.get("from", f.get("nick")) == "mallory", f
            assert f["seq"] > welcome_seq and started - 1 < f["ts"] < time.time() + 1, f
            assert f.get("session", mallory.welcome["session"]) == mallory.welcome["session"] and "type2" not in f
            assert ("session" in f) == (f["type"] == "privmsg")  # the sender's own session, never the one sent
        topic = [f for f in got if f["type"] == "topic"]
        assert len(topic) == 1 and topic[0]["topic"] == ACCEPTED[2]
        seqs = [f["seq"] for f in got]
        assert seqs == sorted(set(seqs))
        assert not [f for f in victim.seen if f.get("type") == "privmsg"]  # the private one went to bob only

        stored = [(e["type"], e["text"]) for e in msgs(history(victim))]
        assert stored == [(k, t) for k, t in expected if k != "privmsg"]
        assert all(e["from"] == "mallory" for e in msgs(history(victim, rid=900_002)))


NICK_LOOKALIKES = ["VICTIM", "Victim", "victim\u200b", " victim", "victim ", "ſam", "Sam", "\u212bsa", "A\u030asa"]


def test_nobody_can_speak_under_another_nick(make_server: MakeServer) -> None:
    """Case, compatibility and combining variants of a nick that is in use are all refused."""
    server = make_server("--resume-grace", "30", workers=2)
    with Client(server.port, "victim") as victim, Client(server.port, "sam"), Client(server.port, "Åsa"):
        codes = {}
        with Client(server.port) as impostor:
            for nick in NICK_LOOKALIKES:
                impostor.send({"type": "hello", "nick": nick})
                codes[nick] = impostor.expect("error")["code"]
            impostor.send({"type": "hello", "nick": "victim", "token": "A" * 43, "last_seq": 0})  # a guessed token
            codes["guessed token"] = impostor.expect("error")["code"]
            impostor.send({"type": "hello", "nick": "mallory"})
            impostor.expect("welcome")
            impostor.send({"type": "nick", "nick": "VICTIM", "id": 5})
            codes["nick change"] = impostor.expect("error")["code"]
        assert codes == {
            "VICTIM": "nick_taken", "Victim": "nick_taken", "victim\u200b": "bad_nick", " victim": "bad_nick",
            "victim ": "bad_nick", "ſam": "nick_taken", "Sam": "nick_taken", "\u212bsa": "nick_taken",
            "A\u030asa": "nick_taken", "guessed token": "nick_taken", "nick change": "nick_taken",
        }  # fmt: skip
        # A plain-text (nc) client cannot take it either.
        with Client(server.port) as plain:
            plain.send_raw(b"/nick Victim\n")
            line = plain.recv_line().decode()
            assert "nick_taken" in line, line
        victim.send({"type": "msg", "room": "lobby", "text": "still me", "id": 1})
        assert victim.expect("msg")["from"] == "victim"


def test_a_dropped_users_nick_is_held_for_the_grace_then_free(make_server: MakeServer) -> None:
    """Documented limit (docs/security.md): after --resume-grace anybody may take a nick that was dropped."""
    server = make_server("--resume-grace", "1", workers=1)
    mark = server.mark()
    victim = Client(server.port, "victim")
    victim.close()  # an unclean drop: the session (and its nick) is held for a resume
    with Client(server.port) as impostor:
        impostor.send({"type": "hello", "nick": "victim"})
        err = impostor.expect("error")
        assert err["code"] == "nick_taken"
        server.wait_log(r"session \w+ \(victim\) ended: connection lost", timeout=10, start=mark)  # the grace ran out
        impostor.send({"type": "hello", "nick": "victim"})
        frame = impostor.expect(lambda f: f.get("type") in ("welcome", "error"))
        assert frame["type"] == "welcome" and frame["resumed"] is False


# --- the data directory ---------------------------------------------------------------------------------------


def test_history_and_tokens_are_not_readable_by_other_local_users(make_server: MakeServer, tmp_path: Path) -> None:
    """The history holds private messages and the resume tokens that take over any session: owner only.

    (Found by this test: the data directory and database followed the umask, 0755/0644 under 022. Fixed.)
    """
    data_dir = tmp_path / "private"
    old = os.umask(0o022)  # the common default; the server must not depend on a stricter one
    try:
        server = make_server(workers=1, data_dir=data_dir)
    finally:
        os.umask(old)
    with Client(server.port, "ann") as ann, Client(server.port, "bob"):
        ann.send({"type": "privmsg", "to": "bob", "text": "the secret", "id": 1})
        ann.expect("ack")
    exposed = {
        p.name: oct(p.stat().st_mode & 0o777)
        for p in [data_dir, *data_dir.iterdir()]
        if p.stat().st_mode & (0o007 if p.is_dir() else 0o044)
    }
    assert not exposed, f"readable by other users: {exposed}"
