"""Plain-text mode (nc/telnet) over a raw socket, and `lanchat join` in piped mode as scripts use it."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import pty
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

import psutil
import pytest
from support import Client, Frame, MakeServer, ServerProcess, run_cli

from lanchat.client import connection, piped
from lanchat.client.piped import run_piped
from lanchat.protocol import client_conn
from lanchat.protocol import messages as m


class Plain:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\r\n")  # telnet sends CRLF

    def expect(self, needle: str, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.buf:
                line, _, self.buf = self.buf.partition(b"\n")
                text = line.decode()
                if needle in text:
                    return text
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed before {needle!r}")
            self.buf += chunk

    def close(self) -> None:
        self.sock.close()


def test_history_pages_follow_the_hint_past_a_page_cut_short_by_size(make_server: MakeServer) -> None:
    """A page of long lines stops at 256 KiB: "/history N+200" showed the same page again, and the oldest
    events could not be read (a user's walkthrough). The hint names the page before by its first event."""
    server = make_server(workers=1)
    with Client(server.port, "poster", rooms=["big"]) as poster:
        for i in range(80):  # 80 lines of 3,990 characters: some 330 KB, more than one reply holds
            poster.send({"type": "msg", "room": "big", "text": f"{i:02} " + "x" * 3987, "id": i + 1})
        poster.expect(lambda f: f.get("type") == "ack" and f.get("id") == 80)
        nc = Plain(server.port)
        try:
            nc.send("/nick reader")
            nc.expect("Welcome! You are reader")
            nc.send("/history 100 #big")
            head = nc.expect("* history of #big")
            cut = re.search(r"\((\d+) events, more before: (/history 100 #big before (\d+))\)$", head)
            assert cut is not None and int(cut[1]) < 80, head  # cut short by size
            nc.send(cut[2])
            rest = nc.expect("* history of #big")
            assert rest == f"* history of #big ({81 - int(cut[1])} events)", rest  # the older ones: poster's join on
            assert "#big <poster> 00 x" in nc.expect("<poster>")
        finally:
            nc.close()


def test_a_dumb_terminal_gets_the_line_mode(make_server: MakeServer) -> None:
    """TERM=dumb (Emacs's M-x shell) got the full-screen client's cursor control, and no status line (a
    terminal-compatibility walkthrough): on a terminal that cannot move its cursor it talks in lines."""
    server = make_server(workers=1)
    main, sub = pty.openpty()
    env = {**os.environ, "TERM": "dumb", "LANCHAT_INTERFACE": "lo"}
    cmd = [sys.executable, "-m", "lanchat", "join", f"127.0.0.1:{server.port}", "--nick", "emacs"]
    proc = subprocess.Popen(cmd, stdin=sub, stdout=sub, stderr=sub, env=env)
    os.close(sub)
    seen = b""

    def until(needle: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + 10
        while needle not in seen:
            assert time.monotonic() < deadline, seen
            ready, _, _ = select.select([main], [], [], 0.5)
            if ready:
                seen += os.read(main, 4096)

    try:
        until(b"emacs joined")
        os.write(main, b"hello from emacs\n")
        until(b"<emacs> hello from emacs")
        os.write(main, b"\x04")  # Ctrl-D: the end of input
        assert proc.wait(10) == 0
        assert b"\x1b" not in seen, seen  # no cursor control, no colours: lines
    finally:
        proc.kill()
        proc.wait()
        os.close(main)


def _line_reader(stream: IO[str], timeout: float = 10.0) -> Callable[[], str]:
    """A function returning the stream's next line, or failing after ``timeout`` seconds (a thread reads, so
    a client that stops writing fails the test instead of hanging it)."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        try:
            for line in stream:
                lines.put(line)
        except ValueError:  # closed by the test's cleanup
            pass

    threading.Thread(target=pump, daemon=True).start()

    def next_line() -> str:
        try:
            return lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout} s") from None

    return next_line


def test_plain_text_session_with_a_raw_socket(make_server: MakeServer) -> None:
    server = make_server(workers=2)
    with Client(server.port, "jason") as js:
        nc = Plain(server.port)
        try:
            nc.expect("/nick YOURNAME")  # the greeting tells a person what to do
            nc.send("hello before a nick")
            assert "choose a nick first" in nc.expect("!")
            nc.send("/nick Jason")
            assert "[nick_taken]" in nc.expect("nick_taken")  # clashes with the JSON client's nick
            nc.send("/nick telly")
            nc.expect("Welcome! You are telly")
            nc.send("hi from telnet")
            msg = js.expect("msg")
            assert (msg["from"], msg["text"]) == ("telly", "hi from telnet")
            js.send({"type": "msg", "room": "lobby", "text": "hi telly", "id": 1})
            assert nc.expect("<jason> hi telly").endswith("#lobby <jason> hi telly")
            nc.send("/me waves")
            assert js.expect("action")["text"] == "waves"
            nc.send("/msg jason psst")
            assert js.expect("privmsg")["text"] == "psst"
            nc.send("/who")
            who = nc.expect("#lobby:")
            assert "jason" in who and "telly" in who
            nc.send("/join dev")
            nc.expect("#dev -- telly joined")
            nc.send("in dev")
            nc.send("/rooms")
            assert "#dev (1)" in nc.expect("rooms:")
            nc.send("/help")
            nc.expect("/msg NICK TEXT")
            nc.send("/bogus")
            nc.expect("unknown command")
            nc.send("/nick JASON")  # a rename refused, then back to the own nick: said at once (it was silent)
            assert "[nick_taken]" in nc.expect("nick_taken")
            nc.send("/nick telly")
            nc.expect("* you are telly already")
            nc.send("/quit bye all")
            quit_ = js.expect("quit")
            assert (quit_["nick"], quit_["reason"]) == ("telly", "bye all")
            assert not [f for f in js.seen if f.get("room") == "dev"]  # jason is not in dev
        finally:
            nc.close()


def test_a_client_that_half_closes_gets_its_answers_before_the_close(server: ServerProcess) -> None:
    """An adversarial review: a client that sends what it has to say and half-closes (`nc -N`, ncat, a script's
    shutdown(SHUT_WR)) got none of the answers the main process had not sent yet (no welcome, no acks, no
    stats), and a quit before a hello lost the answer to the question asked before it."""

    def exchange(data: bytes) -> list[bytes]:
        with socket.create_connection(("127.0.0.1", server.port), 5) as s:
            s.settimeout(10)
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := s.recv(65536):  # until the server closes
                got += chunk
            return got.splitlines()

    def frames(lines: list[bytes]) -> list[dict[str, Any]]:
        return [json.loads(line) for line in lines]

    said = frames(exchange(b'{"type":"stats","id":1}\n'))
    assert [f.get("id") for f in said if f["type"] == "stats"] == [1]
    said = frames(exchange(b'{"type":"hello","nick":"halfy"}\n{"type":"msg","room":"lobby","text":"hi","id":7}\n'))
    assert [f["type"] for f in said if f["type"] in ("welcome", "ack")] == ["welcome", "ack"]
    assert [f.get("id") for f in said if f["type"] == "ack"] == [7]
    said = frames(exchange(b'{"type":"rooms","id":2}\n{"type":"quit"}\n'))  # before any hello
    assert [f.get("id") for f in said if f["type"] == "rooms"] == [2]
    shown = exchange(b"/nick telly\n/who\n")
    assert any(b"Welcome! You are telly" in line for line in shown) and any(b"#lobby:" in line for line in shown)
    shown = exchange(b"/rooms\n/quit\n")  # plain, before a nick
    assert any(b"rooms:" in line for line in shown) and shown[-1] == b"* bye", shown
    with Client(server.port, "checker") as checker:  # the half-closed ones are held for a resume, as any drop
        checker.send({"type": "who", "room": "lobby", "id": 1})
        assert "halfy" in checker.expect("who")["nicks"]


def test_plain_nicks_pasted_before_the_welcome_are_a_hello_then_a_rename(make_server: MakeServer) -> None:
    """`/nick pam` and `/nick pam2` pasted at once (a script, nc): both went to the hub as hellos before the
    first welcome came, and the second was refused (`already_registered`): the rename was lost."""
    server = make_server(workers=1)
    with Client(server.port, "jason") as js:
        nc = Plain(server.port)
        try:
            nc.expect("/nick YOURNAME")
            nc.send("/nick pam\n/nick pam2\nhello there")
            nc.expect("Welcome! You are pam")
            assert nc.expect("pam is now known as pam2")
            msg = js.expect("msg")
            assert (msg["from"], msg["text"]) == ("pam2", "hello there")
            assert not [f for f in js.seen if f.get("type") == "error"]
        finally:
            nc.close()


def test_a_last_line_without_a_newline_is_said_at_the_half_close(make_server: MakeServer) -> None:
    """A bot author's walkthrough: `printf '/nick partial\\nalert: disk full' | nc -N` posted nothing, and
    said nothing: the script is told now (plain text; a JSON object without its newline is handled)."""
    server = make_server(workers=1)
    nc = Plain(server.port)
    try:
        nc.sock.sendall(b"/nick partial\nalert: disk full")
        nc.sock.shutdown(socket.SHUT_WR)
        assert "no newline at the end of the input: not sent [incomplete_line]" in nc.expect("incomplete_line")
    finally:
        nc.close()
    with Client(server.port, "watcher") as watcher, Client(server.port) as raw:
        raw.send_raw(b'{"type":"hello","nick":"js"}\n{"type":"msg","room":"lobby","text":"alert","id":1}')
        raw.sock.shutdown(socket.SHUT_WR)
        msg = watcher.expect("msg")
        assert (msg["from"], msg["text"]) == ("js", "alert")


def test_a_byte_order_mark_before_the_piped_input_is_skipped(make_server: MakeServer) -> None:
    """A bot author's walkthrough: a file written by a Windows tool starts with a BOM, and its first line,
    `/join ops`, was posted to #lobby as text (the server skips a BOM; the piped client did not)."""
    server = make_server(workers=1)
    with Client(server.port, "oncall", rooms=["ops"]) as ops:
        out = run_cli("join", f"127.0.0.1:{server.port}", "--nick", "ci", input="\ufeff/join ops\nalert\n")
        assert out.returncode == 0, out.stderr
        msg = ops.expect("msg")
        assert (msg["room"], msg["text"]) == ("ops", "alert")


def test_a_byte_the_locale_cannot_decode_refuses_its_line_not_the_rest(make_server: MakeServer) -> None:
    """In a strict UTF-8 locale (en_US.UTF-8; PYTHONIOENCODING here) a Latin-1 byte ended stdin: nothing from
    its 8 KiB block on was sent, nothing said, exit 0 (a review). Its line is refused and the rest sent; and
    what an ASCII stdout cannot show is a ?, not a line left out with a traceback."""
    server = make_server(workers=1)
    with Client(server.port, "ops") as ops:
        env = {**os.environ, "LANCHAT_INTERFACE": "lo", "PYTHONIOENCODING": "utf-8:strict"}
        out = subprocess.run(
            [sys.executable, "-m", "lanchat", "join", f"127.0.0.1:{server.port}", "--nick", "bot"],
            input=b"first line\nbad \xe9 byte\nthird line\n", capture_output=True, env=env, timeout=30,
        )  # fmt: skip
        assert out.returncode == 1, out  # a line refused
        assert b"line 2" in out.stderr and b"not valid text" in out.stderr, out.stderr
        assert [ops.expect("msg")["text"] for _ in range(2)] == ["first line", "third line"]
        ops.send({"type": "msg", "room": "lobby", "text": "café ☕"})
        env["PYTHONIOENCODING"] = "ascii"
        out = subprocess.run(
            [sys.executable, "-m", "lanchat", "join", f"127.0.0.1:{server.port}", "--nick", "reader"],
            input=b"/history\n", capture_output=True, env=env, timeout=30,
        )  # fmt: skip
        assert out.returncode == 0 and b"Traceback" not in out.stderr, out
        assert b"<ops> caf? ?" in out.stdout, out.stdout
        env["PYTHONIOENCODING"] = "latin-1"  # --json: escaped, not ? (lossless, a later review)
        out = subprocess.run(
            [sys.executable, "-m", "lanchat", "join", f"127.0.0.1:{server.port}", "--nick", "script", "--json"],
            input=b"/history\n", capture_output=True, env=env, timeout=30,
        )  # fmt: skip
        texts = [e.get("text") for f in map(json.loads, out.stdout.splitlines()) for e in f.get("events", [])]
        assert out.returncode == 0 and "café ☕" in texts, out
        # and a /quit with such a byte is a quit: the line after it is not posted (it was, the quit refused)
        env["PYTHONIOENCODING"] = "utf-8:strict"
        out = subprocess.run(
            [sys.executable, "-m", "lanchat", "join", f"127.0.0.1:{server.port}", "--nick", "leaver"],
            input=b"one\n/quit bye caf\xe9\nafter the quit\n", capture_output=True, env=env, timeout=30,
        )  # fmt: skip
        assert out.returncode == 0, out
        assert ops.expect(lambda f: f.get("type") == "quit" and f.get("nick") == "leaver")["reason"] == "bye caf"
        assert [f["text"] for f in ops.seen if f.get("type") == "msg" and f.get("from") == "leaver"] == ["one"]


def test_a_join_started_with_stdin_or_stdout_closed_is_piped_mode_with_nothing_there(make_server: MakeServer) -> None:
    """`lanchat join … <&-` crashed with a traceback (sys.stdin is None then: a review): no input is the end of
    the input, and no stdout is a reader that went away."""
    server = make_server(workers=1)
    env = {**os.environ, "LANCHAT_INTERFACE": "lo"}
    with Client(server.port, "ops") as ops:
        for nick, closed in (("nostdin", "<&-"), ("nostdout", ">&-")):
            cmd = f"exec {sys.executable} -m lanchat join 127.0.0.1:{server.port} --nick {nick} {closed}"
            out = subprocess.run(["sh", "-c", cmd], input=b"", capture_output=True, env=env, timeout=30)
            assert out.returncode == 0 and b"Traceback" not in out.stderr, out
            assert ops.expect(lambda f, n=nick: f.get("type") == "quit" and f.get("nick") == n)  # type: ignore[misc]
        # stderr closed: what goes there went to stdout, into the --json stream (a later review)
        cmd = f"exec {sys.executable} -m lanchat join 127.0.0.1:{server.port} --nick nostderr --json 2>&-"
        out = subprocess.run(
            ["sh", "-c", cmd], input=b"/msg nobody_here hi\n", capture_output=True, env=env, timeout=30
        )
        assert out.returncode == 1, out  # a line refused
        frames = [json.loads(line) for line in out.stdout.splitlines()]  # every line JSON
        assert any(f.get("code") == "no_such_nick" for f in frames) and b"lanchat:" not in out.stdout


def test_a_plain_line_pasted_after_a_join_goes_to_the_joined_room(make_server: MakeServer) -> None:
    """A protocol review: `printf '/nick bot\\n/join ops\\nalert: disk full\\n' | nc` posted the alert to
    #lobby, for everyone there, not to #ops (the line was read before the hub's answer to the join)."""
    server = make_server(workers=1)
    with Client(server.port, "lobbyist") as lobby, Client(server.port, "oncall", rooms=["ops"]) as ops:
        nc = Plain(server.port)
        try:
            nc.expect("/nick YOURNAME")
            nc.send("/nick bot\n/join ops\nalert: disk full\n/part\nall clear\n/quit")
            msg = ops.expect("msg")
            assert (msg["room"], msg["from"], msg["text"]) == ("ops", "bot", "alert: disk full")
            lobby.expect(lambda f: f.get("type") == "quit" and f.get("nick") == "bot")
            said = [(f["room"], f["text"]) for f in lobby.seen if f.get("type") == "msg"]
            assert said == [("lobby", "all clear")]  # the /part made #lobby current again
        finally:
            nc.close()


@contextlib.contextmanager
def _join(port: int, *args: str) -> Iterator[subprocess.Popen[str]]:
    """`lanchat join` in piped mode with pipes on all three streams; killed and closed afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lanchat", "join", f"127.0.0.1:{port}", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()
        for f in (proc.stdout, proc.stderr, proc.stdin):
            if f is not None:
                f.close()


def _stderr_lines(proc: subprocess.Popen[str]) -> tuple[queue.Queue[str], threading.Thread]:
    """The lines ``proc`` writes to stderr, as they come (a thread reads them until the pipe ends)."""
    stderr = proc.stderr
    assert stderr is not None
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stderr:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return lines, reader


def test_piped_join_sends_lines_and_prints_events(make_server: MakeServer) -> None:
    server = make_server(workers=2)
    with Client(server.port, "observer") as obs:
        out = run_cli(
            "join", f"127.0.0.1:{server.port}", "--nick", "scripter", "--room", "lobby",
            input="hello from a script\n/me runs\n/msg observer secret\n/join dev\nnow in dev\n",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "<scripter> hello from a script" in out.stdout
        obs.expect("quit")
        texts = [(f["type"], f.get("text")) for f in obs.seen if f.get("from") == "scripter"]
        assert texts == [("msg", "hello from a script"), ("action", "runs"), ("privmsg", "secret")]


def test_piped_join_json_output_stays_connected_while_stdin_is_open(make_server: MakeServer) -> None:
    server = make_server(workers=2)
    with _join(server.port, "--nick", "bot", "--json") as proc:
        assert proc.stdout is not None and proc.stdin is not None
        readline = _line_reader(proc.stdout)
        frames: list[dict[str, Any]] = []
        while not any(f.get("type") == "room" for f in frames):
            frames.append(json.loads(readline()))
        assert {"server", "welcome", "join", "room"} <= {f["type"] for f in frames}
        welcome = next(f for f in frames if f["type"] == "welcome")
        assert welcome["nick"] == "bot" and "token" not in welcome  # a credential, not for logs
        with Client(server.port, "human") as human:
            human.send({"type": "msg", "room": "lobby", "text": "hello bot", "id": 1})
            while True:  # every line is one JSON object
                frame = json.loads(readline())
                if frame.get("type") == "msg":
                    break
            assert (frame["from"], frame["text"]) == ("human", "hello bot")
            proc.stdin.write("hello human\n")
            proc.stdin.flush()
            assert human.expect(lambda f: f.get("from") == "bot")["text"] == "hello human"
            proc.stdin.close()  # EOF: exits once its message is acknowledged
            assert proc.wait(10) == 0
            assert human.expect("quit")["nick"] == "bot"


def test_help_in_json_mode_keeps_stdout_json(make_server: MakeServer) -> None:
    """/help printed its plain lines to stdout among the JSON objects: a script reading them failed."""
    server = make_server(workers=1)
    out = run_cli("join", f"127.0.0.1:{server.port}", "--nick", "bot", "--json", input="/help\nhello\n")
    assert out.returncode == 0, out.stderr
    frames = [json.loads(line) for line in out.stdout.splitlines()]  # each line an object
    assert any(f["type"] == "msg" and f["text"] == "hello" for f in frames)
    assert "/join ROOM" in out.stderr


def test_piped_join_exit_codes(make_server: MakeServer) -> None:
    server = make_server(workers=1)
    with Client(server.port, "taken"):
        out = run_cli("join", f"127.0.0.1:{server.port}", "--nick", "TAKEN", input="")
        assert out.returncode == 4 and "taken; choose another with --nick NAME" in out.stderr  # (a shared login)
        bad = run_cli("join", f"127.0.0.1:{server.port}", "--nick", "9lives", input="")
        assert bad.returncode == 4 and "nick" in bad.stderr
    closed = run_cli("join", "127.0.0.1:1", "--nick", "x", input="")
    assert (
        closed.returncode == 3
        and "cannot reach 127.0.0.1:1: connection refused (hint: `lanchat discover`" in closed.stderr
    )


def test_joining_a_port_of_another_service_says_so_at_once() -> None:
    """An ssh server's banner (or a web server's answer to the hello) was skipped as "not for us": the join
    waited 5 s and said "no welcome: timed out", or "closed the connection"."""

    def serve(listener: socket.socket, greeting: bytes, answers: bool) -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            if answers:
                conn.recv(4096)  # the hello, then a web server's refusal of it
            conn.sendall(greeting)
            with contextlib.suppress(OSError):
                while conn.recv(4096):  # open until the client goes
                    pass

    for greeting, answers in ((b"SSH-2.0-OpenSSH_9.6\r\n", False), (b"HTTP/1.1 400 Bad Request\r\n\r\n", True)):
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            port = listener.getsockname()[1]
            thread = threading.Thread(target=serve, args=(listener, greeting, answers), daemon=True)
            thread.start()
            out = run_cli("join", f"127.0.0.1:{port}", "--nick", "x", input="hi\n")
            thread.join(10)
        said = greeting.decode().splitlines()[0]
        assert (out.returncode, out.stderr) == (
            3,
            f"lanchat: 127.0.0.1:{port} is not a lanchat server (it said {said!r})\n",
        )


def test_piped_input_longer_than_the_outbox_waits_for_acks(
    make_server: MakeServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A script piping in more lines than the outbox holds (OUTBOX_MAX unacknowledged posts) is slowed to
    the server's acks, never refused or crashed (it was an uncaught outbox_full). In-process, so that the
    outbox can be made small: 3 here, 25 lines."""
    server = make_server(workers=1)
    monkeypatch.setattr(client_conn, "OUTBOX_MAX", 3)
    monkeypatch.setattr(connection, "OUTBOX_MAX", 3)
    lines = [f"line {i}" for i in range(25)]
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(f"{x}\n" for x in lines)))
    with Client(server.port, "watcher", rooms=["lobby"]) as watcher:
        piped = run_piped("127.0.0.1", server.port, "bot", "lobby", json_output=True)
        assert asyncio.run(asyncio.wait_for(piped, 60)) == 0
        got = [watcher.expect(lambda f: f.get("type") == "msg")["text"] for _ in lines]
    assert got == lines  # every line, in order, once
    assert "Traceback" not in capsys.readouterr().err


