"""`lanchat status` against servers that misbehave: a hostile name, no answer, a closed port.

A fake server (a thread with a plain socket, bounded by timeouts) answers the stats request with what a
test chooses; ``run_status`` runs in process so its output is captured. The real server's status is
tested in test_server.py.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from lanchat.client import status as status_module
from lanchat.client.connection import unreachable_reason
from lanchat.client.status import run_status

THREAD_TIMEOUT = 10.0  # seconds: a bound against a hang, never a speed


@pytest.fixture(autouse=True)
def _plain_stdout(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(THREAD_TIMEOUT)
    yield sock
    sock.close()


def _answer_once(listener: socket.socket, frame: dict[str, Any] | None) -> threading.Thread:
    """Accept one connection, read the request line, send ``frame`` (None: say nothing) and hang up."""

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(THREAD_TIMEOUT)
            request = b""
            while not request.endswith(b"\n"):
                chunk = conn.recv(4096)
                if not chunk:
                    return
                request += chunk
            assert json.loads(request)["type"] == "stats"
            if frame is None:  # a port that never answers: wait until the client gives up and closes
                while conn.recv(4096):
                    pass
                return
            conn.sendall(json.dumps(frame).encode() + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def _stats(**over: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "stats", "name": "lab", "port": 7272, "users": 1, "rooms": 1, "seq": 9,
        "processes": [
            {"role": "main", "pid": 10, "connections": 1, "cpu_percent": 1.5, "rss": 2**21, "msgs_in": 3, "msgs_out": 4}
        ],
        "history": {"degraded": False},
    }  # fmt: skip
    frame.update(over)
    return frame


def _run(
    listener: socket.socket, frame: dict[str, Any] | None, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    thread = _answer_once(listener, frame)
    code = run_status(f"127.0.0.1:{listener.getsockname()[1]}", json_output=False)
    thread.join(THREAD_TIMEOUT)
    assert not thread.is_alive()
    out, err = capsys.readouterr()
    return code, out, err


def test_a_name_with_brackets_is_printed_as_text(listener: socket.socket, capsys: pytest.CaptureFixture[str]) -> None:
    """`lanchat serve --name '[/oops] lab [red]'`: status crashed with rich's MarkupError."""
    code, out, err = _run(listener, _stats(name="[/oops] lab [red]"), capsys)
    assert code == 0, err
    assert "[/oops] lab [red] (127.0.0.1:7272)" in out
    assert "Traceback" not in err and "MarkupError" not in err


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_an_ipv6_address_is_printed_in_brackets(capsys: pytest.CaptureFixture[str]) -> None:
    """`vm (::1:7272)` read as a port of some address; `[::1]:7272` is how it is typed."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as listener:
        listener.bind(("::1", 0))
        listener.listen()
        thread = _answer_once(listener, _stats())
        code = run_status(f"[::1]:{listener.getsockname()[1]}", json_output=False)
        thread.join(THREAD_TIMEOUT)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "lab ([::1]:7272)" in out


def test_no_server_string_is_markup_or_a_control_sequence(
    listener: socket.socket, capsys: pytest.CaptureFixture[str]
) -> None:
    """`[red]x` coloured the output (and vanished from it); every string from the server is text."""
    frame = _stats(
        name="[red]x\x1b[2J",
        processes=[{"role": "[b]w[/b]", "pid": "[i]1", "cpu_percent": "lots", "rss": None}],
        history={"degraded": True, "error": "[/] disk [red]full\x07", "pending": 3},
    )
    code, out, err = _run(listener, frame, capsys)
    assert code == 0, err
    assert "[red]x\ufffd[2J" in out and "\x1b" not in out and "\x07" not in out
    assert "[b]w[/b]" in out and "[i]1" not in out  # short: rich wraps cells to the 80 columns of a pipe
    assert "history degraded: [/] disk [red]full\ufffd (3 pending)" in out
    assert "?" in out  # a cpu figure that is not a number


@pytest.mark.parametrize(
    ("users", "rooms", "expected"),
    [(1, 1, "1 user, 1 room"), (0, 2, "0 users, 2 rooms"), (2, 0, "2 users, 0 rooms")],
)
def test_counts_are_singular_or_plural(
    listener: socket.socket, capsys: pytest.CaptureFixture[str], users: int, rooms: int, expected: str
) -> None:
    """It said "1 users, 1 rooms"."""
    code, out, _ = _run(listener, _stats(users=users, rooms=rooms), capsys)
    assert code == 0
    assert f"lab (127.0.0.1:7272): {expected}, seq 9" in out


def test_a_stats_reply_without_figures_shows_question_marks(
    listener: socket.socket, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bare {"type": "stats"} (another program, an older server) printed "None users, None rooms, seq None"."""
    code, out, _ = _run(listener, {"type": "stats"}, capsys)
    assert code == 0
    assert "? (127.0.0.1:" in out and "): ? users, ? rooms, seq ?" in out and "None" not in out