def test_piped_switch_and_quit_reason(make_server: MakeServer) -> None:
    """/switch without a room goes to the next joined room, /switch to a room not joined is refused (said
    on stderr), and /quit WHY tells the others WHY."""
    server = make_server(workers=1)
    with Client(server.port, "watcher", rooms=["lobby", "dev"]) as watcher:
        script = "/join dev\nin dev\n/switch\nin lobby\n/switch nowhere\nstill lobby\n/quit lunch\n"
        out = run_cli("join", f"127.0.0.1:{server.port}", "--nick", "bot", input=script)
        assert out.returncode == 1, out.stderr  # a line was refused: the script can tell
        assert "line 5 not sent: you are not in #nowhere" in out.stderr
        said = [watcher.expect(lambda f: f.get("type") == "msg" and f.get("from") == "bot") for _ in range(3)]
        where = [(f["room"], f["text"]) for f in said]
        assert where == [("dev", "in dev"), ("lobby", "in lobby"), ("lobby", "still lobby")]
        assert watcher.expect(lambda f: f.get("type") == "quit" and f.get("nick") == "bot")["reason"] == "lunch"


def test_piped_refusals_are_said_in_the_order_of_the_input(make_server: MakeServer) -> None:
    """The client's own refusals were said at once, ahead of the server's for earlier lines: line 3's
    "not sent" came before line 1's "no one is called"."""
    server = make_server(workers=1)
    script = "/msg nobody hi\nhello\n/switch nowhere\n/msg nobody2 hi\n"
    out = run_cli("join", f"127.0.0.1:{server.port}", "--nick", "bot", input=script)
    assert out.returncode == 1, out.stderr
    said = [line for line in out.stderr.splitlines() if line.startswith("lanchat: line ")]
    assert [line.split(":")[1].split()[1] for line in said] == ["1", "3", "4"], said