def test_every_figure_the_server_left_out_or_garbled_is_a_question_mark(
    listener: socket.socket, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only cpu % and rss were checked: a pid of "abc" was shown as sent, a missing count as `None`, a
    missing cpu or rss as 0.0, and the history line said "history degraded: None (None pending)"."""
    frame = _stats(
        processes=[{"role": "w", "pid": "abc", "msgs_in": "lots", "msgs_out": [1]}],
        history={"degraded": True},
    )
    code, out, _ = _run(listener, frame, capsys)
    assert code == 0
    row = next(line for line in out.splitlines() if line.strip("│ ").startswith("w "))
    assert [cell.strip() for cell in row.strip("│ ").split("│")] == ["w", "?", "?", "?", "?", "?", "?"]
    assert "history degraded: ? (? pending)" in out and "None" not in out and "abc" not in out


def test_a_port_that_is_not_a_lanchat_server_is_named_as_such(
    listener: socket.socket, capsys: pytest.CaptureFixture[str]
) -> None:
    """A web server that answered and stayed open was reported as "no answer within 5 s"; one that closed
    after a banner as "cannot reach 127.0.0.1:P: 127.0.0.1:P closed the connection"."""

    def serve(greeting: bytes, stay: bool) -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(THREAD_TIMEOUT)
            conn.sendall(greeting)
            got = b""
            while (stay or not got.endswith(b"\n")) and (chunk := conn.recv(4096)):  # else a close with the
                got += chunk  # request unread would reset the connection, and the reset discard the greeting

    port = listener.getsockname()[1]
    for greeting, stay in ((b"HTTP/1.0 200 OK\r\n\r\n", True), (b"SSH-2.0-OpenSSH_9.2\r\n", False)):
        thread = threading.Thread(target=serve, args=(greeting, stay), daemon=True)
        thread.start()
        code = run_status(f"127.0.0.1:{port}", json_output=False)
        thread.join(THREAD_TIMEOUT)
        _, err = capsys.readouterr()
        assert code == 3
        assert f"lanchat: 127.0.0.1:{port} is not a lanchat server (it said '{greeting.decode().strip()}')" in err
    thread = threading.Thread(target=serve, args=(b"", False), daemon=True)
    thread.start()
    assert run_status(f"127.0.0.1:{port}", json_output=False) == 3
    thread.join(THREAD_TIMEOUT)
    assert capsys.readouterr()[1] == f"lanchat: 127.0.0.1:{port} closed the connection without answering\n"


def test_a_port_that_never_answers_says_so(
    listener: socket.socket, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """It said `cannot reach 127.0.0.1:PORT: ` (a TimeoutError has no message)."""
    monkeypatch.setattr(status_module, "STATUS_TIMEOUT", 0.2)
    code, _, err = _run(listener, None, capsys)
    assert code == 3
    assert err.strip() == f"lanchat: cannot reach 127.0.0.1:{listener.getsockname()[1]}: no answer within 0.2 s"


def test_a_closed_port_says_connection_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """It said `[Errno 111] Connect call failed ('127.0.0.1', PORT)`."""
    with socket.socket() as closed:  # bound, never listening: connections to it are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        code = run_status(f"127.0.0.1:{port}", json_output=False)
    assert code == 3
    assert capsys.readouterr().err.strip() == f"lanchat: cannot reach 127.0.0.1:{port}: connection refused"


def test_unreachable_reasons() -> None:
    multiple = OSError(
        "Multiple exceptions: [Errno 111] Connect call failed ('::1', 7310, 0, 0), "
        "[Errno 111] Connect call failed ('127.0.0.1', 7310)"
    )
    assert unreachable_reason(multiple, 5) == "connection refused"  # localhost: ::1 and 127.0.0.1
    assert unreachable_reason(TimeoutError(), 5) == "no answer within 5 s"
    assert unreachable_reason(ConnectionRefusedError(111, "Connect call failed"), 5) == "connection refused"
    assert unreachable_reason(socket.gaierror(-2, "Name or service not known"), 5) == "name or service not known"
    assert unreachable_reason(UnicodeError("label empty or too long"), 5) == "not a valid host name"
    mixed = OSError("Multiple exceptions: [Errno 111] x, [Errno 113] y")
    assert unreachable_reason(mixed, 5) == str(mixed)