class _HeldClient:
    """A ChatClient stand-in for run_piped: a /join is sent, the link drops, and the resume's welcome says
    the server handled it (last_id), so its answer never comes."""

    def __init__(self, host: str, port: int, nick: str, rooms: list[str], **callbacks: Any) -> None:
        self.on_frame = callbacks["on_frame"]
        self.state = type("State", (), {"rooms": ["lobby"], "registered": True, "outbox": {}, "unacked": 0})()
        self.nick, self.lost_reason, self.goodbye_lost, self.next_id = nick, "", False, 1
        self.lost_exit = connection.EXIT_LOST
        self.nicks_had: dict[str, int] = {}
        self.session = ""
        self.status, self.queued_requests = "connected", 0
        self._closed = asyncio.Event()

    async def connect(self) -> None:
        pass

    def send(self, req: m.Request) -> int | None:
        loop = asyncio.get_running_loop()
        if isinstance(req, m.Rooms):  # the settle at the end
            loop.call_soon(self.on_frame, {"type": "rooms", "id": req.id, "rooms": []})
            return None
        rid, self.next_id = self.next_id, self.next_id + 1
        welcome = {"type": "welcome", "nick": self.nick, "resumed": True, "rooms": ["lobby"], "seq": 5, "last_id": rid}
        loop.call_later(0.05, self.on_frame, welcome)
        return rid

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def wait_acked(self, timeout: float | None = None) -> bool:
        return True

    async def wait_room(self) -> None:
        pass

    async def close(self, reason: str = "") -> None:
        self._closed.set()


class _NotDoneClient(_HeldClient):
    """As _HeldClient, but the server had refused the change (the welcome lists it), which the client
    then says was not done (ClientState._refused_unseen)."""

    def send(self, req: m.Request) -> int | None:
        if isinstance(req, m.Rooms):
            return super().send(req)
        rid, self.next_id = self.next_id, self.next_id + 1
        welcome = {"type": "welcome", "nick": self.nick, "resumed": True, "rooms": ["lobby"], "seq": 5}
        not_done = m.error_frame(m.Err.NOT_DONE, "not done: /nick alx: refused while away", id=rid)
        loop = asyncio.get_running_loop()  # (before the settle's answer at the end of the input)
        loop.call_soon(self.on_frame, {**welcome, "last_id": rid, "refused": [rid]})
        loop.call_soon(self.on_frame, {**not_done, "request": {"type": "nick", "nick": "alx"}})
        return rid


def test_a_change_not_done_is_said_with_its_input_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A review: the welcome that settles what was sent before a drop let go of the /nick's input line, and
    its "not done" that follows was said without it. The welcome's refused ids keep theirs."""
    monkeypatch.setattr(piped, "ChatClient", _NotDoneClient)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(sys, "stdin", io.StringIO("/nick alx\n"))
    assert asyncio.run(asyncio.wait_for(run_piped("127.0.0.1", 1, "bot", "lobby", json_output=False), 20)) == 1
    assert "lanchat: line 1: ! not done: /nick alx: refused while away" in err.getvalue(), err.getvalue()


class _AwayClient(_HeldClient):
    """As _HeldClient, but the connection is down for good: what is sent is queued, never answered."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.status = "reconnecting"

    def send(self, req: m.Request) -> int | None:
        self.queued_requests += 1
        return None


def test_a_command_typed_while_the_server_stays_away_is_said_not_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    """A review: a /who or /join typed while reconnecting, then the end of input, waited SETTLE_TIMEOUT for
    the server and exited 0, as if done: a script could not tell. It is connection lost now (exit code 7)."""
    monkeypatch.setattr(piped, "ChatClient", _AwayClient)
    monkeypatch.setattr(piped, "SETTLE_TIMEOUT", 0.2)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(sys, "stdin", io.StringIO("/join ops\n/who\n"))
    code = asyncio.run(asyncio.wait_for(run_piped("127.0.0.1", 1, "bot", "lobby", json_output=False), 20))
    assert code == connection.EXIT_LOST
    assert "lanchat: connection lost with 2 commands not answered" in err.getvalue(), err.getvalue()


def test_a_refusal_held_for_an_earlier_line_is_said_once_a_welcome_settles_that_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A review: a refusal waiting for the answer to an earlier line was said only at the end of the input
    when a resume's welcome settled that line instead (its answer never comes): with `tail -f | lanchat
    join`, never. It is said as soon as nothing before it is open."""
    said = threading.Event()

    class Stderr(io.StringIO):
        def write(self, text: str) -> int:
            if "line 2 not sent" in text:
                said.set()
            return super().write(text)

    monkeypatch.setattr(piped, "ChatClient", _HeldClient)
    monkeypatch.setattr(sys, "stderr", Stderr())
    read_end, write_end = os.pipe()
    stdin = os.fdopen(read_end, "r")
    monkeypatch.setattr(sys, "stdin", stdin)
    os.write(write_end, b"/join dev\n/switch nowhere\n")
    before_eof: list[bool] = []

    def end_input() -> None:
        before_eof.append(said.wait(5))  # the input stays open until the refusal is said (or 5 s)
        os.close(write_end)

    threading.Thread(target=end_input, daemon=True).start()
    try:
        assert asyncio.run(asyncio.wait_for(run_piped("127.0.0.1", 1, "bot", "lobby", json_output=False), 20)) == 1
    finally:
        stdin.close()
    assert before_eof == [True]


def test_a_join_typed_while_reconnecting_goes_before_the_messages_after_it(make_server: MakeServer) -> None:
    """Typed while the connection is down: /join dev, then a message to #dev. After the resume both go in
    the order typed (the message used to go first, be refused as not in the room, and be lost)."""
    server = make_server(workers=2)
    with Client(server.port, "watcher", rooms=["dev"]) as watcher:  # least-loaded placement: worker0

        async def scenario() -> None:
            typed: list[int | None] = []
            resumed = asyncio.Event()

            def on_status(status: str) -> None:
                if status == "reconnecting" and not typed:  # while the connection is down, for sure
                    typed.append(client.send(m.Join("dev")))
                    typed.append(client.send(m.Msg("dev", "typed while away")))
                elif status == "connected" and typed:
                    resumed.set()

            client = connection.ChatClient("127.0.0.1", server.port, "ann", ["lobby"], on_status=on_status)
            await client.connect()  # ... and worker1
            os.kill(server.worker_pids()[1], signal.SIGKILL)
            await resumed.wait()
            assert typed[1] is not None and client.state.unacked == 1
            assert await client.wait_acked(10)
            assert client.state.rooms == ["lobby", "dev"]
            await client.close()

        asyncio.run(asyncio.wait_for(scenario(), 30))
        said = watcher.expect(lambda f: f.get("type") == "msg" and f.get("from") == "ann", timeout=10)
        assert said["room"] == "dev" and said["text"] == "typed while away"


def test_piped_refusals_go_to_stderr_and_set_the_exit_code(make_server: MakeServer) -> None:
    """What the server refuses (a message to nobody) and what the client refuses itself (too long) are said
    on stderr, the rest goes on, and the exit code is 1 instead of 0. The hint for nc users is not shown."""
    server = make_server(workers=1)
    with Client(server.port, "watcher") as watcher:
        script = "first\n/msg nobody hi\n" + "x" * 5000 + "\n/part nowhere\nlast\n"
        out = run_cli("join", f"127.0.0.1:{server.port}", "--nick", "bot", input=script)
        assert out.returncode == 1, out.stderr
        assert "nobody" not in out.stdout
        assert "lanchat: line 2: ! no one is called nobody" in out.stderr  # the server's refusal names the line
        assert "line 3 not sent: " in out.stderr
        assert "lanchat: line 4: ! you are not in #nowhere" in out.stderr  # a change's refusal too
        assert "3 line(s) refused (above)" in out.stderr
        assert "Plain text" not in out.stdout
        said = [watcher.expect(lambda f: f.get("type") == "msg" and f.get("from") == "bot")["text"] for _ in range(2)]
        assert said == ["first", "last"]
    as_json = run_cli("join", f"127.0.0.1:{server.port}", "--nick", "bot", "--json", input="/msg nobody hi\n")
    assert as_json.returncode == 1, as_json.stderr
    assert '"no_such_nick"' in as_json.stdout  # the server's error frame is output, not said on stderr
    assert "1 line(s) refused (the server's as error frames in the output)" in as_json.stderr
    both = run_cli(
        "join", f"127.0.0.1:{server.port}", "--nick", "bot", "--json", input="/switch nowhere\n/msg nobody hi\n"
    )
    assert "line 1 not sent: " in both.stderr  # the client's own refusal: no frame, said on stderr
    assert "2 line(s) refused (the server's as error frames in the output, the client's above)" in both.stderr


def test_a_terminated_piped_client_says_goodbye_and_frees_its_nick(make_server: MakeServer) -> None:
    """SIGTERM, SIGHUP (the terminal closed) or Ctrl-C: the client quits at once, so its nick is not held for
    a reconnect (--resume-grace) and the same nick can join again straight away."""
    server = make_server(workers=1)
    with Client(server.port, "watcher") as watcher:
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            with _join(server.port, "--nick", "hal") as proc:
                watcher.expect(lambda f: f.get("type") == "join" and f.get("nick") == "hal")
                proc.send_signal(sig)
                assert proc.wait(10) == 128 + sig
                watcher.expect(lambda f: f.get("type") == "quit" and f.get("nick") == "hal")
        again = run_cli("join", f"127.0.0.1:{server.port}", "--nick", "hal", input="back\n")
        assert again.returncode == 0, again.stderr


def test_a_second_ctrl_c_does_not_wait_for_the_goodbye(make_server: MakeServer) -> None:
    """A server that does not answer (stopped here) keeps the first Ctrl-C's goodbye waiting for seconds
    (GOODBYE_LINGER, then GOODBYE_TIMEOUT); the second ends the client at once, without the goodbye's note."""
    server = make_server(workers=1)
    assert server.proc is not None
    stopped = [psutil.Process(server.proc.pid), *psutil.Process(server.proc.pid).children(recursive=True)]
    with _join(server.port, "--nick", "hal") as proc:
        lines, reader = _stderr_lines(proc)
        with Client(server.port, "watcher") as watcher:
            watcher.expect(lambda f: f.get("type") == "join" and f.get("nick") == "hal")
        for p in stopped:
            p.suspend()
        try:
            proc.send_signal(signal.SIGINT)
            code = None
            for _ in range(20):  # again until it ends (two signals sent at once may arrive as one)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    code = proc.wait(0.25)
                    break
                proc.send_signal(signal.SIGINT)
        finally:
            for p in stopped:
                p.resume()
        assert code == 128 + signal.SIGINT
        reader.join(5)
        rest = [lines.get_nowait() for _ in range(lines.qsize())]
        assert not any("did not answer the goodbye" in x for x in rest), rest


def test_ctrl_c_ends_a_client_whose_output_nobody_reads(make_server: MakeServer) -> None:
    """`lanchat join | less`, less paused: the client blocks writing to the full pipe, and a Ctrl-C handled by
    the event loop waited with it (three Ctrl-Cs left it running). The second ends it now."""
    server = make_server(workers=1)
    with _join(server.port, "--nick", "hal") as proc, Client(server.port, "watcher") as watcher:
        watcher.expect(lambda f: f.get("type") == "join" and f.get("nick") == "hal")
        for i in range(40):  # 160 KB for hal, whose stdout pipe (64 KiB) nobody reads
            watcher.send({"type": "msg", "room": "lobby", "text": f"{i} " + "x" * 3990, "id": i + 1})
        watcher.expect(lambda f: f.get("type") == "ack" and f.get("id") == 40)
        code = None
        for _ in range(20):  # one Ctrl-C a quarter second until it ends (two at once may arrive as one)
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = proc.wait(0.25)
                break
        assert code == 128 + signal.SIGINT


def test_a_client_terminated_with_a_backlog_still_says_goodbye(make_server: MakeServer) -> None:
    """Its quit queues behind lines the server reads at its rate limit. Closing then would reset the
    connection (our input unread), and the reset throws away the quit: the nick was held for the grace.
    The client waits for the server's close a moment (GOODBYE_LINGER), then says goodbye anew."""
    server = make_server("--rate", "2", "--burst", "2", workers=1)
    with Client(server.port, "watcher") as watcher:
        with _join(server.port, "--nick", "hal") as proc:
            assert proc.stdin is not None
            proc.stdin.write("".join(f"line {i}\n" for i in range(40)))
            proc.stdin.flush()
            watcher.expect(lambda f: f.get("type") == "msg" and f.get("from") == "hal")  # the backlog is in
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 128 + signal.SIGTERM
            watcher.expect(lambda f: f.get("type") == "quit" and f.get("nick") == "hal")
        posted = [f["text"] for f in watcher.seen if f.get("type") == "msg"]
        assert posted == [f"line {i}" for i in range(len(posted))] and len(posted) < 40  # dropped, as documented


def _until_reconnecting(server: ServerProcess, nick: str, lines: queue.Queue[str], down: Callable[[], object]) -> None:
    """Once a piped client (its stderr in ``lines``) has joined as ``nick``: the server taken ``down``, and
    the client reconnecting."""
    with Client(server.port, "watcher") as watcher:
        watcher.expect(lambda f: f.get("type") == "join" and f.get("nick") == nick)
    down()
    while "reconnecting" not in lines.get(timeout=10):
        pass


@pytest.mark.parametrize(("stop", "code"), [("SIGTERM", 128 + signal.SIGTERM), ("/quit", 0)])
def test_a_piped_client_stopped_while_the_server_is_down_says_the_nick_may_stay_taken(
    make_server: MakeServer, stop: str, code: int
) -> None:
    """Its goodbye between reconnects finds no server: as after /quit (docs/client.md), it says so as it exits.
    A client review: with nothing unanswered, a /quit typed while reconnecting still asked its closing
    question (its answer shows that every refusal is in) and waited the 10 s SETTLE_TIMEOUT for it: 11.5 s."""
    server = make_server(workers=1)
    with _join(server.port, "--nick", "hal") as proc:
        assert proc.stdin is not None
        lines, reader = _stderr_lines(proc)
        _until_reconnecting(server, "hal", lines, server.kill)
        started = time.monotonic()
        if stop == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        else:
            proc.stdin.write("/quit\n")
            proc.stdin.flush()
        assert proc.wait(15) == code
        took = time.monotonic() - started
        reader.join(5)  # it ends with the pipe, which ends with the process
        rest = [lines.get_nowait() for _ in range(lines.qsize())]
        assert any("did not answer the goodbye" in x for x in rest), rest
        assert took < 8.0, f"exited {took:.1f} s after the {stop}"  # the goodbye's tries: about 2 s


def test_a_question_typed_while_reconnecting_is_asked_once_back_though_input_ended(make_server: MakeServer) -> None:
    """A review of the mend above: a /who typed while reconnecting (a question: no id, nothing waits for
    it by line) then the end of input skipped the closing question, and the /who was dropped unsaid."""
    server = make_server(workers=1)
    with _join(server.port, "--nick", "qq") as proc:
        assert proc.stdin is not None and proc.stdout is not None
        lines, _ = _stderr_lines(proc)
        _until_reconnecting(server, "qq", lines, server.stop)
        proc.stdin.write("/who\n")
        proc.stdin.close()
        server.start()  # the same port and data directory
        assert proc.wait(20) == 0
        assert "* #lobby: watcher, qq" in proc.stdout.read().split("Resumed")[-1]  # (the /who's answer)


def test_a_piped_client_back_too_late_to_resume_says_it_is_a_new_session(make_server: MakeServer) -> None:
    """Stopped past the server's idle timeout and resume grace, it reconnects as a new session, and says so
    (it used to say only "connected again"); what was said meanwhile is replayed (it used to be each room's
    newest 50 lines, with those it had printed left out)."""
    server = make_server("--ping-interval", "0.3", "--idle-timeout", "1.2", "--resume-grace", "0.5", workers=1)
    with Client(server.port, "watcher") as watcher, _join(server.port, "--nick", "hal") as proc:
        stdout = proc.stdout
        assert stdout is not None
        lines, reader = _stderr_lines(proc)

        def event_of_hal(kind: str) -> Callable[[Frame], bool]:
            def match(f: Frame) -> bool:
                if f.get("type") == "ping":  # the watcher is held to the same short idle timeout
                    watcher.send({"type": "pong"})
                return f.get("type") == kind and f.get("nick") == "hal"

            return match

        watcher.expect(event_of_hal("join"))
        proc.send_signal(signal.SIGSTOP)
        watcher.expect(event_of_hal("quit"), timeout=10)  # its session expired
        watcher.send({"type": "msg", "room": "lobby", "text": "said while hal slept"})
        watcher.expect(lambda f: f.get("text") == "said while hal slept")
        proc.send_signal(signal.SIGCONT)
        while "connected again" not in (line := lines.get(timeout=10)):
            pass
        assert "the old session could not be resumed" in line and "what was said meanwhile follows" in line, line
        proc.stdin.close()  # type: ignore[union-attr]
        assert proc.wait(10) == 0
        out = stdout.read()
        assert "* the old session could not be resumed" in out
        assert out.count("<watcher> said while hal slept") == 1, out
        reader.join(5)


def test_a_terminated_piped_client_waits_for_its_goodbye(
    make_server: MakeServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The connection closes before the goodbye is done (between reconnects it connects once more, up to
    GOODBYE_TIMEOUT): returning then let asyncio.run cancel it. In-process, with a goodbye that takes a
    while and finds no server, and the signal delivered through the front end's own hook."""
    server = make_server(workers=1)
    hooks: list[tuple[asyncio.AbstractEventLoop, Callable[[int], None]]] = []

    def hook(loop: asyncio.AbstractEventLoop, callback: Callable[[int], None], **_: bool) -> Callable[[], None]:
        hooks.append((loop, callback))
        return lambda: None

    real_close = connection.ChatClient.close

    async def slow_goodbye(self: connection.ChatClient, reason: str = "") -> None:
        await real_close(self, reason)
        await asyncio.sleep(0.2)  # the goodbye's connection, still trying: wait_closed() is already over
        self.goodbye_lost = True

    monkeypatch.setattr(piped, "on_hangup", hook)
    monkeypatch.setattr(connection.ChatClient, "close", slow_goodbye)
    r, w = os.pipe()  # stdin stays open: the client is waiting for a line when the signal comes
    os.write(w, b"hi\n")  # once it is seen, the client has connected (a signal while connecting goes elsewhere)
    stdin = os.fdopen(r)
    monkeypatch.setattr(sys, "stdin", stdin)
    with Client(server.port, "watcher") as watcher:

        def hang_up() -> None:
            watcher.expect(lambda f: f.get("type") == "msg" and f.get("text") == "hi")
            loop, callback = hooks[0]
            loop.call_soon_threadsafe(callback, signal.SIGTERM)

        threading.Thread(target=hang_up, daemon=True).start()
        code = asyncio.run(asyncio.wait_for(run_piped("127.0.0.1", server.port, "bot", "lobby", json_output=False), 30))
    os.close(w)  # the client's stdin thread reads its end now, with nobody left to tell
    stdin.close()
    assert code == 128 + signal.SIGTERM
    assert "did not answer the goodbye" in capsys.readouterr().err


def test_a_hang_up_ignored_by_nohup_stays_ignored() -> None:
    """`nohup lanchat join … < script &` must outlive the terminal: the goodbye on SIGHUP is not for it."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)

    async def scenario() -> None:
        remove = connection.on_hangup(asyncio.get_running_loop(), lambda _: None)
        try:
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)  # SIGTERM is taken
        finally:
            remove()

    try:
        asyncio.run(scenario())
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_ctrl_c_ignored_at_start_stays_ignored() -> None:
    """A script's `lanchat join … &` job starts with SIGINT ignored (so that Ctrl-C at the terminal stops only
    the foreground): piped mode's goodbye on Ctrl-C must not take that over. Not ignored, it is taken."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)

    async def taken() -> bool:
        remove = connection.on_hangup(asyncio.get_running_loop(), lambda _: None, interrupt=True)
        try:
            return signal.getsignal(signal.SIGINT) not in (signal.SIG_DFL, signal.SIG_IGN)
        finally:
            remove()

    try:
        assert not asyncio.run(taken())
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        signal.signal(signal.SIGINT, signal.default_int_handler)
        assert asyncio.run(taken())
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_refused_command_on_the_last_line_still_sets_the_exit_code(make_server: MakeServer) -> None:
    """Acks cover messages only: the error for a /part of a room we are not in came after the client had
    left, and the exit code was 0. The client waits for the hub to answer one more request."""
    server = make_server(workers=1)
    out = run_cli("join", f"127.0.0.1:{server.port}", "--nick", "bot", input="/part nowhere\n")
    assert out.returncode == 1, out.stderr
    assert "not in #nowhere" in out.stderr
    ok = run_cli("join", f"127.0.0.1:{server.port}", "--nick", "bot", "--json", input="/who\n")
    assert ok.returncode == 0, ok.stderr
    assert str(2**53) not in ok.stdout  # the client's own round trip is not printed
